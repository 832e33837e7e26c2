//! The parameter search of the two-level encodings, sixteen sub-blocks at a time (one per SIMD lane).
//!
//! A tile holds 16 sub-blocks transposed (`x[i][lane]`), with per-element weights (1, or the normalised
//! importance of the element's input channel; 0 for padding). Per sub-block:
//! 1. candidate steps `(qmax + rmin + rdelta * k) / (hi - lo)`: round the codes, fit scale and offset by weighted
//!    least squares given the codes, re-round the codes with the fit and fit again, keep the fit of least
//!    weighted squared error (computed in closed form from the sums);
//! 2. per super-block, the float16 steps `d` and `dmin` of the scale and minimum fields: the grid step of least
//!    squared rounding error among a few candidates near `max / field_max`;
//! 3. a few alternating rounds: re-round the codes with the quantized parameters, refit `(d, dmin)` jointly by
//!    least squares over the super-block, refit each sub-block and round its fields to the floor / ceiling
//!    combination of least error.
//!
//! The int8 encoding instead takes the min/max range with fields rounded outwards (nothing is clipped), which
//! at 8 bits is within a few percent of the search and much faster.

use super::format::{SuperBlockParams, TwoLevelSpec};
use crate::codec::flat::group::{round_scale_up, F16_MAX, LANES, MAGIC};
use crate::config::{BitWidth, ScaleDtype};
use half::f16;

/// Steps below this are treated as zero (their inverse would overflow).
const TINY: f32 = 1e-30;

/// One tile: 16 sub-blocks of up to `S` elements, transposed, with weights and valid lengths.
pub(crate) struct Tile<const S: usize> {
    /// Elements: `x[i][lane]` is element `i` of the lane's sub-block (padding repeats a valid element).
    pub x: [[f32; LANES]; S],
    /// Weights of the objective; 0 for padding.
    pub w: [[f32; LANES]; S],
    /// Valid elements per lane (0 for a lane without a sub-block).
    pub len: [usize; LANES],
    /// Every weight of a valid lane is 1 and no lane is padded: the sums may skip the weights.
    pub unit: bool,
}

impl<const S: usize> Tile<S> {
    /// An empty tile.
    pub fn new() -> Self {
        Self {
            x: [[0.0; LANES]; S],
            w: [[0.0; LANES]; S],
            len: [0; LANES],
            unit: false,
        }
    }
}

/// Search effort per width (measured on the standard tensor; see benchmarks/bench_quality.py).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Knobs {
    /// Candidate steps of the first stage (0: min/max range with fields rounded outwards).
    pub candidates: usize,
    /// Refit every candidate once (re-round with its fit, fit again) before comparing.
    pub refit_each: bool,
    /// Refits of the best candidate afterwards.
    pub refits: usize,
    /// First candidate step is `(qmax + rmin) / range`.
    pub rmin: f32,
    /// Candidate `c` adds `rdelta * c` to it.
    pub rdelta: f32,
    /// Alternating rounds of the second stage.
    pub rounds: usize,
    /// Candidate grid steps of the field scales (at most 16).
    pub grid: usize,
}

/// The geometry a search works with: largest code, largest scale / minimum field, sub-blocks per super-block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SearchShape {
    /// Largest code (`2^bits - 1`).
    pub qmax: f32,
    /// Largest scale or minimum field.
    pub fmax: f32,
    /// Sub-blocks per super-block (`K`; `16 / K` super-blocks per tile).
    pub subs_per_super: usize,
}

pub(crate) const fn knobs(bits: BitWidth) -> Knobs {
    match bits {
        BitWidth::Int4 => Knobs {
            candidates: 10,
            refits: 0,
            refit_each: true,
            rmin: -1.0,
            rdelta: 0.2,
            rounds: 3,
            grid: 16,
        },
        BitWidth::Int2 => Knobs {
            candidates: 8,
            refits: 0,
            refit_each: true,
            rmin: -0.5,
            rdelta: 0.2,
            rounds: 3,
            grid: 10,
        },
        BitWidth::Int8 => Knobs {
            candidates: 0,
            refits: 0,
            refit_each: false,
            rmin: 0.0,
            rdelta: 0.0,
            rounds: 0,
            grid: 1,
        },
    }
}

type Lanes = [f32; LANES];

