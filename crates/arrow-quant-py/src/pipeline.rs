//! The model pipeline for Python: `DiffusionQuantConfig`, whole-checkpoint runs with progress, validation,
//! `load_quantized` (a lazy mapping over a model file) and `export_safetensors`.

use crate::detach::{run_detached, without_gil};
use crate::errors::Result;
use crate::options::{group_size_to_py, Overrides};
use crate::quantized::PyQuantizedTensor;
use arrow_quant::arrow::output::RowEncoding;
use arrow_quant::arrow::result::read_results;
use arrow_quant::arrow::time_groups::read_time_groups;
use arrow_quant::diffusion::calibration::Calibration;
use arrow_quant::diffusion::time_groups::{Smoothing, TimeGrouping};
use arrow_quant::pipeline::{
    export_safetensors, quantize_model, validate_model, ExportDtype, ModelFile, OutputFormat,
    PipelineConfig, Progress,
};
use arrow_quant::pipeline::{quantize_model_with, Report};
use arrow_quant::QuantError;
use numpy::{IntoPyArray, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// Settings of a whole-model run; every field is validated at construction.
#[pyclass(module = "arrow_quant_v2._core", name = "DiffusionQuantConfig", frozen)]
#[derive(Clone)]
pub struct PyDiffusionQuantConfig {
    pub inner: PipelineConfig,
}

pub(crate) fn to_python(py: Python<'_>, value: &serde_json::Value) -> PyResult<Py<PyAny>> {
    Ok(py
        .import("json")?
        .call_method1("loads", (value.to_string(),))?
        .unbind())
}

#[pymethods]
impl PyDiffusionQuantConfig {
    /// Starts from `profile` ("edge", "local" (default) or "cloud") and applies every field given.
    #[new]
    #[pyo3(signature = (*, profile = None, bit_width = None, group_size = None, symmetric = None, method = None,
                        scale_dtype = None, quality_floor = None, fail_fast = None, min_elements = None,
                        keep_patterns = None, keep_first_last = None, format = None, calibration_path = None,
                        enable_time_aware = None, num_time_groups = None, time_grouping = None,
                        activation_bits = None, boundary_smoothing = None, smoothing_window = None,
                        enable_spatial = None, target_bits_per_weight = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        profile: Option<&str>,
        bit_width: Option<i64>,
        group_size: Option<&Bound<'_, PyAny>>,
        symmetric: Option<bool>,
        method: Option<&str>,
        scale_dtype: Option<&str>,
        quality_floor: Option<f64>,
        fail_fast: Option<bool>,
        min_elements: Option<i64>,
        keep_patterns: Option<Vec<String>>,
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
    ) -> Result<Self> {
        let mut inner = PipelineConfig::profile(profile.unwrap_or("local"))?;
        inner.profile = profile.map(str::to_string);
        inner.quant = Overrides::new(bit_width, group_size, symmetric, method, scale_dtype)
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
        if let Some(k) = keep_first_last {
            inner.keep_first_last = k;
        }
        if let Some(f) = format {
            inner.format = OutputFormat::parse(f)?;
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

    /// The profile the settings started from, or None.
    #[getter]
    fn profile(&self) -> Option<String> {
        self.inner.profile.clone()
    }

    /// First bit width tried.
    #[getter]
    fn bit_width(&self) -> u32 {
        self.inner.quant.bits.bits()
    }

    /// Group size or "per_channel".
    #[getter]
    fn group_size<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        group_size_to_py(py, self.inner.quant.group_size)
    }

    /// Symmetric quantization.
    #[getter]
    fn symmetric(&self) -> bool {
        self.inner.quant.symmetric
    }

    /// Parameter search.
    #[getter]
    fn method(&self) -> &'static str {
        self.inner.quant.method.name()
    }

    /// Storage type of scales.
    #[getter]
    fn scale_dtype(&self) -> &'static str {
        self.inner.quant.scale_dtype.name()
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

    /// Output format: "parquet" or "arrow".
    #[getter]
    fn format(&self) -> &'static str {
        self.inner.format.name()
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

    /// The settings as a dict (as stored in the model file).
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_python(py, &self.inner.to_json())
    }

    fn __repr__(&self) -> String {
        format!("DiffusionQuantConfig({})", self.inner.to_json())
    }
}

/// Runs a checkpoint through the pipeline with `calibration` (or the config's calibration file) and returns the
/// report, as a dict and as the core struct; `progress(tensor, fraction)` is called on the calling thread.
pub fn run_model(
    py: Python<'_>,
    input: &Path,
    output: &Path,
    config: Option<&PyDiffusionQuantConfig>,
    calibration: Option<Calibration>,
    progress: Option<&Bound<'_, PyAny>>,
) -> Result<(Py<PyAny>, Report)> {
    let config = config.map_or_else(PipelineConfig::default, |c| c.inner.clone());
    let cancel = AtomicBool::new(false);
    let report = run_detached(
        py,
        &cancel,
        |notify: &(dyn Fn(Progress) + Sync)| match &calibration {
            Some(c) => quantize_model_with(input, output, &config, Some(c), &cancel, notify),
            None => quantize_model(input, output, &config, &cancel, notify),
        },
        |p: Progress| match progress {
            Some(cb) => {
                let fraction = p.bytes_done as f64 / p.bytes_total.max(1) as f64;
                cb.call1((p.tensor, fraction)).map(drop)
            }
            None => Ok(()),
        },
    )?;
    Ok((to_python(py, &report.to_json())?, report))
}

