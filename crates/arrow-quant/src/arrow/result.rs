//! Result batches read back: rows as borrowed quantized views, and dequantized to a weights table.

use super::buffers::{offsets, split_mut};
use super::output::{RowEncoding, RowMeta};
use super::schema::col;
use crate::config::{BitWidth, GroupSize, Method, QuantConfig};
use crate::error::{QuantError, Result};
use crate::quantized::{ParamSlice, Quality, QuantizedView};
use crate::tensor::SourceDtype;
use crate::two_level::TwoLevelSpec;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Float64Type, Int64Type, UInt32Type, UInt8Type};
use arrow_array::{Array, ArrayRef, ListArray, RecordBatch};
use arrow_buffer::ScalarBuffer;
use arrow_schema::{DataType, Field, Schema};
use rayon::prelude::*;
use std::sync::Arc;

/// One row of a result batch, its buffers borrowed from the batch.
#[derive(Debug, Clone)]
pub struct ResultRow<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Source shape.
    pub shape: Vec<usize>,
    /// Source dtype name.
    pub dtype: &'a str,
    /// How the data is stored (for quantized rows the method is not stored and reads as `rtn`).
    pub encoding: RowEncoding,
    /// Packed codes, or the plain values' bytes.
    pub data: &'a [u8],
    /// Scales (empty for plain rows).
    pub scales: ParamSlice<'a>,
    /// Zero points (None when symmetric, two-level or plain).
    pub zero_points: Option<ParamSlice<'a>>,
    /// Two-level parameter block (None for flat and plain rows).
    pub params: Option<&'a [u8]>,
    /// Activation-aware channel scales, one per input channel (None for rows quantized without them).
    pub channel_scales: Option<&'a [f32]>,
    /// Stored fidelity figures.
    pub quality: Quality,
}

impl ResultRow<'_> {
    /// The row's metadata, as written.
    pub fn meta(&self) -> RowMeta<'_> {
        RowMeta {
            name: self.name,
            shape: &self.shape,
            dtype: self.dtype,
            encoding: self.encoding,
            quality: self.quality,
        }
    }

    /// The quantized view of this row; an error for a plain row.
    pub fn view(&self) -> Result<QuantizedView<'_>> {
        match self.encoding {
            RowEncoding::Quantized(config) => Ok(QuantizedView {
                name: self.name,
                shape: &self.shape,
                bits: config.bits,
                group_size: config.group_size,
                data: self.data,
                scales: self.scales,
                zero_points: self.zero_points,
                params: self.params,
                channel_scales: self.channel_scales,
            }),
            RowEncoding::Plain { encoding, .. } => Err(QuantError::column(
                col::ENCODING,
                format!(
                    "tensor '{}' is stored as {encoding}, not quantized",
                    self.name
                ),
            )),
        }
    }

    /// Writes the row's values as f32 into `out` (quantized rows are dequantized; f16 / bf16 rows converted).
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<()> {
        use half::slice::HalfFloatSliceExt;
        let expected: usize = self.shape.iter().product();
        let wrong_size = |per: usize| {
            QuantError::corrupt(
                self.name,
                format!(
                    "{} data bytes for {expected} values of {per} bytes",
                    self.data.len()
                ),
            )
        };
        match self.encoding {
            RowEncoding::Quantized(_) => self.view()?.dequantize_into(out),
            RowEncoding::Plain {
                encoding: "f32", ..
            } => {
                if self.data.len() != expected * 4 || out.len() != expected {
                    return Err(wrong_size(4));
                }
                out.iter_mut()
                    .zip(self.data.chunks_exact(4))
                    .for_each(|(o, b)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                Ok(())
            }
            RowEncoding::Plain {
                encoding: e @ ("f16" | "bf16"),
                ..
            } => {
                if self.data.len() != expected * 2 || out.len() != expected {
                    return Err(wrong_size(2));
                }
                let bits: Vec<u16> = self
                    .data
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect();
                if e == "f16" {
                    half::slice::HalfBitsSliceExt::reinterpret_cast::<half::f16>(bits.as_slice())
                        .convert_to_f32_slice(out);
                } else {
                    half::slice::HalfBitsSliceExt::reinterpret_cast::<half::bf16>(bits.as_slice())
                        .convert_to_f32_slice(out);
                }
                Ok(())
            }
            RowEncoding::Plain { encoding, .. } => Err(QuantError::column(
                col::ENCODING,
                format!(
                    "tensor '{}' is stored as {encoding} ({}) and has no float values",
                    self.name, self.dtype
                ),
            )),
        }
    }

    /// An owned copy of a quantized row as a quantized tensor; an error for a plain row.
    pub fn to_tensor(&self) -> Result<crate::quantized::QuantizedTensor> {
        let RowEncoding::Quantized(config) = self.encoding else {
            return Err(self
                .view()
                .err()
                .unwrap_or_else(|| QuantError::corrupt(self.name, "not quantized")));
        };
        let source_dtype = match self.dtype {
            "f16" => SourceDtype::F16,
            "bf16" => SourceDtype::BF16,
            _ => SourceDtype::F32,
        };
        Ok(crate::quantized::QuantizedTensor {
            name: self.name.to_string(),
            shape: self.shape.clone(),
            source_dtype,
            config,
            data: self.data.to_vec(),
            scales: self.scales.to_buffer(),
            zero_points: self.zero_points.map(|z| z.to_buffer()),
            params: self.params.map(<[u8]>::to_vec),
            channel_scales: self.channel_scales.map(<[f32]>::to_vec),
            quality: self.quality,
        })
    }
}

