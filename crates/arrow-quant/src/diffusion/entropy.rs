//! Weight entropy: a per-layer sensitivity signal (what the earlier design called "thermodynamic").
//!
//! The Shannon entropy, in bits, of the tensor's values binned into [`BINS`] equal-width bins between its
//! minimum and maximum: `H = -sum_b p_b log2 p_b`. It is 0 for a constant tensor and at most `log2(BINS)` = 8
//! for values spread evenly over their range; a heavy-tailed tensor (most values near zero, a few outliers)
//! scores low, because its outliers stretch the range and its bulk falls into a few bins. Tensors of more than
//! [`MAX_SAMPLE`] elements are sampled at an even stride. It is reported per
//! layer; the mixed-precision allocation does not use it (see `benchmarks/bench_diffusion.py` for the measurement
//! behind that choice).

use crate::tensor::TensorData;

/// Number of histogram bins.
pub const BINS: usize = 256;

/// Most elements read: larger tensors are sampled at an even stride, which keeps the figure cheap next to
/// quantization (well under a millisecond per layer; the pipeline computes it on its critical path) and
/// deterministic: 256 samples per bin on average.
pub const MAX_SAMPLE: usize = 1 << 16;

/// The sampling stride of a tensor of `len` elements: at most [`MAX_SAMPLE`] samples.
pub(crate) fn sample_stride(len: usize) -> usize {
    len.div_ceil(MAX_SAMPLE).max(1)
}

/// Appends the samples of `data` whose flat index lies in `range` (every `stride`-th element of the tensor) to
/// `out`: over consecutive ranges, the samples of the whole tensor in order.
pub(crate) fn sample_range(
    data: &TensorData<'_>,
    stride: usize,
    range: std::ops::Range<usize>,
    out: &mut Vec<f32>,
) {
    let first = range.start.div_ceil(stride) * stride;
    let end = range.end.min(data.len());
    if first >= end {
        return;
    }
    match data {
        TensorData::F32(x) => out.extend(x[first..end].iter().step_by(stride).copied()),
        TensorData::F16(x) => out.extend(x[first..end].iter().step_by(stride).map(|v| v.to_f32())),
        TensorData::BF16(x) => out.extend(x[first..end].iter().step_by(stride).map(|v| v.to_f32())),
    }
}

/// The entropy in bits of `data`'s values over [`BINS`] bins (0.0 for an empty or constant tensor), from at most
/// [`MAX_SAMPLE`] evenly strided elements. Non-finite values are skipped.
pub fn weight_entropy(data: &TensorData<'_>) -> f64 {
    let mut values = Vec::new();
    sample_range(data, sample_stride(data.len()), 0..data.len(), &mut values);
    entropy_of_samples(values)
}

/// [`weight_entropy`] of the samples it takes (see [`sample_range`]).
pub(crate) fn entropy_of_samples(values: Vec<f32>) -> f64 {
    let values: Vec<f32> = values.into_iter().filter(|v| v.is_finite()).collect();
    let (lo, hi) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return 0.0;
    }
    let (lo, width) = (f64::from(lo), f64::from(hi) - f64::from(lo));
    let mut counts = [0u64; BINS];
    for &v in &values {
        let bin = ((f64::from(v) - lo) / width * BINS as f64) as usize;
        counts[bin.min(BINS - 1)] += 1;
    }
    let total = values.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_entropies() {
        assert_eq!(weight_entropy(&TensorData::F32(&[])), 0.0);
        assert_eq!(weight_entropy(&TensorData::F32(&[3.0; 10])), 0.0);
        // Two values, equally often: the extremes of the range, one bit.
        assert!((weight_entropy(&TensorData::F32(&[0.0, 1.0, 0.0, 1.0])) - 1.0).abs() < 1e-12);
        // One value per bin: log2(256) = 8 bits.
        let even: Vec<f32> = (0..BINS).map(|i| i as f32 + 0.5).collect();
        assert!((weight_entropy(&TensorData::F32(&even)) - 8.0).abs() < 1e-12);
        // p = (3/4, 1/4): 0.811278 bits.
        let h = weight_entropy(&TensorData::F32(&[0.0, 0.0, 0.0, 1.0]));
        assert!((h - 0.811_278_124_459_132_8).abs() < 1e-12, "{h}");
    }

    #[test]
    fn outliers_lower_the_entropy_and_dtypes_agree() {
        let w: Vec<f32> = (0..60_000)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let flat = weight_entropy(&TensorData::F32(&w));
        let mut spiky = w.clone();
        spiky[17] = 400.0;
        assert!(weight_entropy(&TensorData::F32(&spiky)) < flat / 4.0);
        let halves: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
        assert!((weight_entropy(&TensorData::F16(&halves)) - flat).abs() < 0.05);
    }

    #[test]
    fn samples_taken_range_by_range_are_the_whole_tensor_samples() {
        let w: Vec<f32> = (0..3 * MAX_SAMPLE + 17).map(|i| (i % 97) as f32).collect();
        let data = TensorData::F32(&w);
        let stride = sample_stride(w.len());
        let mut pieces = Vec::new();
        for start in (0..w.len()).step_by(1000) {
            sample_range(
                &data,
                stride,
                start..(start + 1000).min(w.len()),
                &mut pieces,
            );
        }
        let whole: Vec<f32> = w.iter().step_by(stride).copied().collect();
        assert_eq!(pieces, whole);
        assert_eq!(entropy_of_samples(pieces), weight_entropy(&data));
    }

    #[test]
    fn large_tensors_are_sampled_evenly() {
        // 4 x MAX_SAMPLE values cycling through 255 evenly spread levels: the strided sample still sees every level.
        let w: Vec<f32> = (0..4 * MAX_SAMPLE)
            .map(|i| (i % 255) as f32 + 0.5)
            .collect();
        let h = weight_entropy(&TensorData::F32(&w));
        assert!((h - 255f64.log2()).abs() < 0.01, "{h}");
    }
}
