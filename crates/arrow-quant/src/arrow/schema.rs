//! The result schema: one row per quantized tensor, the same columns as the file format of DESIGN.md.
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `name` | utf8 | tensor (layer) name |
//! | `shape` | list<int64> | source shape |
//! | `dtype` | utf8 | source dtype: `f32`, `f16`, `bf16` |
//! | `encoding` | utf8 | `int8`, `int4`, `int2` |
//! | `bits` | uint8 | bits per code |
//! | `group_size` | uint32 | elements per group along the last axis of the 2-D view; 0 = per channel |
//! | `symmetric` | bool | true: no zero point, implicit zero `2^(bits-1)` |
//! | `data` | large_binary | packed codes, `ceil(n * bits / 8)` bytes |
//! | `scales` | list<float16> (list<float32> with float32 scales) | one per group, row by row |
//! | `zero_points` | like `scales`, null when symmetric | one per group |
//! | `params` | large_binary, null | two-level parameter block of encodings that use one |
//! | `channel_scales` | list<float32>, null | activation-aware scales, one per input channel (`shape[1]`); values dequantize to `deq(q)[i, c] / s[c / (cols / shape[1])]` |
//! | `time_groups` | list<struct<t_start int32, t_end int32, scale float32, zero_point float32>>, null | time-aware activation parameters |
//! | `cosine` | float64 | cosine similarity to the source |
//! | `rel_mse` | float64 | relative squared error to the source |
//! | `checksum` | uint32, null in in-memory results and old files | CRC-32 of the row's values, set when written to a model file (`checksum.rs`) |
//! | `chunk` | uint32, null | index of a chunk row within its tensor (docs/FORMAT.md, "Chunk rows"); null for a tensor in one row |

use crate::config::ScaleDtype;
use arrow_schema::{DataType, Field, Fields, Schema};
use std::collections::HashMap;
use std::sync::Arc;

/// Column names of the result schema.
pub mod col {
    /// Tensor name.
    pub const NAME: &str = "name";
    /// Source shape.
    pub const SHAPE: &str = "shape";
    /// Source dtype.
    pub const DTYPE: &str = "dtype";
    /// Encoding name.
    pub const ENCODING: &str = "encoding";
    /// Bits per code.
    pub const BITS: &str = "bits";
    /// Group size (0 = per channel).
    pub const GROUP_SIZE: &str = "group_size";
    /// Symmetric flag.
    pub const SYMMETRIC: &str = "symmetric";
    /// Packed codes.
    pub const DATA: &str = "data";
    /// Scales.
    pub const SCALES: &str = "scales";
    /// Zero points.
    pub const ZERO_POINTS: &str = "zero_points";
    /// Two-level parameter block.
    pub const PARAMS: &str = "params";
    /// Activation-aware channel scales.
    pub const CHANNEL_SCALES: &str = "channel_scales";
    /// Time-aware activation parameters.
    pub const TIME_GROUPS: &str = "time_groups";
    /// Cosine similarity.
    pub const COSINE: &str = "cosine";
    /// Relative MSE.
    pub const REL_MSE: &str = "rel_mse";
    /// CRC-32 of the row's values (see `arrow::checksum`).
    pub const CHECKSUM: &str = "checksum";
    /// Index of a chunk row within its tensor (null for a tensor stored in one row).
    pub const CHUNK: &str = "chunk";
}

/// Schema metadata key naming the format.
pub const FORMAT_KEY: &str = "arrow_quant.format";
/// Schema metadata key holding the format version.
pub const VERSION_KEY: &str = "arrow_quant.format_version";
/// Value of [`FORMAT_KEY`].
pub const FORMAT_NAME: &str = "arrow-quant";
/// Current format version.
pub const FORMAT_VERSION: &str = "1";

/// `list<item>` with non-null items.
pub(crate) fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, false)))
}

/// Arrow type of a scale or zero point.
pub(crate) fn param_type(dtype: ScaleDtype) -> DataType {
    match dtype {
        ScaleDtype::F16 => DataType::Float16,
        ScaleDtype::F32 => DataType::Float32,
    }
}

/// The struct type of one time group.
pub(crate) fn time_group_type() -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new("t_start", DataType::Int32, false),
        Field::new("t_end", DataType::Int32, false),
        Field::new("scale", DataType::Float32, false),
        Field::new("zero_point", DataType::Float32, false),
    ]))
}

/// The result schema for tensors whose scales are stored as `scale_dtype`.
pub fn result_schema(scale_dtype: ScaleDtype) -> Schema {
    let param = list_of(param_type(scale_dtype));
    let fields = vec![
        Field::new(col::NAME, DataType::Utf8, false),
        Field::new(col::SHAPE, list_of(DataType::Int64), false),
        Field::new(col::DTYPE, DataType::Utf8, false),
        Field::new(col::ENCODING, DataType::Utf8, false),
        Field::new(col::BITS, DataType::UInt8, false),
        Field::new(col::GROUP_SIZE, DataType::UInt32, false),
        Field::new(col::SYMMETRIC, DataType::Boolean, false),
        Field::new(col::DATA, DataType::LargeBinary, false),
        Field::new(col::SCALES, param.clone(), false),
        Field::new(col::ZERO_POINTS, param, true),
        Field::new(col::PARAMS, DataType::LargeBinary, true),
        Field::new(col::CHANNEL_SCALES, list_of(DataType::Float32), true),
        Field::new(col::TIME_GROUPS, list_of(time_group_type()), true),
        Field::new(col::COSINE, DataType::Float64, false),
        Field::new(col::REL_MSE, DataType::Float64, false),
        Field::new(col::CHECKSUM, DataType::UInt32, true),
        Field::new(col::CHUNK, DataType::UInt32, true),
    ];
    let metadata = HashMap::from([
        (FORMAT_KEY.to_string(), FORMAT_NAME.to_string()),
        (VERSION_KEY.to_string(), FORMAT_VERSION.to_string()),
    ]);
    Schema::new_with_metadata(fields, metadata)
}
