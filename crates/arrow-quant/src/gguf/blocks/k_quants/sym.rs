//! The parameter search of the symmetric K-quants (Q3_K, Q6_K: `x = (d * sc) * q`, codes `q` in
//! `-nmax..nmax-1`, signed integer sub-block scales `sc` under a float16 super-block scale `d`), one super-block
//! of sixteen 16-element sub-blocks per tile, one sub-block per SIMD lane:
//! 1. per sub-block, candidate steps that map its element of largest magnitude to about `-nmax` (the longer
//!    end of the code range): round the codes, take the weighted least-squares scale for them, keep the one of
//!    least weighted squared error, refit once from its codes;
//! 2. the float16 super-block scale `d` of least weighted rounding error of the sub-block scales on the grid
//!    `d * {-fneg..fpos}`, among a few candidates near the largest scale over `fneg`;
//! 3. a few rounds: re-round the codes with the quantized steps, refit `d` by least squares over the
//!    super-block, round each sub-block's least-squares scale to the nearest field.
//!
//! The codes under the final steps are then the nearest to each element, and the quality sums are computed from
//! the values exactly as decoding computes them.

use super::transpose::to_lanes;
use super::QK_K;
use crate::codec::flat::group::{F16_MAX, LANES, MAGIC};
use crate::codec::two_level::search::argmin;
use crate::gguf::blocks::OutOfRange;

/// Elements of a sub-block.
const SUB: usize = 16;

/// Steps below this are treated as zero (their inverse would overflow).
const TINY: f32 = 1e-30;

/// A type's geometry and search effort.
pub(super) struct SymSearch {
    /// Codes run from `-nmax` to `nmax - 1`.
    pub nmax: f32,
    /// Sub-block scale fields run from `-fneg` to `fneg - 1`.
    pub fneg: f32,
    /// Candidate steps of the first stage.
    pub candidates: usize,
    /// First candidate maps the largest magnitude to `-(nmax + rmin)`.
    pub rmin: f32,
    /// Candidate `c` adds `rdelta * c` to it.
    pub rdelta: f32,
    /// Candidate super-block scales of the second stage (at most 16).
    pub grid: usize,
    /// Rounds of the third stage.
    pub rounds: usize,
}

/// One super-block's result: the super-block scale, the sixteen scale fields and the codes plus `nmax`.
pub(super) struct SymBlock {
    pub d: f32,
    pub sc: [i8; 16],
    pub codes: [u8; QK_K],
}

type Lanes = [f32; LANES];

/// A lane array from a function of the lane index (always inlined, so compiled with the caller's features).
#[inline(always)]
fn lanes(f: impl Fn(usize) -> f32) -> Lanes {
    let mut a = [0.0; LANES];
    for (l, v) in a.iter_mut().enumerate() {
        *v = f(l);
    }
    a
}

/// The inverse step (0 for a zero step).
#[inline(always)]
fn inverse(s: f32) -> f32 {
    if s.abs() > TINY {
        1.0 / s
    } else {
        0.0
    }
}

/// `v` limited to `lo..=hi` (plain comparisons, which vectorise).
#[inline(always)]
fn clamp(v: f32, lo: f32, hi: f32) -> f32 {
    let v = if v < lo { lo } else { v };
    if v > hi {
        hi
    } else {
        v
    }
}

/// Smallest normal float16.
const F16_MIN_NORMAL: f32 = 6.103_515_6e-5;

/// `v` rounded to the nearest float16 value (ties to even, infinite beyond the float16 range, NaN kept), as f32:
/// plain arithmetic on the bits, which vectorises (`half`'s conversion is a call per value outside an F16C build).
#[inline(always)]
fn to_f16(v: f32) -> f32 {
    let bits = v.to_bits();
    let ab = bits & 0x7fff_ffff;
    let a = f32::from_bits(ab);
    // Normal float16: keep 10 mantissa bits, ties to even (a carry moves into the exponent, as it should).
    let normal = f32::from_bits((ab + 0x0fff + ((ab >> 13) & 1)) & !0x1fff);
    // Subnormal float16: multiples of 2^-24.
    let subnormal = (a * 16_777_216.0).round_ties_even() * (1.0 / 16_777_216.0);
    let r = if a < F16_MIN_NORMAL {
        subnormal
    } else {
        normal
    };
    let r = if r > F16_MAX { f32::INFINITY } else { r };
    let r = if a.is_nan() { a } else { r };
    f32::from_bits(r.to_bits() | (bits & 0x8000_0000))
}

/// One super-block, transposed: `x[i][lane]` is element `i` of sub-block `lane`.
struct Tile {
    x: [[f32; LANES]; SUB],
    w: [[f32; LANES]; SUB],
}