/// The `&'static` names of plain encodings, with their bits (raw rows take theirs from the `bits` column).
fn plain_encoding(name: &str, bits: u8) -> Option<RowEncoding> {
    let (encoding, bits) = match name {
        "f16" => ("f16", 16),
        "bf16" => ("bf16", 16),
        "f32" => ("f32", 32),
        "raw" => ("raw", bits),
        _ => return None,
    };
    Some(RowEncoding::Plain { encoding, bits })
}

fn get<'a>(batch: &'a RecordBatch, name: &str, expected: &str) -> Result<&'a ArrayRef> {
    let schema = batch.schema();
    let i = schema.index_of(name).map_err(|_| {
        QuantError::column(
            name,
            format!("missing; a quantized result needs a {expected} column '{name}'"),
        )
    })?;
    Ok(batch.column(i))
}

fn expect_type(array: &ArrayRef, name: &str, ok: bool, expected: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(QuantError::column(
            name,
            format!("found {}, expected {expected}", array.data_type()),
        ))
    }
}

fn param_slice<'a>(list: &'a ListArray, row: usize, column: &str) -> Result<ParamSlice<'a>> {
    let offsets = list.value_offsets();
    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
    let values = list.values();
    Ok(match values.data_type() {
        DataType::Float16 => {
            ParamSlice::F16(&values.as_primitive::<Float16Type>().values()[start..end])
        }
        DataType::Float32 => {
            ParamSlice::F32(&values.as_primitive::<Float32Type>().values()[start..end])
        }
        other => {
            return Err(QuantError::column(
                column,
                format!("found list<{other}>, expected list<float16 | float32>"),
            ))
        }
    })
}

/// The `channel_scales` column of a batch as a list<float32> array; `None` when the column is absent (tables
/// written before it existed read as having no channel scales).
fn channel_scales_column(batch: &RecordBatch) -> Result<Option<&ListArray>> {
    let Some(column) = batch.column_by_name(col::CHANNEL_SCALES) else {
        return Ok(None);
    };
    expect_type(
        column,
        col::CHANNEL_SCALES,
        matches!(column.data_type(), DataType::List(f) if f.data_type() == &DataType::Float32),
        "list<float32>",
    )?;
    Ok(Some(column.as_list::<i32>()))
}

/// The channel scales of row `row` (None when null).
fn channel_scales_of(list: Option<&ListArray>, row: usize) -> Option<&[f32]> {
    let list = list.filter(|l| !l.is_null(row))?;
    let offsets = list.value_offsets();
    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
    Some(&list.values().as_primitive::<Float32Type>().values()[start..end])
}

fn is_param_list(t: &DataType) -> bool {
    matches!(t, DataType::List(f) if matches!(f.data_type(), DataType::Float16 | DataType::Float32))
}

