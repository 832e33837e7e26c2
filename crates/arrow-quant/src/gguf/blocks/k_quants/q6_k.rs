//! Q6_K: super-blocks of 256 elements in sixteen 16-element sub-blocks, 6-bit codes, 8-bit signed scales
//! (`block_q6_K` of ggml-common.h: 128 bytes of low nibbles, 64 bytes of high bit pairs, 16 int8 scales, `d` as
//! float16; 210 bytes). In each half `h` of 128 elements, element `h * 128 + 32 * k + l` (`l < 32`) takes its
//! low nibble from byte `h * 64 + 32 * (k % 2) + l` (low nibble for `k < 2`, high for `k >= 2`) and its top two
//! bits from bits `2k..2k+1` of byte `h * 32 + l` of the high part. Decoding is ggml's `dequantize_row_q6_K`:
//! `y = d * sc * (q - 32)`, left to right.

use super::row_weights;
use super::scales::{read_f16, write_f16};
use super::sym::{search_row, SymBlock, SymLayout, SymSearch};
use super::{KQuantCodec, QK_K};
use crate::gguf::blocks::OutOfRange;
use crate::simd::multiversion;

/// Bytes of one block.
const BLOCK_BYTES: usize = 210;

/// The Q6_K layout.
pub(super) struct Q6K;

/// Q6_K's search (effort measured on the standard tensor against llama.cpp's Q6_K): no round after the
/// super-block scale (5 passes over the data instead of 6; rel-MSE about 2.6% below llama.cpp's on the standard
/// and MiniLM tensors).
const SEARCH: SymSearch = SymSearch {
    nmax: 32.0,
    fneg: 128.0,
    candidates: 3,
    rmin: -0.6,
    rdelta: 0.3,
    grid: 8,
    rounds: 0,
};

/// The search with importance: more candidate steps (the weighted optimum is further from the min/max step;
/// measured against llama.cpp's imatrix path).
const SEARCH_WEIGHTED: SymSearch = SymSearch {
    nmax: 32.0,
    fneg: 128.0,
    candidates: 24,
    rmin: -1.2,
    rdelta: 0.1,
    grid: 16,
    rounds: 2,
};

impl SymLayout for Q6K {
    const BYTES: usize = BLOCK_BYTES;

    #[inline(always)]
    fn write_block(blk: &SymBlock, out: &mut [u8]) {
        let u = &blk.codes;
        for h in 0..2 {
            let e = h * 128;
            for l in 0..32 {
                out[h * 64 + l] = (u[e + l] & 0xF) | ((u[e + 64 + l] & 0xF) << 4);
                out[h * 64 + 32 + l] = (u[e + 32 + l] & 0xF) | ((u[e + 96 + l] & 0xF) << 4);
                out[128 + h * 32 + l] = (u[e + l] >> 4)
                    | ((u[e + 32 + l] >> 4) << 2)
                    | ((u[e + 64 + l] >> 4) << 4)
                    | ((u[e + 96 + l] >> 4) << 6);
            }
        }
        for j in 0..16 {
            out[192 + j] = blk.sc[j] as u8;
        }
        write_f16(blk.d, &mut out[208..210]);
    }
}

multiversion! {
    /// Quantizes one row into its blocks.
    fn quantize(x: &[f32], importance: Option<&[f32]>, out: &mut [u8]) -> Result<[f64; 3], OutOfRange> {
        let weights = row_weights(importance);
        let search = if weights.is_some() { &SEARCH_WEIGHTED } else { &SEARCH };
        search_row::<Q6K>(search, x, weights, out)
    }
}

multiversion! {
    /// Decodes the blocks of one row exactly as ggml's `dequantize_row_q6_K`.
    fn dequantize(blocks: &[u8], out: &mut [f32]) -> () {
        for (b, y) in blocks.chunks_exact(BLOCK_BYTES).zip(out.chunks_exact_mut(QK_K)) {
            let d = read_f16(&b[208..210]);
            let mut ds = [0f32; 16];
            for (j, v) in ds.iter_mut().enumerate() {
                *v = d * f32::from(b[192 + j] as i8);
            }
            for h in 0..2 {
                let ql = &b[h * 64..h * 64 + 64];
                let qh = &b[128 + h * 32..128 + h * 32 + 32];
                let y = &mut y[h * 128..h * 128 + 128];
                let ds = &ds[h * 8..h * 8 + 8];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                    y[l] = ds[is] * f32::from(q1);
                    y[l + 32] = ds[is + 2] * f32::from(q2);
                    y[l + 64] = ds[is + 4] * f32::from(q3);
                    y[l + 96] = ds[is + 6] * f32::from(q4);
                }
            }
        }
    }
}

/// The Q6_K codec.
pub(super) static CODEC: KQuantCodec = KQuantCodec {
    quantize,
    dequantize,
};