/// Weighted sums `sum w x q`, `sum w q q` per lane for the codes `clamp(round(x * inv), -nmax, nmax - 1)`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lanes index several arrays at once
fn code_pass<const W: bool>(t: &Tile, inv: &Lanes, nmax: f32) -> (Lanes, Lanes) {
    let (lo, hi) = (-nmax, nmax - 1.0);
    let mut sxq = [0.0f32; LANES];
    let mut sqq = [0.0f32; LANES];
    for i in 0..SUB {
        for l in 0..LANES {
            let x = t.x[i][l];
            let v = (x * inv[l]).round_ties_even();
            let v = if v < lo { lo } else { v };
            let q = if v > hi { hi } else { v };
            let wq = if W { t.w[i][l] * q } else { q };
            sxq[l] = wq.mul_add(x, sxq[l]);
            sqq[l] = wq.mul_add(q, sqq[l]);
        }
    }
    (sxq, sqq)
}

/// Searches one super-block (`W`: weighted; without, every weight is taken as 1). `None` when its super-block
/// scale would not be finite as float16.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lanes index several arrays at once
fn search_block<const W: bool>(
    s: &SymSearch,
    xs: &[f32],
    t: &Tile,
    out: &mut SymBlock,
) -> Option<[f32; 3]> {
    let nmax = s.nmax;
    let fneg = s.fneg;
    // Element of largest magnitude per sub-block (signed), and the block's range.
    let mut am = [0.0f32; LANES];
    let mut mn = t.x[0];
    let mut mx = t.x[0];
    for i in 0..SUB {
        for l in 0..LANES {
            let x = t.x[i][l];
            am[l] = if x.abs() > am[l].abs() { x } else { am[l] };
            mn[l] = if x < mn[l] { x } else { mn[l] };
            mx[l] = if x > mx[l] { x } else { mx[l] };
        }
    }
    let (lo, hi) = (
        mn.iter().fold(f32::INFINITY, |a, &v| a.min(v)),
        mx.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)),
    );
    if lo == hi && to_f16(lo) == lo {
        // A constant block of a float16 value: d = c, every field 1, every code 1 reproduces it exactly.
        out.d = lo;
        out.sc = [if lo == 0.0 { 0 } else { 1 }; 16];
        out.codes = [(nmax + if lo == 0.0 { 0.0 } else { 1.0 }) as u8; QK_K];
        let xx = lo * lo * QK_K as f32;
        return Some([xx, 0.0, xx]);
    }
    // Stage 1: sub-block scales.
    let mut best_score = [-1.0f32; LANES];
    let mut best_s = [0.0f32; LANES];
    let keep = |sxq: &Lanes, sqq: &Lanes, best_score: &mut Lanes, best_s: &mut Lanes| {
        for l in 0..LANES {
            let ok = sqq[l] > 0.0;
            let score = if ok { sxq[l] * sxq[l] / sqq[l] } else { 0.0 };
            if score > best_score[l] {
                best_score[l] = score;
                best_s[l] = if ok { sxq[l] / sqq[l] } else { 0.0 };
            }
        }
    };
    for c in 0..s.candidates {
        let target = nmax + s.rmin + s.rdelta * c as f32;
        let inv = lanes(|l| if am[l] != 0.0 { -target / am[l] } else { 0.0 });
        let (sxq, sqq) = code_pass::<W>(t, &inv, nmax);
        keep(&sxq, &sqq, &mut best_score, &mut best_s);
    }
    let inv = lanes(|l| inverse(best_s[l]));
    let (sxq, sqq) = code_pass::<W>(t, &inv, nmax);
    keep(&sxq, &sqq, &mut best_score, &mut best_s);
    let sens = sqq;
    // Stage 2: the super-block scale.
    let smax = best_s
        .iter()
        .fold(0.0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
    let mut d = 0.0f32;
    if smax != 0.0 {
        let cand = lanes(|c| to_f16(-smax / (fneg - 0.1 * c as f32)));
        let icand = lanes(|c| 1.0 / cand[c]);
        let mut err = [0.0f32; LANES];
        for j in 0..LANES {
            for c in 0..LANES {
                let f = clamp((best_s[j] * icand[c] + MAGIC) - MAGIC, -fneg, fneg - 1.0);
                let e = best_s[j] - cand[c] * f;
                err[c] += sens[j] * e * e;
            }
        }
        d = cand[argmin(&err, s.grid)];
    }
    let field = |v: f32, id: f32| clamp((v * id + MAGIC) - MAGIC, -fneg, fneg - 1.0);
    let id = inverse(d);
    let mut sc = lanes(|l| field(best_s[l], id));
    // Stage 3: rounds.
    for _ in 0..s.rounds {
        let inv = lanes(|l| inverse(d * sc[l]));
        let (sxq, sqq) = code_pass::<W>(t, &inv, nmax);
        let (mut num, mut den) = (0.0f32, 0.0f32);
        for l in 0..LANES {
            num += sc[l] * sxq[l];
            den += sc[l] * sc[l] * sqq[l];
        }
        if den > 0.0 {
            let nd = to_f16(num / den);
            if nd != 0.0 && nd.is_finite() {
                d = nd;
            }
        }
        let id = inverse(d);
        sc = lanes(|l| {
            if sqq[l] > 0.0 {
                field(sxq[l] / sqq[l], id)
            } else {
                sc[l]
            }
        });
    }
    // Also catches a NaN scale.
    if d.is_nan() || d.abs() > F16_MAX {
        return None;
    }
    // Final codes and sums, the values computed exactly as decoding does: (d * sc) * q. In element order (one
    // sub-block per vector), so the codes need no transposing back.
    let step = lanes(|l| d * sc[l]);
    let inv = lanes(|l| inverse(step[l]));
    let (lo, hi) = (MAGIC - nmax, MAGIC + nmax - 1.0);
    let mut xx = [0.0f32; SUB];
    let mut ee = [0.0f32; SUB];
    let mut yy = [0.0f32; SUB];
    let offset = nmax as u8;
    let xs = &xs[..QK_K];
    for j in 0..LANES {
        let (inv, step) = (inv[j], step[j]);
        let xj = &xs[j * SUB..j * SUB + SUB];
        let cj = &mut out.codes[j * SUB..j * SUB + SUB];
        for i in 0..SUB {
            let x = xj[i];
            let v = x * inv + MAGIC;
            let v = if v < lo { lo } else { v };
            let v = if v > hi { hi } else { v };
            let q = v - MAGIC;
            let y = step * q;
            // The low byte of MAGIC + q is q (two's complement).
            cj[i] = (v.to_bits() as u8).wrapping_add(offset);
            let e = x - y;
            xx[i] = x.mul_add(x, xx[i]);
            ee[i] = e.mul_add(e, ee[i]);
            yy[i] = y.mul_add(y, yy[i]);
        }
    }
    out.d = d;
    for l in 0..LANES {
        out.sc[l] = sc[l] as i8;
    }
    Some([xx.iter().sum(), ee.iter().sum(), yy.iter().sum()])
}

