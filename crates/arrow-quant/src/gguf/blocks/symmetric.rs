//! Q8_0, Q4_0 and Q5_0: one float16 scale `d` per block of 32, element `i` decoded as `d * q[i]` with integer
//! codes `q` in `[-n, nmax]` (Q4_0 `[-8, 7]`, Q5_0 `[-16, 15]`, Q8_0 `[-127, 127]`: ggml never writes -128 and
//! some of its dot-product kernels assume it does not).
//!
//! llama.cpp's reference rounding maps the element of largest magnitude to `-n` and rounds. Our search tries a
//! few scales around that one, refits each candidate's scale by least squares on its codes (`d = Σwxq / Σwq²`,
//! weighted by the importance when given) and keeps the one that explains the most energy (`(Σwxq)² / Σwq²`),
//! then (where the type has Lloyd rounds) alternates code assignment and refit before rounding the scale to
//! float16. The weighted search then assigns the final codes at that scale; the unweighted searches of Q4_0 and
//! Q5_0 keep the codes of their last pass instead (the scale is their least-squares fit, so only its float16
//! rounding separates it from their optimum; assigning them again bought too little for a full pass).

use super::block32::{
    codes5, encode_row, f16_bits, first_block, read_f16, Payload, QuadEncoder, RowResult, QK,
};
use super::lanes::{lanes_entry, Lanes, LanesExt, Quad};
use super::{BlockCodec, OutOfRange};

/// A symmetric type's code range, search and payload.
pub(super) struct Symmetric {
    /// Most negative code, negated.
    n: f32,
    /// Largest code.
    nmax: f32,
    /// Candidate scales, without and with importance: the extreme maps to `-(n + delta)`; 0 is llama.cpp's
    /// reference.
    deltas: [&'static [f32]; 2],
    /// Lloyd rounds after the candidate search, without and with importance.
    lloyd: [usize; 2],
    /// Whether the final codes are assigned again at the float16 scale, without and with importance (else the
    /// last pass's codes are kept).
    recode: [bool; 2],
    /// Added to a code to store it (8 for Q4_0; Q8_0 stores the signed byte).
    offset: f32,
    payload: Payload,
}

/// The importance-weighted search of Q4_0 and Q5_0: sixteen scales (a weighted error is dominated by few
/// elements, so the unweighted search's few candidates miss its optimum; llama.cpp's imatrix search tries 19).
const WEIGHTED_DELTAS: [f32; 16] = {
    let mut d = [0.0; 16];
    let mut i = 0;
    while i < 16 {
        d[i] = -2.0 + 7.0 * i as f32 / 15.0;
        i += 1;
    }
    d
};

/// Q8_0's importance-weighted scales: at 8 bits the error is the lattice's alignment with the values, and larger
/// steps than the extreme's (negative deltas) find better alignments.
const Q8_0_WEIGHTED_DELTAS: &[f32] = &[
    0.0, -0.5, -1.0, -1.5, -2.0, -2.75, -3.5, -4.25, -5.0, -6.0, -7.0, -8.0,
];

// Unweighted search sizes measured on the standard tensor (4096 x 4096, 2 threads) against llama.cpp's reference
// quantizer, which is a single pass: a row's fixed costs (loading, the final codes, packing, the quality sums)
// take about as long as llama.cpp's whole quantizer on one thread, so each candidate or Lloyd round must buy
// enough error to be worth a tenth to a quarter of the time. rel-MSE here, llama.cpp's in brackets.
const Q8_0: Symmetric = Symmetric {
    n: 127.0,
    nmax: 127.0,
    // 2.54e-5 (2.98e-5); the twelve scales and a Lloyd round gave 2.34e-5 at 2.2x the time, one scale 2.87e-5
    deltas: [&[0.0, -1.0, -2.0], Q8_0_WEIGHTED_DELTAS],
    lloyd: [0, 1],
    recode: [true, true],
    offset: 0.0,
    payload: Payload::Bytes,
};
const Q4_0: Symmetric = Symmetric {
    n: 8.0,
    nmax: 7.0,
    // llama.cpp's scale refitted, its codes kept: 7.40e-3 (7.65e-3); assigning the codes again at the refitted
    // scale gave 7.31e-3 for a quarter more time. Earlier (codes assigned again): a second scale (+0.5) gave
    // 7.00e-3 for 10% more time, four 6.91e-3 for 40% more, a Lloyd round 7.18e-3 for 40% more
    deltas: [&[0.0], &WEIGHTED_DELTAS],
    lloyd: [0, 2],
    recode: [false, true],
    offset: 8.0,
    payload: Payload::Nibbles,
};
const Q5_0: Symmetric = Symmetric {
    n: 16.0,
    nmax: 15.0,
    // three scales (the extreme at -16, llama.cpp's, then -15.25 and -16.25), the best one's codes kept. The
    // two without llama.cpp's gave 1.75e-3 (1.89e-3), 0.964 of llama.cpp's error on lighter-tailed rows
    // (codec_tests), but could be worse than its rounding on a block it rounds exactly (test_gguf.py). Earlier
    // (codes assigned again): six scales (0, -1, -0.5, 0.5, 1, 1.5) and a Lloyd round gave 1.69e-3 in 1.5-1.9x
    // the two's time; with codes kept, three (-1, 0, 0.5) give 1.71e-3, the two and a Lloyd round 1.73e-3
    deltas: [&[0.0, -0.75, 0.25], &WEIGHTED_DELTAS],
    lloyd: [0, 2],
    recode: [false, true],
    offset: 16.0,
    payload: Payload::HighBitsNibbles,
};

impl Symmetric {
    /// Codes of `x` at scale reciprocal `inv`: `round(clamp(x * inv, -n, nmax))`.
    #[inline(always)]
    fn codes<L: Lanes>(&self, l: L, x: &Quad<L::V>, inv: L::V) -> Quad<L::V> {
        let (lo, hi) = (l.splat(-self.n), l.splat(self.nmax));
        let mut q = *x;
        for j in 0..8 {
            q[j] = l.round(l.clamp(l.mul(x[j], inv), lo, hi));
        }
        q
    }

