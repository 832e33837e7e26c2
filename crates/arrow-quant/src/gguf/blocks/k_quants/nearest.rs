//! Q6_K by round-to-nearest on scales from the extremes, no search: each 16-element sub-block's step maps its
//! element of largest magnitude to -32 (the longer end of the code range), the float16 super-block scale maps
//! the largest step to the scale field -128, each field is its step rounded on that grid, each code its value
//! rounded on its quantized step.
//!
//! The GGUF layer policy gives it to convolution kernels and conditioning projections (`pipeline::policy`): on
//! the terrain UNet's eight tensors whose rows fit 256, eight input sets, our search's lower weight error came
//! with 1.03x llama.cpp's output error (higher on four of the eight sets), this rounding's higher one (no
//! element is clipped) with 0.81x, lower on all eight (docs/GGUF_TYPES.md). Decoding is [`super::q6_k`]'s.

use super::q6_k::Q6K;
use super::sym::{SymBlock, SymLayout};
use super::QK_K;
use crate::codec::flat::group::F16_MAX;
use crate::gguf::blocks::{BlockCodec, OutOfRange};
use half::f16;

/// Elements of a sub-block.
const SUB: usize = 16;

/// Q6_K's round-to-nearest codec.
pub(super) struct Q6KNearest;

/// The element of largest magnitude, signed (the first of equal ones).
fn signed_extreme(x: &[f32]) -> f32 {
    x.iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

/// `v / d` rounded and clamped to `lo..=hi`, 0 for a zero `d`.
fn round_on(v: f32, d: f32, lo: f32, hi: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        (v / d).round().clamp(lo, hi)
    }
}

/// One super-block's scale, fields and codes.
fn super_block(x: &[f32], b: usize) -> Result<SymBlock, OutOfRange> {
    let mut steps = [0f32; QK_K / SUB];
    for (s, xs) in steps.iter_mut().zip(x.chunks_exact(SUB)) {
        *s = signed_extreme(xs) / -32.0;
    }
    let d = f16::from_f32(signed_extreme(&steps) / -128.0).to_f32();
    if !d.is_finite() || d.abs() > F16_MAX {
        return Err(OutOfRange { block: b });
    }
    let mut blk = SymBlock {
        d,
        sc: [0; 16],
        codes: [0; QK_K],
    };
    for (j, (s, xs)) in steps.iter().zip(x.chunks_exact(SUB)).enumerate() {
        let field = round_on(*s, d, -128.0, 127.0);
        blk.sc[j] = field as i8;
        let step = d * field;
        for (c, &v) in blk.codes[j * SUB..(j + 1) * SUB].iter_mut().zip(xs) {
            *c = (round_on(v, step, -32.0, 31.0) + 32.0) as u8;
        }
    }
    Ok(blk)
}

impl BlockCodec for Q6KNearest {
    fn quantize_row(
        &self,
        x: &[f32],
        _importance: Option<&[f32]>,
        out: &mut [u8],
    ) -> Result<(), OutOfRange> {
        for (b, (xs, o)) in x
            .chunks_exact(QK_K)
            .zip(out.chunks_exact_mut(Q6K::BYTES))
            .enumerate()
        {
            Q6K::write_block(&super_block(xs, b)?, o);
        }
        Ok(())
    }

    fn dequantize_row(&self, blocks: &[u8], out: &mut [f32]) {
        super::q6_k::CODEC.dequantize_row(blocks, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::blocks::codec_tests::sample_row;

    #[test]
    fn every_element_is_within_half_a_step_and_the_extremes_are_kept() {
        let x = sample_row(QK_K * 3, 9, 3.0);
        let mut out = vec![0u8; Q6K::BYTES * 3];
        Q6KNearest.quantize_row(&x, None, &mut out).unwrap();
        let mut y = vec![0f32; x.len()];
        Q6KNearest.dequantize_row(&out, &mut y);
        for (s, (xs, ys)) in x.chunks(SUB).zip(y.chunks(SUB)).enumerate() {
            let (b, j) = (s / 16, s % 16);
            let d = f16::from_le_bytes([out[b * 210 + 208], out[b * 210 + 209]]).to_f32();
            let step = (d * f32::from(out[b * 210 + 192 + j] as i8)).abs();
            let m = signed_extreme(xs);
            // half a step where rounding, a step where +32 clamps to 31; the field rounding moves the step
            // by at most half of d, so a clamped extreme by 16 d
            let slack = step + 16.0 * d.abs() + 1e-6;
            for (&v, &w) in xs.iter().zip(ys) {
                assert!((v - w).abs() <= slack, "sub-block {s}: {v} -> {w}");
            }
            let i = xs.iter().position(|&v| v == m).unwrap();
            assert!(
                (ys[i] - m).abs() <= 16.0 * d.abs() + 1e-6,
                "extreme {m} -> {}",
                ys[i]
            );
        }
    }
}
