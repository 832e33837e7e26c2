//! Time-aware activation quantization parameters (Q-Diffusion / TDQ style) for a W4A8 runtime.
//!
//! Weights are the same at every denoising timestep, activations are not. From calibration statistics (per layer,
//! per observed timestep `t`: the activation minimum and maximum) this module groups the timesteps and gives each
//! group one asymmetric activation `(scale, zero_point)`. The result is stored with the layer as the Arrow column
//! `time_groups: list<struct<t_start int32, t_end int32, scale float32, zero_point float32>>`.
//!
//! # Definitions
//!
//! * Each timestep's range is zero-extended: `lo_t = min(min_t, 0)`, `hi_t = max(max_t, 0)`, width
//!   `W_t = hi_t - lo_t`. A group `G`'s range is the union: `lo_G = min lo_t`, `hi_G = max hi_t`,
//!   `W_G = hi_G - lo_G`.
//! * [`activation_params`]: asymmetric, `qmax = 2^bits - 1`, `lo`/`hi` zero-extended as above,
//!   `scale = (hi - lo) / qmax` (if that is 0 or not a normal float: `scale = 1.0`, `zero_point = 0`),
//!   `zero_point = clamp(round(-lo / scale), 0, qmax)`.
//! * Mean within-group range spread of a grouping: `(1/n) * sum_t (W_{G(t)} - W_t)` over the `n` observed
//!   timesteps, in activation units. It is what a timestep loses by sharing its group's range. [`SpreadFigures`]
//!   reports it for the grouping used (`chosen`), the uniform grouping (`uniform`) and one global group (`global`).
//! * `K = min(num_groups, n)`. Groups are contiguous runs of the sorted observed timesteps.
//!   - [`TimeGrouping::Uniform`]: `K` runs whose sizes differ by at most one, the larger ones first.
//!   - [`TimeGrouping::Adaptive`]: exact dynamic programming over all partitions into exactly `K` contiguous runs,
//!     minimising `sum_t (W_{G(t)} - W_t)`, equivalently `sum_G |G| * W_G` (`O(K n^2)` time, unions grown
//!     incrementally). Its spread is never above the uniform one (if rounding ever made it so, the uniform
//!     grouping is used), and the uniform spread is never above the global one.
//! * Coverage in timestep space: group `g` covers `[t_start, t_end)`; the first group starts at 0, every later
//!   group at its first observed timestep, `t_end` is the next group's `t_start` and the last `t_end` is
//!   `num_timesteps`. The entries are sorted, contiguous and cover `[0, num_timesteps)`.
//! * Boundary smoothing (optional, [`Smoothing`]): at the boundary `b` (the `t_start` of group `B`, with `A` on its
//!   left) and window `w = smoothing_window`, `wl = min(w, floor(span_A / 2))` and `wr = min(w, floor(span_B / 2))`
//!   timesteps are blended, so a window never reaches past the middle of a group. Each integer `t` in
//!   `[b - wl, b + wr)` gets `u = (t - (b - wl) + 0.5) / (wl + wr)`, a weight `f = u` (linear), `3u^2 - 2u^3`
//!   (cubic) or a logistic with `k = 10` rescaled so that `f(0) = 0`, `f(1) = 1` (sigmoid), and the range
//!   `lo = (1-f) lo_A + f lo_B`, `hi = (1-f) hi_A + f hi_B`, united with `t`'s own zero-extended range when `t` was
//!   observed (smoothing never clips a range seen at calibration). Each such `t` becomes its own entry
//!   `[t, t+1)`; the rest of `A` and `B` keep their group's entry. Adjacent entries with identical
//!   `(scale, zero_point)` are then merged. Without smoothing there is exactly one entry per group.

use super::smoothing;
use crate::error::{QuantError, Result};

/// The observed activation range of one layer at one timestep (calibration statistics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimestepRange {
    /// The denoising timestep, in `0..num_timesteps`.
    pub timestep: u32,
    /// The smallest activation seen at this timestep.
    pub min: f32,
    /// The largest activation seen at this timestep.
    pub max: f32,
}

/// How the observed timesteps are split into groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeGrouping {
    /// Runs of (nearly) equal numbers of observed timesteps.
    Uniform,
    /// The runs that minimise the mean within-group range spread (exact dynamic programming).
    #[default]
    Adaptive,
}

impl TimeGrouping {
    /// Parses `"uniform"` or `"adaptive"` (the setting `time_grouping`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "uniform" => Ok(Self::Uniform),
            "adaptive" => Ok(Self::Adaptive),
            other => Err(QuantError::config(
                "time_grouping",
                format!("'{other}'"),
                "'uniform' or 'adaptive'",
            )),
        }
    }

    /// The name as [`TimeGrouping::parse`] accepts it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Uniform => "uniform",
            Self::Adaptive => "adaptive",
        }
    }
}

