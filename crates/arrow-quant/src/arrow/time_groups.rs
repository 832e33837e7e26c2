//! The `time_groups` column: per-timestep-group activation parameters of a row, written into a result batch and
//! read back (`list<struct<t_start int32, t_end int32, scale float32, zero_point float32>>`, `t_end` exclusive).

use super::schema::{col, list_of, time_group_type};
use crate::diffusion::time_groups::TimeGroup;
use crate::error::{QuantError, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type};
use arrow_array::{Array, ArrayRef, Float32Array, Int32Array, ListArray, RecordBatch, StructArray};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::DataType;
use std::sync::Arc;

/// The column for `rows` (one entry per batch row; `None` is a null list).
pub fn time_groups_array(rows: &[Option<&[TimeGroup]>]) -> Result<ArrayRef> {
    let all: Vec<&TimeGroup> = rows.iter().flatten().flat_map(|g| g.iter()).collect();
    let DataType::Struct(fields) = time_group_type() else {
        return Err(QuantError::column(
            col::TIME_GROUPS,
            "the struct type changed",
        ));
    };
    let values = StructArray::try_new(
        fields,
        vec![
            Arc::new(Int32Array::from_iter_values(all.iter().map(|g| g.t_start))),
            Arc::new(Int32Array::from_iter_values(all.iter().map(|g| g.t_end))),
            Arc::new(Float32Array::from_iter_values(all.iter().map(|g| g.scale))),
            Arc::new(Float32Array::from_iter_values(
                all.iter().map(|g| g.zero_point),
            )),
        ],
        None,
    )
    .map_err(|e| QuantError::column(col::TIME_GROUPS, e))?;
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(|r| r.map_or(0, <[TimeGroup]>::len)));
    let nulls = NullBuffer::from(rows.iter().map(Option::is_some).collect::<Vec<_>>());
    let DataType::List(item) = list_of(time_group_type()) else {
        return Err(QuantError::column(
            col::TIME_GROUPS,
            "the list type changed",
        ));
    };
    let list = ListArray::try_new(item, offsets, Arc::new(values), Some(nulls))
        .map_err(|e| QuantError::column(col::TIME_GROUPS, e))?;
    Ok(Arc::new(list))
}

/// `batch` with its `time_groups` column replaced by `rows` (one entry per row).
pub fn with_time_groups(batch: RecordBatch, rows: &[Option<&[TimeGroup]>]) -> Result<RecordBatch> {
    if rows.len() != batch.num_rows() {
        return Err(QuantError::column(
            col::TIME_GROUPS,
            format!(
                "{} entries for a batch of {} rows",
                rows.len(),
                batch.num_rows()
            ),
        ));
    }
    let index = batch
        .schema()
        .index_of(col::TIME_GROUPS)
        .map_err(|e| QuantError::column(col::TIME_GROUPS, e))?;
    let mut columns = batch.columns().to_vec();
    columns[index] = time_groups_array(rows)?;
    RecordBatch::try_new(batch.schema(), columns)
        .map_err(|e| QuantError::column(col::TIME_GROUPS, e))
}

/// The time groups of every row of a result batch (`None` for rows without; all `None` when the batch has no
/// `time_groups` column).
pub fn read_time_groups(batch: &RecordBatch) -> Result<Vec<Option<Vec<TimeGroup>>>> {
    let Some(column) = batch.column_by_name(col::TIME_GROUPS) else {
        return Ok(vec![None; batch.num_rows()]);
    };
    let bad = |found: &DataType| {
        QuantError::column(
            col::TIME_GROUPS,
            format!("type {found}; expected {}", list_of(time_group_type())),
        )
    };
    let list = column
        .as_list_opt::<i32>()
        .ok_or_else(|| bad(column.data_type()))?;
    let values = list
        .values()
        .as_struct_opt()
        .ok_or_else(|| bad(column.data_type()))?;
    let field = |name: &str| {
        values
            .column_by_name(name)
            .ok_or_else(|| bad(column.data_type()))
    };
    let (t_start, t_end) = (field("t_start")?, field("t_end")?);
    let (scale, zero) = (field("scale")?, field("zero_point")?);
    let (Some(t_start), Some(t_end), Some(scale), Some(zero)) = (
        t_start.as_primitive_opt::<Int32Type>(),
        t_end.as_primitive_opt::<Int32Type>(),
        scale.as_primitive_opt::<Float32Type>(),
        zero.as_primitive_opt::<Float32Type>(),
    ) else {
        return Err(bad(column.data_type()));
    };
    let offsets = list.value_offsets();
    Ok((0..list.len())
        .map(|row| {
            list.is_valid(row).then(|| {
                (offsets[row] as usize..offsets[row + 1] as usize)
                    .map(|i| TimeGroup {
                        t_start: t_start.value(i),
                        t_end: t_end.value(i),
                        scale: scale.value(i),
                        zero_point: zero.value(i),
                    })
                    .collect()
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrow::output::{plain_batch, RowEncoding, RowMeta};
    use crate::quantized::Quality;

    #[test]
    fn round_trips_through_a_result_batch() {
        let groups = [
            TimeGroup {
                t_start: 0,
                t_end: 400,
                scale: 0.01,
                zero_point: 12.0,
            },
            TimeGroup {
                t_start: 400,
                t_end: 1000,
                scale: 0.05,
                zero_point: 3.0,
            },
        ];
        let meta = RowMeta {
            name: "x",
            shape: &[2],
            dtype: "f16",
            encoding: RowEncoding::Plain {
                encoding: "f16",
                bits: 16,
            },
            quality: Quality {
                cosine: 1.0,
                rel_mse: 0.0,
            },
        };
        let batch = plain_batch(&meta, vec![0; 4], crate::ScaleDtype::F16).unwrap();
        assert_eq!(read_time_groups(&batch).unwrap(), vec![None]);
        let batch = with_time_groups(batch, &[Some(&groups)]).unwrap();
        assert_eq!(
            read_time_groups(&batch).unwrap(),
            vec![Some(groups.to_vec())]
        );
        assert!(with_time_groups(batch, &[None, None]).is_err());
    }
}
