//! Quantized tensors out as one Arrow record batch of the result schema.
//!
//! `quantize_to_batch` sizes one buffer for all packed codes and one for all scales (and zero points), lets each
//! layer's kernel write into its own slice of them in parallel, and hands the buffers to Arrow without copying.

use super::buffers::offsets;
use super::schema::{list_of, param_type, result_schema};
use crate::codec::Encoding;
use crate::config::{GroupSize, QuantConfig, ScaleDtype};
use crate::error::{QuantError, Result};
use crate::quantize::quantize_tensor;
use crate::quantized::{
    FlatParams, ParamBuffer, ParamSlice, Payload, Quality, QuantizedTensor, QuantizedView,
};
use crate::tensor::{SourceDtype, TensorView};
use arrow_array::builder::{ListBuilder, PrimitiveBuilder};
use arrow_array::types::Int64Type;
use arrow_array::{
    new_null_array, ArrayRef, BooleanArray, Float16Array, Float32Array, Float64Array,
    LargeBinaryArray, ListArray, RecordBatch, StringArray, UInt32Array, UInt8Array,
};
use arrow_buffer::{Buffer, NullBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field};
use rayon::prelude::*;
use std::sync::Arc;

/// How a row's `data` is stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RowEncoding {
    /// Packed integer codes with their parameters, and what the `group_size` and `symmetric` columns say.
    Quantized {
        /// The encoding.
        encoding: Encoding,
        /// The `group_size` column: elements per group (0 = per channel), or a block encoding's sub-block length.
        group_size: u32,
        /// The `symmetric` column: true for flat groups without zero points.
        symmetric: bool,
    },
    /// The values themselves: `f16`, `bf16` or `f32` (a layer kept in 16-bit), or `raw` (a non-float tensor carried
    /// through unchanged), with their bit width.
    Plain {
        /// `f16`, `bf16`, `f32` or `raw`.
        encoding: &'static str,
        /// Bits per element.
        bits: u8,
    },
}

impl RowEncoding {
    /// The row encoding of a quantized tensor.
    pub fn of(view: &QuantizedView<'_>) -> Self {
        Self::Quantized {
            encoding: view.encoding,
            group_size: view
                .group_size()
                .map_or(view.encoding.info().block_len as u32, GroupSize::as_stored),
            symmetric: view.symmetric(),
        }
    }

    /// The `encoding` column value.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Quantized { encoding, .. } => encoding.name(),
            Self::Plain { encoding, .. } => encoding,
        }
    }

    fn bits(&self) -> u8 {
        match self {
            Self::Quantized { encoding, .. } => encoding.code_bits(),
            Self::Plain { bits, .. } => *bits,
        }
    }

    fn group_size(&self) -> u32 {
        match self {
            Self::Quantized { group_size, .. } => *group_size,
            Self::Plain { .. } => 0,
        }
    }

    fn symmetric(&self) -> bool {
        matches!(
            self,
            Self::Quantized {
                symmetric: true,
                ..
            }
        )
    }
}

/// Everything a result row says besides its buffers.
#[derive(Debug, Clone)]
pub struct RowMeta<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Source shape.
    pub shape: &'a [usize],
    /// Source dtype name (`f32`, `f16`, `bf16`, or a safetensors dtype in lower case such as `i64`).
    pub dtype: &'a str,
    /// How the data is stored.
    pub encoding: RowEncoding,
    /// Fidelity figures.
    pub quality: Quality,
}

impl<'a> RowMeta<'a> {
    /// The row of a quantized tensor.
    pub fn quantized(view: &QuantizedView<'a>, dtype: SourceDtype, quality: Quality) -> Self {
        Self {
            name: view.name,
            shape: view.shape,
            dtype: dtype.name(),
            encoding: RowEncoding::of(view),
            quality,
        }
    }
}

fn param_list(
    values: ParamBuffer,
    lens: &[usize],
    nulls: Option<NullBuffer>,
    column: &str,
) -> Result<ArrayRef> {
    let (item, array): (DataType, ArrayRef) = match values {
        ParamBuffer::F16(v) => (
            DataType::Float16,
            Arc::new(Float16Array::new(ScalarBuffer::from(v), None)),
        ),
        ParamBuffer::F32(v) => (
            DataType::Float32,
            Arc::new(Float32Array::new(ScalarBuffer::from(v), None)),
        ),
    };
    let field = Arc::new(Field::new("item", item, false));
    let list = ListArray::try_new(field, offsets::<i32>(lens, column)?, array, nulls)
        .map_err(|e| QuantError::column(column, e))?;
    Ok(Arc::new(list))
}

