//! The `mse` parameter search: for each group, shrunk clipping ranges are tried and the one with the least
//! squared error wins. The `rtn` range is always a candidate, so `mse` is never worse than `rtn`.
//!
//! Candidates are evaluated sixteen at a time with one candidate per SIMD lane (each weight is broadcast), which
//! keeps the per-candidate cost to a few vector operations per weight. Asymmetric groups get a coordinate search:
//! both ends shrunk together, then the low end alone, then the high end alone.

use super::group::{
    asym_params, quantize_magic, signed_extreme, sym_params, GroupParams, GroupRule, GroupScan,
    MAGIC,
};
use crate::config::BitWidth;

/// Candidates of the first pass (one per lane of an AVX-512 register).
const CANDIDATES: usize = 16;
/// Candidates of each one-sided pass: half the grid, which keeps `mse` above 1 GB/s on two cores.
const SIDE_CANDIDATES: usize = 8;

/// A candidate must beat the incumbent by this relative margin, so rounding in the f32 error sums can never make
/// the `mse` choice worse than `rtn` when measured exactly.
const MARGIN: f32 = 1.0 - 1e-4;

/// Clipping factors per bit width, 1.0 (the `rtn` range) first. Fewer levels clip harder.
fn clip_grid<const N: usize>(bits: BitWidth) -> [f32; N] {
    let lowest = match bits {
        BitWidth::Int8 => 0.90,
        BitWidth::Int4 => 0.62,
        BitWidth::Int2 => 0.35,
    };
    std::array::from_fn(|i| 1.0 - (1.0 - lowest) * i as f32 / (N - 1) as f32)
}

/// Squared error of the group under each candidate, weighted by `w` (one weight per element) when given.
#[inline(always)]
fn errors<const N: usize>(
    x: &[f32],
    w: Option<&[f32]>,
    params: &[GroupParams; N],
    qmax: f32,
) -> [f32; N] {
    match w {
        None => unit_errors(x, params, qmax),
        Some(w) => weighted_errors(x, w, params, qmax),
    }
}

/// Importance-weighted squared error of the group under each candidate.
#[inline(always)]
fn weighted_errors<const N: usize>(
    x: &[f32],
    w: &[f32],
    params: &[GroupParams; N],
    qmax: f32,
) -> [f32; N] {
    let scale: [f32; N] = std::array::from_fn(|c| params[c].scale);
    let inv: [f32; N] = std::array::from_fn(|c| 1.0 / params[c].scale);
    let zm: [f32; N] = std::array::from_fn(|c| params[c].zero + MAGIC);
    let qm = qmax + MAGIC;
    let mut acc = [0f32; N];
    for (&v, &wt) in x.iter().zip(w) {
        for c in 0..N {
            let d = (quantize_magic(v, inv[c], zm[c], qm) - zm[c]) * scale[c] - v;
            acc[c] += wt * d * d;
        }
    }
    acc
}

/// Squared error of the group under each candidate.
#[inline(always)]
fn unit_errors<const N: usize>(x: &[f32], params: &[GroupParams; N], qmax: f32) -> [f32; N] {
    let scale: [f32; N] = std::array::from_fn(|c| params[c].scale);
    let inv: [f32; N] = std::array::from_fn(|c| 1.0 / params[c].scale);
    let zm: [f32; N] = std::array::from_fn(|c| params[c].zero + MAGIC);
    let qm = qmax + MAGIC;
    // Two accumulators so consecutive weights do not wait on each other's additions.
    let mut even = [0f32; N];
    let mut odd = [0f32; N];
    let mut pairs = x.chunks_exact(2);
    for pair in &mut pairs {
        let (v0, v1) = (pair[0], pair[1]);
        for c in 0..N {
            let d0 = (quantize_magic(v0, inv[c], zm[c], qm) - zm[c]) * scale[c] - v0;
            let d1 = (quantize_magic(v1, inv[c], zm[c], qm) - zm[c]) * scale[c] - v1;
            even[c] += d0 * d0;
            odd[c] += d1 * d1;
        }
    }
    if let [v] = pairs.remainder() {
        for c in 0..N {
            let d = (quantize_magic(*v, inv[c], zm[c], qm) - zm[c]) * scale[c] - v;
            even[c] += d * d;
        }
    }
    std::array::from_fn(|c| even[c] + odd[c])
}

