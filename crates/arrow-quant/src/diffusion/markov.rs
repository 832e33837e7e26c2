//! Markov metrics: how smoothly the time-aware activation parameters change from one timestep entry to the next.
//!
//! The sampler moves from one timestep to the next, so a large jump of the activation parameters between two
//! consecutive `time_groups` entries is where a W4A8 runtime changes behaviour abruptly. For consecutive entries
//! `k`, `k+1` of a layer (`qmax = 2^bits - 1`):
//!
//! * `scale_jump = |s_{k+1} - s_k| / max(s_k, s_{k+1})` (0 when both are 0), in `[0, 1]`;
//! * `zero_point_jump = |z_{k+1} - z_k| / qmax`, in `[0, 1]`;
//! * `jump = max(scale_jump, zero_point_jump)`.
//!
//! A boundary is a violation when `jump > threshold`, of severity `low` when `jump <= 2 * threshold`, `medium`
//! when `jump <= 4 * threshold` and `high` otherwise. A layer's smoothness is `1 - mean jump` over its boundaries
//! (1.0 with none); the overall smoothness is `1 - mean jump` over all boundaries of all layers (1.0 with none),
//! so layers with more boundaries weigh more. The threshold must be finite and in `(0, 1]`
//! ([`DEFAULT_THRESHOLD`] = 0.1).

use serde_json::{json, Value};

use super::time_groups::TimeGroup;
use crate::error::{QuantError, Result};

/// The default jump above which a boundary counts as a violation.
pub const DEFAULT_THRESHOLD: f64 = 0.1;

/// How far a violating jump is above the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// `threshold < jump <= 2 * threshold`.
    Low,
    /// `2 * threshold < jump <= 4 * threshold`.
    Medium,
    /// `jump > 4 * threshold`.
    High,
}

impl Severity {
    /// `"low"`, `"medium"` or `"high"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }

    /// The severity of `jump` against `threshold`, `None` when it is not a violation.
    fn of(jump: f64, threshold: f64) -> Option<Self> {
        if jump <= threshold {
            None
        } else if jump <= 2.0 * threshold {
            Some(Self::Low)
        } else if jump <= 4.0 * threshold {
            Some(Self::Medium)
        } else {
            Some(Self::High)
        }
    }
}

/// The parameter change between two consecutive entries of a layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundaryJump {
    /// The `t_start` of the later entry.
    pub t: i32,
    /// `|s_{k+1} - s_k| / max(s_k, s_{k+1})`, in `[0, 1]`.
    pub scale_jump: f64,
    /// `|z_{k+1} - z_k| / (2^bits - 1)`, in `[0, 1]`.
    pub zero_point_jump: f64,
    /// The severity when `max(scale_jump, zero_point_jump)` is above the threshold.
    pub severity: Option<Severity>,
}

impl BoundaryJump {
    /// `max(scale_jump, zero_point_jump)`.
    pub fn jump(&self) -> f64 {
        self.scale_jump.max(self.zero_point_jump)
    }
}

/// The Markov metrics of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerMarkov {
    /// The layer name.
    pub name: String,
    /// `1 - mean jump` over the layer's boundaries (1.0 with none).
    pub smoothness: f64,
    /// One entry per pair of consecutive entries.
    pub boundaries: Vec<BoundaryJump>,
    /// Boundaries whose jump is above the threshold.
    pub violations: usize,
}

/// The Markov metrics of a set of layers.
#[derive(Debug, Clone, PartialEq)]
pub struct MarkovMetrics {
    /// The violation threshold used.
    pub threshold: f64,
    /// Per layer, in input order.
    pub layers: Vec<LayerMarkov>,
    /// `1 - mean jump` over all boundaries of all layers (1.0 with none).
    pub smoothness: f64,
    /// Violations over all layers (`low + medium + high`).
    pub violations: usize,
    /// Violations of severity low.
    pub low: usize,
    /// Violations of severity medium.
    pub medium: usize,
    /// Violations of severity high.
    pub high: usize,
    /// Largest scale jump (0 with no boundaries).
    pub max_scale_jump: f64,
    /// Largest zero-point jump (0 with no boundaries).
    pub max_zero_point_jump: f64,
}

