//! `ArrowQuantV2`: the quantizer class. Every Python method lives in the one `#[pymethods]` block below.

use crate::batch_result::BatchResult;
use crate::detach::run_detached;
use crate::errors::{schema, Error, Result};
use crate::input::LayerInput;
use crate::options::Overrides;
use crate::quantized::PyQuantizedTensor;
use arrow_quant::{quantize_batch, OnError, QuantConfig, QuantError, QuantizedTensor, TensorView};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::atomic::AtomicBool;

/// Modes the quantizer accepts.
const MODES: [&str; 1] = ["diffusion"];

/// Weight quantizer for diffusion models.
#[pyclass(module = "arrow_quant_v2._core", name = "ArrowQuantV2")]
pub struct ArrowQuantV2 {
    mode: String,
    defaults: QuantConfig,
}

/// Reads the layers of a `dict[str, ndarray]`.
fn read_layers<'py>(weights: &Bound<'py, PyDict>) -> Result<Vec<LayerInput<'py>>> {
    weights
        .iter()
        .map(|(key, value)| {
            let name: String = key.extract().map_err(|_| {
                schema(
                    &key.repr().map_or_else(|_| "?".into(), |r| r.to_string()),
                    "layer names (the dict keys) must be str",
                )
            })?;
            LayerInput::from_py(name, &value)
        })
        .collect()
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

/// One element count per layer, for progress fractions weighted by size.
fn prefix_sizes(views: &[TensorView<'_>]) -> (Vec<usize>, usize) {
    let sizes: Vec<usize> = views.iter().map(|v| v.data.len()).collect();
    let total = sizes.iter().sum();
    (sizes, total)
}

impl ArrowQuantV2 {
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
        let layers = read_layers(weights)?;
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
        let work = |notify: &(dyn Fn(usize) + Sync)| {
            if report {
                quantize_batch(&views, &config, on_error, &cancel, notify)
            } else {
                quantize_batch(&views, &config, on_error, &cancel, &|_| {})
            }
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
    /// `method="auto"` (the default) resolves per bit width (see README); `importance` is an optional float32
    /// vector with one non-negative weight per column of the 2-D view (e.g. mean squared input activations)
    /// that weights the squared error of the `mse`, `hqq` and `two_level` searches.
    #[pyo3(signature = (weights, bit_width = 4, group_size = None, symmetric = false, method = "auto",
                        scale_dtype = "float16", name = "weights", importance = None))]
    #[allow(clippy::too_many_arguments)]
    fn quantize<'py>(
        &self,
        py: Python<'py>,
        weights: &Bound<'py, PyAny>,
        bit_width: i64,
        group_size: Option<&Bound<'py, PyAny>>,
        symmetric: bool,
        method: &str,
        scale_dtype: &str,
        name: &str,
        importance: Option<&Bound<'py, PyAny>>,
    ) -> Result<PyQuantizedTensor> {
        let config = Overrides {
            bit_width: Some(bit_width),
            group_size,
            symmetric: Some(symmetric),
            method: Some(method),
            scale_dtype: Some(scale_dtype),
        }
        .apply(self.defaults)?;
        let layer = LayerInput::from_py(name.to_string(), weights)?;
        let view = layer.view()?;
        let importance = importance.map(|i| read_importance(name, i)).transpose()?;
        let importance = importance
            .as_ref()
            .map(|a| a.as_slice().map_err(|e| schema(name, e)))
            .transpose()?;
        let cancel = AtomicBool::new(false);
        let q: QuantizedTensor = run_detached(
            py,
            &cancel,
            |_| arrow_quant::quantize_tensor_with(&view, &config, importance),
            |_| Ok(()),
        )??;
        Ok(PyQuantizedTensor::from_core(py, q))
    }

    /// Quantizes a `dict[str, ndarray]`, layers in parallel; returns a `BatchResult` (a dict of
    /// `QuantizedTensor`). Without `continue_on_error` the first failure is raised; with it, failed layers are
    /// left out of the dict and listed in `.errors`.
    #[pyo3(signature = (weights, bit_width = None, group_size = None, symmetric = None, method = None,
                        scale_dtype = None, continue_on_error = false))]
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
    ) -> Result<Bound<'py, BatchResult>> {
        let overrides = Overrides {
            bit_width,
            group_size,
            symmetric,
            method,
            scale_dtype,
        };
        self.run_batch(py, weights, overrides, continue_on_error, None)
    }

    /// Like `quantize_batch`, calling `progress_callback(layer_name, fraction)` on the calling thread as each
    /// layer finishes (`fraction` is weighted by layer size). An exception raised by the callback stops the
    /// batch and propagates.
    #[pyo3(signature = (weights, bit_width = None, progress_callback = None, continue_on_error = false,
                        group_size = None, symmetric = None, method = None, scale_dtype = None))]
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
        let overrides = Overrides {
            bit_width,
            group_size,
            symmetric,
            method,
            scale_dtype,
        };
        self.run_batch(py, weights, overrides, continue_on_error, progress_callback)
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

    fn __repr__(&self) -> String {
        format!("ArrowQuantV2(mode={:?})", self.mode)
    }
}
