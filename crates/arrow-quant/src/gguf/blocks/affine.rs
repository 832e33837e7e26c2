//! Q4_1 and Q5_1: a float16 scale `d` and minimum `m` per block of 32, element `i` decoded as `(q[i] * d) + m`
//! (each operation rounded, as ggml does) with codes `q` in `[0, nq]` (15 or 31).
//!
//! llama.cpp's reference rounding spans the block's minimum to maximum. Our search tries that range and a few
//! shrunk ones, refits `(d, m)` of each candidate's codes by weighted least squares (a 2x2 system), keeps the
//! candidate that explains the most energy, then alternates code assignment and refit (Lloyd) before rounding
//! both to float16. The weighted search then assigns the final codes with them; the unweighted one keeps the
//! codes of its last pass (`(d, m)` is their least-squares fit, so only its float16 rounding separates it from
//! their optimum; assigning them again bought too little for a full pass).

use super::block32::{
    codes4, codes5, encode_row, f16_bits, first_block, read_f16, Payload, QuadEncoder, RowResult,
    QK,
};
use super::lanes::{lanes_entry, Lanes, LanesExt, Quad};
use super::{BlockCodec, OutOfRange};

/// An affine type's code range, search and payload.
pub(super) struct Affine {
    /// Largest code.
    nq: f32,
    /// Candidate ranges `[lo + a * span, hi - b * span]` as `(a, b)`, without and with importance; `(0, 0)`,
    /// llama.cpp's reference, comes first.
    shrinks: [&'static [(f32, f32)]; 2],
    /// Lloyd rounds after the candidate search, without and with importance.
    lloyd: [usize; 2],
    /// Whether the final codes are assigned again at the float16 `(d, m)`, without and with importance (else the
    /// last pass's codes are kept).
    recode: [bool; 2],
    payload: Payload,
}

/// The importance-weighted search: a 7 x 7 grid of shrinks (a weighted error is dominated by few elements, so
/// the unweighted search's few candidates miss its optimum; llama.cpp's own imatrix search is as broad).
const WEIGHTED_SHRINKS: [(f32, f32); 49] = {
    const STEPS: [f32; 7] = [0.0, 0.02, 0.04, 0.07, 0.1, 0.14, 0.2];
    let mut grid = [(0.0, 0.0); 49];
    let mut i = 0;
    while i < 49 {
        grid[i] = (STEPS[i / 7], STEPS[i % 7]);
        i += 1;
    }
    grid
};

// Unweighted search sizes measured on the standard tensor (4096 x 4096, 2 threads) against llama.cpp's reference
// quantizer, a single pass: a row's fixed costs take about as long as llama.cpp's whole quantizer on one thread,
// and each candidate or Lloyd round adds a fifth to a quarter. rel-MSE here, llama.cpp's in brackets.
const Q4_1: Affine = Affine {
    nq: 15.0,
    // llama.cpp's range refitted, its codes kept: 5.81e-3 (6.19e-3); assigning the codes again at the refitted
    // range gave 5.67e-3 (that search, whose quality sums were trees, took 1.3x the time). Earlier, with the codes
    // assigned again: a shrunk range (0.05 of the span off the top) gave 5.35e-3 for 20% more time, three ranges
    // 5.20e-3 for 40% more, a Lloyd round 5.46e-3 for 25% more
    shrinks: [&[(0.0, 0.0)], &WEIGHTED_SHRINKS],
    lloyd: [0, 2],
    recode: [false, true],
    payload: Payload::Nibbles,
};
const Q5_1: Affine = Affine {
    nq: 31.0,
    // one Lloyd round, its codes kept: 1.30e-3 (1.45e-3); assigning them again at the float16 (d, m) gave 1.29e-3
    // (that search, whose quality sums were trees, took 1.3x the time); a second round gives 1.28e-3 (1.27e-3
    // with the codes assigned again), none 1.37e-3
    shrinks: [&[(0.0, 0.0)], &WEIGHTED_SHRINKS],
    lloyd: [1, 2],
    recode: [false, true],
    payload: Payload::HighBitsNibbles,
};

/// A quad's searched scales, minima (float16 values) and codes.
type Found<V> = (V, V, Quad<V>);

/// Sums over each block that do not depend on the codes.
#[derive(Clone, Copy)]
struct Moments<V> {
    /// `Σ w`
    sw: V,
    /// `Σ w x`
    sx: V,
}

/// A least-squares fit of a block's codes, kept as fractions over `det` so that comparing candidates needs no
/// division: `d = d_num / det`, `m = m_num / det`, and the energy the fit explains (the error is `Σwx² - score`)
/// is `score_num / det`.
#[derive(Clone, Copy)]
struct Fit<V> {
    d_num: V,
    m_num: V,
    score_num: V,
    det: V,
    /// Lanes where the 2x2 system is well posed.
    ok: u16,
}

/// Sum of the eight vectors of a quad, per block.
#[inline(always)]
fn block_sum<L: Lanes>(l: L, v: &Quad<L::V>) -> L::V {
    l.group_sum(l.quad_sum(v))
}

impl Affine {
    /// Codes of `x` for minimum `m` and scale reciprocal `inv`: `round(clamp(x * inv - m * inv, 0, nq))`.
    #[inline(always)]
    fn codes<L: Lanes>(&self, l: L, x: &Quad<L::V>, m: L::V, inv: L::V) -> Quad<L::V> {
        let (lo, hi) = (l.splat(0.0), l.splat(self.nq));
        let shift = l.mul(l.sub(lo, m), inv);
        let mut q = *x;
        for j in 0..8 {
            q[j] = l.round(l.clamp(l.fma(x[j], inv, shift), lo, hi));
        }
        q
    }