    /// The searched scale of each block (already a float16 value) and its codes.
    #[inline(always)]
    fn search<L: Lanes, const W: bool>(
        &self,
        l: L,
        x: &Quad<L::V>,
        w: &Quad<L::V>,
    ) -> (L::V, Quad<L::V>) {
        let zero = l.splat(0.0);
        let (lo, hi) = l.quad_min_max(x);
        let (lo, hi) = (l.group_min(lo), l.group_max(hi));
        // the signed extreme
        let m = l.select(l.gt(l.sub(zero, lo), hi), lo, hi);
        let rm = l.recip_or_zero(m);
        let mut wx = *x;
        if W {
            for j in 0..8 {
                wx[j] = l.mul(w[j], x[j]);
            }
        }
        // candidates compare by (Σwxq)² / Σwq² without dividing: a / b > c / e  <=>  a e > c b (b, e > 0)
        let (mut best_xq, mut best_qq) = (zero, l.splat(1.0));
        let lloyd = self.lloyd[usize::from(W)];
        // the codes of the last pass, kept when the final ones are not assigned again: without Lloyd rounds the
        // best candidate's (a block no candidate fits is all zeros, whose codes every candidate gives)
        let keep = !self.recode[usize::from(W)];
        let mut kept = *x;
        for (i, &delta) in self.deltas[usize::from(W)].iter().enumerate() {
            let q = self.codes(l, x, l.mul(rm, l.splat(-(self.n + delta))));
            let (sxq, sqq) = fit_sums::<L, W>(l, &wx, w, &q);
            let better = l.gt(
                l.mul(l.mul(sxq, sxq), best_qq),
                l.mul(l.mul(best_xq, best_xq), sqq),
            ) & l.gt(sqq, zero);
            best_xq = l.select(better, sxq, best_xq);
            best_qq = l.select(better, sqq, best_qq);
            if keep && lloyd == 0 {
                for j in 0..8 {
                    kept[j] = if i == 0 {
                        q[j]
                    } else {
                        l.select(better, q[j], kept[j])
                    };
                }
            }
        }
        // blocks no candidate fits (all zero, or zero importance) keep llama.cpp's scale
        let fitted = l.gt(l.abs(best_xq), zero);
        let mut d = l.select(
            fitted,
            l.div(best_xq, best_qq),
            l.mul(m, l.splat(-1.0 / self.n)),
        );
        for _ in 0..lloyd {
            let q = self.codes(l, x, l.recip_or_zero(d));
            let (sxq, sqq) = fit_sums::<L, W>(l, &wx, w, &q);
            d = l.select(l.gt(sqq, zero), l.div(sxq, sqq), d);
            kept = q;
        }
        let d = l.to_f16(d);
        if keep {
            return (d, kept);
        }
        (d, self.codes(l, x, l.recip_or_zero(d)))
    }
}

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

impl QuadEncoder for Symmetric {
    fn block_bytes(&self) -> usize {
        2 + self.payload.len()
    }