/// Re-reads both files and returns `{passed, floor, layers: [...]}`.
pub fn validate(py: Python<'_>, original: &Path, quantized: &Path) -> Result<Py<PyAny>> {
    let v = without_gil(py, || validate_model(original, quantized))?;
    Ok(to_python(py, &v.to_json())?)
}

/// A quantized model file opened lazily: a read-only mapping from tensor names to dequantized numpy arrays.
#[pyclass(module = "arrow_quant_v2._core", name = "QuantizedModel", frozen)]
pub struct QuantizedModel {
    file: ModelFile,
}

impl QuantizedModel {
    fn index(&self, name: &str) -> PyResult<usize> {
        self.file
            .names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(name.to_string()))
    }
}

#[pymethods]
impl QuantizedModel {
    /// Tensor names in file order.
    fn keys(&self) -> Vec<String> {
        self.file.names.clone()
    }

    fn __len__(&self) -> usize {
        self.file.names.len()
    }

    fn __contains__(&self, name: &str) -> bool {
        self.file.names.iter().any(|n| n == name)
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        PyList::new(py, &self.file.names)?
            .try_iter()
            .map(Bound::into_any)
    }

    /// The tensor's values in its source shape: float tensors dequantized to float32, raw tensors as stored.
    fn __getitem__<'py>(&self, py: Python<'py>, name: &str) -> Result<Bound<'py, PyAny>> {
        let i = self.index(name)?;
        let batch = without_gil(py, || self.file.read(i))?;
        let rows = read_results(std::slice::from_ref(&batch))?;
        let row = &rows[0];
        if let RowEncoding::Plain {
            encoding: "raw", ..
        } = row.encoding
        {
            let bytes = numpy::PyArray1::from_slice(py, row.data);
            let dtype = match row.dtype {
                "i64" => "<i8",
                "i32" => "<i4",
                "i16" => "<i2",
                "i8" => "i1",
                "u8" => "u1",
                "u16" => "<u2",
                "u32" => "<u4",
                "u64" => "<u8",
                "bool" => "?",
                other => {
                    return Err(QuantError::format(
                        self.file.path(),
                        format!("tensor '{name}' has dtype {other} with no numpy equivalent"),
                    )
                    .into())
                }
            };
            return Ok(bytes
                .call_method1("view", (dtype,))?
                .call_method1("reshape", (row.shape.clone(),))?);
        }
        let mut values = vec![0f32; row.shape.iter().product()];
        without_gil(py, || row.dequantize_into(&mut values))?;
        Ok(values
            .into_pyarray(py)
            .reshape(row.shape.as_slice())?
            .into_any())
    }

    /// The stored `QuantizedTensor` of a quantized layer (KeyError for unknown names; SchemaError for a layer
    /// kept in 16-bit).
    fn quantized(&self, py: Python<'_>, name: &str) -> Result<PyQuantizedTensor> {
        let i = self.index(name)?;
        let batch = self.file.read(i)?;
        let rows = read_results(std::slice::from_ref(&batch))?;
        Ok(PyQuantizedTensor::from_core(py, rows[0].to_tensor()?))
    }

    /// The time-aware activation parameters stored with a layer, `[{t_start, t_end, scale, zero_point}]` (`t_end`
    /// exclusive), or None for a layer without calibration statistics (KeyError for unknown names).
    fn time_groups<'py>(
        &self,
        py: Python<'py>,
        name: &str,
    ) -> Result<Option<Vec<Bound<'py, PyDict>>>> {
        let i = self.index(name)?;
        let batch = without_gil(py, || self.file.read(i))?;
        let Some(groups) = read_time_groups(&batch)?.pop().flatten() else {
            return Ok(None);
        };
        let entries = groups
            .iter()
            .map(|g| {
                let d = PyDict::new(py);
                d.set_item("t_start", g.t_start)?;
                d.set_item("t_end", g.t_end)?;
                d.set_item("scale", g.scale)?;
                d.set_item("zero_point", g.zero_point)?;
                Ok(d)
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Some(entries))
    }

    /// Footer metadata: format, source, config and report (JSON strings), tensor list.
    #[getter]
    fn metadata(&self) -> std::collections::HashMap<String, String> {
        self.file.metadata.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "QuantizedModel({:?}, {} tensors)",
            self.file.path().display().to_string(),
            self.file.names.len()
        )
    }
}

/// `load_quantized(path)`: opens a model file (Parquet or Arrow IPC) for lazy reading.
#[pyfunction]
pub fn load_quantized(path: PathBuf) -> Result<QuantizedModel> {
    Ok(QuantizedModel {
        file: ModelFile::open(&path)?,
    })
}

/// `export_safetensors(quantized_path, output_path, dtype="f16")`: writes a dequantized `.safetensors`.
#[pyfunction(name = "export_safetensors")]
#[pyo3(signature = (quantized_path, output_path, dtype = "f16"))]
pub fn export(
    py: Python<'_>,
    quantized_path: PathBuf,
    output_path: PathBuf,
    dtype: &str,
) -> Result<()> {
    let dtype = ExportDtype::parse(dtype)?;
    without_gil(py, || {
        export_safetensors(&quantized_path, &output_path, dtype)
    })
}
