//! One tensor of a model file read back row by row: a tensor stored whole is one row, a large one several chunk
//! rows (docs/FORMAT.md, "Chunk rows"), read one at a time so that memory stays near one chunk. Each row is
//! checked against the ones before it: chunk indices in order, the same name, dtype, encoding and trailing axes.

use super::model_file::ModelFile;
use crate::arrow::result::{read_results, ResultRow};
use crate::error::{QuantError, Result};
use crate::quantized::{ParamBuffer, Payload, Quality, QuantizedTensor};

/// What the rows of one tensor add up to.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    /// Tensor name.
    pub name: String,
    /// The whole tensor's shape (chunk rows' first axes summed).
    pub shape: Vec<usize>,
    /// Source dtype name.
    pub dtype: String,
    /// The `encoding` column.
    pub encoding: String,
    /// Stored bytes over all rows: codes, parameters and channel scales, or the plain values.
    pub bytes: usize,
    /// Stored quality (the whole tensor's).
    pub quality: Quality,
    /// Rows the tensor is stored in (1 when not chunked).
    pub rows: usize,
}

impl ModelFile {
    /// Reads tensor `index` row by row, calling `f(row, first)` for each with `first` the flat index of the
    /// row's first element in the whole tensor; returns what the rows add up to. A chunk row out of order, or
    /// one whose name, dtype, encoding or trailing axes differ from the first row's, is an error naming the file
    /// and the tensor.
    pub fn for_each_row(
        &self,
        index: usize,
        mut f: impl FnMut(&ResultRow<'_>, usize) -> Result<()>,
    ) -> Result<StoredTensor> {
        let name = self.names.get(index).ok_or_else(|| {
            QuantError::format(
                self.path(),
                format!("tensor {index} asked of a file of {}", self.names.len()),
            )
        })?;
        let rows = self.rows_of(index);
        let chunked = rows.len() > 1;
        let mut total: Option<StoredTensor> = None;
        let mut first = 0usize;
        for (k, r) in rows.enumerate() {
            let batch = self.read_row(r)?;
            let results = read_results(std::slice::from_ref(&batch))?;
            let row = results.first().ok_or_else(|| {
                QuantError::format(self.path(), format!("tensor '{name}' has an empty row"))
            })?;
            let bad = |what: String| {
                QuantError::format(
                    self.path(),
                    format!("tensor '{name}', chunk row {k}: {what}"),
                )
            };
            match (chunked, row.chunk) {
                (false, None | Some(0)) => {}
                (true, Some(c)) if c as usize == k => {}
                (_, c) => {
                    let c = c.map_or_else(|| "none".to_string(), |c| c.to_string());
                    let want = if chunked {
                        k.to_string()
                    } else {
                        "none".to_string()
                    };
                    return Err(bad(format!(
                        "chunk index {c} where {want} was expected (chunk rows out of order?)"
                    )));
                }
            }
            if row.name != name {
                return Err(bad(format!("named '{}'", row.name)));
            }
            let bytes = row.view().map_or(row.data.len(), |v| v.nbytes());
            match &mut total {
                None => {
                    total = Some(StoredTensor {
                        name: name.clone(),
                        shape: row.shape.clone(),
                        dtype: row.dtype.to_string(),
                        encoding: row.encoding.name().to_string(),
                        bytes,
                        quality: row.quality,
                        rows: 1,
                    })
                }
                Some(t) => {
                    if row.dtype != t.dtype
                        || row.encoding.name() != t.encoding
                        || row.shape.len() != t.shape.len()
                        || row.shape.get(1..) != t.shape.get(1..)
                    {
                        return Err(bad(format!(
                            "{} {:?} {} does not continue the first row's {} {:?} {}",
                            row.dtype,
                            row.shape,
                            row.encoding.name(),
                            t.dtype,
                            t.shape,
                            t.encoding
                        )));
                    }
                    t.shape[0] += row.shape[0];
                    t.bytes += bytes;
                    t.rows += 1;
                }
            }
            f(row, first)?;
            first += row.shape.iter().product::<usize>();
        }
        total.ok_or_else(|| QuantError::format(self.path(), format!("tensor '{name}' has no row")))
    }
}

impl ModelFile {
    /// Tensor `index` as one quantized tensor: its row, or its chunk rows joined (codes, scales and zero points
    /// or block records one after the other, first axes summed), checked as a whole by its codec. An error for a
    /// plain row, and for chunk rows that do not join into one tensor of their encoding (a chunk whose codes end
    /// inside a byte, or whose blocks the whole tensor would lay out otherwise: files arrow-quant writes always
    /// join).
    pub fn read_quantized(&self, index: usize) -> Result<QuantizedTensor> {
        let mut joined: Option<QuantizedTensor> = None;
        let mut misaligned = None;
        self.for_each_row(index, |row, _| {
            let part = row.to_tensor()?;
            let bits = part.encoding.bits().bits() as usize;
            joined = Some(match joined.take() {
                None => part,
                Some(mut whole) => {
                    if !(whole.len() * bits).is_multiple_of(8) {
                        misaligned = Some(whole.len());
                    }
                    whole.shape[0] += part.shape[0];
                    whole.data.extend_from_slice(&part.data);
                    match (&mut whole.payload, part.payload) {
                        (Payload::Blocks(a), Payload::Blocks(b)) => a.extend_from_slice(&b),
                        (Payload::Flat(a), Payload::Flat(b)) => {
                            join_params(&mut a.scales, b.scales);
                            if let (Some(x), Some(y)) = (a.zero_points.as_mut(), b.zero_points) {
                                join_params(x, y);
                            }
                        }
                        _ => misaligned = Some(whole.len()),
                    }
                    whole
                }
            });
            Ok(())
        })?;
        let whole = joined
            .ok_or_else(|| QuantError::format(self.path(), format!("tensor {index} has no row")))?;
        let cannot = |what: String| {
            QuantError::corrupt(
                &whole.name,
                format!("its chunk rows do not join into one tensor: {what}"),
            )
        };
        if let Some(at) = misaligned {
            return Err(cannot(format!(
                "a chunk ends at element {at}, inside a byte of codes or a parameter block"
            )));
        }
        whole.view().validate().map_err(|e| cannot(e.to_string()))?;
        Ok(whole)
    }
}

/// Appends `more` to `to` (both of one storage type, as the rows of one file are).
fn join_params(to: &mut ParamBuffer, more: ParamBuffer) {
    match (to, more) {
        (ParamBuffer::F16(a), ParamBuffer::F16(b)) => a.extend(b),
        (ParamBuffer::F32(a), ParamBuffer::F32(b)) => a.extend(b),
        (ParamBuffer::F16(a), ParamBuffer::F32(b)) => {
            a.extend(b.into_iter().map(half::f16::from_f32))
        }
        (ParamBuffer::F32(a), ParamBuffer::F16(b)) => {
            a.extend(b.into_iter().map(half::f16::to_f32))
        }
    }
}