/// Reads the rows of result batches (the schema of `schema::result_schema`), validating types and sizes.
pub fn read_results(batches: &[RecordBatch]) -> Result<Vec<ResultRow<'_>>> {
    let mut rows = Vec::new();
    let mut row_base = 0;
    for batch in batches {
        let names = get(batch, col::NAME, "utf8")?;
        expect_type(
            names,
            col::NAME,
            names.data_type() == &DataType::Utf8,
            "utf8",
        )?;
        let shapes = get(batch, col::SHAPE, "list<int64>")?;
        expect_type(
            shapes,
            col::SHAPE,
            matches!(shapes.data_type(), DataType::List(f) if f.data_type() == &DataType::Int64),
            "list<int64>",
        )?;
        let params_col = get(batch, col::PARAMS, "large_binary")?;
        expect_type(
            params_col,
            col::PARAMS,
            params_col.data_type() == &DataType::LargeBinary,
            "large_binary",
        )?;
        let params_col = params_col.as_binary::<i64>();
        let encodings = get(batch, col::ENCODING, "utf8")?;
        expect_type(
            encodings,
            col::ENCODING,
            encodings.data_type() == &DataType::Utf8,
            "utf8",
        )?;
        let encodings = encodings.as_string::<i32>();
        let dtypes = get(batch, col::DTYPE, "utf8")?;
        expect_type(
            dtypes,
            col::DTYPE,
            dtypes.data_type() == &DataType::Utf8,
            "utf8",
        )?;
        let bits = get(batch, col::BITS, "uint8")?;
        expect_type(
            bits,
            col::BITS,
            bits.data_type() == &DataType::UInt8,
            "uint8",
        )?;
        let groups = get(batch, col::GROUP_SIZE, "uint32")?;
        expect_type(
            groups,
            col::GROUP_SIZE,
            groups.data_type() == &DataType::UInt32,
            "uint32",
        )?;
        let symmetric = get(batch, col::SYMMETRIC, "bool")?;
        expect_type(
            symmetric,
            col::SYMMETRIC,
            symmetric.data_type() == &DataType::Boolean,
            "bool",
        )?;
        let data = get(batch, col::DATA, "large_binary")?;
        expect_type(
            data,
            col::DATA,
            data.data_type() == &DataType::LargeBinary,
            "large_binary",
        )?;
        let scales = get(batch, col::SCALES, "list<float16>")?;
        expect_type(
            scales,
            col::SCALES,
            is_param_list(scales.data_type()),
            "list<float16 | float32>",
        )?;
        let zeros = get(batch, col::ZERO_POINTS, "list<float16>")?;
        expect_type(
            zeros,
            col::ZERO_POINTS,
            is_param_list(zeros.data_type()),
            "list<float16 | float32>",
        )?;
        let channel_scales = channel_scales_column(batch)?;
        let cosine = get(batch, col::COSINE, "float64")?;
        expect_type(
            cosine,
            col::COSINE,
            cosine.data_type() == &DataType::Float64,
            "float64",
        )?;
        let rel_mse = get(batch, col::REL_MSE, "float64")?;
        expect_type(
            rel_mse,
            col::REL_MSE,
            rel_mse.data_type() == &DataType::Float64,
            "float64",
        )?;
        let (names, shapes, dtypes) = (
            names.as_string::<i32>(),
            shapes.as_list::<i32>(),
            dtypes.as_string::<i32>(),
        );
        let (bits, groups) = (
            bits.as_primitive::<UInt8Type>(),
            groups.as_primitive::<UInt32Type>(),
        );
        let (symmetric, data) = (symmetric.as_boolean(), data.as_binary::<i64>());
        let (scales, zeros) = (scales.as_list::<i32>(), zeros.as_list::<i32>());
        let (cosine, rel_mse) = (
            cosine.as_primitive::<Float64Type>(),
            rel_mse.as_primitive::<Float64Type>(),
        );
        for r in 0..batch.num_rows() {
            let at = row_base + r;
            if names.is_null(r) {
                return Err(QuantError::column(
                    col::NAME,
                    format!("row {at} has a null name"),
                ));
            }
            let name = names.value(r);
            let shape_values = shapes.value(r);
            let shape = shape_values
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .map(|&d| usize::try_from(d))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| {
                    QuantError::column(
                        col::SHAPE,
                        format!("tensor '{name}' has a negative dimension"),
                    )
                })?;
            let dtype = dtypes.value(r);
            let encoding_name = encodings.value(r);
            let scale_slice = param_slice(scales, r, col::SCALES)?;
            let two_level = encoding_name.ends_with("_2l");
            let encoding = if let Some(plain) = plain_encoding(encoding_name, bits.value(r)) {
                plain
            } else if two_level {
                let width = BitWidth::from_bits(u32::from(bits.value(r))).map_err(|_| {
                    QuantError::column(
                        col::BITS,
                        format!("tensor '{name}': {} bits is not 2, 4 or 8", bits.value(r)),
                    )
                })?;
                let spec = TwoLevelSpec::for_bits(width);
                if spec.encoding_name() != encoding_name {
                    return Err(QuantError::column(
                        col::ENCODING,
                        format!(
                            "tensor '{name}': encoding {encoding_name:?} does not match {} bits",
                            width.bits()
                        ),
                    ));
                }
                RowEncoding::Quantized(QuantConfig {
                    bits: width,
                    group_size: GroupSize::Elements(spec.sub_len),
                    symmetric: false,
                    method: Method::TwoLevel,
                    scale_dtype: scale_slice.dtype(),
                })
            } else {
                if !matches!(dtype, "f32" | "f16" | "bf16") {
                    return Err(QuantError::column(
                        col::DTYPE,
                        format!("tensor '{name}': quantized from unknown dtype {dtype:?}"),
                    ));
                }
                let width = BitWidth::from_bits(u32::from(bits.value(r))).map_err(|_| {
                    QuantError::column(
                        col::BITS,
                        format!("tensor '{name}': {} bits is not 2, 4 or 8", bits.value(r)),
                    )
                })?;
                if width.encoding_name() != encoding_name {
                    return Err(QuantError::column(
                        col::ENCODING,
                        format!(
                            "tensor '{name}': encoding {encoding_name:?} does not match {} bits",
                            width.bits()
                        ),
                    ));
                }
                let group_size = match groups.value(r) {
                    0 => GroupSize::PerChannel,
                    g => GroupSize::elements(g as usize).map_err(|_| {
                        QuantError::column(
                            col::GROUP_SIZE,
                            format!("tensor '{name}': group size {g} is not 0, 32, 64, 128 or 256"),
                        )
                    })?,
                };
                RowEncoding::Quantized(QuantConfig {
                    bits: width,
                    group_size,
                    symmetric: symmetric.value(r),
                    method: Method::Rtn,
                    scale_dtype: scale_slice.dtype(),
                })
            };
            let quantized_asym =
                matches!(encoding, RowEncoding::Quantized(c) if !c.symmetric && !two_level);
            let params = if two_level {
                if params_col.is_null(r) {
                    return Err(QuantError::column(
                        col::PARAMS,
                        format!("tensor '{name}' is {encoding_name} but has no params"),
                    ));
                }
                Some(params_col.value(r))
            } else {
                None
            };
            let zero_slice = if quantized_asym && !zeros.is_null(r) {
                Some(param_slice(zeros, r, col::ZERO_POINTS)?)
            } else {
                None
            };
            if quantized_asym && zero_slice.is_none() {
                return Err(QuantError::column(
                    col::ZERO_POINTS,
                    format!("tensor '{name}' is asymmetric but has no zero points"),
                ));
            }
            let row = ResultRow {
                name,
                shape,
                dtype,
                encoding,
                data: data.value(r),
                scales: scale_slice,
                zero_points: zero_slice,
                params,
                channel_scales: channel_scales_of(channel_scales, r),
                quality: Quality {
                    cosine: cosine.value(r),
                    rel_mse: rel_mse.value(r),
                },
            };
            if matches!(encoding, RowEncoding::Quantized(_)) {
                row.view()?.validate()?;
            }
            rows.push(row);
        }
        row_base += batch.num_rows();
    }
    Ok(rows)
}

