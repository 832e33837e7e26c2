//! llama.cpp's reference rounding of the block-32 types (`quantize_row_q4_0_ref` ... `quantize_row_q8_0_ref` of
//! ggml-quants.c; byte for byte what gguf-py's numpy quantizers write): each block's scale from its element of
//! largest magnitude (Q4_0, Q5_0, Q8_0) or its range (Q4_1, Q5_1), each code the value rounded on that grid, no
//! search and no importance.
//!
//! The GGUF layer policy gives it to convolution kernels and conditioning projections (`pipeline::policy`), where
//! a search's lower weight error raised the terrain UNet's output error (docs/GGUF_TYPES.md), and
//! `quantize(..., encoding=T, method="rtn")` asks for it. Decoding is the type's own codec's.

use super::{block_codec, BlockCodec, OutOfRange};
use crate::gguf::GgmlType;
use half::f16;

/// Elements of a block.
const QK: usize = 32;

/// The reference rounding of one block-32 type.
struct Reference {
    ty: GgmlType,
}

static Q8_0: Reference = Reference { ty: GgmlType::Q8_0 };
static Q4_0: Reference = Reference { ty: GgmlType::Q4_0 };
static Q4_1: Reference = Reference { ty: GgmlType::Q4_1 };
static Q5_0: Reference = Reference { ty: GgmlType::Q5_0 };
static Q5_1: Reference = Reference { ty: GgmlType::Q5_1 };

/// The reference-rounding codec of `ty`, `None` for the types that have none (the K-quants and IQ4 types, whose
/// llama.cpp quantizers are searches themselves).
pub(crate) fn reference_codec(ty: GgmlType) -> Option<&'static dyn BlockCodec> {
    match ty {
        GgmlType::Q8_0 => Some(&Q8_0),
        GgmlType::Q4_0 => Some(&Q4_0),
        GgmlType::Q4_1 => Some(&Q4_1),
        GgmlType::Q5_0 => Some(&Q5_0),
        GgmlType::Q5_1 => Some(&Q5_1),
        _ => None,
    }
}

/// `v` as a float16 field, or `OutOfRange` for block `block` when it is not finite there.
fn f16_field(v: f32, block: usize) -> Result<[u8; 2], OutOfRange> {
    let h = f16::from_f32(v);
    if h.is_finite() {
        Ok(h.to_le_bytes())
    } else {
        Err(OutOfRange { block })
    }
}

