//! A run as units of work, for a distributed driver (`arrow_quant_v2.distributed`): plan a checkpoint's units
//! from its headers, quantize one unit into a staging file, assemble the staged units into the model file.
//! Conversions only; the GIL is released around each call.

use crate::config_class::PyDiffusionQuantConfig;
use crate::detach::without_gil;
use crate::errors::Result;
use crate::json::to_python;
use arrow_quant::pipeline::{self, PipelineConfig};
use pyo3::prelude::*;
use std::path::PathBuf;

fn config_of(config: Option<PyRef<'_, PyDiffusionQuantConfig>>) -> PipelineConfig {
    config.map_or_else(PipelineConfig::default, |c| c.inner.clone())
}

/// Raises `ConfigurationError` for settings a distributed run refuses: `target_bits_per_weight` (mixed
/// precision plans over every layer's weights) and calibration.
#[pyfunction]
#[pyo3(signature = (config = None))]
pub fn check_distributable_config(config: Option<PyRef<'_, PyDiffusionQuantConfig>>) -> Result<()> {
    Ok(pipeline::check_distributable(&config_of(config))?)
}

/// The units of a distributed run of the checkpoint at `source`, read from its headers only: one dict per
/// tensor, in order (`index`, `name`, `shape`, `dtype`, `bytes`, `decision`). `ConfigurationError` for
/// settings a distributed run refuses (`target_bits_per_weight`, calibration).
#[pyfunction]
#[pyo3(signature = (source, config = None))]
pub fn plan_units(
    py: Python<'_>,
    source: PathBuf,
    config: Option<PyRef<'_, PyDiffusionQuantConfig>>,
) -> Result<Py<PyAny>> {
    let config = config_of(config);
    let units = without_gil(py, || pipeline::plan_units(&source, &config))?;
    let units: Vec<serde_json::Value> = units
        .into_iter()
        .map(|u| {
            serde_json::json!({
                "index": u.index, "name": u.name, "shape": u.shape, "dtype": u.dtype, "bytes": u.bytes,
                "decision": u.decision,
            })
        })
        .collect();
    Ok(to_python(py, &serde_json::Value::from(units))?)
}

/// Quantizes tensor `index` of the checkpoint at `source` exactly as a local run does and writes it to the
/// staging file `staged` (Arrow IPC, atomically: a retry replaces it with the same bytes). Returns the layer's
/// report line (as in `report["layers"]`).
#[pyfunction]
#[pyo3(signature = (source, index, staged, config = None))]
pub fn quantize_unit(
    py: Python<'_>,
    source: PathBuf,
    index: usize,
    staged: PathBuf,
    config: Option<PyRef<'_, PyDiffusionQuantConfig>>,
) -> Result<Py<PyAny>> {
    let config = config_of(config);
    let layer = without_gil(py, || {
        pipeline::quantize_unit(&source, &config, index, &staged)
    })?;
    Ok(to_python(py, &layer.to_json())?)
}

/// Writes the model file `output` of the checkpoint at `source` from its staged units (`staged[i]` holds
/// tensor `i`) with the writer and footer of a local run: byte-identical to `quantize_diffusion_model(source,
/// ...)` with the same config and the same `source` string. Returns the report (`totals.seconds` is the
/// assembly's).
#[pyfunction]
#[pyo3(signature = (source, staged, output, config = None))]
pub fn assemble_units(
    py: Python<'_>,
    source: PathBuf,
    staged: Vec<PathBuf>,
    output: PathBuf,
    config: Option<PyRef<'_, PyDiffusionQuantConfig>>,
) -> Result<Py<PyAny>> {
    let config = config_of(config);
    let report = without_gil(py, || {
        pipeline::assemble_units(&source, &config, &staged, &output)
    })?;
    Ok(to_python(py, &report.to_json())?)
}