/// How the parameters change across a group boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Smoothing {
    /// A hard step at the boundary.
    #[default]
    None,
    /// Linear blend over the window.
    Linear,
    /// Smoothstep blend `3u^2 - 2u^3` over the window.
    Cubic,
    /// Logistic blend (`k = 10`, rescaled to reach 0 and 1 at the window's ends).
    Sigmoid,
}

impl Smoothing {
    /// Parses `"none"`, `"linear"`, `"cubic"` or `"sigmoid"` (the setting `boundary_smoothing`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Self::None),
            "linear" => Ok(Self::Linear),
            "cubic" => Ok(Self::Cubic),
            "sigmoid" => Ok(Self::Sigmoid),
            other => Err(QuantError::config(
                "boundary_smoothing",
                format!("'{other}'"),
                "'none', 'linear', 'cubic' or 'sigmoid'",
            )),
        }
    }

    /// The name as [`Smoothing::parse`] accepts it.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Linear => "linear",
            Self::Cubic => "cubic",
            Self::Sigmoid => "sigmoid",
        }
    }
}

/// Settings of [`time_aware_params`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeAwareConfig {
    /// Number of timestep groups (at most the number of observed timesteps is used); setting `num_time_groups`.
    pub num_groups: usize,
    /// How the timesteps are grouped.
    pub grouping: TimeGrouping,
    /// Activation bit width, 2 to 16.
    pub activation_bits: u8,
    /// Blending at group boundaries.
    pub smoothing: Smoothing,
    /// Timesteps blended on each side of a boundary (at least 1 when smoothing is on).
    pub smoothing_window: u32,
}

impl Default for TimeAwareConfig {
    fn default() -> Self {
        Self {
            num_groups: 10,
            grouping: TimeGrouping::Adaptive,
            activation_bits: 8,
            smoothing: Smoothing::None,
            smoothing_window: 0,
        }
    }
}

impl TimeAwareConfig {
    /// Checks the settings: at least one group, 2 to 16 activation bits, a window of at least 1 with smoothing.
    pub fn validate(&self) -> Result<()> {
        if self.num_groups == 0 {
            return Err(QuantError::config(
                "num_time_groups",
                0,
                "at least 1 (10 is a good default for 50-step samplers)",
            ));
        }
        if !(2..=16).contains(&self.activation_bits) {
            return Err(QuantError::config(
                "activation_bits",
                self.activation_bits,
                "2 to 16 (8 for a W4A8 runtime)",
            ));
        }
        if self.smoothing != Smoothing::None && self.smoothing_window == 0 {
            return Err(QuantError::config(
                "smoothing_window",
                0,
                format!(
                    "at least 1 timestep with boundary_smoothing = '{}' (or boundary_smoothing = 'none')",
                    self.smoothing.name()
                ),
            ));
        }
        Ok(())
    }
}

/// One entry of the `time_groups` column: the activation parameters for timesteps `t_start..t_end`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeGroup {
    /// First timestep covered.
    pub t_start: i32,
    /// One past the last timestep covered (exclusive).
    pub t_end: i32,
    /// Activation scale.
    pub scale: f32,
    /// Activation zero point, an integer in `0..=2^bits - 1` stored as a float.
    pub zero_point: f32,
}

/// Mean within-group range spread (activation units) of three groupings of the same timesteps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpreadFigures {
    /// The grouping that was used.
    pub chosen: f64,
    /// The uniform grouping with the same number of groups.
    pub uniform: f64,
    /// One group over all timesteps.
    pub global: f64,
}

fn ratio(num: f64, den: f64) -> f64 {
    if den == 0.0 {
        1.0
    } else {
        num / den
    }
}

impl SpreadFigures {
    /// `chosen / uniform` (1.0 when `uniform` is 0).
    pub fn vs_uniform(&self) -> f64 {
        ratio(self.chosen, self.uniform)
    }

    /// `chosen / global` (1.0 when `global` is 0).
    pub fn vs_global(&self) -> f64 {
        ratio(self.chosen, self.global)
    }

    /// `uniform / global` (1.0 when `global` is 0).
    pub fn uniform_vs_global(&self) -> f64 {
        ratio(self.uniform, self.global)
    }
}

/// The time-aware activation parameters of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeAwareParams {
    /// The column entries: sorted, contiguous, covering `[0, num_timesteps)`.
    pub groups: Vec<TimeGroup>,
    /// Range spread of the grouping used against the uniform and global ones.
    pub spread: SpreadFigures,
    /// Number of groups before smoothing (`min(num_groups, observed timesteps)`).
    pub num_groups: usize,
}

