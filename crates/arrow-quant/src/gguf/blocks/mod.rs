//! Block codecs of the ggml types: one per type, its bytes exactly llama.cpp's block layout (`ggml-common.h`),
//! its decoding exactly ggml's `to_float` (so gguf-py's dequantizers give the same values bit for bit), its
//! parameter search our own.
//!
//! A codec works on one ggml row at a time (the last axis of the tensor, a whole number of blocks); the callers
//! run rows in parallel. [`block_codec`] is the registry.

mod float;
mod k_quants;

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

    /// [`BlockCodec::quantize_row`], also returning the quality sums of the row's reconstruction. The default
    /// decodes the blocks into `scratch` (one value per element of the row); a codec whose search already
    /// computed the reconstruction returns its own sums instead.
    fn quantize_row_sums(
        &self,
        x: &[f32],
        importance: Option<&[f32]>,
        out: &mut [u8],
        scratch: &mut [f32],
    ) -> Result<QualitySums, OutOfRange> {
        self.quantize_row(x, importance, out)?;
        self.dequantize_row(out, scratch);
        Ok(QualitySums::of(x, scratch))
    }
}

/// The codec of `ty`, or `None` for a type whose codec is not built yet.
pub(crate) fn block_codec(ty: GgmlType) -> Option<&'static dyn BlockCodec> {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => Some(float::codec(ty)),
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            k_quants::codec(ty)
        }
        _ => None,
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