/// Weighted sums of a code assignment, per lane.
#[derive(Clone, Copy)]
struct Sums {
    swl: Lanes,
    swl2: Lanes,
    swxl: Lanes,
}

/// Code-independent weighted sums, per lane.
struct Fixed {
    sw: Lanes,
    swx: Lanes,
    swx2: Lanes,
}

/// Codes `clamp(round(x * inv + off), 0, qmax)` of every lane and their weighted sums (`W`: use the weights;
/// without, every weight is taken as 1).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lanes index several arrays at once
fn code_pass<const S: usize, const W: bool>(
    t: &Tile<S>,
    inv: &Lanes,
    off: &Lanes,
    qmax: f32,
) -> Sums {
    let mut s = Sums {
        swl: [0.0; LANES],
        swl2: [0.0; LANES],
        swxl: [0.0; LANES],
    };
    for i in 0..S {
        for l in 0..LANES {
            let x = t.x[i][l];
            // One fused multiply-add and one rounding instruction (the final pass rounds the same way up to
            // ties of the unfused product, which only move a code between two equally near values).
            let v = x.mul_add(inv[l], off[l]).round_ties_even();
            let v = if v < 0.0 { 0.0 } else { v };
            let q = if v > qmax { qmax } else { v };
            let wq = if W { t.w[i][l] * q } else { q };
            s.swl[l] += wq;
            s.swl2[l] = wq.mul_add(q, s.swl2[l]);
            s.swxl[l] = wq.mul_add(x, s.swxl[l]);
        }
    }
    s
}

/// Weighted least-squares fit `x ~ s * q + b` per lane, with `s >= 0` and `b <= 0`.
#[inline(always)]
fn fit(f: &Fixed, c: &Sums) -> (Lanes, Lanes) {
    let mut sc = [0.0; LANES];
    let mut off = [0.0; LANES];
    for l in 0..LANES {
        let (sw, swx, swl, swl2, swxl) = (f.sw[l], f.swx[l], c.swl[l], c.swl2[l], c.swxl[l]);
        let det = sw * swl2 - swl * swl;
        let mean = if sw > 0.0 { swx / sw } else { 0.0 };
        let ok = det > 1e-6 * sw * swl2;
        let mut s = if ok {
            (sw * swxl - swx * swl) / det
        } else {
            0.0
        };
        let mut b = if ok {
            (swl2 * swx - swl * swxl) / det
        } else {
            mean
        };
        if b > 0.0 {
            b = 0.0;
            s = if swl2 > 0.0 { swxl / swl2 } else { 0.0 };
        }
        if s < 0.0 {
            s = 0.0;
            b = if mean < 0.0 { mean } else { 0.0 };
        }
        sc[l] = s;
        off[l] = b;
    }
    (sc, off)
}

/// Weighted squared error `sum w (s q + b - x)^2` per lane, from the sums.
#[inline(always)]
fn closed_error(f: &Fixed, c: &Sums, s: &Lanes, b: &Lanes) -> Lanes {
    lanes(|l| {
        s[l] * s[l] * c.swl2[l] + b[l] * b[l] * f.sw[l] + f.swx2[l] + 2.0 * s[l] * b[l] * c.swl[l]
            - 2.0 * s[l] * c.swxl[l]
            - 2.0 * b[l] * f.swx[l]
    })
}

/// A lane array from a function of the lane index (always inlined, unlike `std::array::from_fn`, so it is
/// compiled with the caller's SIMD features).
#[inline(always)]
fn lanes(f: impl Fn(usize) -> f32) -> Lanes {
    let mut a = [0.0; LANES];
    for (l, v) in a.iter_mut().enumerate() {
        *v = f(l);
    }
    a
}

/// Per lane, takes the fit `(s, b)` with error `e` when it beats the incumbent.
#[inline(always)]
fn keep_better(
    e: &Lanes,
    s: &Lanes,
    b: &Lanes,
    best_e: &mut Lanes,
    best_s: &mut Lanes,
    best_b: &mut Lanes,
) {
    for l in 0..LANES {
        if e[l] < best_e[l] {
            best_e[l] = e[l];
            best_s[l] = s[l];
            best_b[l] = b[l];
        }
    }
}

/// `v` limited to the field range `0..=fmax` (plain comparisons, which vectorise).
#[inline(always)]
fn clamp_field(v: f32, fmax: f32) -> f32 {
    let v = if v > 0.0 { v } else { 0.0 };
    if v < fmax {
        v
    } else {
        fmax
    }
}

