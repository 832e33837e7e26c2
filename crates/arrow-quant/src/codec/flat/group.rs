//! Per-group math: range scan, scale / zero-point choice (`rtn`, `mse`), squared error and encoding.
//!
//! Every loop works on fixed-width lane arrays so that the compiler maps it onto SIMD registers; the callers
//! (see `simd.rs`) compile these functions for AVX2 and pick that build at run time.
//!
//! A group is dequantized as `(q - zero) * scale`. Asymmetric groups always include 0 in their range, so the zero
//! point is an integer in `[0, 2^bits - 1]` and exact in float16. Symmetric groups use the signed extreme `m`
//! (`scale = m / -2^(bits-1)`, implicit zero `2^(bits-1)`), so all `2^bits` codes are used.

use crate::config::{BitWidth, ScaleDtype};

/// Width of the lane arrays: 16 f32 = one AVX-512 register or two AVX2 registers.
pub(crate) const LANES: usize = 16;

/// Largest finite float16 value.
pub(crate) const F16_MAX: f32 = 65504.0;
/// Smallest positive normal float16 value.
const F16_MIN_NORMAL: f32 = 6.103_515_6e-5;

/// Range of a group and whether every element was finite.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupScan {
    pub lo: f32,
    pub hi: f32,
    pub finite: bool,
}

/// Scale and zero point of a group, already rounded to their storage type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct GroupParams {
    pub scale: f32,
    pub zero: f32,
}

/// Sums over one group used for the tensor's cosine similarity and relative MSE.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GroupSums {
    /// sum of x^2
    pub xx: f32,
    /// sum of (x - x_hat)^2
    pub ee: f32,
    /// sum of x * x_hat
    pub xy: f32,
    /// sum of x_hat^2
    pub yy: f32,
}

/// The scale does not fit the storage type (only float16 can overflow).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScaleOverflow;

/// How a group's parameters are chosen, fixed for a whole tensor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupRule {
    /// Code width.
    pub bits: BitWidth,
    pub symmetric: bool,
    pub search: bool,
    /// Refine the search result with HQQ (asymmetric groups only).
    pub hqq: bool,
    pub dtype: ScaleDtype,
}

impl GroupRule {
    pub(crate) fn qmax(self) -> f32 {
        self.bits.max_code() as f32
    }

    pub(crate) fn half(self) -> f32 {
        (1u32 << (self.bits.bits() - 1)) as f32
    }
}

#[inline(always)]
pub(crate) fn scan(x: &[f32]) -> GroupScan {
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let mut bad = [0u32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            let v = c[i];
            lo[i] = if v < lo[i] { v } else { lo[i] };
            hi[i] = if v > hi[i] { v } else { hi[i] };
            bad[i] |= u32::from(v.to_bits() & 0x7f80_0000 == 0x7f80_0000);
        }
    }
    for (i, &v) in chunks.remainder().iter().enumerate() {
        lo[i] = if v < lo[i] { v } else { lo[i] };
        hi[i] = if v > hi[i] { v } else { hi[i] };
        bad[i] |= u32::from(v.to_bits() & 0x7f80_0000 == 0x7f80_0000);
    }
    let mut out = GroupScan {
        lo: lo[0],
        hi: hi[0],
        finite: true,
    };
    for i in 0..LANES {
        out.lo = if lo[i] < out.lo { lo[i] } else { out.lo };
        out.hi = if hi[i] > out.hi { hi[i] } else { out.hi };
        out.finite &= bad[i] == 0;
    }
    out
}

/// Rounds a positive scale to the storage type, upwards, so the group's extreme still maps inside the code range.
/// A float16 result above 65504 means the scale overflows; callers check with [`scale_fits`].
#[inline(always)]
pub(crate) fn round_scale_up(v: f32, dtype: ScaleDtype) -> f32 {
    match dtype {
        ScaleDtype::F32 => v,
        ScaleDtype::F16 => {
            // Normal float16: clear the 13 mantissa bits it does not keep, rounding up if any was set.
            let normal = f32::from_bits((v.to_bits() + 0x1fff) & !0x1fff);
            // Subnormal float16: multiples of 2^-24.
            let subnormal = (v * 16_777_216.0).ceil() * (1.0 / 16_777_216.0);
            if v >= F16_MIN_NORMAL {
                normal
            } else {
                subnormal
            }
        }
    }
}