    #[inline(always)]
    fn encode<L: Lanes, const W: bool>(
        &self,
        l: L,
        x: &Quad<L::V>,
        w: &Quad<L::V>,
        out: &mut [u8],
    ) -> Result<Quad<L::V>, usize> {
        let (d, q) = self.search::<L, W>(l, x, w);
        if let Some(k) = first_block(l.gt(l.abs(d), l.splat(65504.0))) {
            return Err(k);
        }
        let offset = l.splat(self.offset);
        let (mut stored, mut y) = (q, q);
        for j in 0..8 {
            stored[j] = l.add(q[j], offset);
            // the decoder's `d * (code - offset)`
            y[j] = l.mul(d, q[j]);
        }
        let bb = self.block_bytes();
        for (k, s) in f16_bits(l, d).iter().enumerate() {
            out[k * bb..k * bb + 2].copy_from_slice(s);
        }
        self.payload.write(l, stored, out, bb, 2);
        Ok(y)
    }
}

#[inline(always)]
fn q8_0_kernel<L: Lanes>(l: L, x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> RowResult {
    encode_row(l, &Q8_0, x, w, out)
}

#[inline(always)]
fn q4_0_kernel<L: Lanes>(l: L, x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> RowResult {
    encode_row(l, &Q4_0, x, w, out)
}

#[inline(always)]
fn q5_0_kernel<L: Lanes>(l: L, x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> RowResult {
    encode_row(l, &Q5_0, x, w, out)
}

lanes_entry! {
    fn q8_0_row(x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> RowResult = q8_0_kernel
}
lanes_entry! {
    fn q4_0_row(x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> RowResult = q4_0_kernel
}
lanes_entry! {
    fn q5_0_row(x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> RowResult = q5_0_kernel
}

/// `block_q8_0`: `d`, then 32 signed bytes.
pub(super) struct Q8_0Codec;
/// `block_q4_0`: `d`, then 16 bytes of nibbles (codes offset by 8).
pub(super) struct Q4_0Codec;
/// `block_q5_0`: `d`, the 32 high bits `qh`, then 16 bytes of low nibbles (codes offset by 16).
pub(super) struct Q5_0Codec;

impl BlockCodec for Q8_0Codec {
    fn quantize_row(&self, x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> Result<(), OutOfRange> {
        q8_0_row(x, w, out).map(drop)
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
        q8_0_row(x, w, out)
    }

    fn dequantize_row(&self, blocks: &[u8], out: &mut [f32]) {
        for (b, y) in blocks.chunks_exact(34).zip(out.chunks_exact_mut(QK)) {
            let d = read_f16(b, 0);
            for (y, &q) in y.iter_mut().zip(&b[2..]) {
                *y = f32::from(q as i8) * d;
            }
        }
    }
}

impl BlockCodec for Q4_0Codec {
    fn quantize_row(&self, x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> Result<(), OutOfRange> {
        q4_0_row(x, w, out).map(drop)
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
        q4_0_row(x, w, out)
    }

    fn dequantize_row(&self, blocks: &[u8], out: &mut [f32]) {
        for (b, y) in blocks.chunks_exact(18).zip(out.chunks_exact_mut(QK)) {
            let d = read_f16(b, 0);
            let (lo, hi) = y.split_at_mut(16);
            for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[2..]) {
                *l = d * f32::from(i16::from(q & 0x0F) - 8);
                *h = d * f32::from(i16::from(q >> 4) - 8);
            }
        }
    }
}

impl BlockCodec for Q5_0Codec {
    fn quantize_row(&self, x: &[f32], w: Option<&[f32]>, out: &mut [u8]) -> Result<(), OutOfRange> {
        q5_0_row(x, w, out).map(drop)
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
        q5_0_row(x, w, out)
    }

    fn dequantize_row(&self, blocks: &[u8], out: &mut [f32]) {
        for (b, y) in blocks.chunks_exact(22).zip(out.chunks_exact_mut(QK)) {
            let d = read_f16(b, 0);
            let q = codes5(&b[2..6], &b[6..22]);
            for (y, &q) in y.iter_mut().zip(&q) {
                *y = d * f32::from(i16::from(q) - 16);
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
        let paths: [(Kernel, Row, usize); 3] = [
            (q8_0_kernel, q8_0_row, 34),
            (q4_0_kernel, q4_0_row, 18),
            (q5_0_kernel, q5_0_row, 22),
        ];
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
