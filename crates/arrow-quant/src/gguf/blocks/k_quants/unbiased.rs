//! The objective and the gain of the 2- and 3-bit K-quants (Q2_K, Q3_K).
//!
//! A least-squares search shrinks what it reconstructs: with the error orthogonal to the reconstruction `y`,
//! `Σxy = Σy²`, so the gain `Σxy / Σx²` is about one minus the relative error (0.95 at Q2_K, 0.98 at Q3_K),
//! and every layer's output comes out attenuated by as much. Noise of the same energy spreads over directions
//! the network damps; the attenuation does not. On the terrain UNet (`benchmarks/bench_gguf.py`, the eight
//! tensors whose rows fit 256) our plain least-squares search gave 1.55x (Q2_K) and 1.24x (Q3_K) llama.cpp's
//! output error although its weight error was 7-9% lower. So these two types
//! 1. search with an objective that keeps the large weights from being clipped: Q3_K its squared error weighted
//!    by each element's magnitude plus the super-block's RMS (llama.cpp's own weighting of Q4_K / Q5_K; times
//!    the calibration importance when given), Q2_K llama.cpp's own magnitude-weighted absolute error
//!    ([`super::mad`]), and
//! 2. rescale each super-block's float16 scales by `Σwx² / Σwxy` after the search, so that its gain is one.
//!
//! Measured there over sixteen input sets: Q3_K 0.91x llama.cpp's output error (lower on 13); Q2_K 0.96x with the
//! absolute error, where the magnitude-weighted least squares gave 1.22x (1.00x on the first eight sets, which is
//! why it was kept before). The weighted search costs more than half the speed, so this is the GGUF layer
//! policy's rounding of convolution kernels and conditioning projections at these types
//! ([`crate::gguf::Rounding::Unbiased`]), not the default search.

use super::scales::{read_f16, write_f16};
use super::QK_K;
use crate::codec::flat::group::F16_MAX;

/// Lanes of the sums below (wide enough for the compiler to keep them in vector registers).
const LANES: usize = 16;

/// `Σ f(i)` over `0..n` (`n` a multiple of [`LANES`]) in [`LANES`] f32 partial sums, added up last.
#[inline(always)]
fn lane_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    for c in (0..n).step_by(LANES) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(c + l);
        }
    }
    acc.iter().sum()
}

/// Each element's weight `f(x, mean square of its block of `n`)`, times `importance` when given (`x` whole
/// blocks).
#[inline(always)]
fn block_weights(
    x: &[f32],
    importance: Option<&[f32]>,
    w: &mut [f32],
    n: usize,
    f: impl Fn(f32, f32) -> f32,
) {
    for (b, (xs, ws)) in x.chunks_exact(n).zip(w.chunks_exact_mut(n)).enumerate() {
        let mean_sq = lane_sum(n, |i| xs[i] * xs[i]) / n as f32;
        for (o, &v) in ws.iter_mut().zip(xs) {
            *o = f(v, mean_sq);
        }
        if let Some(imp) = importance {
            for (o, i) in ws.iter_mut().zip(&imp[b * n..(b + 1) * n]) {
                *o *= i;
            }
        }
    }
}

/// Each element's weight: `|x| + rms(super-block)`, times `importance` when given (`x` whole super-blocks).
#[inline(always)]
pub(super) fn magnitude_weights(x: &[f32], importance: Option<&[f32]>, w: &mut [f32]) {
    block_weights(x, importance, w, QK_K, |v, ms| v.abs() + ms.sqrt());
}

/// Each element's weight for the plain rounding of Q5_K: `|x| + rms` of its 32-element sub-block (llama.cpp's
/// own weighting of Q4_K / Q5_K), times `importance` when given (`x` whole sub-blocks). On the terrain UNet's
/// convolutions this brought our search from 1.29x llama.cpp's output error to 0.99x (`super::q5_k`).
#[inline(always)]
pub(super) fn sub_block_magnitude_weights(x: &[f32], importance: Option<&[f32]>, w: &mut [f32]) {
    block_weights(x, importance, w, 32, |v, ms| v.abs() + ms.sqrt());
}

