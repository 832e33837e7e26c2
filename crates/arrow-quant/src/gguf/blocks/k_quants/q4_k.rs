//! Q4_K: super-blocks of 256 elements in eight 32-element sub-blocks, 4-bit codes, 6-bit scales and minima
//! (`block_q4_K` of ggml-common.h: `d`, `dmin` as float16, 12 bytes of fields, 128 bytes of codes; 144 bytes).
//! Element `c * 64 + l` (`l < 32`) is the low nibble of code byte `c * 32 + l`, element `c * 64 + 32 + l` its
//! high nibble. Decoding is ggml's `dequantize_row_q4_K`: `d1 = d * sc; m1 = dmin * m; y = d1 * q - m1`.

use super::asym::{search_row, AsymSearch};
use super::row_weights;
use super::scales::{pack_scale_min_k4, read_f16, unpack_scale_min_k4, write_f16};
use super::unbiased::square_weights;
use super::{KQuantCodec, QK_K};
use crate::codec::two_level::format::SuperBlockParams;
use crate::codec::two_level::search::{Knobs, SearchShape};
use crate::gguf::blocks::OutOfRange;
use crate::simd::multiversion;

/// Bytes of one block.
const BLOCK_BYTES: usize = 144;

/// Q4_K's search: int4_2l's geometry with less effort (4 candidates, the best of them refitted once, and one
/// round, instead of 10 refitted candidates and three rounds: 8 passes over the data instead of 11; rel-MSE about
/// 1.3% below llama.cpp's on the standard and MiniLM tensors).
const SEARCH: AsymSearch = AsymSearch {
    shape: SearchShape {
        qmax: 15.0,
        fmax: 63.0,
        subs_per_super: 8,
    },
    knobs: Knobs {
        candidates: 4,
        refit_each: false,
        refits: 1,
        rmin: -1.0,
        rdelta: 0.5,
        rounds: 1,
        grid: 16,
    },
};

/// The search with importance: more candidates and rounds (measured against llama.cpp's imatrix path).
const SEARCH_WEIGHTED: AsymSearch = AsymSearch {
    shape: SEARCH.shape,
    knobs: Knobs {
        candidates: 10,
        refit_each: true,
        refits: 0,
        rmin: -1.0,
        rdelta: 0.2,
        rounds: 3,
        grid: 16,
    },
};

/// Writes one block from its parameters and codes.
#[inline(always)]
fn write_block(p: &SuperBlockParams, codes: &[u8; QK_K], out: &mut [u8]) {
    write_f16(p.d, &mut out[0..2]);
    write_f16(p.dmin, &mut out[2..4]);
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    sc.copy_from_slice(&p.sc[..8]);
    mn.copy_from_slice(&p.mn[..8]);
    pack_scale_min_k4(&sc, &mn, &mut out[4..16]);
    let qs = &mut out[16..BLOCK_BYTES];
    for c in 0..4 {
        for l in 0..32 {
            qs[c * 32 + l] = codes[c * 64 + l] | (codes[c * 64 + 32 + l] << 4);
        }
    }
}

multiversion! {
    /// Quantizes one row into its blocks.
    fn quantize(x: &[f32], importance: Option<&[f32]>, out: &mut [u8]) -> Result<[f64; 3], OutOfRange> {
        let weights = row_weights(importance);
        let search = if weights.is_some() { &SEARCH_WEIGHTED } else { &SEARCH };
        search_row::<32>(search, x, weights, |b, p, codes| {
            write_block(p, codes, &mut out[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES]);
        })
    }
}

multiversion! {
    /// Quantizes one row into its blocks for [`WEIGHTED`]: the weighted search with each element's squared error
    /// weighted by [`square_weights`].
    fn quantize_weighted(x: &[f32], importance: Option<&[f32]>, out: &mut [u8]) -> Result<[f64; 3], OutOfRange> {
        let mut w = vec![0f32; x.len()];
        square_weights(x, importance, &mut w);
        search_row::<32>(&SEARCH_WEIGHTED, x, row_weights(Some(&w)), |b, p, codes| {
            write_block(p, codes, &mut out[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES]);
        })
    }
}

multiversion! {
    /// Decodes the blocks of one row exactly as ggml's `dequantize_row_q4_K`.
    fn dequantize(blocks: &[u8], out: &mut [f32]) -> () {
        for (b, y) in blocks.chunks_exact(BLOCK_BYTES).zip(out.chunks_exact_mut(QK_K)) {
            let d = read_f16(&b[0..2]);
            let dmin = read_f16(&b[2..4]);
            let (sc, mn) = unpack_scale_min_k4(&b[4..16]);
            let qs = &b[16..BLOCK_BYTES];
            for c in 0..4 {
                let d1 = d * f32::from(sc[2 * c]);
                let m1 = dmin * f32::from(mn[2 * c]);
                let d2 = d * f32::from(sc[2 * c + 1]);
                let m2 = dmin * f32::from(mn[2 * c + 1]);
                let q = &qs[c * 32..c * 32 + 32];
                let (lo, hi) = y[c * 64..c * 64 + 64].split_at_mut(32);
                for l in 0..32 {
                    lo[l] = d1 * f32::from(q[l] & 0xF) - m1;
                    hi[l] = d2 * f32::from(q[l] >> 4) - m2;
                }
            }
        }
    }
}

/// The Q4_K codec.
pub(super) static CODEC: KQuantCodec = KQuantCodec {
    quantize,
    dequantize,
};

/// The Q4_K codec of the plain rounding ([`crate::gguf::Rounding::Weighted`]): the search weighted by
/// [`square_weights`].
pub(super) static WEIGHTED: KQuantCodec = KQuantCodec {
    quantize: quantize_weighted,
    dequantize,
};
