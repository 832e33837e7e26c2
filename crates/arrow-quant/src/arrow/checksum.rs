//! The per-row checksum of result tables and model files (column `checksum`, uint32): CRC-32 with the zlib / PNG
//! polynomial (`zlib.crc32` in Python) over every value a reader decodes the tensor from, in a fixed order
//! (docs/FORMAT.md, "Checksum"). Every row written to a model file gets it (in-memory result tables leave it
//! null, so the kernels' path does not pay for it); every read of a row verifies it. A row without one (a
//! null, or a file written before the column existed) reads unchecked.

use super::schema::col;
use crate::error::{QuantError, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow_schema::DataType;
use crc32fast::Hasher;
use std::sync::Arc;

/// Whether a row's checksum was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// The stored checksum matches the row's bytes.
    Verified,
    /// The row has no checksum (written before checksums existed): nothing to check.
    Missing,
}

/// Feeds `values` as little-endian bytes.
fn update_le<T: bytemuck::Pod, const N: usize>(
    hasher: &mut Hasher,
    values: &[T],
    to_le: impl Fn(&T) -> [u8; N],
) {
    if cfg!(target_endian = "little") {
        hasher.update(bytemuck::cast_slice(values));
    } else {
        let bytes: Vec<u8> = values.iter().flat_map(to_le).collect();
        hasher.update(&bytes);
    }
}

fn wrong_type(column: &str, array: &ArrayRef) -> QuantError {
    QuantError::column(
        column,
        format!(
            "found {}, which the checksum cannot cover",
            array.data_type()
        ),
    )
}

/// Feeds row `row` of a binary or list column (nothing when the column is absent or the row is null).
fn update_column(hasher: &mut Hasher, batch: &RecordBatch, name: &str, row: usize) -> Result<()> {
    let Some(array) = batch.column_by_name(name) else {
        return Ok(());
    };
    if array.is_null(row) {
        return Ok(());
    }
    match array.data_type() {
        DataType::LargeBinary => hasher.update(array.as_binary::<i64>().value(row)),
        DataType::List(_) => {
            let list = array.as_list::<i32>();
            let offsets = list.value_offsets();
            let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
            let values = list.values();
            match values.data_type() {
                DataType::Int64 => update_le(
                    hasher,
                    &values.as_primitive::<Int64Type>().values()[start..end],
                    |v| v.to_le_bytes(),
                ),
                DataType::Float16 => update_le(
                    hasher,
                    &values.as_primitive::<Float16Type>().values()[start..end],
                    |v| v.to_le_bytes(),
                ),
                DataType::Float32 => update_le(
                    hasher,
                    &values.as_primitive::<Float32Type>().values()[start..end],
                    |v| v.to_le_bytes(),
                ),
                DataType::Struct(_) => update_time_groups(hasher, values, start..end, name)?,
                _ => return Err(wrong_type(name, array)),
            }
        }
        _ => return Err(wrong_type(name, array)),
    }
    Ok(())
}

/// Time groups: per entry `t_start`, `t_end` (int32), `scale`, `zero_point` (float32), little-endian.
fn update_time_groups(
    hasher: &mut Hasher,
    values: &ArrayRef,
    range: std::ops::Range<usize>,
    name: &str,
) -> Result<()> {
    let entries = values.as_struct();
    let field = |f: &str| {
        entries
            .column_by_name(f)
            .ok_or_else(|| QuantError::column(name, format!("entries have no field '{f}'")))
    };
    let (t_start, t_end) = (field("t_start")?, field("t_end")?);
    let (scale, zero) = (field("scale")?, field("zero_point")?);
    let ints = |a: &ArrayRef| {
        a.as_primitive_opt::<Int32Type>()
            .map(|a| a.values().clone())
    };
    let floats = |a: &ArrayRef| {
        a.as_primitive_opt::<Float32Type>()
            .map(|a| a.values().clone())
    };
    let (Some(t_start), Some(t_end), Some(scale), Some(zero)) =
        (ints(t_start), ints(t_end), floats(scale), floats(zero))
    else {
        return Err(QuantError::column(
            name,
            "entries are not {t_start int32, t_end int32, scale float32, zero_point float32}",
        ));
    };
    let mut bytes = Vec::with_capacity(range.len() * 16);
    for k in range {
        bytes.extend_from_slice(&t_start[k].to_le_bytes());
        bytes.extend_from_slice(&t_end[k].to_le_bytes());
        bytes.extend_from_slice(&scale[k].to_le_bytes());
        bytes.extend_from_slice(&zero[k].to_le_bytes());
    }
    hasher.update(&bytes);
    Ok(())
}