/// False when a scale rounded by [`round_scale_up`] does not fit the storage type, or when it or its reciprocal
/// is not finite (a float32 scale of a range near `f32::MAX`, or of subnormal values).
#[inline(always)]
pub(crate) fn scale_fits(scale: f32, dtype: ScaleDtype) -> bool {
    scale.is_finite()
        && (1.0 / scale).is_finite()
        && (dtype == ScaleDtype::F32 || scale.abs() <= F16_MAX)
}

/// Parameters for an asymmetric group clipped to `[lo, hi]` (the range is widened to include 0). Branch-free,
/// so that the `mse` search can evaluate many candidates in one vector.
#[inline(always)]
pub(crate) fn asym_params(lo: f32, hi: f32, rule: GroupRule) -> GroupParams {
    let lo = if lo < 0.0 { lo } else { 0.0 };
    let hi = if hi > 0.0 { hi } else { 0.0 };
    let span = hi - lo;
    let scale = round_scale_up(span / rule.qmax(), rule.dtype);
    let scale = if span > 0.0 { scale } else { 1.0 };
    let zero = (-lo / scale).round_ties_even();
    let zero = if zero > rule.qmax() {
        rule.qmax()
    } else {
        zero
    };
    GroupParams { scale, zero }
}

/// Parameters for a symmetric group whose extreme (the element of largest magnitude, with its sign) is `m`.
#[inline(always)]
pub(crate) fn sym_params(m: f32, rule: GroupRule) -> GroupParams {
    let half = rule.half();
    let magnitude = round_scale_up(m.abs() / half, rule.dtype);
    let scale = if m > 0.0 { -magnitude } else { magnitude };
    GroupParams {
        scale: if m == 0.0 { 1.0 } else { scale },
        zero: half,
    }
}

/// Parameters that reproduce a constant group `c` exactly (when `c` is representable in the storage type).
#[inline(always)]
fn constant_params(c: f32, rule: GroupRule) -> GroupParams {
    if rule.symmetric {
        return sym_params(c, rule);
    }
    if c == 0.0 {
        return GroupParams {
            scale: 1.0,
            zero: 0.0,
        };
    }
    // Code 0 with zero point -1 (or +1) dequantizes to +scale (or -scale).
    let magnitude = match rule.dtype {
        ScaleDtype::F32 => c.abs(),
        ScaleDtype::F16 => half::f16::from_f32(c.abs()).to_f32(),
    };
    GroupParams {
        scale: magnitude,
        zero: if c > 0.0 { -1.0 } else { 1.0 },
    }
}

/// The signed extreme of a group: the element of largest magnitude.
#[inline(always)]
pub(crate) fn signed_extreme(s: GroupScan) -> f32 {
    if -s.lo > s.hi {
        s.lo
    } else {
        s.hi
    }
}

/// Chooses the parameters of one group: min/max (`rtn`), then the clipping search when `rule.search`, then
/// HQQ when `rule.hqq`; `w` weights the squared error of the searches (one weight per element).
#[inline(always)]
pub(crate) fn choose_params(
    x: &[f32],
    s: GroupScan,
    rule: GroupRule,
    w: Option<&[f32]>,
) -> Result<GroupParams, ScaleOverflow> {
    if s.lo == s.hi {
        let p = constant_params(s.lo, rule);
        return if p.scale.is_finite() {
            Ok(p)
        } else {
            Err(ScaleOverflow)
        };
    }
    let base = if rule.symmetric {
        sym_params(signed_extreme(s), rule)
    } else {
        asym_params(s.lo, s.hi, rule)
    };
    if !scale_fits(base.scale, rule.dtype) {
        return Err(ScaleOverflow);
    }
    if !rule.search {
        return Ok(base);
    }
    // Candidates only shrink the range, so their scales fit whenever the base scale does.
    let best = super::mse::search(x, s, rule, w);
    if rule.hqq && !rule.symmetric {
        let p = super::hqq::optimize(x, w, best, rule);
        // HQQ may grow the scale: keep the search result if the refit does not fit the storage type.
        return Ok(if scale_fits(p.scale, rule.dtype) {
            p
        } else {
            best
        });
    }
    Ok(best)
}

/// Adding 1.5 * 2^23 to a float in (-2^22, 2^22) rounds it to an integer (ties to even) held in the low
/// mantissa bits, so the code is a bit cast away and no float-to-int conversion is needed.
pub(crate) const MAGIC: f32 = 12_582_912.0;
const MAGIC_BITS: u32 = 0x4B40_0000;

