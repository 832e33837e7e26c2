//! The report of a run: per layer the decision, width, quality and any fallback; totals and throughput.

use super::plan::MixedPrecision;
use crate::checkpoint::TensorEntry;
use crate::diffusion::markov::{markov_metrics, MarkovMetrics};
use crate::diffusion::time_groups::{SpreadFigures, TimeGroup};
use crate::error::{QuantError, Result};
use crate::quantized::{Quality, QuantizedTensor};
use std::path::Path;

/// What happened to one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    /// Tensor name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Source dtype (lower case).
    pub dtype: String,
    /// Stored encoding: `int2`, `int4`, `int8`, `f16`, `bf16`, `f32` or `raw`.
    pub encoding: String,
    /// Bits per element of the codes or values.
    pub bits: u8,
    /// Stored bits per weight including scales and zero points.
    pub bits_per_weight: f64,
    /// Fidelity to the source.
    pub quality: Quality,
    /// Source bytes.
    pub bytes_in: usize,
    /// Stored bytes.
    pub bytes_out: usize,
    /// Why the layer was not quantized, if it was not.
    pub kept: Option<String>,
    /// Why a wider encoding than asked was used, if one was.
    pub fallback: Option<String>,
    /// Why the encoding is not the one asked for, when that is not a fallback (GGUF: an override, a preset
    /// mix's bump, a flattened layout, a missing imatrix entry), if it is not.
    pub note: Option<String>,
    /// Entropy of the weights in bits over 256 bins (a sensitivity signal; quantizable layers only).
    pub entropy: Option<f64>,
    /// The exponent channel scaling chose (layers with calibration magnitudes).
    pub channel_alpha: Option<f32>,
    /// Activation-weighted relative error (layers with calibration magnitudes).
    pub weighted_error: Option<f64>,
    /// Time-aware activation parameters (calibrated layers).
    pub time_groups: Option<Vec<TimeGroup>>,
    /// Mean within-group activation range spread: the grouping used, uniform, and one global range.
    pub time_spread: Option<SpreadFigures>,
}

impl LayerReport {
    pub(crate) fn new(entry: &TensorEntry, dtype: &str) -> Self {
        Self {
            name: entry.name.clone(),
            shape: entry.shape.clone(),
            dtype: dtype.to_string(),
            encoding: String::new(),
            bits: 0,
            bits_per_weight: 0.0,
            quality: Quality {
                cosine: 1.0,
                rel_mse: 0.0,
            },
            bytes_in: entry.end - entry.begin,
            bytes_out: 0,
            kept: None,
            fallback: None,
            note: None,
            entropy: None,
            channel_alpha: None,
            weighted_error: None,
            time_groups: None,
            time_spread: None,
        }
    }

    pub(crate) fn set_quantized(&mut self, q: &QuantizedTensor) {
        self.encoding = q.encoding_name().to_string();
        self.bits = q.encoding.code_bits();
        self.bits_per_weight = q.bits_per_weight();
        self.quality = q.quality;
        self.bytes_out = q.nbytes();
    }

    pub(crate) fn set_plain(&mut self, encoding: &str, bits: u8, bytes: usize, quality: Quality) {
        self.encoding = encoding.to_string();
        self.bits = bits;
        let n: usize = self.shape.iter().product();
        self.bits_per_weight = if n == 0 {
            0.0
        } else {
            bytes as f64 * 8.0 / n as f64
        };
        self.quality = quality;
        self.bytes_out = bytes;
    }

    /// True when the layer is stored as integer codes (an `int*` encoding, or a ggml block type in a GGUF run).
    pub fn is_quantized(&self) -> bool {
        !matches!(
            self.encoding.as_str(),
            "f16" | "bf16" | "f32" | "raw" | "F16" | "BF16" | "F32" | ""
        )
    }

    /// The layer as JSON (the `layers` entries of [`Report::to_json`]).
    pub fn to_json(&self) -> serde_json::Value {
        let l = self;
        serde_json::json!({
            "name": l.name, "shape": l.shape, "dtype": l.dtype, "encoding": l.encoding, "bits": l.bits,
            "bits_per_weight": l.bits_per_weight, "cosine": l.quality.cosine, "rel_mse": l.quality.rel_mse,
            "bytes_in": l.bytes_in, "bytes_out": l.bytes_out, "kept": l.kept, "fallback": l.fallback,
            "note": l.note, "entropy": l.entropy, "channel_alpha": l.channel_alpha, "weighted_error": l.weighted_error,
            "time_groups": l.time_groups.as_ref().map(|g| g.len()),
            "time_spread": l.time_spread.map(|s| serde_json::json!({
                "chosen": s.chosen, "uniform": s.uniform, "global": s.global,
                "vs_uniform": s.vs_uniform(), "vs_global": s.vs_global(),
            })),
        })
    }