    /// The searched scale and minimum of each block (float16 values) and the codes, for `N` quads at once: each
    /// step runs over the quads before the next, so that their dependency chains interleave (one quad alone is
    /// latency-bound).
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // quads index several arrays at once
    fn search<L: Lanes, const W: bool, const N: usize>(
        &self,
        l: L,
        x: &[Quad<L::V>; N],
        w: &[Quad<L::V>; N],
    ) -> [Found<L::V>; N] {
        let one = l.splat(1.0);
        let mut lo = [one; N];
        let mut span = [one; N];
        let mut inv_span = [one; N];
        for k in 0..N {
            let (a, b) = l.quad_min_max(&x[k]);
            lo[k] = l.group_min(a);
            span[k] = l.sub(l.group_max(b), lo[k]);
            inv_span[k] = l.recip_or_zero(span[k]);
        }
        let mut wx = *x;
        if W {
            for k in 0..N {
                for j in 0..8 {
                    wx[k][j] = l.mul(w[k][j], x[k][j]);
                }
            }
        }
        // (plain loops, not `array::from_fn`: a closure would not inherit the target features)
        let sw = l.splat(QK as f32);
        let mut mo = [Moments { sw, sx: sw }; N];
        // llama.cpp's range until a candidate fits; `best` is the incumbent as fractions over `best.det`
        let mut best = [Fit {
            d_num: one,
            m_num: one,
            score_num: l.splat(f32::MIN),
            det: one,
            ok: 0,
        }; N];
        for k in 0..N {
            if W {
                mo[k].sw = block_sum(l, &w[k]);
            }
            mo[k].sx = block_sum(l, &wx[k]);
            best[k].d_num = l.mul(span[k], l.splat(1.0 / self.nq));
            best[k].m_num = lo[k];
        }
        let lloyd = self.lloyd[usize::from(W)];
        // the codes of the last pass, kept when the final ones are not assigned again: without Lloyd rounds the
        // best candidate's (the first, llama.cpp's range, where none fits: the range the search then keeps)
        let keep = !self.recode[usize::from(W)];
        let mut kept = *x;
        for (i, &(a, b)) in self.shrinks[usize::from(W)].iter().enumerate() {
            for k in 0..N {
                let cl = l.fma(span[k], l.splat(a), lo[k]);
                let inv = l.mul(inv_span[k], l.splat(self.nq / (1.0 - a - b)));
                let q = self.codes(l, &x[k], cl, inv);
                let f = fit::<L, W>(l, &mo[k], &wx[k], &w[k], &q);
                let bk = &best[k];
                let better = f.ok & l.gt(l.mul(f.score_num, bk.det), l.mul(bk.score_num, f.det));
                if keep && lloyd == 0 {
                    for j in 0..8 {
                        kept[k][j] = if i == 0 {
                            q[j]
                        } else {
                            l.select(better, q[j], kept[k][j])
                        };
                    }
                }
                best[k] = Fit {
                    d_num: l.select(better, f.d_num, bk.d_num),
                    m_num: l.select(better, f.m_num, bk.m_num),
                    score_num: l.select(better, f.score_num, bk.score_num),
                    det: l.select(better, f.det, bk.det),
                    ok: bk.ok | better,
                };
            }
        }
        let mut d = [one; N];
        let mut m = [one; N];
        for k in 0..N {
            let r = l.div(one, best[k].det);
            (d[k], m[k]) = (l.mul(best[k].d_num, r), l.mul(best[k].m_num, r));
        }
        for _ in 0..lloyd {
            for k in 0..N {
                let q = self.codes(l, &x[k], m[k], l.recip_or_zero(d[k]));
                let f = fit::<L, W>(l, &mo[k], &wx[k], &w[k], &q);
                let r = l.div(one, f.det);
                d[k] = l.select(f.ok, l.mul(f.d_num, r), d[k]);
                m[k] = l.select(f.ok, l.mul(f.m_num, r), m[k]);
                kept[k] = q;
            }
        }
        let mut out = [(one, one, x[0]); N];
        for k in 0..N {
            let (d, m) = (l.to_f16(d[k]), l.to_f16(m[k]));
            let q = if keep {
                kept[k]
            } else {
                self.codes(l, &x[k], m, l.recip_or_zero(d))
            };
            out[k] = (d, m, q);
        }
        out
    }