/// Each element's weight for the plain rounding of Q4_K: `x² + mean(x²)` of its super-block, times
/// `importance` when given (`x` whole super-blocks). On the terrain UNet's convolutions this put our search
/// below llama.cpp's output error where the unweighted one was above it (`super::q4_k`).
#[inline(always)]
pub(super) fn square_weights(x: &[f32], importance: Option<&[f32]>, w: &mut [f32]) {
    block_weights(x, importance, w, QK_K, |v, ms| v * v + ms);
}

/// Rescales the float16 scale fields at byte offsets `fields` of each block (of `block_bytes`, decoded by
/// `decode`) so that the block's reconstruction `y` has gain `Σwx² / Σwxy = 1` (`w` the importance, or 1),
/// where the rescaled fields stay finite and the gain is positive. Returns the row's quality sums
/// `[Σx², Σ(x - y)², Σy²]` of the final blocks.
#[inline(always)]
pub(super) fn unbias_gains<const F: usize>(
    x: &[f32],
    importance: Option<&[f32]>,
    out: &mut [u8],
    block_bytes: usize,
    fields: [usize; F],
    decode: impl Fn(&[u8], &mut [f32]),
) -> [f64; 3] {
    let mut y = [0f32; QK_K];
    let mut total = [0f64; 3];
    for (b, (xs, blk)) in x
        .chunks_exact(QK_K)
        .zip(out.chunks_exact_mut(block_bytes))
        .enumerate()
    {
        decode(blk, &mut y);
        let (wxx, wxy) = match importance {
            None => (
                lane_sum(QK_K, |i| xs[i] * xs[i]),
                lane_sum(QK_K, |i| xs[i] * y[i]),
            ),
            Some(imp) => {
                let w = &imp[b * QK_K..(b + 1) * QK_K];
                (
                    lane_sum(QK_K, |i| w[i] * xs[i] * xs[i]),
                    lane_sum(QK_K, |i| w[i] * xs[i] * y[i]),
                )
            }
        };
        let gain = wxx / wxy;
        if wxy > 0.0 && gain.is_finite() && gain != 1.0 {
            let scaled = fields.map(|at| read_f16(&blk[at..at + 2]) * gain);
            if scaled.iter().all(|s| s.abs() <= F16_MAX) {
                for (at, s) in fields.into_iter().zip(scaled) {
                    write_f16(s, &mut blk[at..at + 2]);
                }
                decode(blk, &mut y);
            }
        }
        let sums = [
            lane_sum(QK_K, |i| xs[i] * xs[i]),
            lane_sum(QK_K, |i| (xs[i] - y[i]) * (xs[i] - y[i])),
            lane_sum(QK_K, |i| y[i] * y[i]),
        ];
        for (t, s) in total.iter_mut().zip(sums) {
            *t += f64::from(s);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_add_the_super_block_rms_and_follow_importance() {
        let x: Vec<f32> = (0..512).map(|i| if i < 256 { 2.0 } else { -1.0 }).collect();
        let mut w = vec![0.0; 512];
        magnitude_weights(&x, None, &mut w);
        assert_eq!((w[0], w[300]), (4.0, 2.0));
        let imp: Vec<f32> = (0..512).map(|i| i as f32).collect();
        magnitude_weights(&x, Some(&imp), &mut w);
        assert_eq!((w[1], w[300]), (4.0, 600.0));
    }

    #[test]
    fn sub_block_weights_add_each_sub_blocks_rms() {
        let x: Vec<f32> = (0..64).map(|i| if i < 32 { 2.0 } else { -1.0 }).collect();
        let mut w = vec![0.0; 64];
        sub_block_magnitude_weights(&x, None, &mut w);
        assert_eq!((w[0], w[40]), (4.0, 2.0));
        let imp: Vec<f32> = (0..64).map(|i| i as f32).collect();
        sub_block_magnitude_weights(&x, Some(&imp), &mut w);
        assert_eq!((w[1], w[40]), (4.0, 80.0));
    }

    #[test]
    fn square_weights_add_the_super_block_mean_square() {
        let x: Vec<f32> = (0..512).map(|i| if i < 256 { 2.0 } else { -1.0 }).collect();
        let mut w = vec![0.0; 512];
        square_weights(&x, None, &mut w);
        assert_eq!((w[0], w[300]), (8.0, 2.0));
        let imp: Vec<f32> = (0..512).map(|i| i as f32).collect();
        square_weights(&x, Some(&imp), &mut w);
        assert_eq!((w[1], w[300]), (8.0, 600.0));
    }
}
