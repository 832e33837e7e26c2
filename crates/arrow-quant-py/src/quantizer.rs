//! `ArrowQuantV2`: the quantizer class. Every Python method lives in the one `#[pymethods]` block below.

use crate::arrow_io::{collect_batches, to_pyarrow_batch, to_pyarrow_table};
use crate::batch_result::BatchResult;
use crate::calibration::calibration_from_py;
use crate::config_class::PyDiffusionQuantConfig;
use crate::detach::{run_detached, without_gil};
use crate::errors::{schema, Error, Result};
use crate::input::LayerInput;
use crate::json::to_python;
use crate::model_runs::{run_model, validate};
use crate::options::Overrides;
use crate::quantized::PyQuantizedTensor;
use arrow_array::RecordBatch;
use arrow_quant::arrow::{
    dequantize_to_batch, quantize_to_batch, quantize_to_batches, read_layers, read_results,
    result_schema, tensors_to_batch, ArrowLayer,
};
use arrow_quant::diffusion::calibration::Calibration;
use arrow_quant::diffusion::channel_scaling::quantize_channel_scaled;
use arrow_quant::gguf::{GgmlType, Rounding};
use arrow_quant::pipeline::Report;
use arrow_quant::{quantize_batch, OnError, QuantConfig, QuantError, QuantizedTensor, TensorView};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Average layer size (elements) under which `quantize_arrow` returns one record batch instead of one per layer.
const SMALL_LAYER: usize = 1 << 20;

/// Modes the quantizer accepts.
const MODES: [&str; 1] = ["diffusion"];

/// Weight quantizer for diffusion models.
#[pyclass(module = "arrow_quant_v2._core", name = "ArrowQuantV2")]
pub struct ArrowQuantV2 {
    mode: String,
    defaults: QuantConfig,
    /// The report of the last model run that produced time-aware parameters (for `get_markov_metrics`).
    last_time_aware: std::sync::Mutex<Option<Arc<Report>>>,
}

/// Reads one entry of a `dict[str, ndarray]`: the layer, or its name and why it cannot be quantized.
fn read_dict_layer<'py>(
    key: &Bound<'py, PyAny>,
    value: &Bound<'py, PyAny>,
) -> std::result::Result<LayerInput<'py>, (String, Error)> {
    let name: String = key.extract().map_err(|_| {
        let name = key.repr().map_or_else(|_| "?".into(), |r| r.to_string());
        let e = schema(&name, "layer names (the dict keys) must be str");
        (name, e)
    })?;
    let layer = LayerInput::from_py(name.clone(), value).map_err(|e| (name.clone(), e))?;
    // A view that cannot be built (its shape does not fit) fails here, per layer, not for the whole batch.
    layer.view().map_err(|e| (name, e))?;
    Ok(layer)
}

/// Reads the layers of a `dict[str, ndarray]`: with `keep_going` the ones that cannot be read are returned
/// apart, by name, else the first of them is the error.
#[allow(clippy::type_complexity)]
fn read_dict_layers<'py>(
    weights: &Bound<'py, PyDict>,
    keep_going: bool,
) -> Result<(Vec<LayerInput<'py>>, Vec<(String, Error)>)> {
    let (mut layers, mut failed) = (Vec::new(), Vec::new());
    for (key, value) in weights.iter() {
        match read_dict_layer(&key, &value) {
            Ok(layer) => layers.push(layer),
            Err((name, e)) if keep_going => failed.push((name, e)),
            Err((_, e)) => return Err(e),
        }
    }
    Ok((layers, failed))
}

/// Reads `importance`: a 1-D float32 numpy array (other float dtypes must be cast by the caller).
fn read_importance<'py>(
    name: &str,
    value: &Bound<'py, PyAny>,
) -> Result<numpy::PyReadonlyArray1<'py, f32>> {
    use numpy::{PyArray1, PyArrayMethods};
    value
        .cast::<PyArray1<f32>>()
        .map(|a| a.readonly())
        .map_err(|_| {
            QuantError::config(
                "importance",
                format!("a non-float32 or non-1-D value for tensor '{name}'"),
                "a 1-D float32 numpy array, e.g. numpy.asarray(act_sq_mean, dtype=numpy.float32)",
            )
            .into()
        })
}

