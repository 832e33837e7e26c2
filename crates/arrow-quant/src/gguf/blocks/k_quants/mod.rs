//! The K-quant types Q2_K, Q3_K, Q4_K, Q5_K and Q6_K: super-blocks of 256 elements whose sub-blocks carry small
//! quantized scales (and, for Q2_K / Q4_K / Q5_K, minima) under float16 super-block scales. One file per type
//! holds its byte layout (ggml-common.h) and its exact decoding (ggml's `dequantize_row_q*_K`); [`scales`] the
//! packed field encodings they share; [`asym`] the search of the types with minima (the two-level search of
//! `codec::two_level`).

mod asym;
mod mad;
mod nearest;
mod q2_k;
mod q3_k;
mod q4_k;
mod q5_k;
mod q6_k;
mod scales;
mod sym;
mod transpose;
mod unbiased;

#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod tests;

use super::{BlockCodec, OutOfRange};
use crate::codec::driver::QualitySums;
use crate::codec::flat::group::TINY_SUM;
use crate::gguf::GgmlType;

/// Elements of a K-quant super-block (ggml's `QK_K`).
const QK_K: usize = 256;

/// The codec of a K-quant type, `None` for other types.
pub(super) fn codec(ty: GgmlType) -> Option<&'static dyn BlockCodec> {
    match ty {
        GgmlType::Q2_K => Some(&q2_k::CODEC),
        GgmlType::Q3_K => Some(&q3_k::CODEC),
        GgmlType::Q4_K => Some(&q4_k::CODEC),
        GgmlType::Q5_K => Some(&q5_k::CODEC),
        GgmlType::Q6_K => Some(&q6_k::CODEC),
        _ => None,
    }
}

/// The round-to-nearest codec of a K-quant type (Q6_K only), `None` for the others.
pub(super) fn nearest_codec(ty: GgmlType) -> Option<&'static dyn BlockCodec> {
    (ty == GgmlType::Q6_K).then_some(&nearest::Q6KNearest as &dyn BlockCodec)
}

/// The magnitude-weighted, gain-unbiased codec of a K-quant type (Q2_K, Q3_K; see [`unbiased`]), `None` for the
/// others.
pub(super) fn unbiased_codec(ty: GgmlType) -> Option<&'static dyn BlockCodec> {
    match ty {
        GgmlType::Q2_K => Some(&q2_k::UNBIASED),
        GgmlType::Q3_K => Some(&q3_k::UNBIASED),
        _ => None,
    }
}

/// The weighted codec of a K-quant type (Q4_K: [`unbiased::square_weights`], Q5_K:
/// [`unbiased::sub_block_magnitude_weights`]), `None` for the others.
pub(super) fn weighted_codec(ty: GgmlType) -> Option<&'static dyn BlockCodec> {
    match ty {
        GgmlType::Q4_K => Some(&q4_k::WEIGHTED),
        GgmlType::Q5_K => Some(&q5_k::WEIGHTED),
        _ => None,
    }
}

/// A row quantizer: the row, its importance, its blocks out; the quality sums `[Σx², Σ(x - y)², Σy²]` back.
type RowQuantizer = fn(&[f32], Option<&[f32]>, &mut [u8]) -> Result<[f64; 3], OutOfRange>;

/// A K-quant codec: one of the type's row quantizers (its search, or [`unbiased`]'s) and its exact decoder.
pub(super) struct KQuantCodec {
    /// Quantizes a row.
    pub quantize: RowQuantizer,
    /// Decodes a row exactly as ggml does.
    pub dequantize: fn(&[u8], &mut [f32]),
}

impl BlockCodec for KQuantCodec {
    fn quantize_row(
        &self,
        x: &[f32],
        importance: Option<&[f32]>,
        out: &mut [u8],
    ) -> Result<(), OutOfRange> {
        (self.quantize)(x, importance, out).map(|_| ())
    }

    fn dequantize_row(&self, blocks: &[u8], out: &mut [f32]) {
        (self.dequantize)(blocks, out);
    }

    fn tolerates_non_finite(&self) -> bool {
        // NaN or infinite elements make the search fail or write garbage, never panic, and their Σx² is not
        // finite
        true
    }

    fn quantize_row_with_sums(
        &self,
        x: &[f32],
        importance: Option<&[f32]>,
        out: &mut [u8],
        scratch: &mut [f32],
    ) -> Result<QualitySums, OutOfRange> {
        let found = (self.quantize)(x, importance, out);
        row_sums(found, x, out, scratch, self.dequantize)
    }
}

/// The importance of a row scaled to mean 1 (the scale is the second item), or `None` to search unweighted
/// (no importance, or all of it zero).
fn row_weights(importance: Option<&[f32]>) -> Option<(&[f32], f32)> {
    let w = importance?;
    let total: f64 = w.iter().map(|&v| f64::from(v)).sum();
    (total > 0.0 && total.is_finite()).then(|| (w, (w.len() as f64 / total) as f32))
}

/// The quality sums of a row from its search's own sums (`sum x^2`, `sum (x - y)^2`, `sum y^2` over the exact
/// reconstruction, in f32 per tile), or, when those may have overflowed or lost precision to subnormals, from
/// the row decoded into `scratch` by `decode`.
fn row_sums(
    found: Result<[f64; 3], OutOfRange>,
    x: &[f32],
    out: &[u8],
    scratch: &mut [f32],
    decode: impl Fn(&[u8], &mut [f32]),
) -> Result<QualitySums, OutOfRange> {
    let [xx, ee, yy] = found?;
    if xx.is_finite() && ee.is_finite() && yy.is_finite() && xx >= f64::from(TINY_SUM) {
        // x.y from ||x - y||^2 = ||x||^2 - 2 x.y + ||y||^2.
        let xy = 0.5 * (xx + yy - ee);
        return Ok(QualitySums { xx, ee, xy, yy });
    }
    decode(out, scratch);
    Ok(QualitySums::of(x, scratch))
}
