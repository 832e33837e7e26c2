//! The `hqq` method: half-quadratic optimisation of a group's zero point and scale (Badri & Shaji, "Half-Quadratic
//! Quantization of Large Machine Learning Models", 2023; reference code `hqq/core/optimize.py`).
//!
//! HQQ minimises `||x - Q^-1(Q(x))||_p^p` with `p < 1` (a sparsity-promoting loss that lets a few outliers keep
//! large errors) by splitting it with an auxiliary error `e`: alternately
//! 1. round the codes `q = clamp(round(x / s + z))` and take the residual `x - (q - z) s`;
//! 2. `e = shrink_p(residual)`, the proximal step of the `l_p` norm (generalised soft thresholding);
//! 3. refit the parameters in closed form to the target `x - e`: here both the zero point and the scale, by
//!    weighted least squares of `x - e ~ s q - s z` (the reference updates only the zero point).
//!
//! Differences from the reference, chosen for speed and scale invariance: `p = 1/2` (the threshold
//! `|r|^(p-1) / beta` is then one square root), the residual is measured in steps (`r / s`) so `beta` does not
//! depend on the magnitude of the weights, a fixed [`ITERS`] iterations, and every iterate is scored by the
//! (importance-weighted) squared error so the result is never worse than the `mse` starting point.

use super::group::{quantize_magic, GroupParams, GroupRule, LANES, MAGIC};
use crate::config::ScaleDtype;
use half::f16;

/// Iterations of the alternating scheme (fixed, small).
const ITERS: usize = 8;
/// Initial `beta` of the half-quadratic penalty, and its growth per iteration (HQQ: 10 and 1.01).
const BETA: f32 = 10.0;
const KAPPA: f32 = 1.01;
/// A candidate must beat the incumbent by this relative margin (f32 sums; see `mse.rs`).
const MARGIN: f32 = 1.0 - 1e-4;

/// Weighted sums of one pass over a group.
#[derive(Default)]
struct PassSums {
    /// sum w (x - y)^2 under the current parameters
    err: f32,
    /// sum w q, sum w q^2, sum w t, sum w q t, sum w (t: the shrunk target x - e)
    q: f32,
    qq: f32,
    t: f32,
    qt: f32,
    w: f32,
}

/// Rounds a parameter to its storage type (nearest).
#[inline(always)]
fn store(v: f32, dtype: ScaleDtype) -> f32 {
    match dtype {
        ScaleDtype::F32 => v,
        ScaleDtype::F16 => f16::from_f32(v).to_f32(),
    }
}

/// One pass: codes under `p`, the squared error, the shrunk target and the sums of the refit.
#[inline(always)]
fn pass(x: &[f32], w: Option<&[f32]>, p: GroupParams, rule: GroupRule, beta: f32) -> PassSums {
    let inv = 1.0 / p.scale;
    let qm = rule.qmax() + MAGIC;
    let inv_beta = 1.0 / beta;
    let mut acc = [[0f32; LANES]; 6];
    let mut step = |k: usize, v: f32, wt: f32| {
        let q = quantize_magic(v * inv + p.zero, 1.0, MAGIC, qm) - MAGIC;
        let y = (q - p.zero) * p.scale;
        let r = v - y;
        // Residual in steps, soft-thresholded by |r|^(-1/2) / beta (the l_1/2 proximal step, as in HQQ).
        let rn = (r * inv).abs();
        let thr = inv_beta / (rn + 1e-8).sqrt();
        let shrunk = if rn > thr { rn - thr } else { 0.0 };
        let e = if r < 0.0 { -shrunk } else { shrunk } * p.scale;
        let t = v - e;
        let wq = wt * q;
        acc[0][k] += wt * r * r;
        acc[1][k] += wq;
        acc[2][k] += wq * q;
        acc[3][k] += wt * t;
        acc[4][k] += wq * t;
        acc[5][k] += wt;
    };
    match w {
        None => {
            let mut chunks = x.chunks_exact(LANES);
            for c in &mut chunks {
                for (k, &v) in c.iter().enumerate() {
                    step(k, v, 1.0);
                }
            }
            for (k, &v) in chunks.remainder().iter().enumerate() {
                step(k, v, 1.0);
            }
        }
        Some(w) => {
            for (i, (&v, &wt)) in x.iter().zip(w).enumerate() {
                step(i % LANES, v, wt);
            }
        }
    }
    let sum = |a: &[f32; LANES]| a.iter().sum::<f32>();
    PassSums {
        err: sum(&acc[0]),
        q: sum(&acc[1]),
        qq: sum(&acc[2]),
        t: sum(&acc[3]),
        qt: sum(&acc[4]),
        w: sum(&acc[5]),
    }
}

/// Refines `start` (the `mse` choice) by HQQ; returns it unchanged unless an iterate has a lower error.
#[inline(always)]
pub(crate) fn optimize(
    x: &[f32],
    w: Option<&[f32]>,
    start: GroupParams,
    rule: GroupRule,
) -> GroupParams {
    let mut p = start;
    let mut best = (f32::INFINITY, start);
    let mut beta = BETA;
    for it in 0..=ITERS {
        let s = pass(x, w, p, rule, beta);
        if s.err < best.0 * MARGIN || it == 0 {
            best = (s.err, p);
        }
        if it == ITERS || s.err == 0.0 {
            break;
        }
        // Least squares t ~ a q + c, then s = a, z = -c / a.
        let det = s.w * s.qq - s.q * s.q;
        if det.is_nan() || det <= 1e-6 * s.w * s.qq {
            break;
        }
        let a = (s.w * s.qt - s.q * s.t) / det;
        let c = (s.qq * s.t - s.q * s.qt) / det;
        let scale = store(a, rule.dtype);
        if scale.is_nan() || scale <= 0.0 || scale.is_infinite() {
            break;
        }
        let zero = store(-c / scale, rule.dtype);
        if !zero.is_finite() {
            break;
        }
        p = GroupParams { scale, zero };
        beta *= KAPPA;
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::super::group::{choose_params, exact_sq_error, scan};
    use super::*;
    use crate::config::BitWidth;

    #[test]
    fn never_worse_than_its_start_and_helps_on_average() {
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        };
        for bits in [BitWidth::Int2, BitWidth::Int4] {
            let rule = GroupRule {
                bits,
                symmetric: false,
                search: false,
                hqq: false,
                dtype: ScaleDtype::F16,
            };
            let (mut rtn_total, mut hqq_total) = (0.0, 0.0);
            for _ in 0..200 {
                let x: Vec<f32> = (0..64).map(|_| next() + 0.3 * next() * next()).collect();
                let start = choose_params(&x, scan(&x), rule, None).unwrap();
                let p = optimize(&x, None, start, rule);
                let (e0, e1) = (exact_sq_error(&x, start, rule), exact_sq_error(&x, p, rule));
                assert!(e1 <= e0 * (1.0 + 1e-3), "{bits:?}: {e1} > {e0}");
                rtn_total += e0;
                hqq_total += e1;
            }
            assert!(
                hqq_total < rtn_total,
                "{bits:?}: {hqq_total} vs {rtn_total}"
            );
        }
    }
}
