//! The main job: a checkpoint in, a quantized model file out, tensor by tensor (memory bounded by the largest
//! tensor), with the quality floor and per-layer fallback (2 -> 4 -> 8 -> kept in 16-bit), progress, and a report.
//! With calibration statistics: time-aware activation parameters and channel scaling per calibrated layer; with
//! a bits-per-weight target: a planning pass first (`plan`), then each layer at its allotted width. Each tensor
//! goes through [`Units::quantize`] and the footer through `file_metadata`, the pieces a distributed run
//! shares (`units`), so both write the same bytes.

use super::config::PipelineConfig;
use super::model_file::ModelWriter;
use super::output_path::check_output;
use super::plan::plan_widths;
use super::policy::Decision;
use super::report::Report;
use super::row_sample::{sampled_len, SAMPLE_ELEMENTS};
use super::units::{file_metadata, Units};
use super::writer::write_while;
use crate::checkpoint::{Checkpoint, TensorEntry};
use crate::diffusion::calibration::Calibration;
use crate::error::{QuantError, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Progress of a run, reported after each tensor.
#[derive(Debug, Clone)]
pub struct Progress {
    /// `planning` (the mixed-precision pass that measures every layer) or `quantizing`.
    pub stage: &'static str,
    /// The tensor just done.
    pub tensor: String,
    /// Tensors of this stage done so far.
    pub done: usize,
    /// Tensors this stage goes through: the checkpoint's, or its quantizable ones when planning.
    pub total: usize,
    /// Source bytes of this stage done so far.
    pub bytes_done: usize,
    /// Source bytes this stage goes through: the checkpoint's, or its quantizable tensors' when planning.
    pub bytes_total: usize,
    /// Fraction of the whole run done, in [0, 1], over both passes when there is a planning pass.
    pub fraction: f64,
}

/// Quantizes the checkpoint at `input` into the model file `output`, with the calibration statistics at
/// `config.calibration_path` if set. `on_progress` is called after each tensor; setting `cancel` stops the run
/// before the next tensor (nothing is written then).
pub fn quantize_model(
    input: &Path,
    output: &Path,
    config: &PipelineConfig,
    cancel: &AtomicBool,
    on_progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report> {
    // Before `validate`: `--smoothing linear` without calibration is refused for that, not for its window.
    config.check_calibration_settings(config.calibration_path.is_some())?;
    config.validate()?;
    let calibration = match &config.calibration_path {
        Some(path) => Some(Calibration::read(path)?),
        None => None,
    };
    quantize_model_with(
        input,
        output,
        config,
        calibration.as_ref(),
        cancel,
        on_progress,
    )
}

/// Source bytes the planning pass reads of a tensor (its row sample), the weight of its step in the progress.
fn plan_bytes_of(entry: &TensorEntry) -> usize {
    sampled_len(&entry.shape, SAMPLE_ELEMENTS) * entry.dtype.size()
}

/// [`quantize_model`] with calibration statistics given directly (`config.calibration_path` is not read).
pub fn quantize_model_with(
    input: &Path,
    output: &Path,
    config: &PipelineConfig,
    calibration: Option<&Calibration>,
    cancel: &AtomicBool,
    on_progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report> {
    config.validate()?;
    config.check_calibration_settings(calibration.is_some())?;
    let start = Instant::now();
    let checkpoint = Checkpoint::open(input)?;
    let side_files = [
        ("the calibration file", config.calibration_path.as_deref()),
        ("the imatrix", config.imatrix_path.as_deref()),
    ];
    check_run_output(output, &checkpoint, &side_files, &[])?;
    let config = &config.for_output(output)?;
    if config.format == Some(super::config::OutputFormat::Gguf) {
        return super::gguf_run::quantize_model_gguf(
            &checkpoint,
            output,
            config,
            calibration,
            cancel,
            on_progress,
            start,
        );
    }
    // The output file is opened before any work, so an unwritable target fails at once.
    let writer = ModelWriter::create(output, config.format, config.quant.scale_dtype())?;
    let mut units = Units::new(&checkpoint, config, calibration)?;
    let tensors = &units.tensors;
    let data_bytes = checkpoint.data_bytes();
    // The planning pass reads the quantizable tensors only; the run's fraction counts both passes.
    let budget = config.budget();
    let (plan_tensors, plan_bytes) = match budget {
        Some(_) => tensors
            .iter()
            .zip(&units.decisions)
            .filter(|(_, d)| **d == Decision::Quantize)
            .fold((0, 0), |(n, b), ((_, e), _)| (n + 1, b + plan_bytes_of(e))),
        None => (0, 0),
    };
    let run_bytes = (plan_bytes + data_bytes).max(1) as f64;
    let mut report = Report {
        activation_bits: config.time_aware.activation_bits,
        ..Report::default()
    };
    if let Some(budget) = budget {
        let done = std::sync::Mutex::new((0usize, 0usize));
        let plan = plan_widths(
            tensors,
            &units.decisions,
            &units.calibrated.channel_absmax,
            config,
            budget,
            cancel,
            &|entry| {
                if let Ok(mut d) = done.lock() {
                    d.0 += 1;
                    d.1 += plan_bytes_of(entry);
                    on_progress(Progress {
                        stage: "planning",
                        tensor: entry.name.clone(),
                        done: d.0,
                        total: plan_tensors,
                        bytes_done: d.1,
                        bytes_total: plan_bytes,
                        fraction: d.1 as f64 / run_bytes,
                    });
                }
            },
        )?;
        if let Some(plan) = plan {
            report.mixed_precision = Some(plan.summary);
            units.widths = Some(plan.widths);
        }
    }
    let units = &units;
    let writer = write_while(writer, |to_writer| {
        let mut bytes_done = 0;
        for (i, (_, entry)) in units.tensors.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(QuantError::Cancelled {
                    tensor: entry.name.clone(),
                });
            }
            // A failed send means the writer failed: write_while reports its error before this one.
            let layer = units.quantize(i, config, &mut |batch| {
                to_writer.send(batch).map_err(|_| QuantError::Cancelled {
                    tensor: entry.name.clone(),
                })
            })?;
            bytes_done += entry.end - entry.begin;
            report.push(layer);
            on_progress(Progress {
                stage: "quantizing",
                tensor: entry.name.clone(),
                done: i + 1,
                total: units.tensors.len(),
                bytes_done,
                bytes_total: data_bytes,
                fraction: (plan_bytes + bytes_done) as f64 / run_bytes,
            });
        }
        Ok(())
    })?;
    // A cancel that came after the last tensor (a progress callback raising on it) still leaves nothing behind.
    if cancel.load(Ordering::Relaxed) {
        return Err(QuantError::Cancelled {
            tensor: "(the file footer)".into(),
        });
    }
    writer.finish(file_metadata(input, config, &report))?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Refuses an `output` that is one of the run's inputs: the checkpoint path given (a file or an index), each
/// shard, the `side_files` given (calibration, imatrix), `more` (e.g. staged units); or a target that cannot become a
/// file.
pub(crate) fn check_run_output(
    output: &Path,
    checkpoint: &Checkpoint,
    side_files: &[(&str, Option<&Path>)],
    more: &[PathBuf],
) -> Result<()> {
    let mut inputs: Vec<(&str, &Path)> = vec![("the checkpoint", checkpoint.path.as_path())];
    inputs.extend(
        checkpoint
            .files
            .iter()
            .map(|f| ("the checkpoint shard", f.path())),
    );
    inputs.extend(side_files.iter().filter_map(|&(what, p)| Some((what, p?))));
    inputs.extend(more.iter().map(|p| ("the staged unit", p.as_path())));
    check_output(output, &inputs)
}