/// Computes the Markov metrics of `layers` (name, `time_groups` entries in timestep order).
///
/// `threshold` must be finite and in `(0, 1]` and `activation_bits` in 2 to 16 (else
/// [`QuantError::InvalidConfig`]); every scale must be finite and non-negative and every zero point finite and in
/// `[0, 2^bits - 1]` (else a [`QuantError::Calibration`] naming the layer and the entry).
pub fn markov_metrics<'a>(
    layers: impl IntoIterator<Item = (&'a str, &'a [TimeGroup])>,
    activation_bits: u8,
    threshold: f64,
) -> Result<MarkovMetrics> {
    if !threshold.is_finite() || threshold <= 0.0 || threshold > 1.0 {
        return Err(QuantError::config(
            "threshold",
            threshold,
            format!("a finite number in (0, 1] (the default is {DEFAULT_THRESHOLD})"),
        ));
    }
    if !(2..=16).contains(&activation_bits) {
        return Err(QuantError::config(
            "activation_bits",
            activation_bits,
            "2 to 16 (8 for a W4A8 runtime)",
        ));
    }
    let qmax = f64::from((1u32 << activation_bits) - 1);
    let mut out = MarkovMetrics {
        threshold,
        layers: Vec::new(),
        smoothness: 1.0,
        violations: 0,
        low: 0,
        medium: 0,
        high: 0,
        max_scale_jump: 0.0,
        max_zero_point_jump: 0.0,
    };
    let (mut jump_sum, mut count) = (0.0f64, 0usize);
    for (name, entries) in layers {
        check_entries(name, entries, qmax)?;
        let boundaries: Vec<BoundaryJump> = entries
            .windows(2)
            .map(|pair| {
                let (a, b) = (&pair[0], &pair[1]);
                let (sa, sb) = (f64::from(a.scale), f64::from(b.scale));
                let top = sa.max(sb);
                let scale_jump = if top > 0.0 {
                    (sb - sa).abs() / top
                } else {
                    0.0
                };
                let zero_point_jump =
                    (f64::from(b.zero_point) - f64::from(a.zero_point)).abs() / qmax;
                let jump = scale_jump.max(zero_point_jump);
                BoundaryJump {
                    t: b.t_start,
                    scale_jump,
                    zero_point_jump,
                    severity: Severity::of(jump, threshold),
                }
            })
            .collect();
        let layer_sum: f64 = boundaries.iter().map(BoundaryJump::jump).sum();
        let mut violations = 0;
        for b in &boundaries {
            match b.severity {
                Some(Severity::Low) => out.low += 1,
                Some(Severity::Medium) => out.medium += 1,
                Some(Severity::High) => out.high += 1,
                None => continue,
            }
            violations += 1;
        }
        for b in &boundaries {
            out.max_scale_jump = out.max_scale_jump.max(b.scale_jump);
            out.max_zero_point_jump = out.max_zero_point_jump.max(b.zero_point_jump);
        }
        jump_sum += layer_sum;
        count += boundaries.len();
        out.violations += violations;
        out.layers.push(LayerMarkov {
            name: name.to_string(),
            smoothness: smoothness(layer_sum, boundaries.len()),
            boundaries,
            violations,
        });
    }
    out.smoothness = smoothness(jump_sum, count);
    Ok(out)
}

fn smoothness(jump_sum: f64, count: usize) -> f64 {
    if count == 0 {
        1.0
    } else {
        1.0 - jump_sum / count as f64
    }
}

fn check_entries(name: &str, entries: &[TimeGroup], qmax: f64) -> Result<()> {
    for (k, e) in entries.iter().enumerate() {
        if !e.scale.is_finite() || e.scale < 0.0 {
            return Err(QuantError::calibration(
                name,
                format!(
                    "time group {k} (timesteps {}..{}) has scale {}; scales must be finite and non-negative \
                     (recompute the time groups from the calibration ranges)",
                    e.t_start, e.t_end, e.scale
                ),
            ));
        }
        let z = f64::from(e.zero_point);
        if !z.is_finite() || !(0.0..=qmax).contains(&z) {
            return Err(QuantError::calibration(
                name,
                format!(
                    "time group {k} (timesteps {}..{}) has zero point {}; expected 0 to {qmax} at the given \
                     activation_bits (check that activation_bits matches the one used to build the groups)",
                    e.t_start, e.t_end, e.zero_point
                ),
            ));
        }
    }
    Ok(())
}

