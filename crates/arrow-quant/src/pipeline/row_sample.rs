//! Evenly spaced whole rows of a large tensor, for the planning pass: the mixed-precision plan needs each layer's
//! relative error and size at every width, and both are per-row quantities (every layout groups within rows or
//! over the flat element order), so a few hundred rows estimate them for a fraction of the cost of quantizing
//! the whole layer three times. Small layers (which carry most of the output error on a real UNet, see
//! docs/DIFFUSION.md) are measured whole.

use crate::checkpoint::TensorValues;
use crate::tensor::{rows_cols, TensorData};
use std::borrow::Cow;

/// Elements a layer may have and still be measured whole; larger ones are sampled down to about this many.
pub(crate) const SAMPLE_ELEMENTS: usize = 1 << 18;

/// Whole rows picked from a tensor, with the shape they form.
pub(crate) struct RowSample {
    /// `[k, rest of the shape...]`.
    pub shape: Vec<usize>,
    /// The sampled rows' elements, in the source dtype.
    pub values: TensorValues<'static>,
    /// Rows of the tensor per sampled row: sizes measured on the sample scale by this.
    pub scale: f64,
}

/// `k` evenly spaced rows of `shape` (the first axis; the middle of each of `k` equal bands), when the tensor has
/// more than `max_elements` elements and more rows than `k`; `None` means measure the whole tensor.
pub(crate) fn sample_rows(
    shape: &[usize],
    data: TensorData<'_>,
    max_elements: usize,
) -> Option<RowSample> {
    let k = sampled_rows(shape, max_elements)?;
    let (rows, cols) = rows_cols(shape);
    let picked = (0..k).map(|i| ((2 * i + 1) * rows) / (2 * k));
    fn gather<T: Copy>(all: &[T], picked: impl Iterator<Item = usize>, cols: usize) -> Vec<T> {
        picked
            .flat_map(|r| all[r * cols..(r + 1) * cols].iter().copied())
            .collect()
    }
    let values = match data {
        TensorData::F32(v) => TensorValues::F32(Cow::Owned(gather(v, picked, cols))),
        TensorData::F16(v) => TensorValues::F16(Cow::Owned(gather(v, picked, cols))),
        TensorData::BF16(v) => TensorValues::BF16(Cow::Owned(gather(v, picked, cols))),
    };
    let mut sample_shape = shape.to_vec();
    sample_shape[0] = k;
    Some(RowSample {
        shape: sample_shape,
        values,
        scale: rows as f64 / k as f64,
    })
}

/// The rows [`sample_rows`] picks from a tensor of `shape`, `None` when it measures the whole tensor.
fn sampled_rows(shape: &[usize], max_elements: usize) -> Option<usize> {
    let (rows, cols) = rows_cols(shape);
    if shape.len() < 2 || rows * cols <= max_elements {
        return None;
    }
    let k = (max_elements / cols.max(1)).max(1);
    (k < rows).then_some(k)
}

/// Elements the planning pass reads of a tensor of `shape`: its row sample, or the whole tensor.
pub(crate) fn sampled_len(shape: &[usize], max_elements: usize) -> usize {
    let (rows, cols) = rows_cols(shape);
    sampled_rows(shape, max_elements).unwrap_or(rows) * cols
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_tensors_and_single_rows_are_measured_whole() {
        let v = vec![0f32; 64];
        assert!(sample_rows(&[8, 8], TensorData::F32(&v), 64).is_none());
        assert!(sample_rows(&[1, 64], TensorData::F32(&v), 16).is_none());
        assert!(sample_rows(&[64], TensorData::F32(&v), 16).is_none());
        assert_eq!(sampled_len(&[8, 8], 64), 64);
        assert_eq!(sampled_len(&[10, 2, 3, 3], 40), 36);
    }

    #[test]
    fn picks_whole_evenly_spaced_rows_of_a_conv_kernel() {
        // 10 output channels of [2, 3, 3]: 18 elements per row, room for 2 rows in 40 elements.
        let v: Vec<f32> = (0..180).map(|i| i as f32).collect();
        let s = sample_rows(&[10, 2, 3, 3], TensorData::F32(&v), 40).expect("sampled");
        assert_eq!(s.shape, vec![2, 2, 3, 3]);
        assert_eq!(s.scale, 5.0);
        let TensorValues::F32(got) = &s.values else {
            panic!("dtype kept")
        };
        // Rows 2 and 7 (the middles of the bands 0..5 and 5..10).
        let want: Vec<f32> = (36..54).chain(126..144).map(|i| i as f32).collect();
        assert_eq!(got.as_ref(), want.as_slice());
    }
}
