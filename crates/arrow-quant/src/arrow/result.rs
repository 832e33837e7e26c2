//! Result batches read back: rows as borrowed quantized views, and dequantized to a weights table. A row's
//! encoding is parsed by name through the encoding table and its buffers validated by the encoding's codec.

use super::buffers::{offsets, split_mut};
use super::checksum::Checksum;
use super::output::{RowEncoding, RowMeta};
use super::schema::col;
use crate::codec::{Encoding, Family};
use crate::config::GroupSize;
use crate::error::{QuantError, Result};
use crate::quantized::{ParamSlice, PayloadRef, Quality, QuantizedTensor, QuantizedView};
use crate::tensor::SourceDtype;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Float64Type, Int64Type, UInt32Type, UInt8Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, LargeBinaryArray, ListArray, PrimitiveArray,
    RecordBatch, StringArray,
};
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
    /// How the data is stored.
    pub encoding: RowEncoding,
    /// Packed codes, or the plain values' bytes.
    pub data: &'a [u8],
    /// Scales and zero points or block records (None for plain rows).
    pub payload: Option<PayloadRef<'a>>,
    /// Activation-aware channel scales, one per input channel (None for rows quantized without them).
    pub channel_scales: Option<&'a [f32]>,
    /// Stored fidelity figures (of the whole tensor, for a chunk row).
    pub quality: Quality,
    /// Index of a chunk row within its tensor (docs/FORMAT.md, "Chunk rows"); `None` for a tensor in one row.
    pub chunk: Option<u32>,
    /// Whether the row's checksum was checked (it is always verified when present).
    pub checksum: Checksum,
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
        match (self.encoding, self.payload) {
            (RowEncoding::Quantized { encoding, .. }, Some(payload)) => Ok(QuantizedView {
                name: self.name,
                shape: &self.shape,
                encoding,
                data: self.data,
                payload,
                channel_scales: self.channel_scales,
            }),
            _ => Err(QuantError::column(
                col::ENCODING,
                format!(
                    "tensor '{}' is stored as {}, not quantized",
                    self.name,
                    self.encoding.name()
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
            RowEncoding::Quantized { .. } => self.view()?.dequantize_into(out),
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

    /// Elements per window of [`ResultRow::dequantize_window`]: about 4M (16 MB of f32), a whole number of the
    /// codec's dequantization chunks.
    pub fn window_elements(&self) -> usize {
        const WINDOW: usize = 1 << 22;
        match self.view() {
            Ok(view) => {
                let chunk = view.chunk_elements();
                (WINDOW / chunk).max(1) * chunk
            }
            Err(_) => WINDOW,
        }
    }

    /// Writes the row's values `start .. start + out.len()` as f32 into `out`, `start` a multiple of
    /// [`ResultRow::window_elements`]: how validate and export read a row with a bounded buffer.
    pub fn dequantize_window(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let expected: usize = self.shape.iter().product();
        let end = start.saturating_add(out.len());
        if end > expected {
            return Err(QuantError::corrupt(
                self.name,
                format!("elements {start}..{end} asked of {expected}"),
            ));
        }
        let per = match self.encoding {
            RowEncoding::Quantized { .. } => return self.view()?.dequantize_range_into(start, out),
            RowEncoding::Plain {
                encoding: "f32", ..
            } => 4,
            RowEncoding::Plain {
                encoding: "f16" | "bf16",
                ..
            } => 2,
            _ => return self.dequantize_into(out), // no float values: the error of the whole row
        };
        if self.data.len() != expected * per {
            return Err(QuantError::corrupt(
                self.name,
                format!(
                    "{} data bytes for {expected} values of {per} bytes",
                    self.data.len()
                ),
            ));
        }
        let bytes = &self.data[start * per..end * per];
        match self.encoding.name() {
            "f32" => out
                .iter_mut()
                .zip(bytes.chunks_exact(4))
                .for_each(|(o, b)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            "f16" => out
                .iter_mut()
                .zip(bytes.chunks_exact(2))
                .for_each(|(o, b)| {
                    *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                }),
            _ => out
                .iter_mut()
                .zip(bytes.chunks_exact(2))
                .for_each(|(o, b)| {
                    *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
                }),
        }
        Ok(())
    }

    /// An owned copy of a quantized row as a quantized tensor (its method reads as unknown: files do not store
    /// it); an error for a plain row.
    pub fn to_tensor(&self) -> Result<QuantizedTensor> {
        let view = self.view()?;
        let source_dtype = SourceDtype::from_name(self.dtype);
        Ok(QuantizedTensor {
            name: self.name.to_string(),
            shape: self.shape.clone(),
            source_dtype,
            encoding: view.encoding,
            method: None,
            data: self.data.to_vec(),
            payload: view.payload.to_owned(),
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

/// A column of `batch` by name, checked by `is_type` (`expected` names the type in errors).
fn column<'a>(
    batch: &'a RecordBatch,
    name: &str,
    expected: &str,
    is_type: impl Fn(&DataType) -> bool,
) -> Result<&'a ArrayRef> {
    let array = get(batch, name, expected)?;
    expect_type(array, name, is_type(array.data_type()), expected)?;
    Ok(array)
}

/// The typed columns of one result batch.
struct Columns<'a> {
    names: &'a StringArray,
    shapes: &'a ListArray,
    params: &'a LargeBinaryArray,
    encodings: &'a StringArray,
    dtypes: &'a StringArray,
    bits: &'a PrimitiveArray<UInt8Type>,
    groups: &'a PrimitiveArray<UInt32Type>,
    symmetric: &'a BooleanArray,
    data: &'a LargeBinaryArray,
    scales: &'a ListArray,
    zeros: &'a ListArray,
    channel_scales: Option<&'a ListArray>,
    chunk: Option<&'a PrimitiveArray<UInt32Type>>,
    cosine: &'a Float64Array,
    rel_mse: &'a Float64Array,
}

impl<'a> Columns<'a> {
    fn of(batch: &'a RecordBatch) -> Result<Self> {
        let is = |t: DataType| move |d: &DataType| d == &t;
        let list_of =
            |t: DataType| move |d: &DataType| matches!(d, DataType::List(f) if f.data_type() == &t);
        Ok(Self {
            names: column(batch, col::NAME, "utf8", is(DataType::Utf8))?.as_string::<i32>(),
            shapes: column(batch, col::SHAPE, "list<int64>", list_of(DataType::Int64))?
                .as_list::<i32>(),
            params: column(
                batch,
                col::PARAMS,
                "large_binary",
                is(DataType::LargeBinary),
            )?
            .as_binary::<i64>(),
            encodings: column(batch, col::ENCODING, "utf8", is(DataType::Utf8))?.as_string::<i32>(),
            dtypes: column(batch, col::DTYPE, "utf8", is(DataType::Utf8))?.as_string::<i32>(),
            bits: column(batch, col::BITS, "uint8", is(DataType::UInt8))?
                .as_primitive::<UInt8Type>(),
            groups: column(batch, col::GROUP_SIZE, "uint32", is(DataType::UInt32))?
                .as_primitive::<UInt32Type>(),
            symmetric: column(batch, col::SYMMETRIC, "bool", is(DataType::Boolean))?.as_boolean(),
            data: column(batch, col::DATA, "large_binary", is(DataType::LargeBinary))?
                .as_binary::<i64>(),
            scales: column(batch, col::SCALES, "list<float16 | float32>", is_param_list)?
                .as_list::<i32>(),
            zeros: column(
                batch,
                col::ZERO_POINTS,
                "list<float16 | float32>",
                is_param_list,
            )?
            .as_list::<i32>(),
            channel_scales: channel_scales_column(batch)?,
            // Absent in files written before chunk rows existed: every row is a whole tensor.
            chunk: match batch.column_by_name(col::CHUNK) {
                None => None,
                Some(c) => Some(c.as_primitive_opt::<UInt32Type>().ok_or_else(|| {
                    QuantError::column(
                        col::CHUNK,
                        format!("found {}, expected uint32", c.data_type()),
                    )
                })?),
            },
            cosine: column(batch, col::COSINE, "float64", is(DataType::Float64))?
                .as_primitive::<Float64Type>(),
            rel_mse: column(batch, col::REL_MSE, "float64", is(DataType::Float64))?
                .as_primitive::<Float64Type>(),
        })
    }

    /// Row `r` (`at` is its index over all batches, for messages).
    fn row(&self, r: usize, at: usize, checksum: Checksum) -> Result<ResultRow<'a>> {
        if self.names.is_null(r) {
            return Err(QuantError::column(
                col::NAME,
                format!("row {at} has a null name"),
            ));
        }
        let name = self.names.value(r);
        let shape = self
            .shapes
            .value(r)
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
        if shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .is_none()
        {
            return Err(QuantError::column(
                col::SHAPE,
                format!("tensor '{name}': shape {shape:?} has more elements than fit in memory"),
            ));
        }
        let dtype = self.dtypes.value(r);
        let bits = self.bits.value(r);
        let encoding_name = self.encodings.value(r);
        let (encoding, payload) = match plain_encoding(encoding_name, bits) {
            Some(plain) => (plain, None),
            None => {
                let (encoding, payload) = self.quantized(r, name, dtype, encoding_name)?;
                (encoding, Some(payload))
            }
        };
        let row = ResultRow {
            name,
            shape,
            dtype,
            encoding,
            data: self.data.value(r),
            payload,
            channel_scales: channel_scales_of(self.channel_scales, r),
            quality: Quality {
                cosine: self.cosine.value(r),
                rel_mse: self.rel_mse.value(r),
            },
            chunk: self.chunk.filter(|c| !c.is_null(r)).map(|c| c.value(r)),
            checksum,
        };
        if payload.is_some() {
            row.view()?.validate()?;
        }
        Ok(row)
    }

    /// The encoding and parameters of quantized row `r`.
    fn quantized(
        &self,
        r: usize,
        name: &str,
        dtype: &str,
        encoding_name: &str,
    ) -> Result<(RowEncoding, PayloadRef<'a>)> {
        let encoding: Encoding = encoding_name.parse().map_err(|e: QuantError| {
            QuantError::column(col::ENCODING, format!("tensor '{name}': {e}"))
        })?;
        let bits = self.bits.value(r);
        if bits != encoding.code_bits() {
            return Err(QuantError::column(
                col::BITS,
                format!("tensor '{name}': {bits} bits does not match encoding {encoding_name:?}"),
            ));
        }
        if !matches!(dtype, "f32" | "f16" | "bf16" | "f64") {
            return Err(QuantError::column(
                col::DTYPE,
                format!("tensor '{name}': quantized from unknown dtype {dtype:?}"),
            ));
        }
        let (group, symmetric) = (self.groups.value(r), self.symmetric.value(r));
        let payload = match encoding.family() {
            Family::Blocks => {
                if self.params.is_null(r) {
                    return Err(QuantError::column(
                        col::PARAMS,
                        format!("tensor '{name}' is {encoding_name} but has no params"),
                    ));
                }
                PayloadRef::Blocks(self.params.value(r))
            }
            Family::Flat => {
                let group_size = match group {
                    0 => GroupSize::PerChannel,
                    g => GroupSize::elements(g as usize).map_err(|_| {
                        QuantError::column(
                            col::GROUP_SIZE,
                            format!("tensor '{name}': group size {g} is not 0, 32, 64, 128 or 256"),
                        )
                    })?,
                };
                let zero_points = match (symmetric, self.zeros.is_null(r)) {
                    (true, _) => None,
                    (false, false) => Some(param_slice(self.zeros, r, col::ZERO_POINTS)?),
                    (false, true) => {
                        return Err(QuantError::column(
                            col::ZERO_POINTS,
                            format!("tensor '{name}' is asymmetric but has no zero points"),
                        ))
                    }
                };
                PayloadRef::Flat {
                    group_size,
                    scales: param_slice(self.scales, r, col::SCALES)?,
                    zero_points,
                }
            }
        };
        let stored = RowEncoding::Quantized {
            encoding,
            group_size: group,
            symmetric,
        };
        Ok((stored, payload))
    }
}

/// Reads the rows of result batches (the schema of `schema::result_schema`), verifying each row's checksum (when
/// it has one) and validating types, sizes and the values the format constrains.
pub fn read_results(batches: &[RecordBatch]) -> Result<Vec<ResultRow<'_>>> {
    let mut rows = Vec::new();
    for batch in batches {
        let columns = Columns::of(batch)?;
        for r in 0..batch.num_rows() {
            let checksum = super::checksum::verify_row(batch, r)?;
            rows.push(columns.row(r, rows.len(), checksum)?);
        }
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
