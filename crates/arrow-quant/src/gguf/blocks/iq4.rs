//! IQ4_NL and IQ4_XS: 4-bit indices into llama.cpp's non-linear grid `kvalues_iq4nl` (16 values from -127 to
//! 113). IQ4_NL stores a float16 scale `d` per block of 32 (element `d * grid[q]`); IQ4_XS a float16 `d` per
//! super-block of 256 and a 6-bit scale `ls` per 32-element sub-block (element `(d * (ls - 32)) * grid[q]`).
//!
//! The search per block (IQ4_XS: per sub-block) tries candidate scales that map the block's extreme near either
//! end of the grid (llama.cpp tries only the -127 end), assigns every element its nearest grid value, refits the
//! scale by least squares (`Σwxq / Σwq²`), keeps the candidate that explains the most energy, then alternates
//! assignment and refit (Lloyd). The nearest grid value costs a handful of vector operations: the grid's
//! midpoints are at least 11.5 apart, so in buckets of width 8 each value has two possible neighbours, picked by
//! one comparison with the bucket's midpoint (three table lookups). IQ4_XS then sets `d` from the largest
//! sub-block scale as llama.cpp does and rounds each sub-block's `ls` down or up, whichever gives the smaller
//! error.

use super::block32::{
    encode_row, f16_bits, first_block, nibbles, read_f16, QuadEncoder, RowResult, RowSums, QK,
};
use super::lanes::{lanes_entry, Lanes, LanesExt, Quad, QUAD};
use super::{BlockCodec, OutOfRange};
use half::f16;

/// llama.cpp's `kvalues_iq4nl`.
const GRID: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Elements per IQ4_XS super-block.
const SUPER: usize = 256;
/// Bytes per IQ4_XS super-block.
const XS_BYTES: usize = 136;

/// Per bucket `u` (grid units `[8u - 128, 8u - 120)`): the nearest grid value at the bucket's start, its index,
/// the next grid value, and the midpoint between the two (above which the next value is nearer).
struct BucketTables {
    low: [f32; 32],
    low_index: [f32; 32],
    high: [f32; 32],
    midpoint: [f32; 32],
}

const BUCKETS: BucketTables = {
    let mut t = BucketTables {
        low: [0.0; 32],
        low_index: [0.0; 32],
        high: [0.0; 32],
        midpoint: [0.0; 32],
    };
    let mut u = 0;
    while u < 32 {
        let start = 8 * u as i32 - 128;
        // the nearest index at `start`: past every midpoint at or below it
        let mut i = 0;
        while i < 15 && GRID[i] as i32 + GRID[i + 1] as i32 <= 2 * start {
            i += 1;
        }
        t.low[u] = GRID[i] as f32;
        t.low_index[u] = i as f32;
        if i < 15 {
            t.high[u] = GRID[i + 1] as f32;
            t.midpoint[u] = (GRID[i] as f32 + GRID[i + 1] as f32) * 0.5;
        } else {
            t.high[u] = GRID[15] as f32;
            t.midpoint[u] = f32::MAX;
        }
        u += 1;
    }
    t
};

/// The bucket tables loaded into lanes.
#[derive(Clone, Copy)]
struct Grid<L: Lanes> {
    low: L::Table,
    low_index: L::Table,
    high: L::Table,
    midpoint: L::Table,
}

impl<L: Lanes> Grid<L> {
    #[inline(always)]
    fn new(l: L) -> Self {
        Self {
            low: l.table(&BUCKETS.low),
            low_index: l.table(&BUCKETS.low_index),
            high: l.table(&BUCKETS.high),
            midpoint: l.table(&BUCKETS.midpoint),
        }
    }

    /// The bucket of `t` (grid units) and whether `t` is past the bucket's midpoint.
    #[inline(always)]
    fn locate(&self, l: L, t: L::V) -> (L::Idx, u16) {
        let tc = l.clamp(t, l.splat(-128.0), l.splat(127.99));
        let u = l.index(l.fma(tc, l.splat(0.125), l.splat(16.0)));
        (u, l.gt(t, l.lookup(self.midpoint, u)))
    }

    /// The grid value nearest to `t`.
    #[inline(always)]
    fn value(&self, l: L, t: L::V) -> L::V {
        let (u, up) = self.locate(l, t);
        l.select(up, l.lookup(self.high, u), l.lookup(self.low, u))
    }