/// The checksum of row `row`: CRC-32 over `shape` (int64 each), `data`, `scales`, `zero_points`, `params`,
/// `channel_scales`, `time_groups` and `chunk` (uint32), in that order, each value little-endian; null or absent
/// columns add nothing.
pub fn row_checksum(batch: &RecordBatch, row: usize) -> Result<u32> {
    let mut hasher = Hasher::new();
    for name in [
        col::SHAPE,
        col::DATA,
        col::SCALES,
        col::ZERO_POINTS,
        col::PARAMS,
        col::CHANNEL_SCALES,
        col::TIME_GROUPS,
    ] {
        update_column(&mut hasher, batch, name, row)?;
    }
    if let Some(chunk) = batch.column_by_name(col::CHUNK) {
        let chunk = chunk
            .as_primitive_opt::<arrow_array::types::UInt32Type>()
            .ok_or_else(|| wrong_type(col::CHUNK, chunk))?;
        if !chunk.is_null(row) {
            hasher.update(&chunk.value(row).to_le_bytes());
        }
    }
    Ok(hasher.finalize())
}

/// `batch` with its `checksum` column computed from its rows (unchanged when it has no such column).
pub fn with_checksums(batch: RecordBatch) -> Result<RecordBatch> {
    let Ok(index) = batch.schema().index_of(col::CHECKSUM) else {
        return Ok(batch);
    };
    let sums = (0..batch.num_rows())
        .map(|r| row_checksum(&batch, r))
        .collect::<Result<Vec<u32>>>()?;
    let mut columns = batch.columns().to_vec();
    columns[index] = Arc::new(UInt32Array::from(sums));
    RecordBatch::try_new(batch.schema(), columns).map_err(|e| QuantError::column(col::CHECKSUM, e))
}

/// Checks row `row` against its stored checksum: an error naming the tensor when they differ.
pub fn verify_row(batch: &RecordBatch, row: usize) -> Result<Checksum> {
    let Some(stored) = batch.column_by_name(col::CHECKSUM) else {
        return Ok(Checksum::Missing);
    };
    let stored = stored
        .as_primitive_opt::<arrow_array::types::UInt32Type>()
        .ok_or_else(|| {
            QuantError::column(
                col::CHECKSUM,
                format!("found {}, expected uint32", stored.data_type()),
            )
        })?;
    if stored.is_null(row) {
        return Ok(Checksum::Missing);
    }
    let computed = row_checksum(batch, row)?;
    if computed == stored.value(row) {
        return Ok(Checksum::Verified);
    }
    let name = batch
        .column_by_name(col::NAME)
        .and_then(|n| n.as_string_opt::<i32>())
        .filter(|n| !n.is_null(row))
        .map_or_else(|| format!("row {row}"), |n| n.value(row).to_string());
    Err(QuantError::corrupt(
        &name,
        format!(
            "checksum mismatch (stored {:08x}, computed {computed:08x}): the stored bytes are damaged; \
             restore the file or quantize the model again",
            stored.value(row)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrow::output::tensor_batch;
    use crate::{quantize_tensor, QuantConfig, TensorData, TensorView};

    fn batch() -> RecordBatch {
        let w: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin()).collect();
        let view = TensorView::new("w", &[4, 128], TensorData::F32(&w)).unwrap();
        let batch = tensor_batch(quantize_tensor(&view, &QuantConfig::default()).unwrap()).unwrap();
        assert_eq!(verify_row(&batch, 0).unwrap(), Checksum::Missing); // in memory: none yet
        with_checksums(batch).unwrap()
    }

    #[test]
    fn built_rows_verify_and_a_changed_byte_does_not() {
        let b = batch();
        assert_eq!(verify_row(&b, 0).unwrap(), Checksum::Verified);
        // Flip one bit in the params (a two-level row), as damage on disk would.
        let i = b.schema().index_of(col::PARAMS).unwrap();
        let params = b.column(i).as_binary::<i64>();
        let mut bytes = params.value(0).to_vec();
        bytes[7] ^= 0x10;
        let mut columns = b.columns().to_vec();
        columns[i] = Arc::new(arrow_array::LargeBinaryArray::from_vec(vec![&bytes[..]]));
        let damaged = RecordBatch::try_new(b.schema(), columns).unwrap();
        let e = verify_row(&damaged, 0).unwrap_err().to_string();
        assert!(e.contains("'w'") && e.contains("checksum mismatch"), "{e}");
    }

    #[test]
    fn a_row_without_a_checksum_reads_as_missing() {
        let b = batch();
        let i = b.schema().index_of(col::CHECKSUM).unwrap();
        let mut without = b.clone();
        without.remove_column(i);
        assert_eq!(verify_row(&without, 0).unwrap(), Checksum::Missing);
        let mut columns = b.columns().to_vec();
        columns[i] = Arc::new(UInt32Array::from(vec![None::<u32>]));
        let null = RecordBatch::try_new(b.schema(), columns).unwrap();
        assert_eq!(verify_row(&null, 0).unwrap(), Checksum::Missing);
    }
}
