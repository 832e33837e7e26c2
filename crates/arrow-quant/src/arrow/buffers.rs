//! Small helpers to lay several rows out in one Arrow buffer: offsets from lengths, disjoint mutable slices.

use crate::error::{QuantError, Result};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};

/// Offsets from lengths, as Arrow needs them.
pub(crate) fn offsets<O: arrow_buffer::ArrowNativeType + TryFrom<usize>>(
    lens: &[usize],
    column: &str,
) -> Result<OffsetBuffer<O>> {
    let mut out = Vec::with_capacity(lens.len() + 1);
    let mut total = 0usize;
    out.push(O::usize_as(0));
    for &len in lens {
        total += len;
        out.push(O::try_from(total).map_err(|_| {
            QuantError::column(
                column,
                format!("{total} values overflow the 32-bit list offsets; split the batch"),
            )
        })?);
    }
    Ok(OffsetBuffer::new(ScalarBuffer::from(out)))
}

/// Splits `buf` into consecutive mutable slices of the given lengths.
pub(crate) fn split_mut<'a, T>(mut buf: &'a mut [T], lens: &[usize]) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(lens.len());
    for &len in lens {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(len);
        out.push(head);
        buf = tail;
    }
    out
}
