//! The K-quant types Q2_K, Q3_K, Q4_K, Q5_K and Q6_K: super-blocks of 256 elements whose sub-blocks carry small
//! quantized scales (and, for Q2_K / Q4_K / Q5_K, minima) under float16 super-block scales. One file per type
//! holds its byte layout (ggml-common.h) and its exact decoding (ggml's `dequantize_row_q*_K`); [`scales`] the
//! packed field encodings they share; [`asym`] the search of the types with minima (the two-level search of
//! `codec::two_level`).

mod asym;
mod q4_k;
mod scales;

#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod tests;

use super::BlockCodec;
use crate::gguf::GgmlType;

/// Elements of a K-quant super-block (ggml's `QK_K`).
const QK_K: usize = 256;

/// The codec of a K-quant type, `None` for other types.
pub(super) fn codec(ty: GgmlType) -> Option<&'static dyn BlockCodec> {
    match ty {
        GgmlType::Q4_K => Some(&q4_k::Q4K),
        _ => None,
    }
}
