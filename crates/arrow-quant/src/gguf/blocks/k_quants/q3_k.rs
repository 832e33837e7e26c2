//! Q3_K: super-blocks of 256 elements in sixteen 16-element sub-blocks, 3-bit codes, 6-bit signed scales
//! (`block_q3_K` of ggml-common.h: 32 bytes of high bits, 64 bytes of low bit pairs, 12 bytes of scale fields,
//! `d` as float16; 110 bytes). Element `h * 128 + 32 * j + l` (`l < 32`) takes its low two bits from bits
//! `2j..2j+1` of byte `h * 32 + l` of the low part and its high bit from bit `4h + j` of high-bit byte `l`; the
//! code is `low - 4` when the high bit is clear, `low` when set. Decoding is ggml's `dequantize_row_q3_K`:
//! `dl = d * (field - 32); y = dl * q`.

use super::row_weights;
use super::scales::{pack_q3_scales, read_f16, unpack_q3_scales, write_f16};
use super::sym::{search_row, SymBlock, SymLayout, SymSearch};
use super::unbiased::{magnitude_weights, unbias_gains};
use super::{KQuantCodec, QK_K};
use crate::gguf::blocks::OutOfRange;
use crate::simd::multiversion;

/// Bytes of one block.
const BLOCK_BYTES: usize = 110;

/// The Q3_K layout.
pub(super) struct Q3K;

/// Q3_K's search (effort measured on the standard tensor against llama.cpp's Q3_K): no round after the
/// super-block scale (4 passes over the data instead of 5; rel-MSE about 7% below llama.cpp's on the standard
/// and MiniLM tensors).
const SEARCH: SymSearch = SymSearch {
    nmax: 4.0,
    fneg: 32.0,
    candidates: 2,
    rmin: -0.3,
    rdelta: 0.6,
    grid: 8,
    rounds: 0,
};

/// The search with importance: more candidate steps (the weighted optimum is further from the min/max step;
/// measured against llama.cpp's imatrix path).
const SEARCH_WEIGHTED: SymSearch = SymSearch {
    nmax: 4.0,
    fneg: 32.0,
    candidates: 16,
    rmin: -1.5,
    rdelta: 0.2,
    grid: 16,
    rounds: 2,
};

impl SymLayout for Q3K {
    const BYTES: usize = BLOCK_BYTES;

    #[inline(always)]
    fn write_block(blk: &SymBlock, out: &mut [u8]) {
        let u = &blk.codes;
        for l in 0..32 {
            let mut h = 0u8;
            for k in 0..8 {
                h |= (u[k * 32 + l] >> 2) << k;
            }
            out[l] = h;
        }
        for h in 0..2 {
            for l in 0..32 {
                let e = h * 128 + l;
                out[32 + h * 32 + l] = (u[e] & 3)
                    | ((u[e + 32] & 3) << 2)
                    | ((u[e + 64] & 3) << 4)
                    | ((u[e + 96] & 3) << 6);
            }
        }
        let mut fields = [0u8; 16];
        for (f, &s) in fields.iter_mut().zip(&blk.sc) {
            *f = (i16::from(s) + 32) as u8;
        }
        pack_q3_scales(&fields, &mut out[96..108]);
        write_f16(blk.d, &mut out[108..110]);
    }
}

multiversion! {
    /// Quantizes one row into its blocks.
    fn quantize(x: &[f32], importance: Option<&[f32]>, out: &mut [u8]) -> Result<[f64; 3], OutOfRange> {
        let weights = row_weights(importance);
        let search = if weights.is_some() { &SEARCH_WEIGHTED } else { &SEARCH };
        search_row::<Q3K>(search, x, weights, out)
    }
}

multiversion! {
    /// Quantizes one row into its blocks for [`UNBIASED`]: the search weighted by
    /// [`magnitude_weights`], then [`unbias_gains`].
    fn quantize_unbiased(x: &[f32], importance: Option<&[f32]>, out: &mut [u8]) -> Result<[f64; 3], OutOfRange> {
        let mut w = vec![0f32; x.len()];
        magnitude_weights(x, importance, &mut w);
        let weights = row_weights(Some(&w));
        // the larger search, with or without calibration: these layers are few, and it found lower output
        // errors than the default one (Q3_K 0.85x llama.cpp's against 0.91x)
        let search = &SEARCH_WEIGHTED;
        search_row::<Q3K>(search, x, weights, out)?;
        Ok(unbias_gains(x, importance, out, BLOCK_BYTES, [108], dequantize))
    }
}

/// The magnitude-weighted, gain-unbiased codec of this type (see [`super::unbiased`]).
pub(super) static UNBIASED: KQuantCodec = KQuantCodec {
    quantize: quantize_unbiased,
    dequantize,
};

multiversion! {
    /// Decodes the blocks of one row exactly as ggml's `dequantize_row_q3_K`.
    fn dequantize(blocks: &[u8], out: &mut [f32]) -> () {
        for (b, y) in blocks.chunks_exact(BLOCK_BYTES).zip(out.chunks_exact_mut(QK_K)) {
            let d = read_f16(&b[108..110]);
            let s = unpack_q3_scales(&b[96..108]);
            let hm = &b[0..32];
            for (j, ys) in y.chunks_exact_mut(16).enumerate() {
                let dl = d * f32::from(s[j]);
                // sub-block j: half j / 8, pair k = (j % 8) / 2, bytes (j % 2) * 16 .. of the half's 32
                let (half, k) = (j / 8, (j % 8) / 2);
                let at = (j % 2) * 16;
                let q = &b[32 + half * 32 + at..][..16];
                let bit = 4 * half + k;
                for l in 0..16 {
                    let low = ((q[l] >> (2 * k)) & 3) as i8;
                    let high = if (hm[at + l] >> bit) & 1 == 1 { 0 } else { 4 };
                    ys[l] = dl * f32::from(low - high);
                }
            }
        }
    }
}

/// The Q3_K codec.
pub(super) static CODEC: KQuantCodec = KQuantCodec {
    quantize,
    dequantize,
};
