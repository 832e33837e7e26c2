//! Settings of a whole-model run: the kernel config, the layer policy, the quality floor and fallback, the output
//! format; deployment profiles `edge`, `local`, `cloud`.

use crate::config::{BitWidth, FlatLayout, GroupSize, Layout, Method, QuantConfig};
use crate::diffusion::time_groups::TimeAwareConfig;
use crate::error::{QuantError, Result};
use std::path::PathBuf;

/// File format of a quantized model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Parquet with zstd compression.
    Parquet,
    /// Arrow IPC file (memory-mappable).
    ArrowIpc,
    /// GGUF v3 (llama.cpp's format, read by ComfyUI-GGUF, diffusers and stable-diffusion.cpp): every tensor
    /// as a ggml type (`PipelineConfig::gguf`).
    Gguf,
}

impl OutputFormat {
    /// Parses `parquet`, `arrow` or `gguf`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "parquet" => Ok(Self::Parquet),
            "arrow" | "ipc" | "arrow_ipc" => Ok(Self::ArrowIpc),
            "gguf" => Ok(Self::Gguf),
            other => Err(QuantError::config(
                "format",
                format!("{other:?}"),
                "\"parquet\", \"arrow\" or \"gguf\"",
            )),
        }
    }

    /// `parquet`, `arrow` or `gguf`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Parquet => "parquet",
            Self::ArrowIpc => "arrow",
            Self::Gguf => "gguf",
        }
    }

    /// The file extension of the format, without the dot: `parquet`, `arrow` or `gguf`.
    pub fn extension(self) -> &'static str {
        self.name()
    }
}

/// Default name patterns (case-insensitive substrings) of tensors kept in 16-bit.
pub const DEFAULT_KEEP_PATTERNS: [&str; 8] = [
    "norm",
    "bias",
    "time_embed",
    "timestep",
    "t_embedder",
    "time_proj",
    "temb",
    "time_embedding",
];

/// Default name patterns (case-insensitive substrings) of the conditioning projections, which get plain rounding
/// at 4 bits and below like convolution kernels (see `policy::layer_quant`): the timestep / class embedding
/// projected into each block (`emb_layers`, `label_emb` in OpenAI / LDM UNets, `time_emb_proj` in diffusers), the
/// DiT and SD3 modulation (`adaLN`, `y_embedder`), Flux's conditioning inputs and modulations (`time_in`,
/// `guidance_in`, `vector_in`, `_mod.`, `modulation`) and Wan's (`modulation`, `time_projection`), and the timestep
/// embedding MLPs themselves (`time_embed`, also matching diffusers' `time_embedding`). Their output
/// is one vector per sample that shifts or scales a whole feature map, so a bias in their rounding moves the whole
/// output: on the terrain UNet, rounding `emb_layers` plainly instead of by the clipping search lowered the INT4
/// output error. The timestep embedding MLPs are kept in 16-bit by [`DEFAULT_KEEP_PATTERNS`]; their pattern here
/// is for runs that quantize them anyway (other keep patterns, `--tensor-type` overrides, the e2e benchmarks).
pub const DEFAULT_UNCLIPPED_PATTERNS: [&str; 12] = [
    "emb_layers",
    "label_emb",
    "time_emb_proj",
    "adaln",
    "y_embedder",
    "time_in",
    "guidance_in",
    "vector_in",
    "_mod.",
    "modulation",
    "time_projection",
    "time_embed",
];