/// A symmetric type's block bytes.
pub(super) trait SymLayout {
    /// Bytes of one block.
    const BYTES: usize;

    /// Writes one block (`out` is [`Self::BYTES`] long). A trait method rather than a closure, so that it is
    /// compiled with the SIMD features of the search that calls it.
    fn write_block(blk: &SymBlock, out: &mut [u8]);
}

/// Searches the super-blocks of one row `x` and writes each one's block to `out` in `T`'s layout. Returns the
/// sums of the reconstruction (`sum x^2`, `sum (x - y)^2`, `sum y^2`, f32 per super-block, added up in f64).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lanes index several arrays at once
pub(super) fn search_row<T: SymLayout>(
    s: &SymSearch,
    x: &[f32],
    weights: Option<(&[f32], f32)>,
    out: &mut [u8],
) -> Result<[f64; 3], OutOfRange> {
    let mut t = Tile {
        x: [[0.0; LANES]; SUB],
        w: [[1.0; LANES]; SUB],
    };
    let mut found = SymBlock {
        d: 0.0,
        sc: [0; 16],
        codes: [0; QK_K],
    };
    let mut total = [0f64; 3];
    for (b, xs) in x.chunks_exact(QK_K).enumerate() {
        to_lanes::<SUB>(xs, &mut t.x);
        let sums = match weights {
            None => search_block::<false>(s, xs, &t, &mut found),
            Some((w, scale)) => {
                let ws = &w[b * QK_K..(b + 1) * QK_K];
                to_lanes::<SUB>(ws, &mut t.w);
                for row in t.w.iter_mut() {
                    for v in row.iter_mut() {
                        *v *= scale;
                    }
                }
                search_block::<true>(s, xs, &t, &mut found)
            }
        }
        .ok_or(OutOfRange { block: b })?;
        T::write_block(&found, &mut out[b * T::BYTES..(b + 1) * T::BYTES]);
        for (t, s) in total.iter_mut().zip(sums) {
            *t += f64::from(s);
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn to_f16_rounds_as_the_half_crate_does() {
        let mut v = vec![
            0.0f32,
            -0.0,
            65504.0,
            65519.99,
            65520.0,
            -65520.0,
            1e9,
            f32::INFINITY,
            f32::NEG_INFINITY,
            F16_MIN_NORMAL,
            F16_MIN_NORMAL * 0.99999,
            2.9802322e-8,
            2.9802326e-8,
            1e-10,
            f32::MAX,
            f32::MIN_POSITIVE,
        ];
        let mut s = 0x1234_5678u32;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            // exponents around the float16 range, any mantissa and sign
            v.push(f32::from_bits(
                (s & 0x807f_ffff) | ((96 + (s >> 23) % 48) << 23),
            ));
        }
        for x in v {
            let want = f16::from_f32(x).to_f32();
            assert_eq!(to_f16(x).to_bits(), want.to_bits(), "{x:e}");
        }
        assert!(to_f16(f32::NAN).is_nan());
    }
}