/// The inverse step (0 for a zero step).
#[inline(always)]
fn inverse(s: f32) -> f32 {
    if s > TINY {
        1.0 / s
    } else {
        0.0
    }
}

/// The float16 step `g` (rounded up) of least squared rounding error for the non-negative `values` on the field
/// grid `g * {0..fmax}`, among `tries` (at most 16, evaluated one per lane) candidates `max / (fmax - 0.1 c)`.
#[inline(always)]
fn grid_step(values: &[f32], fmax: f32, tries: usize) -> f32 {
    // The largest value by integer maximum of the bits (the order of non-negative floats; negative ones, -0
    // included, count as 0, NaN as infinity): branch-free and short, unlike a float maximum or comparison.
    let top = values
        .iter()
        .fold(0i32, |a, &v| a.max(v.to_bits() as i32))
        .min(f32::INFINITY.to_bits() as i32);
    let mx = f32::from_bits(top as u32);
    if mx <= 0.0 {
        return 0.0;
    }
    let g: Lanes = lanes(|c| round_scale_up(mx / (fmax - 0.1 * c as f32), ScaleDtype::F16));
    let inv: Lanes = lanes(|c| 1.0 / g[c]);
    let mut err = [0.0f32; LANES];
    for &v in values {
        for c in 0..LANES {
            let q = (v * inv[c] + MAGIC) - MAGIC;
            let q = if q > fmax { fmax } else { q };
            let e = v - g[c] * q;
            err[c] += e * e;
        }
    }
    g[argmin(&err, tries)]
}

/// The index of the least of the first `tries` (at least 1, at most 16) non-negative errors, the first on a tie,
/// without branches: the minimum of keys made of an error's bits (whose order is the value's) with its low four
/// bits replaced by the index. Errors closer than 2^-19 relative count as equal.
#[inline(always)]
pub(crate) fn argmin(err: &Lanes, tries: usize) -> usize {
    let mut best = u32::MAX;
    for (c, e) in err.iter().enumerate() {
        let key = if c < tries.max(1) {
            (e.to_bits() & !0xF) | c as u32
        } else {
            u32::MAX
        };
        best = best.min(key);
    }
    (best & 0xF) as usize
}

/// The parameters found for one tile's super-blocks (the scale overflowed float16 when `Err`).
pub(crate) struct Overflow;

/// Quality sums of a tile: `sum x^2`, `sum (x - y)^2`, `sum y^2`.
pub(crate) type TileSums = [f32; 3];

/// Searches the parameters of the super-blocks of a tile (`W`: weighted; may be false only when `t.unit`) (lanes `g*K .. g*K+K` form super-block `g`), writes
/// them to `params` (one per super-block in the tile) and the codes to `codes[i][lane]`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lanes index several arrays at once
pub(crate) fn search_tile<const S: usize, const W: bool>(
    t: &Tile<S>,
    spec: TwoLevelSpec,
    params: &mut [SuperBlockParams],
    codes: &mut [[u8; LANES]; S],
) -> Result<TileSums, Overflow> {
    let shape = SearchShape {
        qmax: spec.bits.max_code() as f32,
        fmax: spec.field_max() as f32,
        subs_per_super: spec.subs_per_super,
    };
    search_tile_with::<S, W>(t, shape, knobs(spec.bits), params, codes)
}