    /// The grid value nearest to `t` and its index (as f32).
    #[inline(always)]
    fn value_and_index(&self, l: L, t: L::V) -> (L::V, L::V) {
        let (u, up) = self.locate(l, t);
        let low = l.lookup(self.low_index, u);
        (
            l.select(up, l.lookup(self.high, u), l.lookup(self.low, u)),
            l.select(up, l.add(low, l.splat(1.0)), low),
        )
    }

    /// Grid values of `x` at scale reciprocal `inv`.
    #[inline(always)]
    fn values(&self, l: L, x: &Quad<L::V>, inv: L::V) -> Quad<L::V> {
        let mut q = *x;
        for j in 0..8 {
            q[j] = self.value(l, l.mul(x[j], inv));
        }
        q
    }
}

/// Candidate scales, in grid units the block's extreme maps to: near -127 (llama.cpp's end) and near 113.
struct Candidates {
    ends: [&'static [f32]; 2],
    /// Lloyd rounds after the candidate search, without and with importance.
    lloyd: [usize; 2],
}

/// `n` points spread evenly over `[a, b]`.
const fn spread<const N: usize>(a: f32, b: f32) -> [f32; N] {
    let mut p = [0.0; N];
    let mut i = 0;
    while i < N {
        p[i] = a + (b - a) * i as f32 / (N - 1) as f32;
        i += 1;
    }
    p
}

const UNWEIGHTED: [f32; 16] = {
    let (neg, pos): ([f32; 8], [f32; 8]) = (spread(-137.0, -117.0), spread(105.0, 121.0));
    let mut c = [0.0; 16];
    let mut i = 0;
    while i < 8 {
        c[i] = neg[i];
        c[8 + i] = pos[i];
        i += 1;
    }
    c
};
/// A weighted error is dominated by few elements, so its optimum is more often between the unweighted
/// candidates: twice as many.
const WEIGHTED: [f32; 32] = {
    let (neg, pos): ([f32; 16], [f32; 16]) = (spread(-147.0, -112.0), spread(98.0, 128.0));
    let mut c = [0.0; 32];
    let mut i = 0;
    while i < 16 {
        c[i] = neg[i];
        c[16 + i] = pos[i];
        i += 1;
    }
    c
};
const SEARCH: Candidates = Candidates {
    ends: [&UNWEIGHTED, &WEIGHTED],
    lloyd: [2, 2],
};

/// `Σ w x q` and `Σ w q²` per block (`wx` holds `w * x`, or `x` without importance).
#[inline(always)]
fn fit_sums<L: Lanes, const W: bool>(
    l: L,
    wx: &Quad<L::V>,
    w: &Quad<L::V>,
    q: &Quad<L::V>,
) -> (L::V, L::V) {
    let sxq = l.block_dot(wx, q);
    let sqq = if W {
        let mut wq = *q;
        for j in 0..8 {
            wq[j] = l.mul(w[j], q[j]);
        }
        l.block_dot(&wq, q)
    } else {
        l.block_dot(q, q)
    };
    (sxq, sqq)
}

/// `w * x` per element, or `x` without importance.
#[inline(always)]
fn weighted<L: Lanes, const W: bool>(l: L, x: &Quad<L::V>, w: &Quad<L::V>) -> Quad<L::V> {
    let mut wx = *x;
    if W {
        for j in 0..8 {
            wx[j] = l.mul(w[j], x[j]);
        }
    }
    wx
}

/// The searched scale of each block of the quad (not yet rounded).
#[inline(always)]
fn search<L: Lanes, const W: bool>(l: L, g: &Grid<L>, x: &Quad<L::V>, w: &Quad<L::V>) -> L::V {
    let zero = l.splat(0.0);
    let (lo, hi) = l.quad_min_max(x);
    let (lo, hi) = (l.group_min(lo), l.group_max(hi));
    let m = l.select(l.gt(l.sub(zero, lo), hi), lo, hi);
    let rm = l.recip_or_zero(m);
    let wx = weighted::<L, W>(l, x, w);
    // candidates compare by (Σwxq)² / Σwq² without dividing
    let (mut best_xq, mut best_qq) = (zero, l.splat(1.0));
    for &end in SEARCH.ends[usize::from(W)] {
        let q = g.values(l, x, l.mul(rm, l.splat(end)));
        let (sxq, sqq) = fit_sums::<L, W>(l, &wx, w, &q);
        let better = l.gt(
            l.mul(l.mul(sxq, sxq), best_qq),
            l.mul(l.mul(best_xq, best_xq), sqq),
        ) & l.gt(sqq, zero);
        best_xq = l.select(better, sxq, best_xq);
        best_qq = l.select(better, sqq, best_qq);
    }
    // blocks no candidate fits (all zero, or zero importance) keep llama.cpp's first scale
    let fitted = l.gt(l.abs(best_xq), zero);
    let mut d = l.select(
        fitted,
        l.div(best_xq, best_qq),
        l.mul(m, l.splat(-1.0 / 127.0)),
    );
    for _ in 0..SEARCH.lloyd[usize::from(W)] {
        let q = g.values(l, x, l.recip_or_zero(d));
        let (sxq, sqq) = fit_sums::<L, W>(l, &wx, w, &q);
        d = l.select(l.gt(sqq, zero), l.div(sxq, sqq), d);
    }
    d
}

/// The final codes of a quad at scale `d` (per block): the grid indices and the reconstruction `d * grid[q]`.
#[inline(always)]
fn finish<L: Lanes>(l: L, g: &Grid<L>, x: &Quad<L::V>, d: L::V) -> (Quad<L::V>, Quad<L::V>) {
    let inv = l.recip_or_zero(d);
    let (mut idx, mut y) = (*x, *x);
    for j in 0..8 {
        let (v, i) = g.value_and_index(l, l.mul(x[j], inv));
        idx[j] = i;
        y[j] = l.mul(d, v);
    }
    (idx, y)
}

/// IQ4_NL's encoder of a quad.
struct Nl;

impl QuadEncoder for Nl {
    fn block_bytes(&self) -> usize {
        18
    }

