//! Arrow in and out for the bindings: any Arrow producer in through the PyCapsule interface (pyo3-arrow, read in
//! place), pyarrow tables and record batches out through the C Data Interface (the Rust buffers are handed over).

use crate::errors::Result;
use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, SchemaRef};
use pyo3::prelude::*;
use pyo3_arrow::input::AnyRecordBatch;
use pyo3_arrow::{PyRecordBatch, PyTable};

/// Every record batch of an Arrow producer (a table's chunks, a stream's batches, or one batch): anything with
/// `__arrow_c_stream__` or `__arrow_c_array__` (pyarrow, polars, arro3, nanoarrow...).
pub fn collect_batches(input: &Bound<'_, PyAny>) -> Result<Vec<RecordBatch>> {
    let any: AnyRecordBatch = input.extract().map_err(|_| {
        let type_name = input
            .get_type()
            .name()
            .map_or_else(|_| "?".to_string(), |n| n.to_string());
        crate::errors::schema(
            "<arrow input>",
            format!(
                "expected an Arrow table or record batch (an object with __arrow_c_stream__ or \
                 __arrow_c_array__, e.g. pyarrow.Table or polars.DataFrame), got {type_name}"
            ),
        )
    })?;
    let reader = any.into_reader()?;
    let batches = reader
        .collect::<std::result::Result<Vec<_>, ArrowError>>()
        .map_err(|e| crate::errors::schema("<arrow input>", e))?;
    Ok(batches)
}

/// A pyarrow Table holding `batches` (no copy).
pub fn to_pyarrow_table(
    py: Python<'_>,
    batches: Vec<RecordBatch>,
    schema: SchemaRef,
) -> Result<Bound<'_, PyAny>> {
    Ok(PyTable::try_new(batches, schema)?.into_pyarrow(py)?)
}

/// A pyarrow RecordBatch holding `batch` (no copy).
pub fn to_pyarrow_batch(py: Python<'_>, batch: RecordBatch) -> Result<Bound<'_, PyAny>> {
    Ok(PyRecordBatch::new(batch).into_pyarrow(py)?)
}
