//! The report of a run: per layer the decision, width, quality and any fallback; totals and throughput.

use super::plan::MixedPrecision;
use crate::checkpoint::TensorEntry;
use crate::diffusion::markov::{markov_metrics, MarkovMetrics};
use crate::diffusion::time_groups::{SpreadFigures, TimeGroup};
use crate::error::Result;
use crate::quantized::{Quality, QuantizedTensor};

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
            entropy: None,
            channel_alpha: None,
            weighted_error: None,
            time_groups: None,
            time_spread: None,
        }
    }

    pub(crate) fn set_quantized(&mut self, q: &QuantizedTensor) {
        self.encoding = q.encoding_name().to_string();
        self.bits = q.encoding.bits().bits() as u8;
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

    /// True when the layer is stored as integer codes.
    pub fn is_quantized(&self) -> bool {
        self.encoding.starts_with("int")
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

    /// The lowest cosine of any quantized layer (1.0 if none).
    pub fn worst_cosine(&self) -> f64 {
        self.layers
            .iter()
            .filter(|l| l.is_quantized())
            .map(|l| l.quality.cosine)
            .fold(1.0, f64::min)
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

    /// The totals as JSON (stored in the model file's metadata).
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
            "seconds": self.seconds,
            "gb_per_s": self.gb_per_s(),
        })
    }

    /// The full report as JSON (per layer and totals).
    pub fn to_json(&self) -> serde_json::Value {
        let layers: Vec<_> = self
            .layers
            .iter()
            .map(|l| {
                serde_json::json!({
                    "name": l.name, "shape": l.shape, "dtype": l.dtype, "encoding": l.encoding, "bits": l.bits,
                    "bits_per_weight": l.bits_per_weight, "cosine": l.quality.cosine, "rel_mse": l.quality.rel_mse,
                    "bytes_in": l.bytes_in, "bytes_out": l.bytes_out, "kept": l.kept, "fallback": l.fallback,
                    "entropy": l.entropy, "channel_alpha": l.channel_alpha, "weighted_error": l.weighted_error,
                    "time_groups": l.time_groups.as_ref().map(|g| g.len()),
                    "time_spread": l.time_spread.map(|s| serde_json::json!({
                        "chosen": s.chosen, "uniform": s.uniform, "global": s.global,
                        "vs_uniform": s.vs_uniform(), "vs_global": s.vs_global(),
                    })),
                })
            })
            .collect();
        serde_json::json!({ "layers": layers, "totals": self.summary_json() })
    }
}