/// ggml's `d ? 1.0f / d : 0.0f`.
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// The element of largest magnitude, signed (the first of equal ones).
fn signed_extreme(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// The smallest and largest element.
fn range(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// Writes 32 codes into a block's payload after its float16 fields: 16 bytes of nibbles (elements `j` and
/// `16 + j` in byte `j`), preceded, when the payload is 20 bytes (Q5_0, Q5_1), by the fifth bits as the 32-bit
/// little-endian `qh` (bit `j` for element `j`).
fn pack(codes: &[u8; QK], payload: &mut [u8]) {
    let (qh, qs) = payload.split_at_mut(payload.len() - 16);
    for j in 0..16 {
        qs[j] = (codes[j] & 0x0F) | ((codes[16 + j] & 0x0F) << 4);
    }
    if !qh.is_empty() {
        let bits = codes
            .iter()
            .enumerate()
            .fold(0u32, |h, (j, &c)| h | (u32::from(c >> 4) << j));
        qh.copy_from_slice(&bits.to_le_bytes());
    }
}

impl Reference {
    /// One block of 32 values into its bytes.
    fn block(&self, x: &[f32], out: &mut [u8], b: usize) -> Result<(), OutOfRange> {
        let mut codes = [0u8; QK];
        match self.ty {
            GgmlType::Q8_0 => {
                let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = inverse(d);
                out[..2].copy_from_slice(&f16_field(d, b)?);
                for (o, &v) in out[2..].iter_mut().zip(x) {
                    *o = (v * id).round() as i8 as u8;
                }
            }
            GgmlType::Q4_0 | GgmlType::Q5_0 => {
                let (n, top) = if self.ty == GgmlType::Q4_0 {
                    (8.0f32, 15)
                } else {
                    (16.0, 31)
                };
                let d = signed_extreme(x) / -n;
                let id = inverse(d);
                out[..2].copy_from_slice(&f16_field(d, b)?);
                for (c, &v) in codes.iter_mut().zip(x) {
                    *c = ((v * id + (n + 0.5)) as u8).min(top);
                }
                pack(&codes, &mut out[2..]);
            }
            GgmlType::Q4_1 | GgmlType::Q5_1 => {
                let top = if self.ty == GgmlType::Q4_1 { 15 } else { 31 };
                let (lo, hi) = range(x);
                let d = (hi - lo) / f32::from(top);
                let id = inverse(d);
                out[..2].copy_from_slice(&f16_field(d, b)?);
                out[2..4].copy_from_slice(&f16_field(lo, b)?);
                for (c, &v) in codes.iter_mut().zip(x) {
                    *c = (((v - lo) * id + 0.5) as u8).min(top);
                }
                pack(&codes, &mut out[4..]);
            }
            _ => unreachable!("reference_codec gives only the block-32 types"),
        }
        Ok(())
    }

    /// The type's own codec, for decoding.
    fn decoder(&self) -> &'static dyn BlockCodec {
        block_codec(self.ty).expect("every block-32 type has a codec")
    }
}

impl BlockCodec for Reference {
    fn quantize_row(
        &self,
        x: &[f32],
        _importance: Option<&[f32]>,
        out: &mut [u8],
    ) -> Result<(), OutOfRange> {
        let bytes = out.len() / (x.len() / QK).max(1);
        for (b, (xb, ob)) in x
            .chunks_exact(QK)
            .zip(out.chunks_exact_mut(bytes))
            .enumerate()
        {
            self.block(xb, ob, b)?;
        }
        Ok(())
    }

    fn dequantize_row(&self, blocks: &[u8], out: &mut [f32]) {
        self.decoder().dequantize_row(blocks, out);
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec_tests::sample_row;
    use super::*;

    /// Every reference block decodes within a step of its values (half a step where rounding, a step where the
    /// code range clamps the side opposite the extreme), plus the float16 fields' rounding.
    #[test]
    fn codes_are_the_rounded_values_on_the_scale_grid() {
        let x = sample_row(32 * 7, 5, 3.0);
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
        ] {
            let codec = reference_codec(ty).unwrap();
            let mut out = vec![0u8; ty.row_bytes(x.len()).unwrap()];
            codec.quantize_row(&x, None, &mut out).unwrap();
            let mut y = vec![0f32; x.len()];
            codec.dequantize_row(&out, &mut y);
            let bytes = out.len() / 7;
            for (b, (xb, yb)) in x.chunks(QK).zip(y.chunks(QK)).enumerate() {
                let d = f16::from_le_bytes([out[b * bytes], out[b * bytes + 1]]).to_f32();
                for (&v, &w) in xb.iter().zip(yb) {
                    let slack = d.abs() * (1.0 + 32.0 * 1e-3);
                    assert!(
                        (v - w).abs() <= slack,
                        "{ty:?} block {b}: {v} -> {w} (d {d})"
                    );
                }
            }
        }
    }

    #[test]
    fn a_zero_block_is_zero_and_a_scale_beyond_float16_is_out_of_range() {
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
        ] {
            let codec = reference_codec(ty).unwrap();
            let mut out = vec![0u8; ty.row_bytes(64).unwrap()];
            let mut x = vec![0f32; 64];
            codec.quantize_row(&x, None, &mut out).unwrap();
            let mut y = vec![1f32; 64];
            codec.dequantize_row(&out, &mut y);
            assert!(y.iter().all(|&v| v == 0.0), "{ty:?}");
            x[40] = 1e8;
            assert_eq!(
                codec.quantize_row(&x, None, &mut out),
                Err(OutOfRange { block: 1 })
            );
        }
        assert!(reference_codec(GgmlType::Q4_K).is_none());
    }
}