/// Zero points of all rows: the values, the count per row, and which rows have none (symmetric rows).
pub(crate) struct ZeroColumn {
    pub(crate) values: ParamBuffer,
    pub(crate) lens: Vec<usize>,
    pub(crate) nulls: Option<NullBuffer>,
}

/// The flat buffers of all rows of a batch.
pub(crate) struct RowBuffers {
    /// Packed codes (or plain values) of every row, back to back.
    data: Vec<u8>,
    /// Bytes of `data` per row.
    data_lens: Vec<usize>,
    /// Scales of every row.
    scales: ParamBuffer,
    /// Scales per row.
    group_lens: Vec<usize>,
    /// Zero points, when any row has them.
    zeros: Option<ZeroColumn>,
    /// Two-level parameter blocks, when any row has them.
    params: Option<ParamsColumn>,
    /// Activation-aware channel scales, when any row has them.
    channel_scales: Option<ChannelScalesColumn>,
}

/// Channel scales of all rows: the values, the count per row, and which rows have none.
pub(crate) struct ChannelScalesColumn {
    values: Vec<f32>,
    lens: Vec<usize>,
    nulls: Option<NullBuffer>,
}

impl ChannelScalesColumn {
    /// The column of `rows` (`None` for rows without channel scales); `None` when no row has them.
    fn of<'a>(rows: impl Iterator<Item = Option<&'a [f32]>> + Clone) -> Option<Self> {
        rows.clone().any(|r| r.is_some()).then(|| Self {
            values: rows.clone().flatten().flatten().copied().collect(),
            lens: rows.clone().map(|r| r.map_or(0, <[f32]>::len)).collect(),
            nulls: Some(NullBuffer::from(
                rows.map(|r| r.is_some()).collect::<Vec<_>>(),
            )),
        })
    }
}

/// Two-level parameter blocks of all rows: the bytes, the length per row, and which rows have none.
pub(crate) struct ParamsColumn {
    values: Vec<u8>,
    lens: Vec<usize>,
    nulls: Option<NullBuffer>,
}

/// Builds a result batch from row metadata and the flat buffers (`zeros` is `None` when no row has zero points).
pub(crate) fn build_batch(
    rows: &[RowMeta<'_>],
    scale_dtype: ScaleDtype,
    buffers: RowBuffers,
) -> Result<RecordBatch> {
    let RowBuffers {
        data,
        data_lens,
        scales,
        group_lens,
        zeros,
        params,
        channel_scales,
    } = buffers;
    let (data_lens, group_lens) = (data_lens.as_slice(), group_lens.as_slice());
    let schema = Arc::new(result_schema(scale_dtype));
    let n = rows.len();
    let mut shapes = ListBuilder::new(PrimitiveBuilder::<Int64Type>::new())
        .with_field(Arc::new(Field::new("item", DataType::Int64, false)));
    for r in rows {
        shapes
            .values()
            .append_slice(&r.shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
        shapes.append(true);
    }
    let data = LargeBinaryArray::try_new(
        offsets::<i64>(data_lens, "data")?,
        Buffer::from_vec(data),
        None,
    )
    .map_err(|e| QuantError::column("data", e))?;
    let zero_points: ArrayRef = match zeros {
        Some(z) => param_list(z.values, &z.lens, z.nulls, "zero_points")?,
        None => new_null_array(&list_of(param_type(scale_dtype)), n),
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.name))),
        Arc::new(shapes.finish()),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.dtype))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.encoding.name()),
        )),
        Arc::new(UInt8Array::from_iter_values(
            rows.iter().map(|r| r.encoding.bits()),
        )),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.encoding.group_size()),
        )),
        Arc::new(BooleanArray::from(
            rows.iter()
                .map(|r| r.encoding.symmetric())
                .collect::<Vec<_>>(),
        )),
        Arc::new(data),
        param_list(scales, group_lens, None, "scales")?,
        zero_points,
        match params {
            Some(p) => Arc::new(
                LargeBinaryArray::try_new(
                    offsets::<i64>(&p.lens, "params")?,
                    Buffer::from_vec(p.values),
                    p.nulls,
                )
                .map_err(|e| QuantError::column("params", e))?,
            ),
            None => new_null_array(&DataType::LargeBinary, n),
        },
        match channel_scales {
            Some(c) => param_list(
                ParamBuffer::F32(c.values),
                &c.lens,
                c.nulls,
                "channel_scales",
            )?,
            None => new_null_array(&list_of(DataType::Float32), n),
        },
        new_null_array(&list_of(super::schema::time_group_type()), n),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.quality.cosine),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.quality.rel_mse),
        )),
        new_null_array(&DataType::UInt32, n),
        new_null_array(&DataType::UInt32, n),
    ];
    // The checksum is computed when a row is written to a file (`ModelWriter::write`), off the kernel path.
    RecordBatch::try_new(schema, columns).map_err(|e| QuantError::column("*", e))
}

