//! F32, F16 and BF16: elements stored one by one, little-endian. F16 rounds to nearest even (as numpy's
//! `astype(float16)`), BF16 rounds to nearest even with NaN kept quiet (as gguf-py's `__compute_fp32_to_bf16`).

use super::{BlockCodec, OutOfRange};
use crate::gguf::GgmlType;
use half::{bf16, f16};

struct F32Codec;
struct F16Codec;
struct Bf16Codec;

/// The codec of a float type.
pub(super) fn codec(ty: GgmlType) -> &'static dyn BlockCodec {
    match ty {
        GgmlType::F16 => &F16Codec,
        GgmlType::BF16 => &Bf16Codec,
        _ => &F32Codec,
    }
}

impl BlockCodec for F32Codec {
    fn quantize_row(&self, x: &[f32], _: Option<&[f32]>, out: &mut [u8]) -> Result<(), OutOfRange> {
        for (v, o) in x.iter().zip(out.chunks_exact_mut(4)) {
            o.copy_from_slice(&v.to_le_bytes());
        }
        Ok(())
    }

    fn dequantize_row(&self, blocks: &[u8], out: &mut [f32]) {
        for (b, o) in blocks.chunks_exact(4).zip(out) {
            *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
}

impl BlockCodec for F16Codec {
    fn quantize_row(&self, x: &[f32], _: Option<&[f32]>, out: &mut [u8]) -> Result<(), OutOfRange> {
        for (i, (v, o)) in x.iter().zip(out.chunks_exact_mut(2)).enumerate() {
            let h = f16::from_f32(*v);
            if h.is_infinite() {
                return Err(OutOfRange { block: i });
            }
            o.copy_from_slice(&h.to_le_bytes());
        }
        Ok(())
    }

    fn dequantize_row(&self, blocks: &[u8], out: &mut [f32]) {
        for (b, o) in blocks.chunks_exact(2).zip(out) {
            *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
        }
    }
}

impl BlockCodec for Bf16Codec {
    fn quantize_row(&self, x: &[f32], _: Option<&[f32]>, out: &mut [u8]) -> Result<(), OutOfRange> {
        for (i, (v, o)) in x.iter().zip(out.chunks_exact_mut(2)).enumerate() {
            let h = bf16::from_f32(*v);
            if h.is_infinite() {
                return Err(OutOfRange { block: i });
            }
            o.copy_from_slice(&h.to_le_bytes());
        }
        Ok(())
    }

    fn dequantize_row(&self, blocks: &[u8], out: &mut [f32]) {
        for (b, o) in blocks.chunks_exact(2).zip(out) {
            *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::round_trip;
    use super::*;

    #[test]
    fn float_types_round_to_nearest_even() {
        let x = [1.0f32, -2.5, 1.0 + 1.0 / 2048.0, 3.0e-8, 65504.0];
        assert_eq!(round_trip(GgmlType::F32, &x, 5, None), x);
        let f16_back = round_trip(GgmlType::F16, &x, 5, None);
        // 1 + 2^-11 is halfway between two float16 values; ties go to the even one (1.0)
        assert_eq!(f16_back[2], 1.0);
        assert_eq!(f16_back[4], 65504.0);
        let bf = round_trip(
            GgmlType::BF16,
            &[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0],
            2,
            None,
        );
        assert_eq!(bf, [1.0, 1.0 + 4.0 / 256.0]);
    }

    #[test]
    fn float16_overflow_is_out_of_range() {
        let mut out = [0u8; 4];
        let err = codec(GgmlType::F16).quantize_row(&[1.0, 1.0e6], None, &mut out);
        assert_eq!(err, Err(OutOfRange { block: 1 }));
    }
}
