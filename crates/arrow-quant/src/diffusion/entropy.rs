//! Weight entropy: a per-layer sensitivity signal (what the earlier design called "thermodynamic").
//!
//! The Shannon entropy, in bits, of the tensor's values binned into [`BINS`] equal-width bins between its
//! minimum and maximum: `H = -sum_b p_b log2 p_b`. It is 0 for a constant tensor and at most `log2(BINS)` = 8
//! for values spread evenly over their range; a heavy-tailed tensor (most values near zero, a few outliers)
//! scores low, because its outliers stretch the range and its bulk falls into a few bins. It is reported per
//! layer; the mixed-precision allocation does not use it (see `benchmarks/bench_diffusion.py` for the measurement
//! behind that choice).

use crate::tensor::TensorData;
use rayon::prelude::*;

/// Number of histogram bins.
pub const BINS: usize = 256;

const CHUNK: usize = 1 << 16;

fn values<'a>(
    data: &'a TensorData<'a>,
    range: std::ops::Range<usize>,
) -> Box<dyn Iterator<Item = f32> + 'a> {
    match data {
        TensorData::F32(x) => Box::new(x[range].iter().copied()),
        TensorData::F16(x) => Box::new(x[range].iter().map(|v| v.to_f32())),
        TensorData::BF16(x) => Box::new(x[range].iter().map(|v| v.to_f32())),
    }
}

/// The entropy in bits of `data`'s values over [`BINS`] bins (0.0 for an empty or constant tensor). Non-finite
/// values are skipped.
pub fn weight_entropy(data: &TensorData<'_>) -> f64 {
    let n = data.len();
    let chunks: Vec<std::ops::Range<usize>> = (0..n)
        .step_by(CHUNK)
        .map(|s| s..(s + CHUNK).min(n))
        .collect();
    let (lo, hi) = chunks
        .par_iter()
        .map(|r| {
            values(data, r.clone())
                .filter(|v| v.is_finite())
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                })
        })
        .reduce(
            || (f32::INFINITY, f32::NEG_INFINITY),
            |a, b| (a.0.min(b.0), a.1.max(b.1)),
        );
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return 0.0;
    }
    let (lo, width) = (f64::from(lo), f64::from(hi) - f64::from(lo));
    let to_bin = |v: f32| (((f64::from(v) - lo) / width * BINS as f64) as usize).min(BINS - 1);
    let counts = chunks
        .par_iter()
        .map(|r| {
            let mut c = vec![0u64; BINS];
            values(data, r.clone())
                .filter(|v| v.is_finite())
                .for_each(|v| c[to_bin(v)] += 1);
            c
        })
        .reduce(
            || vec![0u64; BINS],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            },
        );
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
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
        let w: Vec<f32> = (0..100_000)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let flat = weight_entropy(&TensorData::F32(&w));
        let mut spiky = w.clone();
        spiky[17] = 400.0;
        assert!(weight_entropy(&TensorData::F32(&spiky)) < flat / 4.0);
        let halves: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
        assert!((weight_entropy(&TensorData::F16(&halves)) - flat).abs() < 0.05);
    }
}