/// Rounds and clamps `v / scale + zero` to `[0, qmax]`, in the `MAGIC` domain: the result minus `MAGIC` is the
/// code as a float, and its low bits are the code.
#[inline(always)]
pub(crate) fn quantize_magic(v: f32, inv_scale: f32, zero_magic: f32, qmax_magic: f32) -> f32 {
    let t = v * inv_scale + zero_magic;
    let t = if t < MAGIC { MAGIC } else { t };
    if t > qmax_magic {
        qmax_magic
    } else {
        t
    }
}

/// Writes the codes of the group under `p` and returns the sums for the quality metrics.
#[inline(always)]
pub(crate) fn encode(x: &[f32], p: GroupParams, rule: GroupRule, codes: &mut [u8]) -> GroupSums {
    let inv = 1.0 / p.scale;
    let zm = p.zero + MAGIC;
    if zm - MAGIC == p.zero {
        // Integer zero point: one rounding, `v / s + z` to the nearest code; `t - zm` is exact here.
        encode_integer_zero(x, p, rule, codes, inv, zm)
    } else {
        // `hqq` zero points are fractional: add the zero before MAGIC, which rounds to an integer.
        encode_with(x, codes, p, |v| {
            quantize_magic(v * inv + p.zero, 1.0, MAGIC, rule.qmax() + MAGIC)
        })
    }
}

/// [`encode`] for an integer zero point: the hot path of `rtn` and `mse`, kept free of closures so that it
/// vectorises fully.
#[inline(always)]
fn encode_integer_zero(
    x: &[f32],
    p: GroupParams,
    rule: GroupRule,
    codes: &mut [u8],
    inv: f32,
    zm: f32,
) -> GroupSums {
    let qm = rule.qmax() + MAGIC;
    let mut xx = [0f32; LANES];
    let mut ee = [0f32; LANES];
    let mut yy = [0f32; LANES];
    let mut xs = x.chunks_exact(LANES);
    let mut cs = codes.chunks_exact_mut(LANES);
    for (c, out) in (&mut xs).zip(&mut cs) {
        for i in 0..LANES {
            let v = c[i];
            let t = quantize_magic(v, inv, zm, qm);
            out[i] = (t.to_bits() - MAGIC_BITS) as u8;
            let y = (t - zm) * p.scale;
            let e = v - y;
            xx[i] += v * v;
            ee[i] += e * e;
            yy[i] += y * y;
        }
    }
    for (i, (&v, out)) in xs.remainder().iter().zip(cs.into_remainder()).enumerate() {
        let t = quantize_magic(v, inv, zm, qm);
        *out = (t.to_bits() - MAGIC_BITS) as u8;
        let y = (t - zm) * p.scale;
        let e = v - y;
        xx[i] += v * v;
        ee[i] += e * e;
        yy[i] += y * y;
    }
    sums(&xx, &ee, &yy)
}

/// [`encode`] with the rounding `round` (returning the code in the `MAGIC` domain).
#[inline(always)]
fn encode_with(
    x: &[f32],
    codes: &mut [u8],
    p: GroupParams,
    round: impl Fn(f32) -> f32,
) -> GroupSums {
    let mut xx = [0f32; LANES];
    let mut ee = [0f32; LANES];
    let mut yy = [0f32; LANES];
    let mut xs = x.chunks_exact(LANES);
    let mut cs = codes.chunks_exact_mut(LANES);
    let step = |v: f32, out: &mut u8, xx: &mut f32, ee: &mut f32, yy: &mut f32| {
        let t = round(v);
        *out = (t.to_bits() - MAGIC_BITS) as u8;
        // Exactly the dequantization `(code - zero) * scale`.
        let y = ((t - MAGIC) - p.zero) * p.scale;
        let e = v - y;
        *xx += v * v;
        *ee += e * e;
        *yy += y * y;
    };
    for (c, out) in (&mut xs).zip(&mut cs) {
        for i in 0..LANES {
            step(c[i], &mut out[i], &mut xx[i], &mut ee[i], &mut yy[i]);
        }
    }
    for (i, (&v, out)) in xs.remainder().iter().zip(cs.into_remainder()).enumerate() {
        step(v, out, &mut xx[i], &mut ee[i], &mut yy[i]);
    }
    sums(&xx, &ee, &yy)
}

