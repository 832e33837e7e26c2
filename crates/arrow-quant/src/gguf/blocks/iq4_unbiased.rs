//! The plain rounding of IQ4_NL and IQ4_XS ([`crate::gguf::Rounding::Unbiased`]): the type's own search with
//! each element's squared error weighted by `x²` (llama.cpp's own weighting of these types when it has no
//! importance matrix; times the importance when given), then each block's float16 scale `d` rescaled so that the
//! block's gain `Σwx² / Σwxy` is one (as [`super::k_quants`] does for Q2_K / Q3_K).
//!
//! Why: on the terrain UNet's convolutions as a GGUF file stores them (the 49 tensors the layer policy quantizes,
//! flattened to rows of the block; `benchmarks/bench_gguf.py`, sixteen input sets pooled) our unweighted search
//! gave 1.13x (IQ4_NL) and 1.03x (IQ4_XS) llama.cpp's output error at a lower weight error; weighted by `x²` with
//! the gain corrected, below llama.cpp's (the figures are in docs/GGUF_TYPES.md). Weighting by `|x| + rms`
//! (llama.cpp's Q4_K weighting) was worse than unweighted there.

use super::block32::read_f16;
use super::{BlockCodec, OutOfRange};
use crate::codec::flat::group::F16_MAX;
use half::f16;

/// A search codec (`inner`) run with `x²` weights and a gain correction of its float16 scale at byte 0 of each
/// block of `block` elements and `block_bytes` bytes.
pub(super) struct Iq4Unbiased {
    inner: &'static (dyn BlockCodec + 'static),
    block: usize,
    block_bytes: usize,
}

/// IQ4_NL's: blocks of 32 elements in 18 bytes.
pub(super) static IQ4_NL: Iq4Unbiased = Iq4Unbiased {
    inner: &super::iq4::Iq4NlCodec,
    block: 32,
    block_bytes: 18,
};

/// IQ4_XS's: super-blocks of 256 elements in 136 bytes (one `d` for all eight sub-block scales).
pub(super) static IQ4_XS: Iq4Unbiased = Iq4Unbiased {
    inner: &super::iq4::Iq4XsCodec,
    block: 256,
    block_bytes: 136,
};

/// Each element's weight: `x²` (times `importance`), plus a floor of 1e-6 of the row's mean square so that a
/// block of zeros or of tiny values still has weight to fit.
fn squares_with_floor(x: &[f32], importance: Option<&[f32]>) -> Vec<f32> {
    let mean_sq =
        x.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>() / x.len().max(1) as f64;
    let floor = (1e-6 * mean_sq) as f32 + f32::MIN_POSITIVE;
    let mut w: Vec<f32> = x.iter().map(|v| v * v + floor).collect();
    if let Some(imp) = importance {
        for (o, i) in w.iter_mut().zip(imp) {
            *o *= i;
        }
    }
    w
}

impl Iq4Unbiased {
    /// Rescales each block's `d` so that its gain is one, where the rescaled `d` stays within float16 and the gain
    /// is positive and finite.
    fn unbias(&self, x: &[f32], w: &[f32], out: &mut [u8]) {
        let mut y = vec![0f32; self.block];
        for ((xs, ws), blk) in x
            .chunks_exact(self.block)
            .zip(w.chunks_exact(self.block))
            .zip(out.chunks_exact_mut(self.block_bytes))
        {
            self.inner.dequantize_row(blk, &mut y);
            let (mut wxx, mut wxy) = (0f64, 0f64);
            for ((&a, &b), &c) in xs.iter().zip(&y).zip(ws) {
                wxx += f64::from(c) * f64::from(a) * f64::from(a);
                wxy += f64::from(c) * f64::from(a) * f64::from(b);
            }
            let gain = wxx / wxy;
            if !(wxy > 0.0 && gain.is_finite()) {
                continue;
            }
            let d = f64::from(read_f16(blk, 0)) * gain;
            if d.abs() <= f64::from(F16_MAX) {
                blk[0..2].copy_from_slice(&f16::from_f64(d).to_le_bytes());
            }
        }
    }
}

impl BlockCodec for Iq4Unbiased {
    fn quantize_row(
        &self,
        x: &[f32],
        importance: Option<&[f32]>,
        out: &mut [u8],
    ) -> Result<(), OutOfRange> {
        let w = squares_with_floor(x, importance);
        self.inner.quantize_row(x, Some(&w), out)?;
        self.unbias(x, &w, out);
        Ok(())
    }

    fn dequantize_row(&self, blocks: &[u8], out: &mut [f32]) {
        self.inner.dequantize_row(blocks, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * (1.0 + (i % 5) as f32))
            .collect()
    }

    #[test]
    fn every_block_gain_is_one_within_float16() {
        for codec in [&IQ4_NL, &IQ4_XS] {
            let x = row(1024);
            let mut out = vec![0u8; x.len() / codec.block * codec.block_bytes];
            codec.quantize_row(&x, None, &mut out).unwrap();
            let mut y = vec![0f32; x.len()];
            codec.dequantize_row(&out, &mut y);
            let w = squares_with_floor(&x, None);
            for ((xs, ys), ws) in x
                .chunks(codec.block)
                .zip(y.chunks(codec.block))
                .zip(w.chunks(codec.block))
            {
                let wxx: f64 = (0..xs.len())
                    .map(|i| f64::from(ws[i] * xs[i] * xs[i]))
                    .sum();
                let wxy: f64 = (0..xs.len())
                    .map(|i| f64::from(ws[i] * xs[i] * ys[i]))
                    .sum();
                assert!((wxx / wxy - 1.0).abs() < 2e-3, "gain {}", wxx / wxy);
            }
        }
    }

    #[test]
    fn zero_and_tiny_blocks_stay_finite() {
        for codec in [&IQ4_NL, &IQ4_XS] {
            let mut x = vec![0f32; 512];
            x[300] = 1e-30;
            let mut out = vec![0u8; x.len() / codec.block * codec.block_bytes];
            codec.quantize_row(&x, None, &mut out).unwrap();
            let mut y = vec![1f32; x.len()];
            codec.dequantize_row(&out, &mut y);
            assert!(
                y.iter().all(|v| v.is_finite() && v.abs() < 1e-20),
                "{:?}",
                &y[290..310]
            );
        }
    }

    #[test]
    fn importance_multiplies_the_weights() {
        let x = [2.0f32, -1.0, 0.5, 0.0];
        let w = squares_with_floor(&x, Some(&[1.0, 2.0, 0.0, 1.0]));
        assert!(
            (w[0] - 4.0).abs() < 1e-5 && (w[1] - 2.0).abs() < 1e-5 && w[2] == 0.0 && w[3] > 0.0
        );
    }
}
