//! The one error type of the core crate: every failure says what was wrong, where, and how to fix it.

use thiserror::Error;

/// Everything that can go wrong in the core. Each variant maps to one Python exception class in the bindings.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum QuantError {
    /// A configuration field has a value outside its allowed set.
    #[error("invalid {field} = {value}: expected {expected}")]
    InvalidConfig {
        /// The field name as the user spells it (`bit_width`, `group_size`, ...).
        field: &'static str,
        /// The value that was given, rendered for the message.
        value: String,
        /// What would have been accepted.
        expected: String,
    },
    /// The input data has a type or layout the kernels cannot take.
    #[error("tensor '{tensor}': {problem}")]
    Schema {
        /// The tensor (layer) name.
        tensor: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The tensor's values span a range its encoding cannot represent (a float16 scale would overflow, or the
    /// reconstruction would not be finite). The pipeline's fallback moves on to the next encoding.
    #[error("tensor '{tensor}': {problem}")]
    Range {
        /// The tensor (layer) name.
        tensor: String,
        /// Which group or block, and what to use instead.
        problem: String,
    },
    /// An Arrow input or result column is missing or of the wrong type, or a row breaks the schema.
    #[error("column '{column}': {problem}")]
    Column {
        /// The column name.
        column: String,
        /// What was found, what the schema expects, and (for row errors) which row.
        problem: String,
    },
    /// A NaN or infinite value was found in the input weights.
    #[error(
        "tensor '{tensor}': non-finite value {value} at element {index}; \
         clean the weights (e.g. numpy.nan_to_num) or keep this layer unquantized"
    )]
    NonFinite {
        /// The tensor (layer) name.
        tensor: String,
        /// Flat (row-major) index of the first offending element.
        index: usize,
        /// The offending value, rendered (`NaN`, `inf`, `-inf`).
        value: String,
    },
    /// A quantized tensor's buffers do not agree with its metadata.
    #[error("quantized tensor '{tensor}': {problem}")]
    Corrupt {
        /// The tensor (layer) name.
        tensor: String,
        /// Which buffer has which length and what was expected.
        problem: String,
    },
    /// A checkpoint or quantized file is malformed: the message names the file, the tensor and the numbers.
    #[error("{file}: {problem}")]
    Format {
        /// The file.
        file: String,
        /// What is wrong (with tensor names and byte counts).
        problem: String,
    },
    /// A model path does not exist or holds no checkpoint.
    #[error("{path}: {problem}")]
    ModelNotFound {
        /// The path given.
        path: String,
        /// What was looked for.
        problem: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's message.
        message: String,
        /// The kind of the I/O error (`NotFound`, `PermissionDenied`, ...), for callers that react to it.
        kind: std::io::ErrorKind,
    },
    /// A layer missed its quality floor at every allowed width and the run was asked to fail fast.
    #[error("tensor '{tensor}': {problem}; lower the quality floor or drop fail_fast to fall back per layer")]
    Quality {
        /// The tensor.
        tensor: String,
        /// The figures.
        problem: String,
    },
    /// Calibration statistics are malformed or do not fit the model (unknown layer, timestep out of range,
    /// channel count not matching the layer's input width).
    #[error("calibration {source_name}: {problem}")]
    Calibration {
        /// Where the statistics came from (a file path, or `table` / `dict`), with the layer when known.
        source_name: String,
        /// What is wrong, with the numbers, and how to fix it.
        problem: String,
    },
    /// An output path cannot be written as given: it names an input of the run (the same file by any path, link
    /// or hard link), or its extension contradicts the format asked for. Checked before any work starts.
    #[error("{path}: {problem}")]
    OutputPath {
        /// The output path as the user gave it.
        path: String,
        /// What it conflicts with and how to fix it.
        problem: String,
    },
    /// The work was stopped by the caller (a progress callback raised, or Ctrl-C).
    #[error("cancelled before tensor '{tensor}' was quantized")]
    Cancelled {
        /// The first tensor that was not processed.
        tensor: String,
    },
}

/// Result alias used throughout the core.
pub type Result<T, E = QuantError> = std::result::Result<T, E>;

impl QuantError {
    /// Builds an [`QuantError::InvalidConfig`].
    pub fn config(field: &'static str, value: impl ToString, expected: impl ToString) -> Self {
        Self::InvalidConfig {
            field,
            value: value.to_string(),
            expected: expected.to_string(),
        }
    }

    /// Builds a [`QuantError::Schema`].
    pub fn schema(tensor: &str, problem: impl ToString) -> Self {
        Self::Schema {
            tensor: tensor.to_string(),
            problem: problem.to_string(),
        }
    }

    /// Builds a [`QuantError::Column`].
    pub fn column(column: &str, problem: impl ToString) -> Self {
        Self::Column {
            column: column.to_string(),
            problem: problem.to_string(),
        }
    }

    /// Builds a [`QuantError::Format`].
    pub fn format(file: &std::path::Path, problem: impl ToString) -> Self {
        Self::Format {
            file: file.display().to_string(),
            problem: problem.to_string(),
        }
    }

    /// Builds a [`QuantError::Io`], keeping the error's kind.
    pub fn io(path: &std::path::Path, e: &std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            message: e.to_string(),
            kind: e.kind(),
        }
    }

    /// Builds a [`QuantError::Calibration`].
    pub fn calibration(source_name: impl ToString, problem: impl ToString) -> Self {
        Self::Calibration {
            source_name: source_name.to_string(),
            problem: problem.to_string(),
        }
    }

    /// Builds a [`QuantError::OutputPath`].
    pub fn output_path(path: &std::path::Path, problem: impl ToString) -> Self {
        Self::OutputPath {
            path: path.display().to_string(),
            problem: problem.to_string(),
        }
    }

    /// Builds a [`QuantError::Corrupt`].
    pub fn corrupt(tensor: &str, problem: impl ToString) -> Self {
        Self::Corrupt {
            tensor: tensor.to_string(),
            problem: problem.to_string(),
        }
    }
}

/// Runs a third-party file reader (arrow-ipc, parquet) and turns a panic inside it into an error: some malformed
/// files make those readers panic instead of returning an error (found by fuzzing). `on_panic` builds the error
/// from the panic message.
pub(crate) fn catch_reader_panic<T>(
    read: impl FnOnce() -> Result<T>,
    on_panic: impl FnOnce(&str) -> QuantError,
) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the reader panicked".into());
            Err(on_panic(&message))
        }
    }
}