/// Reads `channel_absmax`: anything numpy converts to a 1-D float32 array (copied once when it is not already a
/// contiguous float32 vector).
fn read_channel_absmax<'py>(
    py: Python<'py>,
    name: &str,
    value: &Bound<'py, PyAny>,
) -> Result<numpy::PyReadonlyArray1<'py, f32>> {
    use numpy::{PyArray1, PyArrayMethods, PyUntypedArrayMethods};
    let wrong = |what: String| -> Error {
        QuantError::config(
            "channel_absmax",
            format!("{what} for tensor '{name}'"),
            "a 1-D float32-convertible array with one activation magnitude per input channel (shape[1])",
        )
        .into()
    };
    let numpy = py.import("numpy")?;
    let converted = numpy
        .call_method1("ascontiguousarray", (value, "float32"))
        .map_err(|e| wrong(format!("a value numpy cannot convert to float32 ({e})")))?;
    let array = converted.cast_into::<PyArray1<f32>>().map_err(|e| {
        let ndim = e
            .into_inner()
            .cast_into::<numpy::PyUntypedArray>()
            .map_or(0, |a| a.ndim());
        wrong(format!("a {ndim}-D array"))
    })?;
    Ok(array.readonly())
}

/// One element count per layer, for progress fractions weighted by size.
fn prefix_sizes(views: &[TensorView<'_>]) -> (Vec<usize>, usize) {
    let sizes: Vec<usize> = views.iter().map(|v| v.data.len()).collect();
    let total = sizes.iter().sum();
    (sizes, total)
}

impl ArrowQuantV2 {
    /// Reads an Arrow input and quantizes every row into one result batch (without the GIL).
    /// `one_batch`: lay every row out in one record batch (one copy of the packed codes); otherwise one batch per
    /// layer, each taking over its tensor's buffers. Layers under `SMALL_LAYER` elements on average go into one
    /// batch anyway: copying their codes costs less than exporting many small batches.
    fn run_arrow(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        overrides: Overrides<'_, '_>,
        one_batch: bool,
    ) -> Result<(Vec<RecordBatch>, QuantConfig)> {
        let config = overrides.apply(self.defaults)?;
        let batches = collect_batches(input)?;
        let layers = read_layers(&batches)?;
        let views = layers
            .iter()
            .map(ArrowLayer::view)
            .collect::<arrow_quant::Result<Vec<_>>>()?;
        let elements: usize = views.iter().map(|v| v.data.len()).sum();
        let one_batch = one_batch || elements < SMALL_LAYER * views.len();
        let out = without_gil(py, || {
            if one_batch {
                quantize_to_batch(&views, &config).map(|b| vec![b])
            } else {
                quantize_to_batches(&views, &config)
            }
        })?;
        Ok((out, config))
    }

    /// Runs a batch and builds the `BatchResult`; `progress` gets `(layer_name, fraction)` as layers finish.
    fn run_batch<'py>(
        &self,
        py: Python<'py>,
        weights: &Bound<'py, PyDict>,
        overrides: Overrides<'_, 'py>,
        continue_on_error: bool,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> Result<Bound<'py, BatchResult>> {
        let config = overrides.apply(self.defaults)?;
        let (layers, unreadable) = read_dict_layers(weights, continue_on_error)?;
        let views = layers
            .iter()
            .map(LayerInput::view)
            .collect::<Result<Vec<_>>>()?;
        let on_error = if continue_on_error {
            OnError::Continue
        } else {
            OnError::Stop
        };
        let cancel = AtomicBool::new(false);
        let (sizes, total) = prefix_sizes(&views);
        let mut done = 0usize;
        let report = progress.is_some();
        // The per-layer results are the outcome: the batch itself does not fail.
        let work = |notify: &(dyn Fn(usize) + Sync)| {
            Ok(if report {
                quantize_batch(&views, &config, on_error, &cancel, notify)
            } else {
                quantize_batch(&views, &config, on_error, &cancel, &|_| {})
            })
        };
        let results = run_detached(py, &cancel, work, |i| {
            done += sizes[i];
            let fraction = if total == 0 {
                1.0
            } else {
                done as f64 / total as f64
            };
            match progress {
                Some(cb) => cb.call1((layers[i].name.as_str(), fraction)).map(drop),
                None => Ok(()),
            }
        })?;
        if !continue_on_error {
            if let Some(e) = arrow_quant::first_error(&results) {
                return Err(Error::Core(e.clone()));
            }
        }
        let out = Bound::new(py, BatchResult::empty(py))?;
        for (name, e) in unreadable {
            let err: PyErr = e.into();
            out.borrow().errors(py).set_item(name, err.value(py))?;
        }
        for (layer, result) in layers.iter().zip(results) {
            match result {
                Ok(q) => out.set_item(&layer.name, PyQuantizedTensor::from_core(py, q))?,
                Err(e) => {
                    let err: PyErr = Error::Core(e).into();
                    out.borrow()
                        .errors(py)
                        .set_item(&layer.name, err.value(py))?;
                }
            }
        }
        Ok(out)
    }

    /// Runs the pipeline and remembers the report when it has time-aware parameters.
    fn run(
        &self,
        py: Python<'_>,
        input: &std::path::Path,
        output: &std::path::Path,
        config: Option<&PyDiffusionQuantConfig>,
        calibration: Option<Calibration>,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> Result<Py<PyAny>> {
        let (dict, report) = run_model(py, input, output, config, calibration, progress)?;
        if report.layers.iter().any(|l| l.time_groups.is_some()) {
            if let Ok(mut last) = self.last_time_aware.lock() {
                *last = Some(Arc::new(report));
            }
        }
        Ok(dict)
    }
}

#[pymethods]
impl ArrowQuantV2 {
    /// A quantizer. `mode` is "diffusion" (the only mode for now).
    #[new]
    #[pyo3(signature = (mode = "diffusion"))]
    fn new(mode: &str) -> Result<Self> {
        if !MODES.contains(&mode) {
            return Err(QuantError::config("mode", format!("{mode:?}"), "\"diffusion\"").into());
        }
        Ok(Self {
            mode: mode.to_string(),
            defaults: QuantConfig::default(),
            last_time_aware: std::sync::Mutex::new(None),
        })
    }

    /// The mode given at construction.
    #[getter]
    fn mode(&self) -> &str {
        &self.mode
    }

    /// Quantizes one numpy array (float32, float16, or bfloat16 bits as uint16; any shape).
    ///
    /// C-contiguous arrays are read in place; other layouts are copied once. The GIL is released while the
    /// kernels run.
    /// `layout` ("auto", "flat" or "two_level"; unset: "flat" when `group_size`, `symmetric`, `scale_dtype` or
    /// a flat method is given, else "auto") and `method` ("auto", "rtn", "mse", "hqq") follow the README's rule;
    /// an option the layout ignores is a `ConfigurationError`. `importance` is an optional float32
    /// vector with one non-negative weight per column of the 2-D view (e.g. mean squared input activations)
    /// that weights the squared error of the `mse`, `hqq` and two-level searches.
    /// `channel_absmax` (one activation magnitude per input channel, `shape[1]`; weights with ndim >= 2) turns
    /// on activation-aware channel scaling: columns are scaled by `a^alpha` (alpha searched on 0, 0.1, ..., 1.0
    /// to minimise the activation-weighted error), the scales are stored in `channel_scales` and undone by
    /// `dequantize`. It replaces `importance` (which it derives), so the two cannot be combined.
    /// `encoding` names a ggml block type of GGUF files ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K" ...
    /// "Q6_K", "IQ4_NL", "IQ4_XS", case-insensitive): `data` is then exactly that type's blocks, row by row along
    /// the last axis (which must be a whole number of its blocks). The type fixes width, layout and search, so
    /// `bit_width` (other than the default), `layout`, `group_size`, `symmetric`, `scale_dtype`, `method` (other
    /// than "auto", its search; "rtn" for round-to-nearest: llama.cpp's reference rounding of Q8_0 / Q4_0 / Q4_1 /
    /// Q5_0 / Q5_1, the extremes' scales at Q6_K; or "plain", the rounding GGUF runs give convolution kernels and
    /// conditioning projections: round-to-nearest at Q4_0, the weighted, gain-unbiased
    /// search at Q2_K / Q3_K / IQ4_NL / IQ4_XS, the magnitude-weighted search at Q4_K / Q5_K, else the search;
    /// "rtn" and "plain" take no `importance`) and
    /// `channel_absmax` cannot be combined with it; `importance` can.
    #[pyo3(signature = (weights, bit_width = 4, group_size = None, symmetric = None, method = "auto",
                        scale_dtype = None, name = "weights", importance = None,
                        channel_absmax = None, layout = None, encoding = None))]
    #[allow(clippy::too_many_arguments)]
    fn quantize<'py>(
        &self,
        py: Python<'py>,
        weights: &Bound<'py, PyAny>,
        bit_width: i64,
        group_size: Option<&Bound<'py, PyAny>>,
        symmetric: Option<bool>,
        method: &str,
        scale_dtype: Option<&str>,
        name: &str,
        importance: Option<&Bound<'py, PyAny>>,
        channel_absmax: Option<&Bound<'py, PyAny>>,
        layout: Option<&str>,
        encoding: Option<&str>,
    ) -> Result<PyQuantizedTensor> {
        if let Some(encoding) = encoding {
            let ty: GgmlType = encoding.parse()?;
            let given = [
                (bit_width != 4, "bit_width"),
                (layout.is_some(), "layout"),
                (group_size.is_some(), "group_size"),
                (symmetric.is_some(), "symmetric"),
                (scale_dtype.is_some(), "scale_dtype"),
                (!matches!(method, "auto" | "rtn" | "plain"), "method"),
                (channel_absmax.is_some(), "channel_absmax"),
            ];
            if let Some((_, option)) = given.iter().find(|(g, _)| *g) {
                return Err(QuantError::config(
                    option,
                    format!("given together with encoding={encoding:?}"),
                    format!(
                        "no {option}: a ggml type fixes its own width, layout and search (method may be \
                         \"auto\", its search, \"rtn\", round-to-nearest, or \"plain\", the layer policy's rounding)"
                    ),
                )
                .into());
            }
            let layer = LayerInput::from_py(name.to_string(), weights)?;
            let view = layer.view()?;
            let importance = importance.map(|i| read_importance(name, i)).transpose()?;
            let importance = importance
                .as_ref()
                .map(|a| a.as_slice().map_err(|e| schema(name, e)))
                .transpose()?;
            let rounding = match method {
                "rtn" => Rounding::Nearest,
                "plain" if importance.is_some() => {
                    return Err(QuantError::config(
                        "importance",
                        "given with method \"plain\"",
                        "no importance: the plain rounding is for layers without calibration",
                    )
                    .into())
                }
                // the rounding GGUF runs give convolution kernels and conditioning projections
                "plain" => arrow_quant::pipeline::policy::gguf_rounding(true, ty),
                _ => Rounding::Searched,
            };
            let q = without_gil(py, || {
                arrow_quant::quantize_ggml(&view, ty, importance, rounding)
            })?;
            return Ok(PyQuantizedTensor::from_core(py, q));
        }
        let config = Overrides::new(
            Some(bit_width),
            layout,
            group_size,
            symmetric,
            Some(method),
            scale_dtype,
        )
        .apply(self.defaults)?;
        let layer = LayerInput::from_py(name.to_string(), weights)?;
        let view = layer.view()?;
        let importance = importance.map(|i| read_importance(name, i)).transpose()?;
        let importance = importance
            .as_ref()
            .map(|a| a.as_slice().map_err(|e| schema(name, e)))
            .transpose()?;
        if let Some(absmax) = channel_absmax {
            if importance.is_some() {
                return Err(QuantError::config(
                    "importance",
                    format!("given together with channel_absmax for tensor '{name}'"),
                    "one of them: channel scaling derives its importance (a^2 / s^2) from channel_absmax",
                )
                .into());
            }
            let absmax = read_channel_absmax(py, name, absmax)?;
            let absmax = absmax.as_slice().map_err(|e| schema(name, e))?;
            let (q, _) = without_gil(py, || quantize_channel_scaled(&view, &config, absmax))?;
            return Ok(PyQuantizedTensor::from_core(py, q));
        }
        let q: QuantizedTensor = without_gil(py, || {
            arrow_quant::quantize_tensor_with(&view, &config, importance)
        })?;
        Ok(PyQuantizedTensor::from_core(py, q))
    }

    /// Quantizes a `dict[str, ndarray]`, layers in parallel; returns a `BatchResult` (a dict of
    /// `QuantizedTensor`). Without `continue_on_error` the first failure is raised; with it, failed layers are
    /// left out of the dict and listed in `.errors`.
    #[pyo3(signature = (weights, bit_width = None, group_size = None, symmetric = None, method = None,
                        scale_dtype = None, continue_on_error = false, layout = None))]
    #[allow(clippy::too_many_arguments)]
    fn quantize_batch<'py>(
        &self,
        py: Python<'py>,
        weights: &Bound<'py, PyDict>,
        bit_width: Option<i64>,
        group_size: Option<&Bound<'py, PyAny>>,
        symmetric: Option<bool>,
        method: Option<&str>,
        scale_dtype: Option<&str>,
        continue_on_error: bool,
        layout: Option<&str>,
    ) -> Result<Bound<'py, BatchResult>> {
        let overrides = Overrides::new(
            bit_width,
            layout,
            group_size,
            symmetric,
            method,
            scale_dtype,
        );
        self.run_batch(py, weights, overrides, continue_on_error, None)
    }

    /// Like `quantize_batch`, calling `progress_callback(layer_name, fraction)` on the calling thread as each
    /// layer finishes (`fraction` is weighted by layer size). An exception raised by the callback stops the
    /// batch and propagates.
    #[pyo3(signature = (weights, bit_width = None, progress_callback = None, continue_on_error = false,
                        group_size = None, symmetric = None, method = None, scale_dtype = None,
                        layout = None))]
    #[allow(clippy::too_many_arguments)]
    fn quantize_batch_with_progress<'py>(
        &self,
        py: Python<'py>,
        weights: &Bound<'py, PyDict>,
        bit_width: Option<i64>,
        progress_callback: Option<&Bound<'py, PyAny>>,
        continue_on_error: bool,
        group_size: Option<&Bound<'py, PyAny>>,
        symmetric: Option<bool>,
        method: Option<&str>,
        scale_dtype: Option<&str>,
        layout: Option<&str>,
    ) -> Result<Bound<'py, BatchResult>> {
        if let Some(cb) = progress_callback {
            if !cb.is_callable() {
                return Err(QuantError::config(
                    "progress_callback",
                    "a non-callable",
                    "a callable(name, fraction)",
                )
                .into());
            }
        }
        let overrides = Overrides::new(
            bit_width,
            layout,
            group_size,
            symmetric,
            method,
            scale_dtype,
        );
        self.run_batch(py, weights, overrides, continue_on_error, progress_callback)
    }

    /// Quantizes every row of an Arrow table `{layer_name, weights, shape?}` (any producer: pyarrow Table,
    /// RecordBatch or RecordBatchReader, polars DataFrame, ...), reading the weights in place; returns a pyarrow
    /// Table of the result schema whose buffers are the Rust output buffers.
    #[pyo3(signature = (table, bit_width = None, group_size = None, symmetric = None, method = None,
                        scale_dtype = None, layout = None))]
    #[allow(clippy::too_many_arguments)]
    fn quantize_arrow<'py>(
        &self,
        py: Python<'py>,
        table: &Bound<'py, PyAny>,
        bit_width: Option<i64>,
        group_size: Option<&Bound<'py, PyAny>>,
        symmetric: Option<bool>,
        method: Option<&str>,
        scale_dtype: Option<&str>,
        layout: Option<&str>,
    ) -> Result<Bound<'py, PyAny>> {
        let overrides = Overrides::new(
            bit_width,
            layout,
            group_size,
            symmetric,
            method,
            scale_dtype,
        );
        let (batches, config) = self.run_arrow(py, table, overrides, false)?;
        to_pyarrow_table(py, batches, Arc::new(result_schema(config.scale_dtype())))
    }

    /// Like `quantize_arrow`, returning one pyarrow RecordBatch.
    #[pyo3(signature = (record_batch, bit_width = None, group_size = None, symmetric = None, method = None,
                        scale_dtype = None, layout = None))]
    #[allow(clippy::too_many_arguments)]
    fn quantize_arrow_batch<'py>(
        &self,
        py: Python<'py>,
        record_batch: &Bound<'py, PyAny>,
        bit_width: Option<i64>,
        group_size: Option<&Bound<'py, PyAny>>,
        symmetric: Option<bool>,
        method: Option<&str>,
        scale_dtype: Option<&str>,
        layout: Option<&str>,
    ) -> Result<Bound<'py, PyAny>> {
        let overrides = Overrides::new(
            bit_width,
            layout,
            group_size,
            symmetric,
            method,
            scale_dtype,
        );
        let (mut batches, _) = self.run_arrow(py, record_batch, overrides, true)?;
        match batches.pop() {
            Some(batch) => to_pyarrow_batch(py, batch),
            None => Err(schema("<arrow input>", "no result batch was produced")),
        }
    }

    /// Dequantizes a result table (of `quantize_arrow` or `to_arrow`) to a pyarrow Table
    /// `{layer_name: utf8, weights: list<float32>, shape: list<int64>}`.
    fn dequantize_arrow<'py>(
        &self,
        py: Python<'py>,
        result: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyAny>> {
        let batches = collect_batches(result)?;
        let batch = without_gil(py, || {
            read_results(&batches).and_then(|rows| dequantize_to_batch(&rows))
        })?;
        let schema = batch.schema();
        to_pyarrow_table(py, vec![batch], schema)
    }

    /// Converts `QuantizedTensor`s (a dict of them, or any iterable) to a result table (the packed bytes are
    /// copied once into the Arrow buffers).
    fn to_arrow<'py>(
        &self,
        py: Python<'py>,
        tensors: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyAny>> {
        let items = match tensors.cast::<PyDict>() {
            Ok(d) => d.values().into_any(),
            Err(_) => tensors.clone(),
        };
        let mut held = Vec::new();
        for item in items.try_iter()? {
            let item = item?;
            let t = item.cast_into::<PyQuantizedTensor>().map_err(|e| {
                schema(
                    "<tensors>",
                    format!(
                        "to_arrow takes QuantizedTensor objects, got {}",
                        e.into_inner()
                            .get_type()
                            .name()
                            .map_or_else(|_| "?".to_string(), |n| n.to_string())
                    ),
                )
            })?;
            held.push(t);
        }
        let tensors: Vec<&PyQuantizedTensor> = held.iter().map(|t| t.get()).collect();
        let borrows = tensors
            .iter()
            .map(|t| t.borrow(py))
            .collect::<Result<Vec<_>>>()?;
        let views = tensors
            .iter()
            .zip(&borrows)
            .map(|(t, b)| t.view(b))
            .collect::<Result<Vec<_>>>()?;
        let metas: Vec<_> = tensors
            .iter()
            .zip(&views)
            .map(|(t, v)| t.row_meta(v))
            .collect();
        let batch = tensors_to_batch(&metas, &views)?;
        let schema = batch.schema();
        to_pyarrow_table(py, vec![batch], schema)
    }

    /// Reads a result table back into a `BatchResult` of `QuantizedTensor`s (buffers copied once).
    #[pyo3(name = "from_arrow")]
    fn read_arrow<'py>(
        &self,
        py: Python<'py>,
        result: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, BatchResult>> {
        let batches = collect_batches(result)?;
        let rows = read_results(&batches)?;
        let out = Bound::new(py, BatchResult::empty(py))?;
        for row in &rows {
            out.set_item(row.name, PyQuantizedTensor::from_core(py, row.to_tensor()?))?;
        }
        Ok(out)
    }

    /// Quantizes a checkpoint (a `.safetensors` file, a sharded folder, or its `*.safetensors.index.json`) into a
    /// model file at `output_path` (Parquet or Arrow IPC per `config.format`), tensor by tensor; returns the
    /// report `{layers: [...], totals: {...}}`. `progress_callback(tensor_name, fraction)` runs on this thread.
    /// `calibration` (a file path, an Arrow table or a dict of numpy arrays; see docs/CALIBRATION.md) takes
    /// precedence over `config.calibration_path`.
    #[pyo3(signature = (model_path, output_path, config = None, progress_callback = None, calibration = None))]
    fn quantize_diffusion_model(
        &self,
        py: Python<'_>,
        model_path: PathBuf,
        output_path: PathBuf,
        config: Option<PyRef<'_, PyDiffusionQuantConfig>>,
        progress_callback: Option<&Bound<'_, PyAny>>,
        calibration: Option<&Bound<'_, PyAny>>,
    ) -> Result<Py<PyAny>> {
        let calibration = calibration.map(calibration_from_py).transpose()?;
        self.run(
            py,
            &model_path,
            &output_path,
            config.as_deref(),
            calibration,
            progress_callback,
        )
    }

    /// Like `quantize_diffusion_model` for one `.safetensors` file.
    #[pyo3(signature = (safetensors_path, output_path, config = None, progress_callback = None, calibration = None))]
    fn quantize_from_safetensors(
        &self,
        py: Python<'_>,
        safetensors_path: PathBuf,
        output_path: PathBuf,
        config: Option<PyRef<'_, PyDiffusionQuantConfig>>,
        progress_callback: Option<&Bound<'_, PyAny>>,
        calibration: Option<&Bound<'_, PyAny>>,
    ) -> Result<Py<PyAny>> {
        if safetensors_path.is_dir()
            || safetensors_path
                .extension()
                .is_none_or(|e| e != "safetensors")
        {
            return Err(QuantError::config(
                "safetensors_path",
                safetensors_path.display(),
                "a .safetensors file (use quantize_diffusion_model for folders and indexes)",
            )
            .into());
        }
        let calibration = calibration.map(calibration_from_py).transpose()?;
        self.run(
            py,
            &safetensors_path,
            &output_path,
            config.as_deref(),
            calibration,
            progress_callback,
        )
    }

    /// Re-reads the source checkpoint and the model file and measures every layer again; returns
    /// `{passed, floor, layers: [{name, encoding, cosine, rel_mse, stored_cosine, passed}]}`.
    fn validate_quality(
        &self,
        py: Python<'_>,
        original_path: PathBuf,
        quantized_path: PathBuf,
    ) -> Result<Py<PyAny>> {
        validate(py, &original_path, &quantized_path)
    }

    /// Dequantizes a `QuantizedTensor` to an array of its source shape ("float32" or "float16").
    #[pyo3(signature = (quantized, dtype = "float32"))]
    fn dequantize<'py>(
        &self,
        quantized: &Bound<'py, PyQuantizedTensor>,
        dtype: &str,
    ) -> Result<Bound<'py, PyAny>> {
        Ok(quantized.call_method1("dequantize", (dtype,))?)
    }

    /// Markov metrics of the time-aware activation parameters of the last model run that produced them:
    /// `{threshold, smoothness, violations, severity: {low, medium, high}, max_scale_jump, max_zero_point_jump,
    /// layers: [{name, smoothness, violations, boundaries: [{t, scale_jump, zero_point_jump, severity}]}]}`;
    /// None before any such run. A boundary violates when its jump exceeds `threshold` (see docs/TIME_AWARE.md).
    #[pyo3(signature = (threshold = 0.1))] // markov::DEFAULT_THRESHOLD, as a literal for the text signature
    fn get_markov_metrics(&self, py: Python<'_>, threshold: f64) -> Result<Option<Py<PyAny>>> {
        let report = self.last_time_aware.lock().ok().and_then(|r| r.clone());
        let Some(report) = report else {
            return Ok(None);
        };
        match report.markov_metrics(threshold)? {
            Some(m) => Ok(Some(to_python(py, &m.to_json())?)),
            None => Ok(None),
        }
    }

    fn __repr__(&self) -> String {
        format!("ArrowQuantV2(mode={:?})", self.mode)
    }
}
