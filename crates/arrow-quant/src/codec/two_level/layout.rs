//! Where the super-blocks of a two-level tensor lie, and how they are cut into chunks of parallel work (each
//! chunk starts on a byte boundary of the packed codes).

use super::format::{TwoLevelSpec, SUPER_BLOCK};
use crate::codec::driver::CHUNK_ELEMENTS;
use crate::config::BitWidth;

/// The super-blocks of a tensor: `rows` rows of `cols` elements, `supers_per_row` per row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SuperLayout {
    pub spec: TwoLevelSpec,
    pub rows: usize,
    pub cols: usize,
    pub supers_per_row: usize,
    /// Columns of the tensor's own 2-D view (for importance weights).
    pub view_cols: usize,
}

impl SuperLayout {
    pub(crate) fn new(shape: &[usize], bits: BitWidth) -> Self {
        let spec = TwoLevelSpec::for_bits(bits);
        let (view_rows, view_cols) = crate::tensor::rows_cols(shape);
        let (rows, cols) = spec.rows_cols(view_rows, view_cols);
        Self {
            spec,
            rows,
            cols,
            supers_per_row: spec.supers_per_row(cols),
            view_cols,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub(crate) fn num_supers(&self) -> usize {
        self.rows * self.supers_per_row
    }

    /// Super-blocks per parallel chunk: whole groups of 4 rows (so chunks start on a byte), or for a single row
    /// a run of super-blocks near `CHUNK_ELEMENTS`.
    pub(crate) fn chunk_supers(&self) -> usize {
        if self.rows <= 1 {
            (CHUNK_ELEMENTS / SUPER_BLOCK).max(1)
        } else {
            let rows = (CHUNK_ELEMENTS / self.cols.max(1)).max(1).div_ceil(4) * 4;
            rows * self.supers_per_row
        }
    }

    /// Elements of every chunk but the last.
    pub(crate) fn chunk_elements(&self) -> usize {
        if self.rows <= 1 {
            self.chunk_supers() * SUPER_BLOCK
        } else {
            self.chunk_supers() / self.supers_per_row * self.cols
        }
    }

    /// Flat start and length of super-block `q`.
    pub(crate) fn super_range(&self, q: usize) -> (usize, usize) {
        let row = q / self.supers_per_row;
        let c0 = (q % self.supers_per_row) * SUPER_BLOCK;
        (row * self.cols + c0, SUPER_BLOCK.min(self.cols - c0))
    }

    /// Flat element range of chunk `ci`.
    pub(crate) fn chunk_range(&self, ci: usize) -> (usize, usize) {
        let first = ci * self.chunk_supers();
        let last = (first + self.chunk_supers()).min(self.num_supers()) - 1;
        let (start, _) = self.super_range(first);
        let (ls, ll) = self.super_range(last);
        (start, ls + ll - start)
    }
}
