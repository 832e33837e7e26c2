//! How a tensor is cut into groups and into chunks of rows for parallel work.
//!
//! The tensor is viewed as `[rows, cols]` (see [`crate::tensor::rows_cols`]); each row is split into groups of
//! `group_len` elements, the last one shorter when `cols` is not a multiple. Scales are stored row by row,
//! `groups_per_row` per row. Packed codes run over the flat element order, so a chunk of rows starts on a byte
//! boundary when its first row index is a multiple of 4.

use crate::codec::driver::CHUNK_ELEMENTS;
use crate::config::{BitWidth, GroupSize};
use crate::tensor::rows_cols;

/// Group geometry of one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLayout {
    /// Rows of the (possibly regrouped) 2-D view.
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
    /// Elements per group (the last group of a row may be shorter).
    pub group_len: usize,
    /// Groups per row: `ceil(cols / group_len)`.
    pub groups_per_row: usize,
}

impl GroupLayout {
    /// The layout for `shape` grouped by `group_size`.
    ///
    /// When the row length is a multiple of the group length, every group is a full group of the flat element
    /// order, so the tensor is regrouped as `[n / group_len, group_len]`: the scales are identical and even a
    /// single long row can be split across threads.
    pub fn new(shape: &[usize], group_size: GroupSize) -> Self {
        let (rows, cols) = rows_cols(shape);
        let group_len = group_size.len_for_row(cols);
        if cols > 0 && cols % group_len == 0 {
            Self {
                rows: rows * (cols / group_len),
                cols: group_len,
                group_len,
                groups_per_row: 1,
            }
        } else {
            Self {
                rows,
                cols,
                group_len,
                groups_per_row: cols.div_ceil(group_len),
            }
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// True for a tensor with no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of groups, i.e. of scales (and zero points).
    pub fn num_groups(&self) -> usize {
        self.rows * self.groups_per_row
    }

    /// Rows per parallel chunk: a multiple of 4 (so every chunk starts on a byte boundary) near `CHUNK_ELEMENTS`.
    pub fn chunk_rows(&self) -> usize {
        let rows = (CHUNK_ELEMENTS / self.cols.max(1)).max(1);
        rows.div_ceil(4) * 4
    }

    /// Packed bytes of one full chunk for `bits` (exact, since `chunk_rows` is a multiple of 4).
    pub fn chunk_bytes(&self, bits: BitWidth) -> usize {
        self.chunk_rows() * self.cols * bits.bits() as usize / 8
    }

    /// The `(start, len)` of each group in a row.
    pub fn groups_in_row(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.groups_per_row).map(move |j| {
            let start = j * self.group_len;
            (start, self.group_len.min(self.cols - start))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regroups_when_rows_divide() {
        let l = GroupLayout::new(&[4096, 4096], GroupSize::Elements(64));
        assert_eq!((l.rows, l.cols, l.groups_per_row), (4096 * 64, 64, 1));
        assert_eq!(l.num_groups(), 4096 * 64);
    }

    #[test]
    fn partial_last_group() {
        let l = GroupLayout::new(&[3, 100], GroupSize::Elements(32));
        assert_eq!((l.rows, l.cols, l.groups_per_row), (3, 100, 4));
        let groups: Vec<_> = l.groups_in_row().collect();
        assert_eq!(groups, vec![(0, 32), (32, 32), (64, 32), (96, 4)]);
    }

    #[test]
    fn per_channel_and_conv_kernels() {
        let l = GroupLayout::new(&[8, 3, 3, 3], GroupSize::PerChannel);
        assert_eq!((l.rows, l.cols, l.groups_per_row), (8, 27, 1));
        assert_eq!(l.chunk_rows() % 4, 0);
    }
}