    #[inline(always)]
    fn encode<L: Lanes, const W: bool>(
        &self,
        l: L,
        x: &Quad<L::V>,
        w: &Quad<L::V>,
        out: &mut [u8],
    ) -> Result<Quad<L::V>, usize> {
        let g = Grid::new(l);
        let d = l.to_f16(search::<L, W>(l, &g, x, w));
        if let Some(k) = first_block(l.gt(l.abs(d), l.splat(65504.0))) {
            return Err(k);
        }
        let (idx, y) = finish(l, &g, x, d);
        let qs = nibbles(l, &idx);
        for (k, s) in f16_bits(l, d).iter().enumerate() {
            out[18 * k..18 * k + 2].copy_from_slice(s);
            out[18 * k + 2..18 * k + 18].copy_from_slice(&qs[k]);
        }
        Ok(y)
    }
}

#[inline(always)]
fn iq4_nl_kernel<L: Lanes>(l: L, x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> RowResult {
    encode_row(l, &Nl, x, w, out)
}

/// `floor(v)`.
#[inline(always)]
fn floor<L: Lanes>(l: L, v: L::V) -> L::V {
    let r = l.round(v);
    l.select(l.gt(r, v), l.sub(r, l.splat(1.0)), r)
}

/// Encodes one IQ4_XS super-block (`x`, `w`: two quads each) into `out`, returning the reconstruction, or
/// `Err(())` when `d` would not be finite as float16.
#[inline(always)]
fn encode_super<L: Lanes, const W: bool>(
    l: L,
    g: &Grid<L>,
    x: &[Quad<L::V>; 2],
    w: &[Quad<L::V>; 2],
    out: &mut [u8],
) -> Result<[Quad<L::V>; 2], ()> {
    let s = [
        search::<L, W>(l, g, &x[0], &w[0]),
        search::<L, W>(l, g, &x[1], &w[1]),
    ];
    // llama.cpp's super-block scale: the sub-block scale of largest magnitude maps to -32
    let mut max_scale = 0f32;
    for v in s {
        let a = l.to_array(v);
        for k in 0..4 {
            if a[4 * k].abs() > max_scale.abs() {
                max_scale = a[4 * k];
            }
        }
    }
    let d = f16::from_f32(-max_scale / 32.0);
    if d.is_infinite() {
        return Err(());
    }
    let d16 = d.to_f32();
    let dv = l.splat(d16);
    let inv_d = l.recip_or_zero(dv);
    let (lowest, highest) = (l.splat(-32.0), l.splat(31.0));
    let mut y = *x;
    let mut ls = [0u8; 8];
    for h in 0..2 {
        let wx = weighted::<L, W>(l, &x[h], &w[h]);
        // each sub-block's integer scale: the float one rounded down or up, whichever fits better
        let down = l.clamp(floor(l, l.mul(s[h], inv_d)), lowest, highest);
        let up = l.min(l.add(down, l.splat(1.0)), highest);
        let mut best = down;
        let mut best_score = l.splat(f32::MIN);
        for cand in [down, up] {
            let dl = l.mul(dv, cand);
            let q = g.values(l, &x[h], l.recip_or_zero(dl));
            let (sxq, sqq) = fit_sums::<L, W>(l, &wx, &w[h], &q);
            // the error is Σwx² - (2 dl Σwxq - dl² Σwq²)
            let score = l.sub(l.mul(l.add(dl, dl), sxq), l.mul(l.mul(dl, dl), sqq));
            let better = l.gt(score, best_score);
            best = l.select(better, cand, best);
            best_score = l.select(better, score, best_score);
        }
        // the decoder's `d * (ls - 32)`
        let (idx, yh) = finish(l, g, &x[h], l.mul(dv, best));
        y[h] = yh;
        let qs = nibbles(l, &idx);
        let scales = l.to_array(best);
        for k in 0..4 {
            let b = 4 * h + k;
            out[8 + 16 * b..8 + 16 * b + 16].copy_from_slice(&qs[k]);
            ls[b] = (scales[4 * k] as i32 + 32) as u8;
        }
    }
    let mut scales_h = 0u16;
    let mut scales_l = [0u8; 4];
    for (b, &v) in ls.iter().enumerate() {
        scales_l[b / 2] |= (v & 0x0F) << (4 * (b % 2));
        scales_h |= u16::from(v >> 4) << (2 * b);
    }
    out[..2].copy_from_slice(&d.to_le_bytes());
    out[2..4].copy_from_slice(&scales_h.to_le_bytes());
    out[4..8].copy_from_slice(&scales_l);
    Ok(y)
}

#[inline(always)]
fn xs_walk<L: Lanes, const W: bool>(l: L, x: &[f32], w: &[f32], out: &mut [u8]) -> RowResult {
    let g = Grid::new(l);
    let ones = [l.splat(1.0); 8];
    let mut sums = RowSums::new(l);
    for (sb, o) in out.chunks_exact_mut(XS_BYTES).enumerate() {
        let base = sb * SUPER;
        let xs = [l.load_quad(&x[base..]), l.load_quad(&x[base + QUAD..])];
        let ws = if W {
            [l.load_quad(&w[base..]), l.load_quad(&w[base + QUAD..])]
        } else {
            [ones, ones]
        };
        match encode_super::<L, W>(l, &g, &xs, &ws, o) {
            Ok(y) => {
                sums.add(l, &xs[0], &y[0]);
                sums.add(l, &xs[1], &y[1]);
            }
            Err(()) => return Err(OutOfRange { block: sb }),
        }
    }
    Ok(sums.finish(l))
}

#[inline(always)]
fn iq4_xs_kernel<L: Lanes>(l: L, x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> RowResult {
    match w {
        Some(w) => xs_walk::<L, true>(l, x, w, out),
        None => xs_walk::<L, false>(l, x, &[], out),
    }
}

lanes_entry! {
    fn iq4_nl_row(x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> RowResult = iq4_nl_kernel
}
lanes_entry! {
    fn iq4_xs_row(x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> RowResult = iq4_xs_kernel
}

/// `block_iq4_nl`: `d`, then 16 bytes of grid-index nibbles.
pub(super) struct Iq4NlCodec;
/// `block_iq4_xs`: `d`, `scales_h` (2 high bits of each sub-block's `ls`), `scales_l` (4 low bits each), then
/// 16 bytes of grid-index nibbles per sub-block.
pub(super) struct Iq4XsCodec;

/// `(a * grid[q])` for the 32 indices of `qs`'s nibbles.
#[inline(always)]
fn decode_nibbles(a: f32, qs: &[u8], y: &mut [f32]) {
    let (lo, hi) = y.split_at_mut(16);
    for ((l, h), &q) in lo.iter_mut().zip(hi).zip(qs) {
        *l = a * f32::from(GRID[usize::from(q & 0x0F)]);
        *h = a * f32::from(GRID[usize::from(q >> 4)]);
    }
}

impl BlockCodec for Iq4NlCodec {
    fn quantize_row(&self, x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> Result<(), OutOfRange> {
        iq4_nl_row(x, w, out).map(drop)
    }

    fn tolerates_non_finite(&self) -> bool {
        true
    }

    fn quantize_row_with_sums(
        &self,
        x: &[f32],
        w: Option<&[f32]>,
        out: &mut [u8],
        _: &mut [f32],
    ) -> RowResult {
        iq4_nl_row(x, w, out)
    }

    fn dequantize_row(&self, blocks: &[u8], out: &mut [f32]) {
        for (b, y) in blocks.chunks_exact(18).zip(out.chunks_exact_mut(QK)) {
            decode_nibbles(read_f16(b, 0), &b[2..18], y);
        }
    }
}

impl BlockCodec for Iq4XsCodec {
    fn quantize_row(&self, x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> Result<(), OutOfRange> {
        iq4_xs_row(x, w, out).map(drop)
    }

    fn tolerates_non_finite(&self) -> bool {
        true
    }

    fn quantize_row_with_sums(
        &self,
        x: &[f32],
        w: Option<&[f32]>,
        out: &mut [u8],
        _: &mut [f32],
    ) -> RowResult {
        iq4_xs_row(x, w, out)
    }

    fn dequantize_row(&self, blocks: &[u8], out: &mut [f32]) {
        for (b, y) in blocks
            .chunks_exact(XS_BYTES)
            .zip(out.chunks_exact_mut(SUPER))
        {
            let d = read_f16(b, 0);
            let scales_h = u16::from_le_bytes([b[2], b[3]]);
            for (ib, y) in y.chunks_exact_mut(QK).enumerate() {
                let low = (b[4 + ib / 2] >> (4 * (ib % 2))) & 0x0F;
                let high = ((scales_h >> (2 * ib)) & 3) as u8;
                let ls = i16::from(low | (high << 4));
                let dl = d * f32::from(ls - 32);
                decode_nibbles(dl, &b[8 + 16 * ib..8 + 16 * ib + 16], y);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec_tests::sample_row;
    use super::super::lanes::Portable;
    use super::*;

    #[test]
    fn the_bucket_lookup_finds_the_nearest_grid_value() {
        let g = Grid::new(Portable);
        let mut t = -140.0f32;
        while t < 140.0 {
            let v: [f32; 16] = std::array::from_fn(|i| t + i as f32 * 0.01);
            let (got, idx) = g.value_and_index(Portable, v);
            for i in 0..16 {
                let best = GRID
                    .iter()
                    .map(|&q| (v[i] - f32::from(q)).abs())
                    .fold(f32::INFINITY, f32::min);
                assert_eq!((v[i] - got[i]).abs(), best, "t = {}", v[i]);
                assert_eq!(f32::from(GRID[idx[i] as usize]), got[i]);
            }
            t += 0.16;
        }
    }

    type Kernel = fn(Portable, &[f32], Option<&[f32]>, &mut [u8]) -> RowResult;
    type Row = fn(&[f32], Option<&[f32]>, &mut [u8]) -> RowResult;

    #[test]
    fn every_cpu_path_writes_the_same_bytes() {
        let x = sample_row(512, 23, 2.0);
        let w: Vec<f32> = (0..x.len()).map(|i| (i % 13) as f32 * 0.2).collect();
        let paths: [(Kernel, Row, usize); 2] = [
            (iq4_nl_kernel, iq4_nl_row, 16 * 18),
            (iq4_xs_kernel, iq4_xs_row, 2 * XS_BYTES),
        ];
        for (kernel, row, bytes) in paths {
            for importance in [None, Some(w.as_slice())] {
                let mut a = vec![0u8; bytes];
                let mut b = a.clone();
                let sa = kernel(Portable, &x, importance, &mut a).unwrap();
                let sb = row(&x, importance, &mut b).unwrap();
                assert_eq!(a, b);
                assert_eq!(sa.ee.to_bits(), sb.ee.to_bits());
            }
        }
    }
}
