//! Block codecs of the ggml types: one per type, its bytes exactly llama.cpp's block layout (`ggml-common.h`),
//! its decoding exactly ggml's `to_float` (so gguf-py's dequantizers give the same values bit for bit), its
//! parameter search our own.
//!
//! A codec works on one ggml row at a time (the last axis of the tensor, a whole number of blocks); the callers
//! run rows in parallel. [`block_codec`] is the registry.

mod affine;
mod block32;
#[cfg(test)]
mod codec_tests;
#[cfg(test)]
mod fixtures;
mod float;
mod iq4;
mod iq4_unbiased;
mod k_quants;
mod lanes;
mod reference;
mod sums;
mod symmetric;

use crate::codec::driver::QualitySums;
use crate::gguf::GgmlType;

/// A block whose parameters would not be finite in their storage type (a float16 scale beyond 65504): the caller
/// names the tensor and moves on to a wider type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutOfRange {
    /// Index of the block within the row.
    pub block: usize,
}

/// What a ggml type's codec does.
pub(crate) trait BlockCodec: Sync {
    /// Quantizes one ggml row: `x` holds finite values, its length a multiple of the type's block length; `out`
    /// is exactly [`GgmlType::row_bytes`] long. `importance`, when given, has one non-negative weight per element
    /// of the row, and the search minimises the importance-weighted squared error.
    fn quantize_row(
        &self,
        x: &[f32],
        importance: Option<&[f32]>,
        out: &mut [u8],
    ) -> Result<(), OutOfRange>;

    /// Decodes the blocks of one row (`blocks.len()` a whole number of blocks, `out` their elements) exactly as
    /// ggml's `to_float` does.
    fn dequantize_row(&self, blocks: &[u8], out: &mut [f32]);

    /// True when [`quantize_row`](Self::quantize_row) may be given non-finite values (its output then garbage, but
    /// it never panics), so that the caller can check the row after encoding it, when the row is in cache, and
    /// the encoder's reads overlap the fetch from memory. Such a codec's quality sums must hold `xx` as `Σx²`
    /// of the row's own elements (a NaN or infinity among them makes it non-finite): the caller scans the row
    /// only when that `xx` is not finite.
    fn tolerates_non_finite(&self) -> bool {
        false
    }

    /// [`quantize_row`](Self::quantize_row), returning the quality sums of `x` against the row as
    /// [`dequantize_row`](Self::dequantize_row) decodes it; `scratch` is a row of f32 to decode into. Codecs that
    /// know their reconstruction while encoding override it and skip the decode.
    fn quantize_row_with_sums(
        &self,
        x: &[f32],
        importance: Option<&[f32]>,
        out: &mut [u8],
        scratch: &mut [f32],
    ) -> Result<QualitySums, OutOfRange> {
        self.quantize_row(x, importance, out)?;
        self.dequantize_row(out, scratch);
        Ok(sums::row_sums(x, scratch))
    }
}

/// The round-to-nearest codec of `ty`: scales from each block's extremes, no search, no importance
/// ([`crate::gguf::Rounding::Nearest`]); llama.cpp's reference rounding byte for byte at the block-32 types,
/// the same rule at Q6_K; `None` for the other types.
pub(crate) fn nearest_codec(ty: GgmlType) -> Option<&'static dyn BlockCodec> {
    reference::reference_codec(ty).or_else(|| k_quants::nearest_codec(ty))
}

/// The weighted, gain-unbiased codec of `ty` ([`crate::gguf::Rounding::Unbiased`]: Q2_K and Q3_K weighted by
/// magnitude, IQ4_NL and IQ4_XS by `x²`), `None` for the other types.
pub(crate) fn unbiased_codec(ty: GgmlType) -> Option<&'static dyn BlockCodec> {
    match ty {
        GgmlType::IQ4_NL => Some(&iq4_unbiased::IQ4_NL),
        GgmlType::IQ4_XS => Some(&iq4_unbiased::IQ4_XS),
        _ => k_quants::unbiased_codec(ty),
    }
}

/// The weighted codec of `ty` ([`crate::gguf::Rounding::Weighted`]: Q4_K and Q5_K), `None` for the other types.
pub(crate) fn weighted_codec(ty: GgmlType) -> Option<&'static dyn BlockCodec> {
    k_quants::weighted_codec(ty)
}

/// The codec of `ty` (every type has one; `Option` for callers that name a type from a file).
pub(crate) fn block_codec(ty: GgmlType) -> Option<&'static dyn BlockCodec> {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => Some(float::codec(ty)),
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            k_quants::codec(ty)
        }
        GgmlType::Q8_0 => Some(&symmetric::Q8_0Codec),
        GgmlType::Q4_0 => Some(&symmetric::Q4_0Codec),
        GgmlType::Q5_0 => Some(&symmetric::Q5_0Codec),
        GgmlType::Q4_1 => Some(&affine::Q4_1Codec),
        GgmlType::Q5_1 => Some(&affine::Q5_1Codec),
        GgmlType::IQ4_NL => Some(&iq4::Iq4NlCodec),
        GgmlType::IQ4_XS => Some(&iq4::Iq4XsCodec),
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Checks every codec's tests share.

    use super::*;

    /// Quantizes `x` as rows of `cols` through `codec` and decodes it back.
    pub(crate) fn round_trip(
        ty: GgmlType,
        x: &[f32],
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Vec<f32> {
        let codec = block_codec(ty).expect("codec registered");
        let row_bytes = ty.row_bytes(cols).expect("whole blocks");
        let mut bytes = vec![0u8; x.len() / cols * row_bytes];
        let mut back = vec![0f32; x.len()];
        for ((row, out), dq) in x
            .chunks(cols)
            .zip(bytes.chunks_mut(row_bytes))
            .zip(back.chunks_mut(cols))
        {
            codec.quantize_row(row, importance, out).expect("in range");
            codec.dequantize_row(out, dq);
        }
        back
    }
}