/// Everything a whole-model run needs.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Profile the settings came from, if any.
    pub profile: Option<String>,
    /// Kernel settings; `bits` is the first width tried.
    pub quant: QuantConfig,
    /// Minimum cosine similarity a quantized layer must reach; below it the next width is tried.
    pub quality_floor: f64,
    /// Stop the run (quality error) instead of falling back.
    pub fail_fast: bool,
    /// Tensors with fewer elements stay in 16-bit.
    pub min_elements: usize,
    /// Name patterns of tensors kept in 16-bit.
    pub keep_patterns: Vec<String>,
    /// Name patterns of the layers that, like convolution kernels, get plain rounding (symmetric flat groups of
    /// 32, `rtn`) at 4 bits and below when layout and method are `auto` (see `policy::layer_quant`).
    pub unclipped_patterns: Vec<String>,
    /// Keep the first and the last quantizable layer in 16-bit.
    pub keep_first_last: bool,
    /// Output file format; `None` takes it from the output's extension (`.arrow` Arrow IPC, else Parquet).
    pub format: Option<OutputFormat>,
    /// Calibration statistics (Parquet or Arrow IPC file); without them the diffusion-specific parts are off.
    pub calibration_path: Option<PathBuf>,
    /// With calibration: per-timestep-group activation parameters for every calibrated layer.
    pub enable_time_aware: bool,
    /// Settings of the time-aware parameters (groups, grouping, activation bits, boundary smoothing).
    pub time_aware: TimeAwareConfig,
    /// With calibration that records `channel_absmax`: activation-aware channel scaling of those layers.
    pub enable_spatial: bool,
    /// Mixed precision: per-layer widths chosen to minimise the total error with this many stored bits per
    /// weight over the whole model (kept tensors included); `None` uses `quant.bits` with the fallback chain
    /// (or the automatic plan, see `auto_mixed_precision`).
    pub target_bits_per_weight: Option<f64>,
    /// With no `target_bits_per_weight`, an INT4 run with layout and method `auto` plans its widths at its
    /// uniform layout's own size, [`AUTO_PLAN_BITS_PER_WEIGHT`] over the quantized layers: the same size,
    /// with the bits moved to the layers whose error costs the most (docs/DIFFUSION.md, "Mixed precision").
    /// `false`: every layer at `quant.bits` (the fallback chain still applies).
    pub auto_mixed_precision: bool,
    /// GGUF output only: the type preset (`Q4_K_M`, `Q8_0`, `IQ4_XS`, ...; `None`: [`DEFAULT_GGUF_TYPE`]).
    pub gguf_type: Option<String>,
    /// GGUF output only: `REGEX=TYPE` overrides of the preset's type per tensor name, first match wins.
    pub tensor_types: Vec<String>,
    /// GGUF output only: the `general.architecture` to write instead of the one detected from tensor names.
    pub gguf_arch: Option<String>,
    /// GGUF output only: what rows no K-quant block fits get, `quality` (Q8_0), `size` (the shape fix and the
    /// block fallback table) or `llama` (llama-quantize's table); `None`: llama for a language model from its
    /// GGUF, else quality ([`crate::gguf::RowFallback`]).
    pub gguf_fallback: Option<String>,
    /// GGUF output only: llama-quantize's `--pure`: every quantized tensor at the preset's base type (no mix bumps,
    /// no 16-bit keeps but the loaders'; the overrides still apply).
    pub gguf_pure: bool,
    /// GGUF output only: llama-quantize's `--leave-output-tensor`: `output.weight` stays in full precision.
    pub gguf_leave_output_tensor: bool,
    /// GGUF output only: llama.cpp's importance matrix (`llama-imatrix` output, GGUF or legacy `.dat`), the
    /// per-column importance of the searches of the tensors it has entries for (llama-quantize's `--imatrix`).
    pub imatrix_path: Option<PathBuf>,
}

/// The type preset of a GGUF run that names none.
pub const DEFAULT_GGUF_TYPE: &str = "Q4_K_M";

/// The bits per weight over the quantized layers that the automatic INT4 plan spends: the size of the uniform
/// INT4 layouts it replaces (`int4_2l` and symmetric flat groups of 32 both store 4.5).
pub const AUTO_PLAN_BITS_PER_WEIGHT: f64 = 4.5;

/// What a mixed-precision plan may spend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// `target_bits_per_weight`: stored bits per weight over the whole model, kept tensors included.
    WholeModel(f64),
    /// The automatic INT4 plan: bits per weight over the quantized layers only; when even that is out of reach
    /// (layers whose INT4 misses the floor), the run is uniform instead.
    QuantizedLayers(f64),
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self::profile("local").unwrap_or_else(|_| unreachable!("the local profile exists"))
    }
}

