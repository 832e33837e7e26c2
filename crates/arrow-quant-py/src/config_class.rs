//! `DiffusionQuantConfig`: the settings of a whole-model run, built from a profile and keyword overrides and
//! validated at construction; read-only getters and `to_dict`.

use crate::errors::Result;
use crate::json::to_python;
use crate::options::{group_size_to_py, Overrides};
use arrow_quant::diffusion::time_groups::{Smoothing, TimeGrouping};
use arrow_quant::pipeline::{OutputFormat, PipelineConfig};
use arrow_quant::Layout;
use arrow_quant::QuantError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

/// Settings of a whole-model run; every field is validated at construction.
#[pyclass(module = "arrow_quant_v2._core", name = "DiffusionQuantConfig", frozen)]
#[derive(Clone)]
pub struct PyDiffusionQuantConfig {
    pub inner: PipelineConfig,
}

#[pymethods]
impl PyDiffusionQuantConfig {
    /// Starts from `profile` ("edge", "local" (default) or "cloud") and applies every field given.
    #[new]
    #[pyo3(signature = (*, profile = None, bit_width = None, layout = None, group_size = None, symmetric = None,
                        method = None,
                        scale_dtype = None, quality_floor = None, fail_fast = None, min_elements = None,
                        keep_patterns = None, unclipped_patterns = None, keep_first_last = None, format = None,
                        calibration_path = None,
                        enable_time_aware = None, num_time_groups = None, time_grouping = None,
                        activation_bits = None, boundary_smoothing = None, smoothing_window = None,
                        enable_spatial = None, target_bits_per_weight = None,
                        auto_mixed_precision = None, gguf_type = None, tensor_types = None,
                        gguf_arch = None, gguf_fallback = None, gguf_pure = None,
                        gguf_leave_output_tensor = None, imatrix_path = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        profile: Option<&str>,
        bit_width: Option<i64>,
        layout: Option<&str>,
        group_size: Option<&Bound<'_, PyAny>>,
        symmetric: Option<bool>,
        method: Option<&str>,
        scale_dtype: Option<&str>,
        quality_floor: Option<f64>,
        fail_fast: Option<bool>,
        min_elements: Option<i64>,
        keep_patterns: Option<Vec<String>>,
        unclipped_patterns: Option<Vec<String>>,
        keep_first_last: Option<bool>,
        format: Option<&str>,
        calibration_path: Option<PathBuf>,
        enable_time_aware: Option<bool>,
        num_time_groups: Option<i64>,
        time_grouping: Option<&str>,
        activation_bits: Option<i64>,
        boundary_smoothing: Option<&str>,
        smoothing_window: Option<i64>,
        enable_spatial: Option<bool>,
        target_bits_per_weight: Option<f64>,
        auto_mixed_precision: Option<bool>,
        gguf_type: Option<String>,
        tensor_types: Option<Vec<String>>,
        gguf_arch: Option<String>,
        gguf_fallback: Option<String>,
        gguf_pure: Option<bool>,
        gguf_leave_output_tensor: Option<bool>,
        imatrix_path: Option<PathBuf>,
    ) -> Result<Self> {
        // The settings start from a profile ("local" unless named), and record it, as the CLI does.
        let mut inner = PipelineConfig::profile(profile.unwrap_or("local"))?;
        inner.quant = Overrides::new(
            bit_width,
            layout,
            group_size,
            symmetric,
            method,
            scale_dtype,
        )
        .apply(inner.quant)?;
        if let Some(f) = quality_floor {
            inner.quality_floor = f;
        }
        if let Some(f) = fail_fast {
            inner.fail_fast = f;
        }
        if let Some(m) = min_elements {
            inner.min_elements = usize::try_from(m)
                .map_err(|_| QuantError::config("min_elements", m, "a non-negative integer"))?;
        }
        if let Some(p) = keep_patterns {
            inner.keep_patterns = p;
        }
        if let Some(p) = unclipped_patterns {
            inner.unclipped_patterns = p;
        }
        if let Some(k) = keep_first_last {
            inner.keep_first_last = k;
        }
        if let Some(f) = format {
            inner.format = Some(OutputFormat::parse(f)?);
        }
        inner.calibration_path = calibration_path;
        if let Some(e) = enable_time_aware {
            inner.enable_time_aware = e;
        }
        let t = &mut inner.time_aware;
        if let Some(n) = num_time_groups {
            t.num_groups = usize::try_from(n)
                .map_err(|_| QuantError::config("num_time_groups", n, "a positive integer"))?;
        }
        if let Some(g) = time_grouping {
            t.grouping = TimeGrouping::parse(g)?;
        }
        if let Some(b) = activation_bits {
            t.activation_bits = u8::try_from(b)
                .map_err(|_| QuantError::config("activation_bits", b, "an integer in 2..=16"))?;
        }
        if let Some(s) = boundary_smoothing {
            t.smoothing = Smoothing::parse(s)?;
        }
        if let Some(w) = smoothing_window {
            t.smoothing_window = u32::try_from(w)
                .map_err(|_| QuantError::config("smoothing_window", w, "a non-negative integer"))?;
        }
        if let Some(e) = enable_spatial {
            inner.enable_spatial = e;
        }
        inner.target_bits_per_weight = target_bits_per_weight;
        if let Some(a) = auto_mixed_precision {
            inner.auto_mixed_precision = a;
        }
        inner.gguf_type = gguf_type;
        inner.tensor_types = tensor_types.unwrap_or_default();
        inner.gguf_arch = gguf_arch;
        inner.gguf_fallback = gguf_fallback;
        inner.gguf_pure = gguf_pure.unwrap_or_default();
        inner.gguf_leave_output_tensor = gguf_leave_output_tensor.unwrap_or_default();
        inner.imatrix_path = imatrix_path;
        inner.validate()?;
        Ok(Self { inner })
    }

    /// A deployment profile with optional overrides: `edge` (INT2 first, group 256, floor 0.65), `local` (INT4,
    /// group 128, floor 0.85), `cloud` (INT8, group 64, floor 0.95).
    #[staticmethod]
    #[pyo3(signature = (name, **overrides))]
    fn from_profile<'py>(
        py: Python<'py>,
        name: &str,
        overrides: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kwargs = overrides.map_or_else(
            || PyDict::new(py),
            |d| d.copy().unwrap_or_else(|_| PyDict::new(py)),
        );
        kwargs.set_item("profile", name)?;
        py.get_type::<Self>().call((), Some(&kwargs))
    }

    /// The profile the settings started from ("local" unless another was named).
    #[getter]
    fn profile(&self) -> Option<String> {
        self.inner.profile.clone()
    }

    /// First bit width tried.
    #[getter]
    fn bit_width(&self) -> u32 {
        self.inner.quant.bits.bits()
    }

    /// Encoding family: "auto" (two-level where rows fit, else flat), "flat" or "two_level".
    #[getter]
    fn layout(&self) -> &'static str {
        self.inner.quant.layout.name()
    }

    /// Group size ("per_channel" for one group per row) of the flat layout; None for "auto" and "two_level".
    #[getter]
    fn group_size<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.inner.quant.layout {
            Layout::Flat(f) => group_size_to_py(py, f.group_size).map(Some),
            _ => Ok(None),
        }
    }

    /// Symmetric groups (flat layout; False otherwise).
    #[getter]
    fn symmetric(&self) -> bool {
        self.inner.quant.flat().symmetric && matches!(self.inner.quant.layout, Layout::Flat(_))
    }

    /// Parameter search.
    #[getter]
    fn method(&self) -> &'static str {
        self.inner.quant.method.name()
    }

    /// Storage type of scales.
    #[getter]
    fn scale_dtype(&self) -> &'static str {
        self.inner.quant.scale_dtype().name()
    }

    /// Minimum cosine similarity per quantized layer.
    #[getter]
    fn quality_floor(&self) -> f64 {
        self.inner.quality_floor
    }

    /// Stop at the first layer under the floor instead of falling back.
    #[getter]
    fn fail_fast(&self) -> bool {
        self.inner.fail_fast
    }

    /// Tensors with fewer elements are kept in 16-bit.
    #[getter]
    fn min_elements(&self) -> usize {
        self.inner.min_elements
    }

    /// Name patterns (case-insensitive substrings) of layers quantized by plain rounding (flat groups of 64, rtn).
    #[getter]
    fn unclipped_patterns(&self) -> Vec<String> {
        self.inner.unclipped_patterns.clone()
    }

    /// Name patterns (case-insensitive substrings) of tensors kept in 16-bit.
    #[getter]
    fn keep_patterns(&self) -> Vec<String> {
        self.inner.keep_patterns.clone()
    }

    /// Keep the first and last quantizable layers in 16-bit.
    #[getter]
    fn keep_first_last(&self) -> bool {
        self.inner.keep_first_last
    }

    /// Output format: "parquet" or "arrow"; None takes it from the output path's extension (`.arrow`: Arrow
    /// IPC, else Parquet).
    #[getter]
    fn format(&self) -> Option<&'static str> {
        self.inner.format.map(OutputFormat::name)
    }

    /// Calibration statistics file, or None.
    #[getter]
    fn calibration_path(&self) -> Option<PathBuf> {
        self.inner.calibration_path.clone()
    }

    /// With calibration: per-timestep-group activation parameters.
    #[getter]
    fn enable_time_aware(&self) -> bool {
        self.inner.enable_time_aware
    }

    /// Number of timestep groups.
    #[getter]
    fn num_time_groups(&self) -> usize {
        self.inner.time_aware.num_groups
    }

    /// "adaptive" or "uniform".
    #[getter]
    fn time_grouping(&self) -> &'static str {
        self.inner.time_aware.grouping.name()
    }

    /// Bits of the activation quantization the time-aware parameters are for.
    #[getter]
    fn activation_bits(&self) -> u8 {
        self.inner.time_aware.activation_bits
    }

    /// "none", "linear", "cubic" or "sigmoid".
    #[getter]
    fn boundary_smoothing(&self) -> &'static str {
        self.inner.time_aware.smoothing.name()
    }

    /// Timesteps on each side of a boundary that the smoothing blends.
    #[getter]
    fn smoothing_window(&self) -> u32 {
        self.inner.time_aware.smoothing_window
    }

    /// With calibration magnitudes: activation-aware channel scaling.
    #[getter]
    fn enable_spatial(&self) -> bool {
        self.inner.enable_spatial
    }

    /// Mixed-precision budget in stored bits per weight, or None.
    #[getter]
    fn target_bits_per_weight(&self) -> Option<f64> {
        self.inner.target_bits_per_weight
    }

    /// Without a target: whether an INT4 run with layout and method "auto" plans its widths at 4.5 bits per
    /// weight over the quantized layers (False: every layer at `bit_width`).
    #[getter]
    fn auto_mixed_precision(&self) -> bool {
        self.inner.auto_mixed_precision
    }

    /// GGUF output: the type preset ("Q4_K_M", "Q8_0", ...), or None for the default (Q4_K_M).
    #[getter]
    fn gguf_type(&self) -> Option<String> {
        self.inner.gguf_type.clone()
    }

    /// GGUF output: "REGEX=TYPE" overrides of the preset's type, first match wins.
    #[getter]
    fn tensor_types(&self) -> Vec<String> {
        self.inner.tensor_types.clone()
    }

    /// GGUF output: the general.architecture to write, or None to detect it from the tensor names.
    #[getter]
    fn gguf_arch(&self) -> Option<String> {
        self.inner.gguf_arch.clone()
    }

    /// GGUF output: what rows no K-quant block fits get, "quality" (Q8_0), "size" or "llama" (llama-quantize's
    /// table), or None (llama for a language model from its GGUF, else quality).
    #[getter]
    fn gguf_fallback(&self) -> Option<String> {
        self.inner.gguf_fallback.clone()
    }

    /// GGUF output: llama-quantize's --pure: every quantized tensor at the preset's base type.
    #[getter]
    fn gguf_pure(&self) -> bool {
        self.inner.gguf_pure
    }

    /// GGUF output: llama-quantize's --leave-output-tensor: output.weight in full precision.
    #[getter]
    fn gguf_leave_output_tensor(&self) -> bool {
        self.inner.gguf_leave_output_tensor
    }

    /// GGUF output: llama.cpp's importance matrix file (GGUF or legacy .dat), or None.
    #[getter]
    fn imatrix_path(&self) -> Option<PathBuf> {
        self.inner.imatrix_path.clone()
    }

    /// The settings as a dict (as stored in the model file).
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_python(py, &self.inner.to_json())
    }

    fn __repr__(&self) -> String {
        format!("DiffusionQuantConfig({})", self.inner.to_json())
    }
}