    /// A layer back from [`LayerReport::to_json`] (floats round-trip exactly). Time-aware parameters are not
    /// part of that JSON: a layer that had them is refused (`what` names the source in the error).
    pub(crate) fn from_json(value: &serde_json::Value, what: &Path) -> Result<Self> {
        let bad = |problem: &str| QuantError::format(what, format!("layer report: {problem}"));
        let text = |key: &str| -> Result<String> {
            Ok(value[key].as_str().ok_or_else(|| bad(key))?.to_string())
        };
        // JSON has no NaN: serde_json writes it as null.
        let float = |key: &str| -> Result<f64> {
            match &value[key] {
                serde_json::Value::Null => Ok(f64::NAN),
                v => v.as_f64().ok_or_else(|| bad(key)),
            }
        };
        let count = |key: &str| -> Result<usize> {
            let n = value[key].as_u64().ok_or_else(|| bad(key))?;
            usize::try_from(n).map_err(|_| bad(key))
        };
        let optional_text = |key: &str| value[key].as_str().map(str::to_string);
        if !value["time_groups"].is_null() || !value["time_spread"].is_null() {
            return Err(bad(
                "time-aware parameters cannot be carried by a staged unit",
            ));
        }
        let shape = value["shape"]
            .as_array()
            .and_then(|dims| {
                dims.iter()
                    .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| bad("shape"))?;
        Ok(Self {
            name: text("name")?,
            shape,
            dtype: text("dtype")?,
            encoding: text("encoding")?,
            bits: u8::try_from(count("bits")?).map_err(|_| bad("bits"))?,
            bits_per_weight: float("bits_per_weight")?,
            quality: Quality {
                cosine: float("cosine")?,
                rel_mse: float("rel_mse")?,
            },
            bytes_in: count("bytes_in")?,
            bytes_out: count("bytes_out")?,
            kept: optional_text("kept"),
            fallback: optional_text("fallback"),
            note: optional_text("note"),
            entropy: value["entropy"].as_f64(),
            channel_alpha: value["channel_alpha"].as_f64().map(|a| a as f32),
            weighted_error: value["weighted_error"].as_f64(),
            time_groups: None,
            time_spread: None,
        })
    }
}

/// The report of a whole run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Every tensor, in file order.
    pub layers: Vec<LayerReport>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// The mixed-precision plan, when a bits-per-weight target was set.
    pub mixed_precision: Option<MixedPrecision>,
    /// Bits of the activation quantization the time-aware parameters are for.
    pub activation_bits: u8,
    /// What the run did that its user may not expect, one sentence each (an imatrix with no entry for some
    /// tensors, say); the CLI prints them on stderr.
    pub warnings: Vec<String>,
}

impl Report {
    pub(crate) fn push(&mut self, layer: LayerReport) {
        self.layers.push(layer);
    }

    /// Source bytes.
    pub fn bytes_in(&self) -> usize {
        self.layers.iter().map(|l| l.bytes_in).sum()
    }

    /// Stored bytes (codes, scales, zero points and kept values).
    pub fn bytes_out(&self) -> usize {
        self.layers.iter().map(|l| l.bytes_out).sum()
    }

    /// `bytes_in / bytes_out`.
    pub fn compression_ratio(&self) -> f64 {
        self.bytes_in() as f64 / self.bytes_out().max(1) as f64
    }

    /// Stored bits per weight over every tensor.
    pub fn bits_per_weight(&self) -> f64 {
        let n: usize = self
            .layers
            .iter()
            .map(|l| l.shape.iter().product::<usize>())
            .sum();
        self.bytes_out() as f64 * 8.0 / n.max(1) as f64
    }

    /// Source gigabytes (1e9 bytes) per second.
    pub fn gb_per_s(&self) -> f64 {
        self.bytes_in() as f64 / 1e9 / self.seconds.max(1e-9)
    }

    /// Layers quantized to integer codes.
    pub fn quantized(&self) -> usize {
        self.layers.iter().filter(|l| l.is_quantized()).count()
    }

    /// Layers that fell back to a wider encoding.
    pub fn fallbacks(&self) -> usize {
        self.layers.iter().filter(|l| l.fallback.is_some()).count()
    }

