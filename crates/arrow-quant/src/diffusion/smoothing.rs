//! Boundary smoothing of time groups (see the `time_groups` module header for the formulas).
//!
//! At the boundary `b` between groups `A` and `B`, `wl = min(w, floor(span_A / 2))` timesteps of `A` and
//! `wr = min(w, floor(span_B / 2))` of `B` get a blended range of their own, `[t, t + 1)` each; a window never
//! reaches past the middle of a group, so the windows of a group's two boundaries never overlap.

use super::time_groups::{Smoothing, Span, TimestepRange};

/// Logistic steepness of [`Smoothing::Sigmoid`].
const SIGMOID_K: f64 = 10.0;

/// The blend weight `f(u)` for `u` in `[0, 1]`: 0 means all `A`, 1 all `B`.
pub(crate) fn weight(kind: Smoothing, u: f64) -> f64 {
    match kind {
        Smoothing::None => {
            if u < 0.5 {
                0.0
            } else {
                1.0
            }
        }
        Smoothing::Linear => u,
        Smoothing::Cubic => u * u * (3.0 - 2.0 * u),
        Smoothing::Sigmoid => {
            let s = |x: f64| 1.0 / (1.0 + (-SIGMOID_K * (x - 0.5)).exp());
            (s(u) - s(0.0)) / (s(1.0) - s(0.0))
        }
    }
}

/// Splits the group spans around each boundary into per-timestep blended spans (sorted, contiguous).
pub(crate) fn smooth(
    groups: &[Span],
    ranges: &[TimestepRange],
    kind: Smoothing,
    window: u32,
) -> Vec<Span> {
    let w = i64::from(window);
    // windows[g] = (wl, wr) of the boundary at the start of group g (none for g = 0).
    let windows: Vec<(i64, i64)> = (0..groups.len())
        .map(|g| match g {
            0 => (0, 0),
            _ => {
                let (a, b) = (&groups[g - 1], &groups[g]);
                (
                    w.min((a.t_end - a.t_start) / 2),
                    w.min((b.t_end - b.t_start) / 2),
                )
            }
        })
        .collect();
    let mut out = Vec::new();
    for (g, span) in groups.iter().enumerate() {
        if g > 0 {
            let (wl, wr) = windows[g];
            let a = &groups[g - 1];
            let first = span.t_start - wl;
            for t in first..span.t_start + wr {
                let u = ((t - first) as f64 + 0.5) / (wl + wr) as f64;
                let f = weight(kind, u);
                let mut lo = ((1.0 - f) * f64::from(a.lo) + f * f64::from(span.lo)) as f32;
                let mut hi = ((1.0 - f) * f64::from(a.hi) + f * f64::from(span.hi)) as f32;
                if let Ok(i) = ranges.binary_search_by_key(&t, |r| i64::from(r.timestep)) {
                    lo = lo.min(ranges[i].min.min(0.0));
                    hi = hi.max(ranges[i].max.max(0.0));
                }
                out.push(Span {
                    t_start: t,
                    t_end: t + 1,
                    lo,
                    hi,
                });
            }
        }
        let start = span.t_start + windows[g].1;
        let end = span.t_end - windows.get(g + 1).map_or(0, |w| w.0);
        if start < end {
            out.push(Span {
                t_start: start,
                t_end: end,
                ..*span
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_run_from_zero_to_one() {
        for kind in [Smoothing::Linear, Smoothing::Cubic, Smoothing::Sigmoid] {
            assert!(weight(kind, 0.0).abs() < 1e-12, "{kind:?}");
            assert!((weight(kind, 1.0) - 1.0).abs() < 1e-12, "{kind:?}");
            assert!((weight(kind, 0.5) - 0.5).abs() < 1e-12, "{kind:?}");
            let mut prev = 0.0;
            for i in 1..=100 {
                let f = weight(kind, f64::from(i) / 100.0);
                assert!(f >= prev, "{kind:?} not monotone at {i}");
                prev = f;
            }
        }
        // Cubic at u = 0.25: 3/16 - 2/64 = 0.15625.
        assert_eq!(weight(Smoothing::Cubic, 0.25), 0.15625);
    }

    #[test]
    fn linear_blend_of_two_groups() {
        // A = [0, 10) with range [0, 1], B = [10, 20) with range [0, 5]; window 2, nothing observed nearby.
        let groups = [
            Span {
                t_start: 0,
                t_end: 10,
                lo: 0.0,
                hi: 1.0,
            },
            Span {
                t_start: 10,
                t_end: 20,
                lo: 0.0,
                hi: 5.0,
            },
        ];
        let out = smooth(&groups, &[], Smoothing::Linear, 2);
        let starts: Vec<i64> = out.iter().map(|s| s.t_start).collect();
        assert_eq!(starts, [0, 8, 9, 10, 11, 12]);
        // u = 1/8, 3/8, 5/8, 7/8: hi = 1 + 4u = 1.5, 2.5, 3.5, 4.5.
        let his: Vec<f32> = out[1..5].iter().map(|s| s.hi).collect();
        assert_eq!(his, [1.5, 2.5, 3.5, 4.5]);
        assert_eq!((out[5].t_start, out[5].t_end, out[5].hi), (12, 20, 5.0));
    }

    #[test]
    fn window_stops_at_the_middle_of_a_short_group() {
        // A spans 3 timesteps: at most 1 on its side; B spans 1: nothing on its side.
        let groups = [
            Span {
                t_start: 0,
                t_end: 3,
                lo: 0.0,
                hi: 1.0,
            },
            Span {
                t_start: 3,
                t_end: 4,
                lo: 0.0,
                hi: 2.0,
            },
        ];
        let out = smooth(&groups, &[], Smoothing::Cubic, 5);
        let cover: Vec<(i64, i64)> = out.iter().map(|s| (s.t_start, s.t_end)).collect();
        assert_eq!(cover, [(0, 2), (2, 3), (3, 4)]);
        // One blended timestep: u = 0.5, f = 0.5, hi = 1.5.
        assert_eq!(out[1].hi, 1.5);
    }
}