/// Dequantizes result rows into one batch `{layer_name utf8, weights list<float32>, shape list<int64>}`, every
/// row written in parallel into one shared values buffer.
pub fn dequantize_to_batch(rows: &[ResultRow<'_>]) -> Result<RecordBatch> {
    let lens: Vec<usize> = rows.iter().map(|r| r.shape.iter().product()).collect();
    let mut values = vec![0f32; lens.iter().sum()];
    let slices = split_mut(&mut values, &lens);
    rows.par_iter()
        .zip(slices)
        .try_for_each(|(row, out)| row.dequantize_into(out))?;
    let weight_offsets = offsets::<i32>(&lens, "weights")?;
    let shape_lens: Vec<usize> = rows.iter().map(|r| r.shape.len()).collect();
    let dims: Vec<i64> = rows
        .iter()
        .flat_map(|r| r.shape.iter().map(|&d| d as i64))
        .collect();
    let item = |t: DataType| Arc::new(Field::new("item", t, false));
    let weights = ListArray::try_new(
        item(DataType::Float32),
        weight_offsets,
        Arc::new(arrow_array::Float32Array::new(
            ScalarBuffer::from(values),
            None,
        )),
        None,
    )
    .map_err(|e| QuantError::column("weights", e))?;
    let shapes = ListArray::try_new(
        item(DataType::Int64),
        offsets::<i32>(&shape_lens, "shape")?,
        Arc::new(arrow_array::Int64Array::new(ScalarBuffer::from(dims), None)),
        None,
    )
    .map_err(|e| QuantError::column("shape", e))?;
    let schema = Schema::new(vec![
        Field::new("layer_name", DataType::Utf8, false),
        Field::new("weights", weights.data_type().clone(), false),
        Field::new("shape", shapes.data_type().clone(), false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(arrow_array::StringArray::from_iter_values(
                rows.iter().map(|r| r.name),
            )),
            Arc::new(weights),
            Arc::new(shapes),
        ],
    )
    .map_err(|e| QuantError::column("*", e))
}
