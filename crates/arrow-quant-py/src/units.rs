//! A run as units of work, for a distributed driver (`arrow_quant_v2.distributed`): plan a checkpoint's units
//! from its headers, (under mixed precision) estimate each quantized tensor and allocate the plan, quantize one
//! unit into a staging file, assemble the staged units into the model file.
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

/// Raises `ConfigurationError` for settings a distributed run refuses: calibration.
#[pyfunction]
#[pyo3(signature = (config = None))]
pub fn check_distributable_config(config: Option<PyRef<'_, PyDiffusionQuantConfig>>) -> Result<()> {
    Ok(pipeline::check_distributable(&config_of(config))?)
}

/// The units of a distributed run of the checkpoint at `source`, read from its headers only: one dict per
/// tensor, in order (`index`, `name`, `shape`, `dtype`, `bytes`, `decision`, `estimate`: the unit needs an
/// `estimate_unit` before the plan). `ConfigurationError` for settings a distributed run refuses (calibration).
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
                "decision": u.decision, "estimate": u.estimate,
            })
        })
        .collect();
    Ok(to_python(py, &serde_json::Value::from(units))?)
}

/// Quantizes tensor `index` of the checkpoint at `source` exactly as a local run does and writes it to the
/// staging file `staged` (Arrow IPC, atomically: a retry replaces it with the same bytes). Returns the layer's
/// report line (as in `report["layers"]`). `plan`: the plan file of `plan_from_estimates`, required when the
/// config plans mixed precision.
#[pyfunction]
#[pyo3(signature = (source, index, staged, config = None, plan = None))]
pub fn quantize_unit(
    py: Python<'_>,
    source: PathBuf,
    index: usize,
    staged: PathBuf,
    config: Option<PyRef<'_, PyDiffusionQuantConfig>>,
    plan: Option<PathBuf>,
) -> Result<Py<PyAny>> {
    let config = config_of(config);
    let layer = without_gil(py, || {
        pipeline::quantize_unit(&source, &config, index, &staged, plan.as_deref())
    })?;
    Ok(to_python(py, &layer.to_json())?)
}

/// Writes the model file `output` of the checkpoint at `source` from its staged units (`staged[i]` holds
/// tensor `i`) with the writer and footer of a local run: byte-identical to `quantize_diffusion_model(source,
/// ...)` with the same config and the same `source` string. Returns the report (`totals.seconds` is the
/// assembly's). `plan`: as for `quantize_unit`.
#[pyfunction]
#[pyo3(signature = (source, staged, output, config = None, plan = None))]
pub fn assemble_units(
    py: Python<'_>,
    source: PathBuf,
    staged: Vec<PathBuf>,
    output: PathBuf,
    config: Option<PyRef<'_, PyDiffusionQuantConfig>>,
    plan: Option<PathBuf>,
) -> Result<Py<PyAny>> {
    let config = config_of(config);
    let report = without_gil(py, || {
        pipeline::assemble_units(&source, &config, &staged, &output, plan.as_deref())
    })?;
    Ok(to_python(py, &report.to_json())?)
}

/// Measures tensor `index` of the checkpoint at `source` for the mixed-precision plan and writes its options
/// to the JSON file `staged` (atomically). The tensor must be one the units list with `estimate` true.
#[pyfunction]
#[pyo3(signature = (source, index, staged, config = None))]
pub fn estimate_unit(
    py: Python<'_>,
    source: PathBuf,
    index: usize,
    staged: PathBuf,
    config: Option<PyRef<'_, PyDiffusionQuantConfig>>,
) -> Result<()> {
    let config = config_of(config);
    without_gil(py, || {
        pipeline::estimate_unit(&source, &config, index, &staged)
    })
}

/// Allocates the widths of the checkpoint at `source` from its estimate files (one per unit with `estimate`
/// true, in tensor order) and writes the plan file `plan` (atomically). Returns the plan's summary (as in
/// `report["totals"]["mixed_precision"]`), or None when the automatic plan is out of reach (the run is uniform).
#[pyfunction]
#[pyo3(signature = (source, estimates, plan, config = None))]
pub fn plan_from_estimates(
    py: Python<'_>,
    source: PathBuf,
    estimates: Vec<PathBuf>,
    plan: PathBuf,
    config: Option<PyRef<'_, PyDiffusionQuantConfig>>,
) -> Result<Py<PyAny>> {
    let config = config_of(config);
    let summary = without_gil(py, || {
        pipeline::plan_from_estimates(&source, &config, &estimates, &plan)
    })?;
    let value = summary.map_or(serde_json::Value::Null, |s| s.to_json());
    Ok(to_python(py, &value)?)
}