    /// The lowest cosine of any layer, quantized or kept (1.0 if none; NaN if a layer's is NaN).
    pub fn worst_cosine(&self) -> f64 {
        self.layers
            .iter()
            .map(|l| l.quality.cosine)
            .fold(
                1.0,
                |worst, c| if c < worst || c.is_nan() { c } else { worst },
            )
    }

    /// Markov metrics of the time-aware parameters (`None` when no layer has any), with violations above
    /// `threshold` (in (0, 1]).
    pub fn markov_metrics(&self, threshold: f64) -> Result<Option<MarkovMetrics>> {
        let layers: Vec<(&str, &[TimeGroup])> = self
            .layers
            .iter()
            .filter_map(|l| Some((l.name.as_str(), l.time_groups.as_deref()?)))
            .collect();
        if layers.is_empty() {
            return Ok(None);
        }
        markov_metrics(layers, self.activation_bits, threshold).map(Some)
    }

    /// Over the layers with time-aware parameters: how many, and the mean ratios of their within-group range
    /// spread (used grouping / uniform, used / one global range, uniform / global).
    pub fn time_aware_summary(&self) -> Option<serde_json::Value> {
        let spreads: Vec<SpreadFigures> =
            self.layers.iter().filter_map(|l| l.time_spread).collect();
        if spreads.is_empty() {
            return None;
        }
        let mean = |f: fn(&SpreadFigures) -> f64| {
            spreads.iter().map(f).sum::<f64>() / spreads.len() as f64
        };
        Some(serde_json::json!({
            "layers": spreads.len(),
            "spread_vs_uniform": mean(SpreadFigures::vs_uniform),
            "spread_vs_global": mean(SpreadFigures::vs_global),
            "uniform_vs_global": mean(SpreadFigures::uniform_vs_global),
        }))
    }

    /// The totals as JSON, stored in the model file's metadata: no timings, so that two runs of one checkpoint
    /// with one config write the same bytes (see [`Report::totals_json`]).
    pub fn summary_json(&self) -> serde_json::Value {
        serde_json::json!({
            "mixed_precision": self.mixed_precision.as_ref().map(MixedPrecision::to_json),
            "time_aware": self.time_aware_summary(),
            "tensors": self.layers.len(),
            "quantized": self.quantized(),
            "fallbacks": self.fallbacks(),
            "bytes_in": self.bytes_in(),
            "bytes_out": self.bytes_out(),
            "compression_ratio": self.compression_ratio(),
            "bits_per_weight": self.bits_per_weight(),
            "worst_cosine": self.worst_cosine(),
        })
    }

    /// [`Report::summary_json`] plus the timings (`seconds`, `gb_per_s`): the totals of the returned report.
    pub fn totals_json(&self) -> serde_json::Value {
        let mut totals = self.summary_json();
        if let Some(t) = totals.as_object_mut() {
            t.insert("seconds".into(), self.seconds.into());
            t.insert("gb_per_s".into(), self.gb_per_s().into());
        }
        totals
    }

    /// The full report as JSON (per layer and totals with timings).
    pub fn to_json(&self) -> serde_json::Value {
        let layers: Vec<_> = self.layers.iter().map(LayerReport::to_json).collect();
        serde_json::json!({ "layers": layers, "totals": self.totals_json(), "warnings": self.warnings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_json_round_trips_exactly_and_the_file_summary_has_no_timings() {
        let layer = LayerReport {
            name: "blocks.0.attn.qkv.weight".into(),
            shape: vec![192, 64],
            dtype: "f16".into(),
            encoding: "int4_2l".into(),
            bits: 4,
            bits_per_weight: 4.5,
            quality: Quality {
                cosine: 0.997_531_234_567_891_2,
                rel_mse: 4.931_234_567_e-3,
            },
            bytes_in: 24576,
            bytes_out: 6912,
            kept: None,
            fallback: Some("int2 missed the floor".into()),
            note: Some("overridden by --tensor-type".into()),
            entropy: Some(7.123_456_789_012_345),
            channel_alpha: None,
            weighted_error: None,
            time_groups: None,
            time_spread: None,
        };
        let back = LayerReport::from_json(&layer.to_json(), Path::new("x")).unwrap();
        assert_eq!(back, layer);
        let report = Report {
            layers: vec![layer],
            seconds: 1.5,
            ..Report::default()
        };
        let summary = report.summary_json();
        assert!(summary.get("seconds").is_none() && summary.get("gb_per_s").is_none());
        assert_eq!(report.totals_json()["seconds"], 1.5);
    }
}