/// [`search_tile`] for any geometry and effort (the GGUF K-quants call it with their own).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lanes index several arrays at once
pub(crate) fn search_tile_with<const S: usize, const W: bool>(
    t: &Tile<S>,
    shape: SearchShape,
    kn: Knobs,
    params: &mut [SuperBlockParams],
    codes: &mut [[u8; LANES]; S],
) -> Result<TileSums, Overflow> {
    let SearchShape {
        qmax,
        fmax,
        subs_per_super: k,
    } = shape;
    let mut fixed = Fixed {
        sw: [0.0; LANES],
        swx: [0.0; LANES],
        swx2: [0.0; LANES],
    };
    let mut lo = [0.0f32; LANES];
    let mut hi = [0.0f32; LANES];
    let mut xmin = t.x[0];
    let mut xmax = t.x[0];
    for i in 0..S {
        for l in 0..LANES {
            let x = t.x[i][l];
            // Unweighted, the weights are not read (the caller need not fill them): every element weighs 1.
            let w = if W { t.w[i][l] } else { 1.0 };
            fixed.sw[l] += w;
            fixed.swx[l] += w * x;
            fixed.swx2[l] += w * x * x;
            xmin[l] = if x < xmin[l] { x } else { xmin[l] };
            xmax[l] = if x > xmax[l] { x } else { xmax[l] };
        }
    }
    if !W {
        // Lanes without a sub-block weigh nothing, as their zero weights would have made them.
        for l in 0..LANES {
            let live = if t.len[l] > 0 { 1.0 } else { 0.0 };
            fixed.sw[l] *= live;
            fixed.swx[l] *= live;
            fixed.swx2[l] *= live;
        }
    }
    for l in 0..LANES {
        lo[l] = if xmin[l] < 0.0 { xmin[l] } else { 0.0 };
        hi[l] = if xmax[l] > 0.0 { xmax[l] } else { 0.0 };
    }
    // Sub-block scales and (non-negative) minima before the second level.
    let (mut s, m): (Lanes, Lanes) = if kn.candidates == 0 {
        (lanes(|l| (hi[l] - lo[l]) / qmax), lo.map(|v| -v))
    } else {
        let range: Lanes = lanes(|l| {
            let r = hi[l] - lo[l];
            if r > 0.0 {
                r
            } else {
                1.0
            }
        });
        let mut best_e = [f32::INFINITY; LANES];
        let mut best_s = [0.0f32; LANES];
        let mut best_b = [0.0f32; LANES];
        for c in 0..kn.candidates {
            let iscale: Lanes = lanes(|l| (qmax + kn.rmin + kn.rdelta * c as f32) / range[l]);
            let off: Lanes = lanes(|l| -lo[l] * iscale[l]);
            let sums = code_pass::<S, W>(t, &iscale, &off, qmax);
            let (mut fs, mut fb) = fit(&fixed, &sums);
            let mut sums = sums;
            if kn.refit_each {
                let inv: Lanes = lanes(|l| inverse(fs[l]));
                let off: Lanes = lanes(|l| -fb[l] * inv[l]);
                sums = code_pass::<S, W>(t, &inv, &off, qmax);
                (fs, fb) = fit(&fixed, &sums);
            }
            let e = closed_error(&fixed, &sums, &fs, &fb);
            keep_better(&e, &fs, &fb, &mut best_e, &mut best_s, &mut best_b);
        }
        // Refits: re-round the codes with the best fit, fit again, keep it when better.
        for _ in 0..kn.refits {
            let inv: Lanes = lanes(|l| inverse(best_s[l]));
            let off: Lanes = lanes(|l| -best_b[l] * inv[l]);
            let sums = code_pass::<S, W>(t, &inv, &off, qmax);
            let (fs, fb) = fit(&fixed, &sums);
            let e = closed_error(&fixed, &sums, &fs, &fb);
            keep_better(&e, &fs, &fb, &mut best_e, &mut best_s, &mut best_b);
        }
        (best_s, lanes(|l| -best_b[l]))
    };
    let supers = LANES / k;
    let mut d = [0.0f32; LANES];
    let mut dmin = [0.0f32; LANES];
    let mut sc = [0.0f32; LANES];
    let mut mn = [0.0f32; LANES];
    let outward = kn.candidates == 0;
    if outward {
        for g in 0..supers {
            let lanes = g * k..(g + 1) * k;
            let dm = grid_step(&m[lanes.clone()], fmax, kn.grid);
            // min/max: minima rounded up, then the scale that still reaches the maximum, rounded up.
            for l in lanes.clone() {
                mn[l] = if dm > 0.0 {
                    (m[l] / dm).ceil().min(fmax)
                } else {
                    0.0
                };
                s[l] = (hi[l] + dm * mn[l]) / qmax;
            }
            let dd = grid_step(&s[lanes.clone()], fmax, kn.grid);
            for l in lanes {
                d[l] = dd;
                dmin[l] = dm;
                let ratio = if dd > 0.0 { s[l] / dd } else { 0.0 };
                sc[l] = ratio.ceil().clamp(0.0, fmax);
            }
        }
    } else {
        // The super-blocks' steps, then every lane's fields at once.
        for g in 0..supers {
            let lanes = g * k..(g + 1) * k;
            let dm = grid_step(&m[lanes.clone()], fmax, kn.grid);
            let dd = grid_step(&s[lanes.clone()], fmax, kn.grid);
            for l in lanes {
                d[l] = dd;
                dmin[l] = dm;
            }
        }
        let id: Lanes = lanes(|l| if d[l] > 0.0 { 1.0 / d[l] } else { 0.0 });
        let idm: Lanes = lanes(|l| if dmin[l] > 0.0 { 1.0 / dmin[l] } else { 0.0 });
        sc = lanes(|l| clamp_field((s[l] * id[l]).round_ties_even(), fmax));
        mn = lanes(|l| clamp_field((m[l] * idm[l]).round_ties_even(), fmax));
    }
    for _ in 0..kn.rounds {
        let step: Lanes = lanes(|l| d[l] * sc[l]);
        let min: Lanes = lanes(|l| dmin[l] * mn[l]);
        let inv: Lanes = lanes(|l| inverse(step[l]));
        let off: Lanes = lanes(|l| min[l] * inv[l]);
        let sums = code_pass::<S, W>(t, &inv, &off, qmax);
        // Joint least squares of (d, dmin) per super-block: x ~ d * sc * q - dmin * mn.
        for g in 0..supers {
            let (mut a, mut b, mut c, mut r1, mut r2) = (0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32);
            for l in g * k..(g + 1) * k {
                a += sc[l] * sc[l] * sums.swl2[l];
                b -= sc[l] * mn[l] * sums.swl[l];
                c += mn[l] * mn[l] * fixed.sw[l];
                r1 += sc[l] * sums.swxl[l];
                r2 -= mn[l] * fixed.swx[l];
            }
            let det = a * c - b * b;
            let (nd, ndm) = if det > 1e-6 * a * c {
                ((c * r1 - b * r2) / det, (a * r2 - b * r1) / det)
            } else if a > 0.0 && c == 0.0 {
                (r1 / a, dmin[g * k])
            } else {
                (d[g * k], dmin[g * k])
            };
            if nd > 0.0 && ndm >= 0.0 && nd.is_finite() && ndm.is_finite() {
                for l in g * k..(g + 1) * k {
                    d[l] = round_scale_up(nd, ScaleDtype::F16);
                    dmin[l] = round_scale_up(ndm, ScaleDtype::F16);
                }
            }
        }
        // Per sub-block: the floor / ceiling fields of least error around the unconstrained fit.
        let (fs, fb) = fit(&fixed, &sums);
        let base_s: Lanes = lanes(|l| {
            if d[l] > 0.0 {
                (fs[l] / d[l]).floor()
            } else {
                0.0
            }
        });
        let base_m: Lanes = lanes(|l| {
            if dmin[l] > 0.0 {
                (-fb[l] / dmin[l]).floor()
            } else {
                0.0
            }
        });
        let mut best_e = [f32::INFINITY; LANES];
        let (mut nsc, mut nmn) = (sc, mn);
        for (ds, dm) in [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)] {
            let tsc: Lanes = lanes(|l| (base_s[l] + ds).clamp(0.0, fmax));
            let tmn: Lanes = lanes(|l| (base_m[l] + dm).clamp(0.0, fmax));
            let ts: Lanes = lanes(|l| d[l] * tsc[l]);
            let tb: Lanes = lanes(|l| -(dmin[l] * tmn[l]));
            let e = closed_error(&fixed, &sums, &ts, &tb);
            for l in 0..LANES {
                if e[l] < best_e[l] {
                    best_e[l] = e[l];
                    nsc[l] = tsc[l];
                    nmn[l] = tmn[l];
                }
            }
        }
        sc = nsc;
        mn = nmn;
    }
    // A super-block of one repeated value has a lane whose minimum is its maximum (most tiles have none).
    let flat = (0..LANES).fold(false, |a, l| a | ((t.len[l] > 0) & (xmin[l] == xmax[l])));
    for g in (0..supers).filter(|_| flat) {
        exact_constant(
            t,
            &xmin,
            &xmax,
            g * k..(g + 1) * k,
            [&mut d, &mut sc, &mut dmin, &mut mn],
        );
    }
    for g in 0..supers.min(params.len()) {
        let p = &mut params[g];
        p.d = d[g * k];
        p.dmin = dmin[g * k];
        if !(p.d <= F16_MAX && p.dmin <= F16_MAX) {
            return Err(Overflow);
        }
        for j in 0..k {
            p.sc[j] = sc[g * k + j] as u8;
            p.mn[j] = mn[g * k + j] as u8;
        }
    }
    Ok(final_pass(t, &d, &sc, &dmin, &mn, qmax, codes))
}