    /// Writes the blocks of one quad from its searched `(d, m, codes)` and returns its reconstruction.
    #[inline(always)]
    fn write<L: Lanes>(
        &self,
        l: L,
        (d, m, q): Found<L::V>,
        out: &mut [u8],
    ) -> Result<Quad<L::V>, usize> {
        let limit = l.splat(65504.0);
        if let Some(k) = first_block(l.gt(l.abs(d), limit) | l.gt(l.abs(m), limit)) {
            return Err(k);
        }
        let bb = self.block_bytes();
        let (ds, ms) = (f16_bits(l, d), f16_bits(l, m));
        for k in 0..4 {
            out[k * bb..k * bb + 2].copy_from_slice(&ds[k]);
            out[k * bb + 2..k * bb + 4].copy_from_slice(&ms[k]);
        }
        self.payload.write(l, q, out, bb, 4);
        let mut y = q;
        for j in 0..8 {
            // the decoder's `(q * d) + m`, each rounded
            y[j] = l.add(l.mul(q[j], d), m);
        }
        Ok(y)
    }
}

/// The least-squares `(d, m)` of codes `q`.
#[inline(always)]
fn fit<L: Lanes, const W: bool>(
    l: L,
    mo: &Moments<L::V>,
    wx: &Quad<L::V>,
    w: &Quad<L::V>,
    q: &Quad<L::V>,
) -> Fit<L::V> {
    let sxq = l.block_dot(wx, q);
    let (sq, sqq) = if W {
        let mut wq = *q;
        for j in 0..8 {
            wq[j] = l.mul(w[j], q[j]);
        }
        (block_sum(l, &wq), l.block_dot(&wq, q))
    } else {
        (block_sum(l, q), l.block_dot(q, q))
    };
    let det = l.sub(l.mul(mo.sw, sqq), l.mul(sq, sq));
    // a system that only rounding keeps away from singular is not trusted
    let ok = l.gt(det, l.mul(l.mul(mo.sw, sqq), l.splat(1e-5)));
    let d_num = l.sub(l.mul(mo.sw, sxq), l.mul(sq, mo.sx));
    let m_num = l.sub(l.mul(sqq, mo.sx), l.mul(sq, sxq));
    let score_num = l.add(l.mul(d_num, sxq), l.mul(m_num, mo.sx));
    Fit {
        d_num,
        m_num,
        score_num,
        det,
        ok,
    }
}

impl QuadEncoder for Affine {
    fn block_bytes(&self) -> usize {
        4 + self.payload.len()
    }

