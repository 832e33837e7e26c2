//! JSON values (reports, settings, metrics of the core) to Python objects.

use pyo3::prelude::*;

/// The Python value of `value` (dicts, lists, str, int, float, bool, None), as `json.loads` builds it.
pub(crate) fn to_python(py: Python<'_>, value: &serde_json::Value) -> PyResult<Py<PyAny>> {
    Ok(py
        .import("json")?
        .call_method1("loads", (value.to_string(),))?
        .unbind())
}