/// The group's sums from the lane accumulators.
#[inline(always)]
fn sums(xx: &[f32; LANES], ee: &[f32; LANES], yy: &[f32; LANES]) -> GroupSums {
    let (xx, ee, yy): (f32, f32, f32) = (xx.iter().sum(), ee.iter().sum(), yy.iter().sum());
    GroupSums {
        xx,
        ee,
        // x.y from the other three sums: ||x - y||^2 = ||x||^2 - 2 x.y + ||y||^2.
        xy: 0.5 * (xx + yy - ee),
        yy,
    }
}

/// Below this sum of squares the lane sums of [`encode`] (f32) may have lost precision to subnormals.
pub(crate) const TINY_SUM: f32 = 1e-30;

impl GroupSums {
    /// True when these f32 sums can be trusted: finite (no square overflowed) and not in subnormal territory
    /// (an all-zero group, whose sums are exactly 0, is for the caller to recognise).
    #[inline(always)]
    pub(crate) fn trustworthy(&self) -> bool {
        self.xx.is_finite() && self.ee.is_finite() && self.yy.is_finite() && self.xx >= TINY_SUM
    }
}

/// The quality sums of a group in f64 from its codes, exactly as dequantization reconstructs it: the slow path
/// taken when the f32 sums of [`encode`] overflowed or underflowed. `None` when the reconstruction of an
/// element is not finite (the encoding cannot represent this group).
#[cold]
pub(crate) fn exact_sums(x: &[f32], codes: &[u8], p: GroupParams) -> Option<[f64; 4]> {
    let mut s = [0f64; 4];
    for (&v, &c) in x.iter().zip(codes) {
        let y = (f32::from(c) - p.zero) * p.scale;
        if !y.is_finite() {
            return None;
        }
        let (a, b) = (f64::from(v), f64::from(y));
        s[0] += a * a;
        s[1] += (a - b) * (a - b);
        s[2] += a * b;
        s[3] += b * b;
    }
    Some(s)
}

/// Dequantizes one group's codes: `out[i] = (codes[i] - zero) * scale`.
#[inline(always)]
pub(crate) fn decode(codes: &[u8], p: GroupParams, out: &mut [f32]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = (f32::from(c) - p.zero) * p.scale;
    }
}

/// The exact (f64) squared error of a group encoded with `p`: the yardstick of the search tests.
#[cfg(test)]
pub(crate) fn exact_sq_error(x: &[f32], p: GroupParams, rule: GroupRule) -> f64 {
    let mut codes = vec![0u8; x.len()];
    encode(x, p, rule, &mut codes);
    x.iter()
        .zip(&codes)
        .map(|(&v, &q)| {
            (f64::from(v) - (f64::from(q) - f64::from(p.zero)) * f64::from(p.scale)).powi(2)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_rounds_up_to_float16() {
        for v in [1e-7f32, 3e-5, 0.1, 0.3333, 1.0, 123.456, 65000.0] {
            let r = round_scale_up(v, ScaleDtype::F16);
            assert!(r >= v, "{v} -> {r}");
            assert_eq!(half::f16::from_f32(r).to_f32(), r, "{r} is a float16 value");
            assert!(scale_fits(r, ScaleDtype::F16));
        }
        assert!(!scale_fits(
            round_scale_up(70000.0, ScaleDtype::F16),
            ScaleDtype::F16
        ));
    }

    #[test]
    fn scan_finds_range_and_non_finite() {
        let mut x: Vec<f32> = (0..37).map(|i| i as f32 - 10.0).collect();
        let s = scan(&x);
        assert_eq!((s.lo, s.hi, s.finite), (-10.0, 26.0, true));
        x[33] = f32::NAN;
        assert!(!scan(&x).finite);
        x[33] = f32::NEG_INFINITY;
        assert!(!scan(&x).finite);
    }

    #[test]
    fn asymmetric_zero_point_is_an_exact_integer_code() {
        let rule = GroupRule {
            bits: BitWidth::Int4,
            symmetric: false,
            search: false,
            hqq: false,
            dtype: ScaleDtype::F16,
        };
        for (lo, hi) in [(-1.0f32, 3.0f32), (0.5, 2.0), (-7.0, -0.25)] {
            let p = asym_params(lo, hi, rule);
            assert!(
                p.zero >= 0.0 && p.zero <= 15.0 && p.zero.fract() == 0.0,
                "{p:?}"
            );
        }
    }
}