/// Asymmetric activation `(scale, zero_point)` for the range `[lo, hi]` zero-extended, at `bits` bits.
///
/// `scale = (hi - lo) / (2^bits - 1)` and `zero_point = clamp(round(-lo / scale), 0, 2^bits - 1)`; a zero or
/// non-normal scale gives `(1.0, 0.0)`.
pub fn activation_params(lo: f32, hi: f32, bits: u8) -> (f32, f32) {
    let qmax = ((1u64 << u32::from(bits.min(32))) - 1) as f64;
    let lo = f64::from(lo.min(0.0));
    let hi = f64::from(hi.max(0.0));
    let scale = ((hi - lo) / qmax) as f32;
    if !scale.is_normal() {
        return (1.0, 0.0);
    }
    let zero_point = (-lo / f64::from(scale)).round().clamp(0.0, qmax);
    (scale, zero_point as f32)
}

/// A column entry with the range it was computed from (kept so that tests can check the no-clipping rule).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Entry {
    pub(crate) group: TimeGroup,
    pub(crate) lo: f32,
    pub(crate) hi: f32,
}

/// A range `[lo, hi]` over timesteps `t_start..t_end`, before conversion to parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Span {
    pub(crate) t_start: i64,
    pub(crate) t_end: i64,
    pub(crate) lo: f32,
    pub(crate) hi: f32,
}

/// Computes the `time_groups` entries of `layer` from its per-timestep activation ranges.
///
/// `ranges` must be non-empty, sorted by timestep without repeats, with finite `min <= max` and
/// `timestep < num_timesteps`; otherwise a [`QuantError::Calibration`] names the layer, the timestep and the
/// numbers. `config` is checked with [`TimeAwareConfig::validate`].
pub fn time_aware_params(
    layer: &str,
    ranges: &[TimestepRange],
    num_timesteps: u32,
    config: &TimeAwareConfig,
) -> Result<TimeAwareParams> {
    let (entries, spread, num_groups) = time_aware_entries(layer, ranges, num_timesteps, config)?;
    Ok(TimeAwareParams {
        groups: entries.into_iter().map(|e| e.group).collect(),
        spread,
        num_groups,
    })
}

/// [`time_aware_params`] with the `lo`/`hi` of every entry.
pub(crate) fn time_aware_entries(
    layer: &str,
    ranges: &[TimestepRange],
    num_timesteps: u32,
    config: &TimeAwareConfig,
) -> Result<(Vec<Entry>, SpreadFigures, usize)> {
    config.validate()?;
    if num_timesteps > i32::MAX as u32 {
        return Err(QuantError::config(
            "num_timesteps",
            num_timesteps,
            format!("at most {} (the column stores int32 timesteps)", i32::MAX),
        ));
    }
    check_ranges(layer, ranges, num_timesteps)?;
    let lo: Vec<f32> = ranges.iter().map(|r| r.min.min(0.0)).collect();
    let hi: Vec<f32> = ranges.iter().map(|r| r.max.max(0.0)).collect();
    let n = ranges.len();
    let k = config.num_groups.min(n);

    let uniform = uniform_starts(n, k);
    let global_spread = spread(&[0], &lo, &hi);
    let uniform_spread = spread(&uniform, &lo, &hi);
    let (starts, chosen_spread) = match config.grouping {
        TimeGrouping::Uniform => (uniform, uniform_spread),
        TimeGrouping::Adaptive => {
            let dp = adaptive_starts(&lo, &hi, k);
            let dp_spread = spread(&dp, &lo, &hi);
            // The optimum is never worse than the uniform grouping; only rounding in the sums could say otherwise.
            if dp_spread <= uniform_spread {
                (dp, dp_spread)
            } else {
                (uniform, uniform_spread)
            }
        }
    };

    let spans: Vec<Span> = starts
        .iter()
        .enumerate()
        .map(|(g, &a)| {
            let b = starts.get(g + 1).copied().unwrap_or(n);
            let (glo, ghi) = union(&lo[a..b], &hi[a..b]);
            Span {
                t_start: if g == 0 {
                    0
                } else {
                    i64::from(ranges[a].timestep)
                },
                t_end: starts
                    .get(g + 1)
                    .map_or(i64::from(num_timesteps), |&s| i64::from(ranges[s].timestep)),
                lo: glo,
                hi: ghi,
            }
        })
        .collect();

    let bits = config.activation_bits;
    let entries = if config.smoothing == Smoothing::None {
        spans.iter().map(|s| to_entry(s, bits)).collect()
    } else {
        let smoothed = smoothing::smooth(&spans, ranges, config.smoothing, config.smoothing_window);
        merge(smoothed.iter().map(|s| to_entry(s, bits)))
    };
    Ok((
        entries,
        SpreadFigures {
            chosen: chosen_spread,
            uniform: uniform_spread,
            global: global_spread,
        },
        k,
    ))
}