impl MarkovMetrics {
    /// The metrics as JSON: the totals, then `layers` with each layer's boundaries (`severity` is `null` below
    /// the threshold).
    pub fn to_json(&self) -> Value {
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| {
                let boundaries: Vec<Value> = l
                    .boundaries
                    .iter()
                    .map(|b| {
                        json!({
                            "t": b.t,
                            "scale_jump": b.scale_jump,
                            "zero_point_jump": b.zero_point_jump,
                            "severity": b.severity.map(Severity::name),
                        })
                    })
                    .collect();
                json!({
                    "name": l.name,
                    "smoothness": l.smoothness,
                    "violations": l.violations,
                    "boundaries": boundaries,
                })
            })
            .collect();
        json!({
            "threshold": self.threshold,
            "smoothness": self.smoothness,
            "violations": self.violations,
            "severity": { "low": self.low, "medium": self.medium, "high": self.high },
            "max_scale_jump": self.max_scale_jump,
            "max_zero_point_jump": self.max_zero_point_jump,
            "layers": layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn groups(scales: &[f32], zero_points: &[f32]) -> Vec<TimeGroup> {
        scales
            .iter()
            .zip(zero_points)
            .enumerate()
            .map(|(k, (&scale, &zero_point))| TimeGroup {
                t_start: 100 * k as i32,
                t_end: 100 * (k as i32 + 1),
                scale,
                zero_point,
            })
            .collect()
    }

    #[test]
    fn hand_computed_jumps() {
        // Layer "a": scales 1.0, 1.5, 0.75 and zero points 0, 10, 10 at 8 bits (qmax = 255), threshold 0.1.
        //   t = 100: scale_jump = 0.5 / 1.5 = 1/3, zero_point_jump = 10/255; jump = 1/3 in (0.2, 0.4] -> medium.
        //   t = 200: scale_jump = 0.75 / 1.5 = 1/2, zero_point_jump = 0;      jump = 1/2 > 0.4 -> high.
        //   smoothness = 1 - (1/3 + 1/2) / 2 = 7/12.
        // Layer "b": scales 1.0, 1.15 and zero points 0, 0.
        //   t = 100: scale_jump = 0.15 / 1.15 = 3/23 in (0.1, 0.2] -> low; smoothness = 1 - 3/23 = 20/23.
        // Layer "c": one entry, no boundaries: smoothness 1.
        // Overall: 1 - (1/3 + 1/2 + 3/23) / 3.
        let a = groups(&[1.0, 1.5, 0.75], &[0.0, 10.0, 10.0]);
        let b = groups(&[1.0, 1.15], &[0.0, 0.0]);
        let c = groups(&[0.5], &[3.0]);
        let m = markov_metrics(
            [("a", &a[..]), ("b", &b[..]), ("c", &c[..])],
            8,
            DEFAULT_THRESHOLD,
        )
        .unwrap();
        let close = |x: f64, y: f64| (x - y).abs() < 1e-6;
        let la = &m.layers[0];
        assert_eq!(la.name, "a");
        assert_eq!(
            la.boundaries.iter().map(|b| b.t).collect::<Vec<_>>(),
            [100, 200]
        );
        assert!(close(la.boundaries[0].scale_jump, 1.0 / 3.0));
        assert!(close(la.boundaries[0].zero_point_jump, 10.0 / 255.0));
        assert_eq!(la.boundaries[0].severity, Some(Severity::Medium));
        assert!(close(la.boundaries[1].scale_jump, 0.5));
        assert_eq!(la.boundaries[1].zero_point_jump, 0.0);
        assert_eq!(la.boundaries[1].severity, Some(Severity::High));
        assert!(close(la.smoothness, 7.0 / 12.0));
        assert_eq!(la.violations, 2);
        let lb = &m.layers[1];
        assert!(close(lb.boundaries[0].scale_jump, 3.0 / 23.0));
        assert_eq!(lb.boundaries[0].severity, Some(Severity::Low));
        assert!(close(lb.smoothness, 20.0 / 23.0));
        let lc = &m.layers[2];
        assert!(lc.boundaries.is_empty());
        assert_eq!((lc.smoothness, lc.violations), (1.0, 0));
        assert!(close(
            m.smoothness,
            1.0 - (1.0 / 3.0 + 0.5 + 3.0 / 23.0) / 3.0
        ));
        assert_eq!((m.violations, m.low, m.medium, m.high), (3, 1, 1, 1));
        assert!(close(m.max_scale_jump, 0.5));
        assert!(close(m.max_zero_point_jump, 10.0 / 255.0));
        // A larger threshold of 0.5: only jumps above 0.5 count, none here.
        let m = markov_metrics([("a", &a[..])], 8, 0.5).unwrap();
        assert_eq!(m.violations, 0);
        assert_eq!(m.layers[0].boundaries[1].severity, None);
    }

    #[test]
    fn zero_point_jumps_and_zero_scales() {
        // Scales both 0: scale_jump 0; zero points 0 -> 15 at 4 bits: zero_point_jump = 15 / 15 = 1 -> high.
        let g = groups(&[0.0, 0.0], &[0.0, 15.0]);
        let m = markov_metrics([("z", &g[..])], 4, 0.1).unwrap();
        let b = m.layers[0].boundaries[0];
        assert_eq!((b.scale_jump, b.zero_point_jump, b.jump()), (0.0, 1.0, 1.0));
        assert_eq!(b.severity, Some(Severity::High));
        assert_eq!(m.smoothness, 0.0);
        // Exactly on the threshold is not a violation; exactly 2x is low, exactly 4x medium.
        assert_eq!(Severity::of(0.1, 0.1), None);
        assert_eq!(Severity::of(0.2, 0.1), Some(Severity::Low));
        assert_eq!(Severity::of(0.4, 0.1), Some(Severity::Medium));
        assert_eq!(Severity::of(0.41, 0.1), Some(Severity::High));
    }

    #[test]
    fn empty_input() {
        let m = markov_metrics(std::iter::empty(), 8, DEFAULT_THRESHOLD).unwrap();
        assert!(m.layers.is_empty());
        assert_eq!(
            (m.smoothness, m.violations, m.max_scale_jump),
            (1.0, 0, 0.0)
        );
        let none: &[TimeGroup] = &[];
        let m = markov_metrics([("empty", none)], 8, DEFAULT_THRESHOLD).unwrap();
        assert_eq!(m.layers[0].smoothness, 1.0);
        assert_eq!(m.smoothness, 1.0);
    }

    #[test]
    fn bad_settings_and_entries() {
        let g = groups(&[1.0, 2.0], &[0.0, 1.0]);
        for t in [0.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert!(
                matches!(
                    markov_metrics([("l", &g[..])], 8, t),
                    Err(QuantError::InvalidConfig {
                        field: "threshold",
                        ..
                    })
                ),
                "{t}"
            );
        }
        assert!(markov_metrics([("l", &g[..])], 8, 1.0).is_ok());
        assert!(matches!(
            markov_metrics([("l", &g[..])], 1, 0.1),
            Err(QuantError::InvalidConfig {
                field: "activation_bits",
                ..
            })
        ));
        for bad in [
            groups(&[1.0, f32::NAN], &[0.0, 0.0]),
            groups(&[1.0, 1.0], &[0.0, 300.0]),
        ] {
            match markov_metrics([("mid.1", &bad[..])], 8, 0.1) {
                Err(QuantError::Calibration {
                    source_name,
                    problem,
                }) => {
                    assert_eq!(source_name, "mid.1");
                    assert!(
                        problem.contains("time group 1 (timesteps 100..200)"),
                        "{problem}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn json_layout() {
        let a = groups(&[1.0, 1.5, 0.75], &[0.0, 10.0, 10.0]);
        let j = markov_metrics([("a", &a[..])], 8, 0.1).unwrap().to_json();
        assert_eq!(j["threshold"], 0.1);
        assert_eq!(j["violations"], 2);
        assert_eq!(j["severity"]["medium"], 1);
        assert_eq!(j["severity"]["high"], 1);
        assert_eq!(j["layers"][0]["name"], "a");
        assert_eq!(j["layers"][0]["boundaries"][1]["t"], 200);
        assert_eq!(j["layers"][0]["boundaries"][1]["severity"], "high");
        assert_eq!(j["layers"][0]["boundaries"][1]["scale_jump"], 0.5);
        let b = groups(&[1.0, 1.01], &[0.0, 0.0]);
        let j = markov_metrics([("b", &b[..])], 8, 0.1).unwrap().to_json();
        assert!(j["layers"][0]["boundaries"][0]["severity"].is_null());
    }

    proptest! {
        #[test]
        fn jumps_are_fractions(
            rows in proptest::collection::vec((0.0f32..10.0, 0u32..256), 0..20),
            threshold in 0.01f64..1.0,
        ) {
            let scales: Vec<f32> = rows.iter().map(|r| r.0).collect();
            let zps: Vec<f32> = rows.iter().map(|r| r.1 as f32).collect();
            let g = groups(&scales, &zps);
            let m = markov_metrics([("l", &g[..])], 8, threshold).unwrap();
            prop_assert!((0.0..=1.0).contains(&m.smoothness));
            prop_assert_eq!(m.violations, m.low + m.medium + m.high);
            for b in &m.layers[0].boundaries {
                prop_assert!((0.0..=1.0).contains(&b.scale_jump));
                prop_assert!((0.0..=1.0).contains(&b.zero_point_jump));
                prop_assert_eq!(b.severity.is_some(), b.jump() > threshold);
            }
        }
    }
}