impl PipelineConfig {
    /// Names of the deployment profiles.
    pub const PROFILES: [&'static str; 3] = ["edge", "local", "cloud"];

    /// A deployment profile: `edge` (INT2 first, flat groups of 256, floor 0.65), `local` (INT4, layout `auto`:
    /// `int4_2l` where rows fit, floor 0.85), `cloud` (INT8, flat groups of 64, floor 0.95); method `auto`.
    pub fn profile(name: &str) -> Result<Self> {
        let flat = |group| {
            Layout::Flat(FlatLayout {
                group_size: GroupSize::Elements(group),
                ..FlatLayout::default()
            })
        };
        let (bits, layout, floor) = match name {
            "edge" => (BitWidth::Int2, flat(256), 0.65),
            "local" => (BitWidth::Int4, Layout::Auto, 0.85),
            "cloud" => (BitWidth::Int8, flat(64), 0.95),
            other => {
                return Err(QuantError::config(
                    "profile",
                    format!("{other:?}"),
                    "\"edge\", \"local\" or \"cloud\"",
                ))
            }
        };
        Ok(Self {
            profile: Some(name.to_string()),
            quant: QuantConfig {
                bits,
                layout,
                method: Method::Auto,
            },
            quality_floor: floor,
            fail_fast: false,
            min_elements: 1024,
            keep_patterns: DEFAULT_KEEP_PATTERNS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            unclipped_patterns: DEFAULT_UNCLIPPED_PATTERNS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            keep_first_last: true,
            format: None,
            calibration_path: None,
            enable_time_aware: true,
            time_aware: TimeAwareConfig::default(),
            enable_spatial: true,
            target_bits_per_weight: None,
            auto_mixed_precision: true,
            gguf_type: None,
            tensor_types: Vec::new(),
            gguf_arch: None,
            gguf_fallback: None,
            gguf_pure: false,
            gguf_leave_output_tensor: false,
            imatrix_path: None,
        })
    }

    /// The mixed-precision budget of this run: `target_bits_per_weight` when set, else the automatic INT4
    /// plan when `auto_mixed_precision` is on and the run is INT4 with layout and method `auto`; `None` for a
    /// uniform run.
    pub fn budget(&self) -> Option<Budget> {
        if let Some(t) = self.target_bits_per_weight {
            return Some(Budget::WholeModel(t));
        }
        let auto = self.quant.layout == Layout::Auto && self.quant.method == Method::Auto;
        (self.auto_mixed_precision && auto && self.quant.bits == BitWidth::Int4)
            .then_some(Budget::QuantizedLayers(AUTO_PLAN_BITS_PER_WEIGHT))
    }

    /// Checks the fields that have no type-level guarantee.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.quality_floor) {
            return Err(QuantError::config(
                "quality_floor",
                self.quality_floor,
                "a cosine similarity in [0, 1]",
            ));
        }
        if let Some(p) = self.keep_patterns.iter().find(|p| p.is_empty()) {
            return Err(QuantError::config(
                "keep_patterns",
                format!("{p:?}"),
                "non-empty name patterns",
            ));
        }
        if let Some(p) = self.unclipped_patterns.iter().find(|p| p.is_empty()) {
            return Err(QuantError::config(
                "unclipped_patterns",
                format!("{p:?}"),
                "non-empty name patterns",
            ));
        }
        self.quant.validate()?;
        self.time_aware.validate()?;
        if let Some(t) = self.target_bits_per_weight {
            if !(t.is_finite() && t > 0.0 && t <= 32.0) {
                return Err(QuantError::config(
                    "target_bits_per_weight",
                    t,
                    "stored bits per weight in (0, 32], e.g. 3.0 (None: no mixed precision)",
                ));
            }
        }
        Ok(())
    }

    /// Checks that no calibration-only setting (time-aware groups, grouping, activation bits, boundary smoothing
    /// and its window, turning time-aware or spatial off) differs from its default when the run has no
    /// calibration statistics: it would be silently ignored. The one rule behind the CLI's `--smoothing ...`
    /// without `--calibration` and Python's `boundary_smoothing=...` without `calibration_path` / `calibration=`.
    pub fn check_calibration_settings(&self, has_calibration: bool) -> Result<()> {
        if has_calibration {
            return Ok(());
        }
        let d = TimeAwareConfig::default();
        let t = &self.time_aware;
        let changed: [(&'static str, String, bool); 7] = [
            (
                "num_time_groups",
                t.num_groups.to_string(),
                t.num_groups != d.num_groups,
            ),
            (
                "time_grouping",
                format!("{:?}", t.grouping.name()),
                t.grouping != d.grouping,
            ),
            (
                "activation_bits",
                t.activation_bits.to_string(),
                t.activation_bits != d.activation_bits,
            ),
            (
                "boundary_smoothing",
                format!("{:?}", t.smoothing.name()),
                t.smoothing != d.smoothing,
            ),
            (
                "smoothing_window",
                t.smoothing_window.to_string(),
                t.smoothing_window != d.smoothing_window,
            ),
            ("enable_time_aware", "false".into(), !self.enable_time_aware),
            ("enable_spatial", "false".into(), !self.enable_spatial),
        ];
        match changed.into_iter().find(|c| c.2) {
            Some((field, value, _)) => Err(QuantError::config(
                field,
                format!("{value} without calibration statistics"),
                "its default, or calibration statistics to apply it to (--calibration FILE, \
                 calibration_path=... or calibration=...): it only affects calibrated layers",
            )),
            None => Ok(()),
        }
    }

    /// These settings for a run that writes `output`: the format resolved from the output's extension when
    /// unset (an error when they contradict), so the stored config says what was written.
    pub fn for_output(&self, output: &std::path::Path) -> Result<Self> {
        let format = super::output_path::model_format(output, self.format)?;
        let gguf_option = [
            self.gguf_type.as_ref().map(|_| "gguf_type (--type)"),
            (!self.tensor_types.is_empty()).then_some("tensor_types (--tensor-type)"),
            self.gguf_arch.as_ref().map(|_| "gguf_arch (--arch)"),
            self.gguf_fallback
                .as_ref()
                .map(|_| "gguf_fallback (--fallback)"),
            self.gguf_pure.then_some("gguf_pure (--pure)"),
            self.gguf_leave_output_tensor
                .then_some("gguf_leave_output_tensor (--leave-output-tensor)"),
            self.imatrix_path
                .as_ref()
                .map(|_| "imatrix_path (--imatrix)"),
        ]
        .into_iter()
        .flatten()
        .next();
        if let (Some(option), false) = (gguf_option, format == OutputFormat::Gguf) {
            return Err(QuantError::config(
                "output",
                format!("a {} file with {option} set", format.name()),
                format!("a .gguf output: {option} applies to GGUF files only; name the output .gguf or drop it"),
            ));
        }
        Ok(Self {
            format: Some(format),
            ..self.clone()
        })
    }

    /// The settings as JSON (stored in the output file's metadata): the quantization settings as
    /// [`QuantConfig::to_json`] gives them (flat settings only for a flat layout), then the run's.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "profile": self.profile,
            "quality_floor": self.quality_floor,
            "fail_fast": self.fail_fast,
            "min_elements": self.min_elements,
            "keep_patterns": self.keep_patterns,
            "unclipped_patterns": self.unclipped_patterns,
            "keep_first_last": self.keep_first_last,
            "format": self.format.map(OutputFormat::name),
            "calibration_path": self.calibration_path.as_ref().map(|p| p.display().to_string()),
            "enable_time_aware": self.enable_time_aware,
            "num_time_groups": self.time_aware.num_groups,
            "time_grouping": self.time_aware.grouping.name(),
            "activation_bits": self.time_aware.activation_bits,
            "boundary_smoothing": self.time_aware.smoothing.name(),
            "smoothing_window": self.time_aware.smoothing_window,
            "enable_spatial": self.enable_spatial,
            "target_bits_per_weight": self.target_bits_per_weight,
            "auto_mixed_precision": self.auto_mixed_precision,
        });
        if self.format == Some(OutputFormat::Gguf) {
            v["gguf_type"] = self
                .gguf_type
                .as_deref()
                .unwrap_or(DEFAULT_GGUF_TYPE)
                .into();
            v["tensor_types"] = self.tensor_types.clone().into();
            v["gguf_arch"] = self.gguf_arch.clone().into();
            v["gguf_fallback"] = self.gguf_fallback.as_deref().unwrap_or("quality").into();
            v["gguf_pure"] = self.gguf_pure.into();
            v["gguf_leave_output_tensor"] = self.gguf_leave_output_tensor.into();
            v["imatrix_path"] = self
                .imatrix_path
                .as_ref()
                .map(|p| p.display().to_string())
                .into();
        }
        if let (Some(v), serde_json::Value::Object(quant)) =
            (v.as_object_mut(), self.quant.to_json())
        {
            v.extend(quant);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_profile_states_its_layout() {
        let layouts: Vec<(BitWidth, Layout)> = PipelineConfig::PROFILES
            .iter()
            .map(|p| {
                let c = PipelineConfig::profile(p).unwrap();
                (c.quant.bits, c.quant.layout)
            })
            .collect();
        let flat = |g| {
            Layout::Flat(FlatLayout {
                group_size: GroupSize::Elements(g),
                ..FlatLayout::default()
            })
        };
        assert_eq!(
            layouts,
            vec![
                (BitWidth::Int2, flat(256)),
                (BitWidth::Int4, Layout::Auto),
                (BitWidth::Int8, flat(64))
            ]
        );
        let json = PipelineConfig::profile("local").unwrap().to_json();
        assert_eq!(
            (json["layout"].as_str(), json.get("group_size")),
            (Some("auto"), None)
        );
        let json = PipelineConfig::profile("edge").unwrap().to_json();
        assert_eq!(
            (json["layout"].as_str(), json["group_size"].as_str()),
            (Some("flat"), Some("256"))
        );
    }
}
