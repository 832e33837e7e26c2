//! Whole-model runs for Python: a checkpoint through the pipeline with progress callbacks on the calling thread
//! (`run_model`), and the re-measurement of a model file against its source (`validate`).

use crate::config_class::PyDiffusionQuantConfig;
use crate::detach::{run_detached, without_gil};
use crate::errors::Result;
use crate::json::to_python;
use arrow_quant::diffusion::calibration::Calibration;
use arrow_quant::pipeline::{
    quantize_model, quantize_model_with, validate_model, PipelineConfig, Progress, Report,
};
use pyo3::prelude::*;
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// Runs a checkpoint through the pipeline with `calibration` (or the config's calibration file) and returns the
/// report, as a dict and as the core struct; `progress(tensor, fraction)` is called on the calling thread.
pub fn run_model(
    py: Python<'_>,
    input: &Path,
    output: &Path,
    config: Option<&PyDiffusionQuantConfig>,
    calibration: Option<Calibration>,
    progress: Option<&Bound<'_, PyAny>>,
) -> Result<(Py<PyAny>, Report)> {
    let config = config.map_or_else(PipelineConfig::default, |c| c.inner.clone());
    let cancel = AtomicBool::new(false);
    let report = run_detached(
        py,
        &cancel,
        |notify: &(dyn Fn(Progress) + Sync)| match &calibration {
            Some(c) => quantize_model_with(input, output, &config, Some(c), &cancel, notify),
            None => quantize_model(input, output, &config, &cancel, notify),
        },
        |p: Progress| match progress {
            Some(cb) => cb.call1((p.tensor, p.fraction)).map(drop),
            None => Ok(()),
        },
    )?;
    Ok((to_python(py, &report.to_json())?, report))
}

/// Re-reads both files and returns `{passed, floor, layers: [...]}`.
pub fn validate(py: Python<'_>, original: &Path, quantized: &Path) -> Result<Py<PyAny>> {
    let v = without_gil(py, || validate_model(original, quantized))?;
    Ok(to_python(py, &v.to_json())?)
}
