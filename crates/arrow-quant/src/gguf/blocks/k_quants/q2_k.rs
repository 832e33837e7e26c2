//! Q2_K: super-blocks of 256 elements in sixteen 16-element sub-blocks, 2-bit codes, 4-bit scales and minima
//! (`block_q2_K` of ggml-common.h: 16 bytes of fields (scale in the low nibble, minimum in the high one), 64
//! bytes of codes, then `d`, `dmin` as float16; 84 bytes). Element `h * 128 + j * 32 + l` (`l < 32`) is bits
//! `2j..2j+1` of code byte `h * 32 + l`. Decoding is ggml's `dequantize_row_q2_K`:
//! `dl = d * sc; ml = dmin * m; y = dl * q - ml`.

use super::asym::{search_row, AsymSearch};
use super::mad::search_super_block;
use super::row_weights;
use super::scales::{read_f16, write_f16};
use super::unbiased::unbias_gains;
use super::{KQuantCodec, QK_K};
use crate::codec::two_level::format::SuperBlockParams;
use crate::codec::two_level::search::{Knobs, SearchShape};
use crate::gguf::blocks::OutOfRange;
use crate::simd::multiversion;

/// Bytes of one block.
const BLOCK_BYTES: usize = 84;

/// Q2_K's search: int2_2l's geometry with much less effort (one refitted candidate, the min/max step, and no
/// round instead of 8 candidates and three rounds: 4 passes over the data; rel-MSE still about 14% below
/// llama.cpp's on the standard and MiniLM tensors).
const SEARCH: AsymSearch = AsymSearch {
    shape: SearchShape {
        qmax: 3.0,
        fmax: 15.0,
        subs_per_super: 16,
    },
    knobs: Knobs {
        candidates: 1,
        refit_each: true,
        refits: 0,
        rmin: 0.0,
        rdelta: 0.5,
        rounds: 0,
        grid: 10,
    },
};

/// The search with importance: more candidates and rounds (measured against llama.cpp's imatrix path).
const SEARCH_WEIGHTED: AsymSearch = AsymSearch {
    shape: SEARCH.shape,
    knobs: Knobs {
        candidates: 8,
        refit_each: true,
        refits: 0,
        rmin: -0.5,
        rdelta: 0.2,
        rounds: 3,
        grid: 10,
    },
};

/// Writes one block from its parameters and codes.
#[inline(always)]
fn write_block(p: &SuperBlockParams, codes: &[u8; QK_K], out: &mut [u8]) {
    for (o, (sc, mn)) in out[..16].iter_mut().zip(p.sc.iter().zip(&p.mn)) {
        *o = sc | (mn << 4);
    }
    for h in 0..2 {
        for l in 0..32 {
            let e = h * 128 + l;
            out[16 + h * 32 + l] =
                codes[e] | (codes[e + 32] << 2) | (codes[e + 64] << 4) | (codes[e + 96] << 6);
        }
    }
    write_f16(p.d, &mut out[80..82]);
    write_f16(p.dmin, &mut out[82..84]);
}

multiversion! {
    /// Quantizes one row into its blocks.
    fn quantize(x: &[f32], importance: Option<&[f32]>, out: &mut [u8]) -> Result<[f64; 3], OutOfRange> {
        let weights = row_weights(importance);
        let search = if weights.is_some() { &SEARCH_WEIGHTED } else { &SEARCH };
        search_row::<16>(search, x, weights, |b, p, codes| {
            write_block(p, codes, &mut out[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES]);
        })
    }
}

/// Quantizes one row into its blocks for [`UNBIASED`]: the absolute-error search of [`super::mad`] (weights
/// `|x|`, times the importance when given), then [`unbias_gains`].
fn quantize_unbiased(
    x: &[f32],
    importance: Option<&[f32]>,
    out: &mut [u8],
) -> Result<[f64; 3], OutOfRange> {
    let mut w = [0f32; QK_K];
    for (b, (xs, blk)) in x
        .chunks_exact(QK_K)
        .zip(out.chunks_exact_mut(BLOCK_BYTES))
        .enumerate()
    {
        for (i, (o, v)) in w.iter_mut().zip(xs).enumerate() {
            *o = v.abs() * importance.map_or(1.0, |imp| imp[b * QK_K + i]);
        }
        let (p, codes) = search_super_block(xs, &w);
        if !(p.d.is_finite() && p.dmin.is_finite()) {
            return Err(OutOfRange { block: b });
        }
        write_block(&p, &codes, blk);
    }
    Ok(unbias_gains(
        x,
        importance,
        out,
        BLOCK_BYTES,
        [80, 82],
        dequantize,
    ))
}

/// The magnitude-weighted, gain-unbiased codec of this type (see [`super::unbiased`]).
pub(super) static UNBIASED: KQuantCodec = KQuantCodec {
    quantize: quantize_unbiased,
    dequantize,
};

multiversion! {
    /// Decodes the blocks of one row exactly as ggml's `dequantize_row_q2_K`.
    fn dequantize(blocks: &[u8], out: &mut [f32]) -> () {
        for (b, y) in blocks.chunks_exact(BLOCK_BYTES).zip(out.chunks_exact_mut(QK_K)) {
            let d = read_f16(&b[80..82]);
            let dmin = read_f16(&b[82..84]);
            for (j, ys) in y.chunks_exact_mut(16).enumerate() {
                let dl = d * f32::from(b[j] & 0xF);
                let ml = dmin * f32::from(b[j] >> 4);
                // sub-block j: half j / 8, shift 2 * ((j % 8) / 2), bytes (j % 2) * 16 .. of the half's 32
                let q = &b[16 + (j / 8) * 32 + (j % 2) * 16..][..16];
                let shift = 2 * ((j % 8) / 2);
                for l in 0..16 {
                    ys[l] = dl * f32::from((q[l] >> shift) & 3) - ml;
                }
            }
        }
    }
}

/// The Q2_K codec.
pub(super) static CODEC: KQuantCodec = KQuantCodec {
    quantize,
    dequantize,
};
