//! Calibration statistics from Python: `calibration_from_py` turns a file path, an Arrow table or a dict of
//! arrays into a validated [`Calibration`] (for any binding that takes calibration data), and the module
//! functions `read_calibration` / `write_calibration` expose it.

use crate::arrow_io::{collect_batches, to_pyarrow_table};
use crate::calibration_dict::rows_from_dict;
use crate::detach::without_gil;
use crate::errors::Result;
use arrow_quant::diffusion::calibration::Calibration;
use arrow_quant::QuantError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use std::path::PathBuf;

/// Source name of a calibration given as an Arrow table or record batch (used in error messages).
const TABLE: &str = "table";

/// Reads calibration statistics from any of the accepted forms and validates them:
/// - a path (`str` or `os.PathLike`) to a Parquet or Arrow IPC file,
/// - an Arrow table or record batch (anything with `__arrow_c_stream__` or `__arrow_c_array__`),
/// - a dict of numpy arrays / sequences (see [`rows_from_dict`]).
///
/// Malformed statistics, unreadable or missing files and unsupported inputs are [`QuantError::Calibration`]
/// errors (`CalibrationError` in Python). Validation and file reading run without the GIL.
pub fn calibration_from_py(obj: &Bound<'_, PyAny>) -> Result<Calibration> {
    let py = obj.py();
    if let Ok(dict) = obj.cast::<PyDict>() {
        let (rows, num_timesteps) = rows_from_dict(dict)?;
        return without_gil(py, || {
            Calibration::from_rows(crate::calibration_dict::SOURCE, rows, num_timesteps)
        });
    }
    if obj.hasattr("__arrow_c_stream__")? || obj.hasattr("__arrow_c_array__")? {
        let batches = collect_batches(obj)?;
        return without_gil(py, || Calibration::from_batches(TABLE, &batches));
    }
    if obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__")? {
        let path: PathBuf = obj.extract()?;
        return without_gil(py, || Calibration::read(&path));
    }
    let type_name = obj
        .get_type()
        .name()
        .map_or_else(|_| "?".to_string(), |n| n.to_string());
    Err(QuantError::calibration(
        "input",
        format!(
            "got {type_name}; expected a path (str or os.PathLike) to a Parquet / Arrow IPC file, an Arrow table \
             or record batch, or a dict with layer_name, timestep, min and max"
        ),
    )
    .into())
}

/// `read_calibration(source)`: validates calibration statistics (a path, an Arrow table or a dict) and returns
/// them as a pyarrow Table, one row per layer and timestep after merging, with `arrow_quant.num_timesteps` in
/// the schema metadata.
#[pyfunction]
pub fn read_calibration<'py>(source: &Bound<'py, PyAny>) -> Result<Bound<'py, PyAny>> {
    let py = source.py();
    let calibration = calibration_from_py(source)?;
    let batch = without_gil(py, || calibration.to_batch())?;
    let schema = batch.schema();
    to_pyarrow_table(py, vec![batch], schema)
}

/// `write_calibration(source, path)`: validates calibration statistics (a path, an Arrow table or a dict) and
/// writes the merged table as a Parquet file (zstd) at `path`, atomically.
#[pyfunction]
pub fn write_calibration(source: &Bound<'_, PyAny>, path: PathBuf) -> Result<()> {
    let calibration = calibration_from_py(source)?;
    without_gil(source.py(), || calibration.write(&path))
}
