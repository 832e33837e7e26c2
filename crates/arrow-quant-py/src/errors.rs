//! The Python exception hierarchy and the one error type of the bindings, convertible to `PyErr`.

use arrow_quant::QuantError;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

create_exception!(
    arrow_quant_v2,
    QuantizationError,
    PyException,
    "Base class of every arrow-quant error."
);
create_exception!(
    arrow_quant_v2,
    ConfigurationError,
    QuantizationError,
    "A setting is invalid: bit width, group size, method, mode or scale dtype."
);
create_exception!(
    arrow_quant_v2,
    SchemaError,
    QuantizationError,
    "Input of the wrong type, dtype or shape (the message names the layer and what to pass instead)."
);
create_exception!(
    arrow_quant_v2,
    InvalidWeightsError,
    QuantizationError,
    "The weights contain NaN or infinity (the message names the layer and the element index)."
);
create_exception!(
    arrow_quant_v2,
    CorruptDataError,
    QuantizationError,
    "A quantized tensor's buffers do not agree with its metadata."
);
create_exception!(
    arrow_quant_v2,
    CancelledError,
    QuantizationError,
    "The work was stopped before it finished."
);
create_exception!(
    arrow_quant_v2,
    ModelNotFoundError,
    QuantizationError,
    "A model path does not exist or holds no checkpoint."
);
create_exception!(
    arrow_quant_v2,
    CalibrationError,
    QuantizationError,
    "Calibration statistics are malformed or do not fit the model (the message names the layer and the numbers)."
);
create_exception!(
    arrow_quant_v2,
    FileAccessError,
    QuantizationError,
    "A file or folder could not be read or written (the message names the path you gave). Raised as a subclass \
     that is also the built-in OSError subclass of the same errno (FileNotFoundError, PermissionError, \
     IsADirectoryError, NotADirectoryError, FileExistsError; OSError otherwise)."
);
create_exception!(
    arrow_quant_v2,
    QualityError,
    QuantizationError,
    "A layer missed its quality floor and the run was asked to fail fast."
);

/// Errors of the bindings: a core error (mapped to its exception class) or an error raised by Python itself.
#[derive(Debug)]
pub enum Error {
    /// An error of the core crate.
    Core(QuantError),
    /// An exception that came from Python (a callback, a conversion).
    Python(PyErr),
}

/// Result alias of the bindings; `?` converts both kinds of error.
pub type Result<T> = std::result::Result<T, Error>;

impl From<QuantError> for Error {
    fn from(e: QuantError) -> Self {
        Self::Core(e)
    }
}

impl From<PyErr> for Error {
    fn from(e: PyErr) -> Self {
        Self::Python(e)
    }
}

impl From<Error> for PyErr {
    fn from(e: Error) -> Self {
        match e {
            Error::Python(e) => e,
            Error::Core(e) => {
                let message = e.to_string();
                match e {
                    QuantError::InvalidConfig { .. } | QuantError::OutputPath { .. } => {
                        ConfigurationError::new_err(message)
                    }
                    QuantError::Schema { .. }
                    | QuantError::Range { .. }
                    | QuantError::Column { .. } => SchemaError::new_err(message),
                    QuantError::NonFinite { .. } => InvalidWeightsError::new_err(message),
                    QuantError::Corrupt { .. } | QuantError::Format { .. } => {
                        CorruptDataError::new_err(message)
                    }
                    QuantError::ModelNotFound { .. } => ModelNotFoundError::new_err(message),
                    QuantError::Io { kind, .. } => os_error(kind, message),
                    QuantError::Quality { .. } => QualityError::new_err(message),
                    QuantError::Calibration { .. } => CalibrationError::new_err(message),
                    QuantError::Cancelled { .. } => CancelledError::new_err(message),
                }
            }
        }
    }
}

/// The exception of an I/O error kind: a subclass of both [`FileAccessError`] (so of `QuantizationError`) and the
/// built-in `OSError` subclass Python raises for the same `errno`, so callers can `except FileNotFoundError` as
/// well as `except QuantizationError`. The classes are made once, at module registration ([`io_classes`]).
fn os_error(kind: std::io::ErrorKind, message: String) -> PyErr {
    use std::io::ErrorKind;
    let index = match kind {
        ErrorKind::NotFound => 1,
        ErrorKind::PermissionDenied => 2,
        ErrorKind::IsADirectory => 3,
        ErrorKind::NotADirectory => 4,
        ErrorKind::AlreadyExists => 5,
        _ => 0,
    };
    Python::attach(|py| match IO_CLASSES.get(py) {
        Some(classes) => PyErr::from_type(classes[index].bind(py).clone(), message),
        None => FileAccessError::new_err(message),
    })
}

/// The subclasses of `FileAccessError` per I/O error kind (`OSError` first), in the order [`os_error`] indexes
/// them.
static IO_CLASSES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

/// Builds the per-kind classes: `arrow_quant_v2.FileNotFoundError(FileAccessError, builtins.FileNotFoundError)`
/// and the like (named as the built-in they extend; reachable as exceptions, not as module attributes).
fn io_classes(py: Python<'_>) -> PyResult<Vec<Py<PyType>>> {
    use pyo3::exceptions::{
        PyFileExistsError, PyFileNotFoundError, PyIsADirectoryError, PyNotADirectoryError,
        PyOSError, PyPermissionError,
    };
    let base = py.get_type::<FileAccessError>();
    let make_type = py.import("builtins")?.getattr("type")?;
    let mut classes = Vec::new();
    for builtin in [
        py.get_type::<PyOSError>(),
        py.get_type::<PyFileNotFoundError>(),
        py.get_type::<PyPermissionError>(),
        py.get_type::<PyIsADirectoryError>(),
        py.get_type::<PyNotADirectoryError>(),
        py.get_type::<PyFileExistsError>(),
    ] {
        let namespace = PyDict::new(py);
        namespace.set_item("__module__", "arrow_quant_v2")?;
        namespace.set_item("__doc__", base.getattr("__doc__")?)?;
        let class = make_type.call1((
            builtin.name()?,
            PyTuple::new(py, [base.as_any(), builtin.as_any()])?,
            namespace,
        ))?;
        classes.push(class.cast_into::<PyType>()?.unbind());
    }
    Ok(classes)
}

/// A [`SchemaError`] about layer `layer`.
pub fn schema(layer: &str, problem: impl ToString) -> Error {
    Error::Core(QuantError::schema(layer, problem))
}

/// Adds the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("QuantizationError", py.get_type::<QuantizationError>())?;
    m.add("ConfigurationError", py.get_type::<ConfigurationError>())?;
    m.add("SchemaError", py.get_type::<SchemaError>())?;
    m.add("InvalidWeightsError", py.get_type::<InvalidWeightsError>())?;
    m.add("CorruptDataError", py.get_type::<CorruptDataError>())?;
    m.add("CancelledError", py.get_type::<CancelledError>())?;
    m.add("ModelNotFoundError", py.get_type::<ModelNotFoundError>())?;
    m.add("QualityError", py.get_type::<QualityError>())?;
    m.add("CalibrationError", py.get_type::<CalibrationError>())?;
    m.add("FileAccessError", py.get_type::<FileAccessError>())?;
    let classes = io_classes(py)?;
    // A second module instance (subinterpreter) keeps the first one's classes.
    let _ = IO_CLASSES.set(py, classes);
    Ok(())
}