/// When every valid element of the super-block on `lanes` equals one float16 value `c`, sets parameters that
/// reproduce it exactly: `d = c, sc = 1` (codes 1) for `c > 0`, `dmin = -c, mn = 1` (codes 0) for `c < 0`.
#[inline(always)]
fn exact_constant<const S: usize>(
    t: &Tile<S>,
    xmin: &Lanes,
    xmax: &Lanes,
    lanes: std::ops::Range<usize>,
    [d, sc, dmin, mn]: [&mut Lanes; 4],
) {
    let Some(first) = lanes.clone().find(|&l| t.len[l] > 0) else {
        return;
    };
    let c = xmin[first];
    let constant = lanes
        .clone()
        .all(|l| t.len[l] == 0 || (xmin[l] == c && xmax[l] == c));
    if !constant || f16::from_f32(c).to_f32() != c {
        return;
    }
    for l in lanes {
        let (dd, s, dm, m) = if c > 0.0 {
            (c, 1.0, 0.0, 0.0)
        } else {
            (0.0, 0.0, -c, 1.0)
        };
        (d[l], sc[l], dmin[l], mn[l]) = (dd, s, dm, m);
    }
}

/// Codes under the final parameters and the quality sums of the valid elements, with the values computed
/// exactly as dequantization computes them.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lanes index several arrays at once
fn final_pass<const S: usize>(
    t: &Tile<S>,
    d: &Lanes,
    sc: &Lanes,
    dmin: &Lanes,
    mn: &Lanes,
    qmax: f32,
    codes: &mut [[u8; LANES]; S],
) -> TileSums {
    let step: Lanes = lanes(|l| d[l] * sc[l]);
    let min: Lanes = lanes(|l| dmin[l] * mn[l]);
    let inv: Lanes = lanes(|l| inverse(step[l]));
    let off: Lanes = lanes(|l| min[l] * inv[l]);
    let full = t.len.iter().all(|&n| n == S);
    let sums = if full {
        final_codes::<S, true>(t, &inv, &off, &step, &min, qmax, codes)
    } else {
        final_codes::<S, false>(t, &inv, &off, &step, &min, qmax, codes)
    };
    sums.map(|v| v.iter().sum())
}