/// The incumbent of the search and its error.
struct Best {
    params: GroupParams,
    err: f32,
    /// Index of the candidate that last won, if any in the current pass.
    winner: Option<usize>,
}

impl Best {
    fn offer<const N: usize>(&mut self, params: &[GroupParams; N], errs: &[f32; N]) {
        self.winner = None;
        for c in 0..N {
            if errs[c] < self.err * MARGIN {
                self.params = params[c];
                self.err = errs[c];
                self.winner = Some(c);
            }
        }
    }
}

/// The least-squared-error parameters among the clipping candidates of a non-constant group.
#[inline(always)]
pub(crate) fn search(x: &[f32], s: GroupScan, rule: GroupRule, w: Option<&[f32]>) -> GroupParams {
    let grid: [f32; CANDIDATES] = clip_grid(rule.bits);
    let side: [f32; SIDE_CANDIDATES] = clip_grid(rule.bits);
    let qmax = rule.qmax();
    if rule.symmetric {
        let m = signed_extreme(s);
        let params: [GroupParams; CANDIDATES] =
            std::array::from_fn(|c| sym_params(m * grid[c], rule));
        let errs = errors(x, w, &params, qmax);
        let mut best = Best {
            params: params[0],
            err: errs[0],
            winner: None,
        };
        best.offer(&params, &errs);
        return best.params;
    }
    let joint: [GroupParams; CANDIDATES] =
        std::array::from_fn(|c| asym_params(s.lo * grid[c], s.hi * grid[c], rule));
    let errs = errors(x, w, &joint, qmax);
    let mut best = Best {
        params: joint[0],
        err: errs[0],
        winner: None,
    };
    if best.err == 0.0 {
        return best.params;
    }
    best.offer(&joint, &errs);
    let f = grid[best.winner.unwrap_or(0)];
    let (mut lo, hi) = (s.lo * f, s.hi * f);
    let low_side: [GroupParams; SIDE_CANDIDATES] =
        std::array::from_fn(|c| asym_params(s.lo * side[c], hi, rule));
    best.offer(&low_side, &errors(x, w, &low_side, qmax));
    if let Some(c) = best.winner {
        lo = s.lo * side[c];
    }
    let high_side: [GroupParams; SIDE_CANDIDATES] =
        std::array::from_fn(|c| asym_params(lo, s.hi * side[c], rule));
    best.offer(&high_side, &errors(x, w, &high_side, qmax));
    best.params
}

#[cfg(test)]
mod tests {
    use super::super::group::{choose_params, exact_sq_error, scan};
    use super::*;
    use crate::config::ScaleDtype;

    #[test]
    fn grid_starts_at_the_rtn_range() {
        for bits in [BitWidth::Int2, BitWidth::Int4, BitWidth::Int8] {
            let g: [f32; 16] = clip_grid(bits);
            assert_eq!(g[0], 1.0);
            assert!(g.windows(2).all(|w| w[1] < w[0]));
        }
    }

    #[test]
    fn search_helps_on_an_outlier_and_never_hurts() {
        let mut x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 31.5) / 40.0)
            .collect();
        x[17] = 9.0;
        for bits in [BitWidth::Int2, BitWidth::Int4, BitWidth::Int8] {
            for symmetric in [false, true] {
                let rtn = GroupRule {
                    bits,
                    symmetric,
                    search: false,
                    hqq: false,
                    dtype: ScaleDtype::F16,
                };
                let mse = GroupRule {
                    search: true,
                    ..rtn
                };
                let s = scan(&x);
                let e_rtn = exact_sq_error(&x, choose_params(&x, s, rtn, None).unwrap(), rtn);
                let e_mse = exact_sq_error(&x, choose_params(&x, s, mse, None).unwrap(), mse);
                assert!(
                    e_mse <= e_rtn,
                    "{bits:?} sym={symmetric}: {e_mse} > {e_rtn}"
                );
                if bits == BitWidth::Int4 {
                    assert!(
                        e_mse < e_rtn,
                        "{bits:?} sym={symmetric}: clipping the outlier should help"
                    );
                }
            }
        }
    }
}