fn check_ranges(layer: &str, ranges: &[TimestepRange], num_timesteps: u32) -> Result<()> {
    if ranges.is_empty() {
        return Err(QuantError::calibration(
            layer,
            "no timestep ranges were recorded; calibrate this layer over at least one denoising step",
        ));
    }
    for (i, r) in ranges.iter().enumerate() {
        let t = r.timestep;
        if !r.min.is_finite() || !r.max.is_finite() {
            return Err(QuantError::calibration(
                layer,
                format!(
                    "timestep {t}: range min {} / max {} is not finite; re-record this timestep or drop it",
                    r.min, r.max
                ),
            ));
        }
        if r.min > r.max {
            return Err(QuantError::calibration(
                layer,
                format!(
                    "timestep {t}: min {} > max {}; record the smallest and the largest activation in that order",
                    r.min, r.max
                ),
            ));
        }
        if t >= num_timesteps {
            return Err(QuantError::calibration(
                layer,
                format!(
                    "timestep {t} is outside the schedule of {num_timesteps} timesteps (expected 0..{num_timesteps}); \
                     pass the scheduler's number of training timesteps"
                ),
            ));
        }
        if i > 0 {
            let prev = ranges[i - 1].timestep;
            if t == prev {
                return Err(QuantError::calibration(
                    layer,
                    format!(
                        "timestep {t} appears twice (entries {} and {i}); merge repeats into one range \
                         (min of the mins, max of the maxes)",
                        i - 1
                    ),
                ));
            }
            if t < prev {
                return Err(QuantError::calibration(
                    layer,
                    format!(
                        "timestep {t} (entry {i}) comes after timestep {prev}; sort the ranges by timestep"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Union `(min lo, max hi)` of a non-empty run.
fn union(lo: &[f32], hi: &[f32]) -> (f32, f32) {
    let l = lo.iter().fold(f32::INFINITY, |a, &b| a.min(b));
    let h = hi.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    (l, h)
}

/// Start indices of `k` runs over `n` items whose sizes differ by at most one, larger first.
fn uniform_starts(n: usize, k: usize) -> Vec<usize> {
    let (q, r) = (n / k, n % k);
    let mut starts = Vec::with_capacity(k);
    let mut at = 0;
    for g in 0..k {
        starts.push(at);
        at += q + usize::from(g < r);
    }
    starts
}

/// Mean within-group range spread of the runs starting at `starts` (summed in timestep order).
fn spread(starts: &[usize], lo: &[f32], hi: &[f32]) -> f64 {
    let n = lo.len();
    let mut total = 0.0f64;
    for (g, &a) in starts.iter().enumerate() {
        let b = starts.get(g + 1).copied().unwrap_or(n);
        let (glo, ghi) = union(&lo[a..b], &hi[a..b]);
        let wg = f64::from(ghi) - f64::from(glo);
        for t in a..b {
            total += wg - (f64::from(hi[t]) - f64::from(lo[t]));
        }
    }
    total / n.max(1) as f64
}

/// Start indices of the partition into exactly `k` contiguous runs minimising `sum_G |G| * W_G`.
fn adaptive_starts(lo: &[f32], hi: &[f32], k: usize) -> Vec<usize> {
    let n = lo.len();
    // best[j]: least cost of the first j items in the current number of runs; from[g][j]: start of the last run.
    let mut best = vec![f64::INFINITY; n + 1];
    best[0] = 0.0;
    let mut from = vec![vec![0usize; n + 1]; k + 1];
    for (g, from_g) in from.iter_mut().enumerate().skip(1) {
        let mut next = vec![f64::INFINITY; n + 1];
        // The last run ends at j; the runs before it need at least g - 1 items, the ones after at least k - g.
        for j in g..=n - (k - g) {
            let (mut l, mut h) = (f32::INFINITY, f32::NEG_INFINITY);
            for i in (g - 1..j).rev() {
                l = l.min(lo[i]);
                h = h.max(hi[i]);
                let cost = best[i] + (j - i) as f64 * (f64::from(h) - f64::from(l));
                if cost < next[j] {
                    next[j] = cost;
                    from_g[j] = i;
                }
            }
        }
        best = next;
    }
    let mut starts = vec![0usize; k];
    let mut j = n;
    for g in (1..=k).rev() {
        starts[g - 1] = from[g][j];
        j = from[g][j];
    }
    starts
}

fn to_entry(s: &Span, bits: u8) -> Entry {
    let (scale, zero_point) = activation_params(s.lo, s.hi, bits);
    Entry {
        group: TimeGroup {
            t_start: s.t_start as i32,
            t_end: s.t_end as i32,
            scale,
            zero_point,
        },
        lo: s.lo,
        hi: s.hi,
    }
}

/// Merges adjacent entries with identical `(scale, zero_point)`; the merged range is the union.
fn merge(entries: impl Iterator<Item = Entry>) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    for e in entries {
        match out.last_mut() {
            Some(last)
                if last.group.scale == e.group.scale
                    && last.group.zero_point == e.group.zero_point =>
            {
                last.group.t_end = e.group.t_end;
                last.lo = last.lo.min(e.lo);
                last.hi = last.hi.max(e.hi);
            }
            _ => out.push(e),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(timestep: u32, min: f32, max: f32) -> TimestepRange {
        TimestepRange { timestep, min, max }
    }

    fn config(num_groups: usize, grouping: TimeGrouping) -> TimeAwareConfig {
        TimeAwareConfig {
            num_groups,
            grouping,
            ..TimeAwareConfig::default()
        }
    }

    fn cover(groups: &[TimeGroup]) -> Vec<(i32, i32)> {
        groups.iter().map(|g| (g.t_start, g.t_end)).collect()
    }

    #[test]
    fn activation_params_hand_cases() {
        // All positive: lo is extended to 0, scale = 2.55 / 255 = 0.01, zero point 0.
        let (s, z) = activation_params(0.5, 2.55, 8);
        assert!((s - 0.01).abs() < 1e-9);
        assert_eq!(z, 0.0);
        // Straddling 0: scale = 4 / 255, zero point = round(1 / (4/255)) = round(63.75) = 64.
        assert_eq!(activation_params(-1.0, 3.0, 8), (4.0 / 255.0, 64.0));
        // All negative at 4 bits: hi is extended to 0, scale = 2 / 15, zero point = round(15) = 15.
        assert_eq!(activation_params(-2.0, -1.0, 4), (2.0 / 15.0, 15.0));
        // All zero: no range, unit scale.
        assert_eq!(activation_params(0.0, 0.0, 8), (1.0, 0.0));
        // A width too small for a normal scale.
        assert_eq!(activation_params(0.0, 1e-40, 8), (1.0, 0.0));
    }

    #[test]
    fn settings_parse_and_validate() {
        for g in [TimeGrouping::Uniform, TimeGrouping::Adaptive] {
            assert_eq!(TimeGrouping::parse(g.name()), Ok(g));
        }
        for s in [
            Smoothing::None,
            Smoothing::Linear,
            Smoothing::Cubic,
            Smoothing::Sigmoid,
        ] {
            assert_eq!(Smoothing::parse(s.name()), Ok(s));
        }
        assert!(matches!(
            TimeGrouping::parse("kmeans"),
            Err(QuantError::InvalidConfig {
                field: "time_grouping",
                ..
            })
        ));
        assert!(matches!(
            Smoothing::parse("Linear"),
            Err(QuantError::InvalidConfig {
                field: "boundary_smoothing",
                ..
            })
        ));
        let d = TimeAwareConfig::default();
        assert_eq!(
            (
                d.num_groups,
                d.grouping,
                d.activation_bits,
                d.smoothing,
                d.smoothing_window
            ),
            (10, TimeGrouping::Adaptive, 8, Smoothing::None, 0)
        );
        assert_eq!(d.validate(), Ok(()));
        let bad = [
            (TimeAwareConfig { num_groups: 0, ..d }, "num_time_groups"),
            (
                TimeAwareConfig {
                    activation_bits: 1,
                    ..d
                },
                "activation_bits",
            ),
            (
                TimeAwareConfig {
                    activation_bits: 17,
                    ..d
                },
                "activation_bits",
            ),
            (
                TimeAwareConfig {
                    smoothing: Smoothing::Cubic,
                    ..d
                },
                "smoothing_window",
            ),
        ];
        for (c, field) in bad {
            assert!(
                matches!(c.validate(), Err(QuantError::InvalidConfig { field: f, .. }) if f == field),
                "{c:?}"
            );
            assert!(time_aware_params("l", &[r(0, 0.0, 1.0)], 10, &c).is_err());
        }
        let ok = TimeAwareConfig {
            smoothing: Smoothing::Cubic,
            smoothing_window: 3,
            ..d
        };
        assert_eq!(ok.validate(), Ok(()));
    }

    #[test]
    fn spread_ratios_with_zero_denominators() {
        let s = SpreadFigures {
            chosen: 1.0,
            uniform: 2.0,
            global: 4.0,
        };
        assert_eq!(
            (s.vs_uniform(), s.vs_global(), s.uniform_vs_global()),
            (0.5, 0.25, 0.5)
        );
        let z = SpreadFigures {
            chosen: 0.0,
            uniform: 0.0,
            global: 0.0,
        };
        assert_eq!(
            (z.vs_uniform(), z.vs_global(), z.uniform_vs_global()),
            (1.0, 1.0, 1.0)
        );
    }

    #[test]
    fn uniform_grouping_sizes() {
        assert_eq!(uniform_starts(10, 3), [0, 4, 7]); // sizes 4, 3, 3
        assert_eq!(uniform_starts(6, 6), [0, 1, 2, 3, 4, 5]);
        assert_eq!(uniform_starts(7, 1), [0]);
        // 10 observed timesteps 5, 15, ..., 95 over a 100-step schedule, 3 groups.
        let ranges: Vec<_> = (0..10).map(|i| r(10 * i + 5, 0.0, 1.0)).collect();
        let p = time_aware_params("l", &ranges, 100, &config(3, TimeGrouping::Uniform)).unwrap();
        assert_eq!(cover(&p.groups), [(0, 45), (45, 75), (75, 100)]);
        assert_eq!(p.num_groups, 3);
        // More groups than observed timesteps: one group per timestep.
        let p =
            time_aware_params("l", &ranges[..2], 100, &config(8, TimeGrouping::Uniform)).unwrap();
        assert_eq!(cover(&p.groups), [(0, 15), (15, 100)]);
        assert_eq!(p.num_groups, 2);
    }

    #[test]
    fn adaptive_splits_where_the_range_jumps() {
        // Widths 1, 1, 1, 10, 10, 10: the split at index 3 has no spread at all.
        let ranges: Vec<_> = [1.0, 1.0, 1.0, 10.0, 10.0, 10.0]
            .iter()
            .enumerate()
            .map(|(i, &w)| r(100 * i as u32, 0.0, w))
            .collect();
        let p = time_aware_params("l", &ranges, 600, &config(2, TimeGrouping::Adaptive)).unwrap();
        assert_eq!(cover(&p.groups), [(0, 300), (300, 600)]);
        assert_eq!(
            (p.groups[0].scale, p.groups[1].scale),
            (1.0 / 255.0, 10.0 / 255.0)
        );
        assert_eq!(p.spread.chosen, 0.0);
        // Widths 1, 1, 1, 1, 10, 10: uniform splits 3 + 3 and pays (10 - 1) / 6 = 1.5; adaptive splits at 4.
        let ranges: Vec<_> = [1.0, 1.0, 1.0, 1.0, 10.0, 10.0]
            .iter()
            .enumerate()
            .map(|(i, &w)| r(100 * i as u32, 0.0, w))
            .collect();
        let p = time_aware_params("l", &ranges, 600, &config(2, TimeGrouping::Adaptive)).unwrap();
        assert_eq!(cover(&p.groups), [(0, 400), (400, 600)]);
        assert_eq!(p.spread.chosen, 0.0);
        assert_eq!(p.spread.uniform, 1.5);
        // Global: (4 * 9 + 2 * 0) / 6 = 6.
        assert_eq!(p.spread.global, 6.0);
        assert_eq!(p.spread.vs_global(), 0.0);
        let u = time_aware_params("l", &ranges, 600, &config(2, TimeGrouping::Uniform)).unwrap();
        assert_eq!(cover(&u.groups), [(0, 300), (300, 600)]);
        assert_eq!(u.spread.chosen, 1.5);
    }

    #[test]
    fn identical_neighbours_merge_after_smoothing() {
        let ranges: Vec<_> = (0..4).map(|i| r(10 * i, -1.0, 1.0)).collect();
        let c = TimeAwareConfig {
            num_groups: 2,
            smoothing: Smoothing::Linear,
            smoothing_window: 3,
            ..TimeAwareConfig::default()
        };
        let p = time_aware_params("l", &ranges, 40, &c).unwrap();
        assert_eq!(cover(&p.groups), [(0, 40)]);
        assert_eq!(p.num_groups, 2);
        // Without smoothing the two groups stay two entries.
        let p = time_aware_params("l", &ranges, 40, &config(2, TimeGrouping::Uniform)).unwrap();
        assert_eq!(cover(&p.groups), [(0, 20), (20, 40)]);
    }

    #[test]
    fn smoothing_blends_across_a_boundary() {
        // Groups [0, 20) with range [0, 1] and [20, 40) with range [0, 5]; linear window 2.
        let ranges = [
            r(0, 0.0, 1.0),
            r(10, 0.0, 1.0),
            r(20, 0.0, 5.0),
            r(30, 0.0, 5.0),
        ];
        let c = TimeAwareConfig {
            num_groups: 2,
            smoothing: Smoothing::Linear,
            smoothing_window: 2,
            ..TimeAwareConfig::default()
        };
        let (entries, _, _) = time_aware_entries("l", &ranges, 40, &c).unwrap();
        let got: Vec<(i32, i32, f32)> = entries
            .iter()
            .map(|e| (e.group.t_start, e.group.t_end, e.hi))
            .collect();
        // u = 1/8, 3/8, 5/8, 7/8 at t = 18..22: hi = 1 + 4u; t = 20 is observed with max 5, so hi = 5 there.
        assert_eq!(
            got,
            [
                (0, 18, 1.0),
                (18, 19, 1.5),
                (19, 20, 2.5),
                (20, 21, 5.0),
                (21, 22, 4.5),
                (22, 40, 5.0)
            ]
        );
    }

    fn calibration_problem(ranges: &[TimestepRange], num_timesteps: u32) -> String {
        match time_aware_params(
            "down.0.attn",
            ranges,
            num_timesteps,
            &TimeAwareConfig::default(),
        ) {
            Err(QuantError::Calibration {
                source_name,
                problem,
            }) => {
                assert_eq!(source_name, "down.0.attn");
                problem
            }
            other => panic!("expected a calibration error, got {other:?}"),
        }
    }

    #[test]
    fn bad_ranges_name_the_layer_and_timestep() {
        assert!(calibration_problem(&[], 10).contains("no timestep ranges"));
        let p = calibration_problem(&[r(1, 0.0, 1.0), r(7, 2.0, 1.0)], 10);
        assert!(
            p.contains("timestep 7") && p.contains("min 2 > max 1"),
            "{p}"
        );
        let p = calibration_problem(&[r(3, f32::NAN, 1.0)], 10);
        assert!(p.contains("timestep 3") && p.contains("NaN"), "{p}");
        let p = calibration_problem(&[r(3, 0.0, f32::INFINITY)], 10);
        assert!(p.contains("timestep 3") && p.contains("inf"), "{p}");
        let p = calibration_problem(&[r(4, 0.0, 1.0), r(12, 0.0, 1.0)], 10);
        assert!(
            p.contains("timestep 12") && p.contains("10 timesteps"),
            "{p}"
        );
        let p = calibration_problem(&[r(4, 0.0, 1.0), r(4, 0.0, 2.0)], 10);
        assert!(p.contains("timestep 4 appears twice"), "{p}");
        let p = calibration_problem(&[r(5, 0.0, 1.0), r(2, 0.0, 1.0)], 10);
        assert!(
            p.contains("timestep 2") && p.contains("after timestep 5"),
            "{p}"
        );
        let e = time_aware_params(
            "l",
            &[r(0, 0.0, 1.0)],
            u32::MAX,
            &TimeAwareConfig::default(),
        );
        assert!(matches!(
            e,
            Err(QuantError::InvalidConfig {
                field: "num_timesteps",
                ..
            })
        ));
    }

    /// Deterministic noise in `[-1, 1)` (a 64-bit LCG), so that the test needs no random crate.
    fn noise(state: &mut u64) -> f32 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn sampler_like_ranges_favour_adaptive_groups() {
        // T = 1000, 50 observed timesteps (a DDIM-like schedule), ranges growing towards t = T.
        let mut state = 7u64;
        let ranges: Vec<_> = (0..50u32)
            .map(|i| {
                let t = 20 * i + 1;
                let x = t as f32 / 1000.0;
                let max = (1.0 + 9.0 * x * x * x) * (1.0 + 0.05 * noise(&mut state));
                r(t, -0.2 * max, max)
            })
            .collect();
        let p = time_aware_params("l", &ranges, 1000, &TimeAwareConfig::default()).unwrap();
        let s = p.spread;
        assert!(s.chosen < s.uniform && s.uniform < s.global, "{s:?}");
        assert_eq!(p.groups.len(), 10);
        assert_eq!((p.groups[0].t_start, p.groups[9].t_end), (0, 1000));
    }

    #[test]
    fn every_timestep_observed_with_many_groups() {
        // n = 1000 observed timesteps and K = 64: the O(K n^2) dynamic programme stays quick.
        let mut state = 3u64;
        let ranges: Vec<_> = (0..1000u32)
            .map(|t| r(t, -0.1, 1.0 + t as f32 / 100.0 + 0.5 * noise(&mut state)))
            .collect();
        let c = config(64, TimeGrouping::Adaptive);
        let p = time_aware_params("l", &ranges, 1000, &c).unwrap();
        assert_eq!(p.groups.len(), 64);
        assert!(p.spread.chosen < p.spread.uniform && p.spread.uniform < p.spread.global);
    }

    /// Brute force over all partitions of `n` items into `k` contiguous runs: the least spread.
    fn brute_force(lo: &[f32], hi: &[f32], k: usize) -> f64 {
        fn go(
            starts: &mut Vec<usize>,
            next: usize,
            k: usize,
            lo: &[f32],
            hi: &[f32],
            best: &mut f64,
        ) {
            if starts.len() == k {
                *best = best.min(spread(starts, lo, hi));
                return;
            }
            for s in next..lo.len() {
                starts.push(s);
                go(starts, s + 1, k, lo, hi, best);
                starts.pop();
            }
        }
        let mut best = f64::INFINITY;
        go(&mut vec![0], 1, k, lo, hi, &mut best);
        best
    }

    /// Sorted unique timesteps with random ranges, and a schedule length past the last one.
    fn calibration() -> impl Strategy<Value = (Vec<TimestepRange>, u32)> {
        (
            proptest::collection::vec((1u32..30, -5.0f32..5.0, 0.0f32..6.0), 1..40),
            0u32..50,
        )
            .prop_map(|(rows, extra)| {
                let mut t = 0u32;
                let ranges: Vec<_> = rows
                    .iter()
                    .enumerate()
                    .map(|(i, &(gap, min, width))| {
                        t = if i == 0 { gap - 1 } else { t + gap };
                        r(t, min, min + width)
                    })
                    .collect();
                (ranges, t + 1 + extra)
            })
    }

    fn smoothing() -> impl Strategy<Value = (Smoothing, u32)> {
        prop_oneof![
            Just((Smoothing::None, 0)),
            (1u32..20).prop_map(|w| (Smoothing::Linear, w)),
            (1u32..20).prop_map(|w| (Smoothing::Cubic, w)),
            (1u32..20).prop_map(|w| (Smoothing::Sigmoid, w)),
        ]
    }

    proptest! {
        #[test]
        fn adaptive_beats_uniform_beats_global((ranges, n_t) in calibration(), k in 1usize..12) {
            let p = time_aware_params("l", &ranges, n_t, &config(k, TimeGrouping::Adaptive)).unwrap();
            let s = p.spread;
            prop_assert!(s.chosen <= s.uniform && s.uniform <= s.global, "{:?}", s);
            prop_assert!(s.chosen >= 0.0);
            let u = time_aware_params("l", &ranges, n_t, &config(k, TimeGrouping::Uniform)).unwrap();
            prop_assert_eq!(u.spread.chosen, u.spread.uniform);
            prop_assert_eq!(u.spread.uniform, s.uniform);
        }

        #[test]
        fn adaptive_is_the_exact_optimum(
            rows in proptest::collection::vec((-5.0f32..5.0, 0.0f32..6.0), 1..10),
            k in 1usize..6,
        ) {
            let lo: Vec<f32> = rows.iter().map(|&(a, _)| a.min(0.0)).collect();
            let hi: Vec<f32> = rows.iter().map(|&(a, w)| (a + w).max(0.0)).collect();
            let k = k.min(rows.len());
            let dp = spread(&adaptive_starts(&lo, &hi, k), &lo, &hi);
            prop_assert!((dp - brute_force(&lo, &hi, k)).abs() < 1e-9);
        }

        #[test]
        fn entries_cover_the_schedule(
            (ranges, n_t) in calibration(),
            k in 1usize..12,
            (smoothing, smoothing_window) in smoothing(),
            adaptive in any::<bool>(),
        ) {
            let grouping = if adaptive { TimeGrouping::Adaptive } else { TimeGrouping::Uniform };
            let c = TimeAwareConfig { num_groups: k, grouping, smoothing, smoothing_window, ..TimeAwareConfig::default() };
            let p = time_aware_params("l", &ranges, n_t, &c).unwrap();
            prop_assert_eq!(p.num_groups, k.min(ranges.len()));
            prop_assert_eq!(p.groups[0].t_start, 0);
            prop_assert_eq!(p.groups[p.groups.len() - 1].t_end, n_t as i32);
            for pair in p.groups.windows(2) {
                prop_assert_eq!(pair[0].t_end, pair[1].t_start);
            }
            for g in &p.groups {
                prop_assert!(g.t_start < g.t_end);
                prop_assert!(g.scale.is_normal() && g.scale > 0.0);
                prop_assert!((0.0..=255.0).contains(&g.zero_point) && g.zero_point.fract() == 0.0);
            }
            if smoothing == Smoothing::None {
                prop_assert_eq!(p.groups.len(), p.num_groups);
            }
        }

        #[test]
        fn no_observed_range_is_clipped(
            (ranges, n_t) in calibration(),
            k in 1usize..12,
            (smoothing, smoothing_window) in smoothing(),
        ) {
            let c = TimeAwareConfig { num_groups: k, smoothing, smoothing_window, ..TimeAwareConfig::default() };
            let (entries, _, _) = time_aware_entries("l", &ranges, n_t, &c).unwrap();
            for rg in &ranges {
                let t = rg.timestep as i32;
                let e = entries.iter().find(|e| e.group.t_start <= t && t < e.group.t_end);
                prop_assert!(e.is_some(), "timestep {} not covered", t);
                if let Some(e) = e {
                    prop_assert!(e.lo <= rg.min.min(0.0) && e.hi >= rg.max.max(0.0), "{:?} clips {:?}", e, rg);
                }
            }
        }
    }
}