/// The codes of [`final_pass`] and the sums `[x^2, (x - y)^2, y^2]` per lane (`FULL`: every lane has `S` valid
/// elements, so none needs masking).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lanes index several arrays at once
fn final_codes<const S: usize, const FULL: bool>(
    t: &Tile<S>,
    inv: &Lanes,
    off: &Lanes,
    step: &Lanes,
    min: &Lanes,
    qmax: f32,
    codes: &mut [[u8; LANES]; S],
) -> [Lanes; 3] {
    let mut xx = [0.0f32; LANES];
    let mut ee = [0.0f32; LANES];
    let mut yy = [0.0f32; LANES];
    let len: Lanes = lanes(|l| t.len[l] as f32);
    for i in 0..S {
        for l in 0..LANES {
            let x = t.x[i][l];
            // The codes as the search's passes round them.
            let v = x.mul_add(inv[l], off[l]).round_ties_even();
            let v = if v < 0.0 { 0.0 } else { v };
            let q = if v > qmax { qmax } else { v };
            // The low byte of MAGIC + q is q.
            codes[i][l] = ((q + MAGIC).to_bits() & 0xff) as u8;
            // Unfused, exactly as decoding computes it.
            let y = q * step[l] - min[l];
            let e = x - y;
            let (vx, ve, vy) = if FULL {
                (x, e, y)
            } else {
                let valid = if (i as f32) < len[l] { 1.0 } else { 0.0 };
                (valid * x, valid * e, valid * y)
            };
            xx[l] = vx.mul_add(x, xx[l]);
            ee[l] = ve.mul_add(e, ee[l]);
            yy[l] = vy.mul_add(y, yy[l]);
        }
    }
    [xx, ee, yy]
}