/// `batch` with every row marked as chunk row `chunk` of its tensor (docs/FORMAT.md, "Chunk rows").
pub fn with_chunk(batch: RecordBatch, chunk: u32) -> Result<RecordBatch> {
    let index = batch
        .schema()
        .index_of(super::schema::col::CHUNK)
        .map_err(|e| QuantError::column(super::schema::col::CHUNK, e))?;
    let mut columns = batch.columns().to_vec();
    columns[index] = Arc::new(UInt32Array::from(vec![chunk; batch.num_rows()]));
    RecordBatch::try_new(batch.schema(), columns)
        .map_err(|e| QuantError::column(super::schema::col::CHUNK, e))
}

/// Quantizes `layers` with one config, in parallel, and lays the results out as one result batch (the packed
/// codes are copied once into the batch's buffer). The first failing layer (in input order) is the error.
pub fn quantize_to_batch(layers: &[TensorView<'_>], config: &QuantConfig) -> Result<RecordBatch> {
    let results: Vec<Result<QuantizedTensor>> = layers
        .par_iter()
        .map(|l| quantize_tensor(l, config))
        .collect();
    let tensors = results.into_iter().collect::<Result<Vec<_>>>()?;
    let views: Vec<QuantizedView<'_>> = tensors.iter().map(QuantizedTensor::view).collect();
    let metas: Vec<RowMeta<'_>> = tensors
        .iter()
        .zip(&views)
        .map(|(t, v)| RowMeta::quantized(v, t.source_dtype, t.quality))
        .collect();
    tensors_to_batch(&metas, &views)
}

fn param_f32(p: ParamSlice<'_>) -> impl Iterator<Item = f32> + '_ {
    (0..p.len()).map(move |i| p.get(i))
}

/// The scales, zero points and block records of a view (each `None` where its payload has none).
fn parts<'a>(
    v: &QuantizedView<'a>,
) -> (
    Option<ParamSlice<'a>>,
    Option<ParamSlice<'a>>,
    Option<&'a [u8]>,
) {
    (v.scales(), v.zero_points(), v.params())
}

/// Copies already-quantized tensors into one result batch (rows must share the scale storage type; symmetric
/// rows get a null zero-point list, rows without channel scales a null `channel_scales`).
pub fn tensors_to_batch(rows: &[RowMeta<'_>], views: &[QuantizedView<'_>]) -> Result<RecordBatch> {
    let dtype = views
        .first()
        .map_or(ScaleDtype::F16, QuantizedView::scale_dtype);
    if let Some(v) = views.iter().find(|v| v.scale_dtype() != dtype) {
        return Err(QuantError::column(
            "scales",
            format!(
                "tensor '{}' stores {} scales but the batch stores {}; convert them separately",
                v.name,
                v.scale_dtype().name(),
                dtype.name()
            ),
        ));
    }
    for v in views {
        v.validate()?;
    }
    let parts: Vec<_> = views.iter().map(parts).collect();
    let data_lens: Vec<usize> = views.iter().map(|v| v.data.len()).collect();
    let group_lens: Vec<usize> = parts.iter().map(|p| p.0.map_or(0, |s| s.len())).collect();
    let mut data = Vec::with_capacity(data_lens.iter().sum());
    views.iter().for_each(|v| data.extend_from_slice(v.data));
    let scales: Vec<f32> = parts
        .iter()
        .filter_map(|p| p.0)
        .flat_map(param_f32)
        .collect();
    let zeros = parts.iter().any(|p| p.1.is_some()).then(|| ZeroColumn {
        values: ParamBuffer::from_f32(
            parts
                .iter()
                .filter_map(|p| p.1)
                .flat_map(param_f32)
                .collect(),
            dtype,
        ),
        lens: parts.iter().map(|p| p.1.map_or(0, |z| z.len())).collect(),
        nulls: Some(NullBuffer::from(
            parts.iter().map(|p| p.1.is_some()).collect::<Vec<_>>(),
        )),
    });
    let params = parts.iter().any(|p| p.2.is_some()).then(|| ParamsColumn {
        values: parts
            .iter()
            .filter_map(|p| p.2)
            .flatten()
            .copied()
            .collect(),
        lens: parts.iter().map(|p| p.2.map_or(0, <[u8]>::len)).collect(),
        nulls: Some(NullBuffer::from(
            parts.iter().map(|p| p.2.is_some()).collect::<Vec<_>>(),
        )),
    });
    let scales = ParamBuffer::from_f32(scales, dtype);
    let channel_scales = ChannelScalesColumn::of(views.iter().map(|v| v.channel_scales));
    build_batch(
        rows,
        dtype,
        RowBuffers {
            data,
            data_lens,
            scales,
            group_lens,
            zeros,
            params,
            channel_scales,
        },
    )
}

/// A one-row batch that takes over a quantized tensor's buffers (no copy).
pub fn tensor_batch(q: QuantizedTensor) -> Result<RecordBatch> {
    let view = q.view();
    let dtype = view.scale_dtype();
    let stored = RowEncoding::of(&view);
    let QuantizedTensor {
        name,
        shape,
        source_dtype,
        data,
        payload,
        channel_scales,
        quality,
        ..
    } = q;
    let meta = RowMeta {
        name: &name,
        shape: &shape,
        dtype: source_dtype.name(),
        encoding: stored,
        quality,
    };
    let (scales, zeros, params) = match payload {
        Payload::Flat(FlatParams {
            scales,
            zero_points,
            ..
        }) => (scales, zero_points, None),
        Payload::Blocks(records) => (
            ParamBuffer::from_f32(Vec::new(), dtype),
            None,
            Some(records),
        ),
    };
    let group_lens = vec![scales.as_slice().len()];
    let zeros = zeros.map(|z| ZeroColumn {
        lens: vec![z.as_slice().len()],
        values: z,
        nulls: None,
    });
    let params = params.map(|p| ParamsColumn {
        lens: vec![p.len()],
        values: p,
        nulls: None,
    });
    let buffers = RowBuffers {
        data_lens: vec![data.len()],
        data,
        scales,
        group_lens,
        zeros,
        params,
        channel_scales: channel_scales.map(|c| ChannelScalesColumn {
            lens: vec![c.len()],
            values: c,
            nulls: None,
        }),
    };
    build_batch(std::slice::from_ref(&meta), dtype, buffers)
}

/// Quantizes `layers` in parallel into one result batch per layer, each taking over its tensor's buffers (no
/// copy); together they form a chunked result table. The first failing layer (in input order) is the error.
pub fn quantize_to_batches(
    layers: &[TensorView<'_>],
    config: &QuantConfig,
) -> Result<Vec<RecordBatch>> {
    let results: Vec<Result<RecordBatch>> = layers
        .par_iter()
        .map(|l| quantize_tensor(l, config).and_then(tensor_batch))
        .collect();
    results.into_iter().collect()
}

/// A one-row batch for a tensor stored plainly (`f16`, `bf16`, `f32` or `raw` bytes), with no scales.
pub fn plain_batch(
    meta: &RowMeta<'_>,
    bytes: Vec<u8>,
    scale_dtype: ScaleDtype,
) -> Result<RecordBatch> {
    let len = bytes.len();
    let empty = ParamBuffer::from_f32(Vec::new(), scale_dtype);
    let buffers = RowBuffers {
        data: bytes,
        data_lens: vec![len],
        scales: empty,
        group_lens: vec![0],
        zeros: None,
        params: None,
        channel_scales: None,
    };
    build_batch(std::slice::from_ref(meta), scale_dtype, buffers)
}