    #[inline(always)]
    fn encode<L: Lanes, const W: bool>(
        &self,
        l: L,
        x: &Quad<L::V>,
        w: &Quad<L::V>,
        out: &mut [u8],
    ) -> Result<Quad<L::V>, usize> {
        let [found] = self.search::<L, W, 1>(l, &[*x], &[*w]);
        self.write(l, found, out)
    }

    #[inline(always)]
    fn encode_pair<L: Lanes, const W: bool>(
        &self,
        l: L,
        x: &[Quad<L::V>; 2],
        w: &[Quad<L::V>; 2],
        out: &mut [u8],
    ) -> Result<[Quad<L::V>; 2], usize> {
        let [a, b] = self.search::<L, W, 2>(l, x, w);
        let (oa, ob) = out.split_at_mut(4 * self.block_bytes());
        Ok([
            self.write(l, a, oa)?,
            self.write(l, b, ob).map_err(|k| 4 + k)?,
        ])
    }
}

#[inline(always)]
fn q4_1_kernel<L: Lanes>(l: L, x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> RowResult {
    encode_row(l, &Q4_1, x, w, out)
}

#[inline(always)]
fn q5_1_kernel<L: Lanes>(l: L, x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> RowResult {
    encode_row(l, &Q5_1, x, w, out)
}

lanes_entry! {
    fn q4_1_row(x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> RowResult = q4_1_kernel
}
lanes_entry! {
    fn q5_1_row(x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> RowResult = q5_1_kernel
}

/// `block_q4_1`: `d`, `m`, then 16 bytes of nibbles.
pub(super) struct Q4_1Codec;
/// `block_q5_1`: `d`, `m`, the 32 high bits `qh`, then 16 bytes of low nibbles.
pub(super) struct Q5_1Codec;

impl BlockCodec for Q4_1Codec {
    fn quantize_row(&self, x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> Result<(), OutOfRange> {
        q4_1_row(x, w, out).map(drop)
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
        q4_1_row(x, w, out)
    }

    fn dequantize_row(&self, blocks: &[u8], out: &mut [f32]) {
        for (b, y) in blocks.chunks_exact(20).zip(out.chunks_exact_mut(QK)) {
            let (d, m) = (read_f16(b, 0), read_f16(b, 2));
            for (y, q) in y.iter_mut().zip(codes4(&b[4..20])) {
                *y = f32::from(q) * d + m;
            }
        }
    }
}

impl BlockCodec for Q5_1Codec {
    fn quantize_row(&self, x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> Result<(), OutOfRange> {
        q5_1_row(x, w, out).map(drop)
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
        q5_1_row(x, w, out)
    }

    fn dequantize_row(&self, blocks: &[u8], out: &mut [f32]) {
        for (b, y) in blocks.chunks_exact(24).zip(out.chunks_exact_mut(QK)) {
            let (d, m) = (read_f16(b, 0), read_f16(b, 2));
            for (y, q) in y.iter_mut().zip(codes5(&b[4..8], &b[8..24])) {
                *y = f32::from(q) * d + m;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec_tests::sample_row;
    use super::super::lanes::Portable;
    use super::*;

    type Kernel = fn(Portable, &[f32], Option<&[f32]>, &mut [u8]) -> RowResult;
    type Row = fn(&[f32], Option<&[f32]>, &mut [u8]) -> RowResult;

    #[test]
    fn every_cpu_path_writes_the_same_bytes() {
        let x = sample_row(32 * 9, 21, 2.0);
        let w: Vec<f32> = (0..x.len()).map(|i| (i % 11) as f32 * 0.3).collect();
        let paths: [(Kernel, Row, usize); 2] =
            [(q4_1_kernel, q4_1_row, 20), (q5_1_kernel, q5_1_row, 24)];
        for (kernel, row, block_bytes) in paths {
            for importance in [None, Some(w.as_slice())] {
                let mut a = vec![0u8; 9 * block_bytes];
                let mut b = a.clone();
                let sa = kernel(Portable, &x, importance, &mut a).unwrap();
                let sb = row(&x, importance, &mut b).unwrap();
                assert_eq!(a, b);
                assert_eq!(sa.ee.to_bits(), sb.ee.to_bits());
            }
        }
    }
}
