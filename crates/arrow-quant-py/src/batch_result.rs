//! `BatchResult`: the dict returned by the batch calls, with the failed layers in `.errors`.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

/// A `dict[str, QuantizedTensor]` of the layers that succeeded; `errors` maps each failed layer (only with
/// `continue_on_error=True`) to the exception it raised.
#[pyclass(module = "arrow_quant_v2._core", name = "BatchResult", extends = PyDict)]
pub struct BatchResult {
    errors: Py<PyDict>,
}

impl BatchResult {
    /// An empty result with no errors.
    pub fn empty(py: Python<'_>) -> Self {
        Self {
            errors: PyDict::new(py).unbind(),
        }
    }

    /// The dict of failed layers.
    pub fn errors<'py>(&self, py: Python<'py>) -> &Bound<'py, PyDict> {
        self.errors.bind(py)
    }
}

#[pymethods]
impl BatchResult {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(
        py: Python<'_>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> Self {
        Self::empty(py)
    }

    /// Failed layers: name -> the exception (a QuantizationError subclass).
    #[getter(errors)]
    fn get_errors(&self, py: Python<'_>) -> Py<PyDict> {
        self.errors.clone_ref(py)
    }
}
