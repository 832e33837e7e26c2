//! A run as units of work: one unit per tensor of a checkpoint, quantized on its own to its row batch and report
//! line. A local run ([`super::run`]) goes through [`Units::quantize`] tensor by tensor and writes the batches
//! straight to the model file; a distributed run (many processes, e.g. Ray actors) plans the units from the
//! headers ([`plan_units`]), quantizes each one in any process into a staging file ([`quantize_unit`]) and
//! assembles the staged batches in tensor order with the same writer and the same footer metadata
//! ([`assemble_units`]), so both write the same bytes.
//!
//! A unit depends on its own tensor, the layer policy (which needs every tensor's name, read from the headers)
//! and the config, and under mixed precision on the plan (`super::unit_plan`: estimate units, then one
//! allocation on the driver). Calibration (per-layer statistics checked against the whole model) is refused by
//! the distributed entry points ([`check_distributable`]).

use super::atomic_file::AtomicFile;
use super::chunked::{in_parts, Emit};
use super::config::PipelineConfig;
use super::entry::{entry_batch, EntryPlan};
use super::model_file::{ModelWriter, CONFIG_KEY, REPORT_KEY, SOURCE_KEY};
use super::policy::{decide, Decision};
use super::report::{LayerReport, Report};
use super::unit_plan::plan_for;
use crate::checkpoint::{Checkpoint, SafetensorsFile, TensorEntry};
use crate::config::BitWidth;
use crate::diffusion::calibration::Calibration;
use crate::diffusion::time_groups::{time_aware_params, TimeAwareParams};
use crate::error::{QuantError, Result};
use arrow_array::RecordBatch;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Metadata key of a staging file: the unit's report line (JSON).
pub const LAYER_KEY: &str = "arrow_quant.layer";

/// The tensors of an opened checkpoint with what the run decided for each before quantizing.
pub(crate) struct Units<'c> {
    /// Every tensor with its file, in order.
    pub tensors: Vec<(&'c SafetensorsFile, &'c TensorEntry)>,
    /// The layer policy's decision per tensor.
    pub decisions: Vec<Decision>,
    /// What calibration gives each tensor.
    pub calibrated: CalibratedLayers,
    /// The allotted widths, after a mixed-precision planning pass (`None`: the configured width).
    pub widths: Option<Vec<Option<BitWidth>>>,
}

impl<'c> Units<'c> {
    /// Decides every tensor of `checkpoint` (the policy sees every name) and prepares the calibrated layers.
    pub fn new(
        checkpoint: &'c Checkpoint,
        config: &PipelineConfig,
        calibration: Option<&Calibration>,
    ) -> Result<Self> {
        let tensors: Vec<(&SafetensorsFile, &TensorEntry)> = checkpoint.tensors().collect();
        let entries: Vec<&TensorEntry> = tensors.iter().map(|(_, t)| *t).collect();
        let decisions = decide(config, &entries);
        let calibrated = CalibratedLayers::new(calibration, &entries, &decisions, config)?;
        Ok(Self {
            tensors,
            decisions,
            calibrated,
            widths: None,
        })
    }

    /// Quantizes tensor `i` to its row batches (one, or its chunk rows), handed to `emit` in order, and its
    /// report line, exactly as every run does.
    pub fn quantize(
        &self,
        i: usize,
        config: &PipelineConfig,
        emit: &mut Emit<'_>,
    ) -> Result<LayerReport> {
        let (file, entry) = self.tensors[i];
        if !in_parts(entry) {
            file.prefetch(entry); // a tensor in parts reads each part ahead in turn
        }
        let plan = EntryPlan {
            decision: &self.decisions[i],
            first: self
                .widths
                .as_ref()
                .map_or(Some(config.quant.bits), |w| w[i]),
            channel_absmax: self.calibrated.channel_absmax[i].as_deref(),
            time: self.calibrated.time[i].as_ref(),
        };
        let out = entry_batch(file, entry, &plan, config, emit);
        file.release(entry);
        out
    }
}

/// The footer metadata of a model file besides the format keys: source path (as given), config, report summary
/// (no timings).
pub(crate) fn file_metadata(
    input: &Path,
    config: &PipelineConfig,
    report: &Report,
) -> Vec<(String, String)> {
    vec![
        (SOURCE_KEY.to_string(), input.display().to_string()),
        (CONFIG_KEY.to_string(), config.to_json().to_string()),
        (REPORT_KEY.to_string(), report.summary_json().to_string()),
    ]
}

/// What calibration gives each tensor: channel magnitudes for scaling, time-aware activation parameters.
pub(crate) struct CalibratedLayers {
    pub channel_absmax: Vec<Option<Vec<f32>>>,
    pub time: Vec<Option<TimeAwareParams>>,
}

impl CalibratedLayers {
    pub(crate) fn new(
        calibration: Option<&Calibration>,
        entries: &[&TensorEntry],
        decisions: &[Decision],
        config: &PipelineConfig,
    ) -> Result<Self> {
        let n = entries.len();
        let Some(calibration) = calibration else {
            return Ok(Self {
                channel_absmax: vec![None; n],
                time: vec![None; n],
            });
        };
        calibration.check_against(
            entries
                .iter()
                .map(|e| (e.name.as_str(), e.shape.as_slice())),
        )?;
        let mut channel_absmax = vec![None; n];
        let mut time = vec![None; n];
        for (i, (entry, decision)) in entries.iter().zip(decisions).enumerate() {
            let Some(layer) = calibration.for_tensor(&entry.name) else {
                continue;
            };
            if config.enable_spatial && *decision == Decision::Quantize {
                channel_absmax[i] = layer.channel_absmax();
            }
            if config.enable_time_aware {
                time[i] = Some(time_aware_params(
                    &layer.layer,
                    &layer.ranges(),
                    calibration.num_timesteps,
                    &config.time_aware,
                )?);
            }
        }
        Ok(Self {
            channel_absmax,
            time,
        })
    }
}

/// One unit of a distributed run, planned from the checkpoint's headers.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitInfo {
    /// Position of the tensor in the checkpoint (and in the model file).
    pub index: usize,
    /// Tensor name.
    pub name: String,
    /// Source shape.
    pub shape: Vec<usize>,
    /// Source dtype (lower case).
    pub dtype: String,
    /// Source bytes.
    pub bytes: usize,
    /// `quantize`, `keep` or `raw`.
    pub decision: &'static str,
    /// The config plans mixed precision and this tensor is quantized: it needs an estimate unit
    /// (`estimate_unit`) before the plan, and the plan before its quantize unit.
    pub estimate: bool,
}

/// Refuses the settings a distributed run does not support: calibration (its statistics are checked against the
/// whole model).
pub fn check_distributable(config: &PipelineConfig) -> Result<()> {
    config.validate()?;
    if let Some(p) = &config.calibration_path {
        return Err(QuantError::config(
            "calibration_path",
            format!("{:?}", p.display().to_string()),
            "None in a distributed run (calibration is not supported there yet; run `quantize` on one node)",
        ));
    }
    Ok(())
}

/// The units of a distributed run of the checkpoint at `input` (headers only: no weight is read).
pub fn plan_units(input: &Path, config: &PipelineConfig) -> Result<Vec<UnitInfo>> {
    check_distributable(config)?;
    let checkpoint = Checkpoint::open(input)?;
    let units = Units::new(&checkpoint, config, None)?;
    let planned = config.budget().is_some();
    Ok(units
        .tensors
        .iter()
        .zip(&units.decisions)
        .enumerate()
        .map(|(index, ((_, entry), decision))| UnitInfo {
            index,
            name: entry.name.clone(),
            shape: entry.shape.clone(),
            dtype: entry.dtype.name().to_lowercase(),
            bytes: entry.end - entry.begin,
            decision: match decision {
                Decision::Quantize => "quantize",
                Decision::Keep(_) => "keep",
                Decision::Raw => "raw",
            },
            estimate: planned && *decision == Decision::Quantize,
        })
        .collect())
}

/// Quantizes tensor `index` of the checkpoint at `input` and writes its row batch, with its report line in the
/// metadata, to the Arrow IPC file `staged`, atomically (a retry of the same unit replaces it with the same
/// bytes). `plan`: the plan file of `plan_from_estimates`, required when the config plans mixed precision.
/// Returns the report line.
pub fn quantize_unit(
    input: &Path,
    config: &PipelineConfig,
    index: usize,
    staged: &Path,
    plan: Option<&Path>,
) -> Result<LayerReport> {
    check_distributable(config)?;
    let checkpoint = Checkpoint::open(input)?;
    let mut units = Units::new(&checkpoint, config, None)?;
    units.widths = plan_for(config, plan, units.tensors.len())?.map(|p| p.widths);
    if index >= units.tensors.len() {
        return Err(QuantError::format(
            input,
            format!(
                "unit {index} asked of a checkpoint of {} tensors",
                units.tensors.len()
            ),
        ));
    }
    let file = AtomicFile::create(staged)?;
    let bad = |e: arrow_schema::ArrowError| {
        QuantError::format(staged, format!("writing the staged unit failed: {e}"))
    };
    // Every row batch of a run has the result schema of its scale type.
    let schema = crate::arrow::schema::result_schema(config.quant.scale_dtype());
    let out = std::io::BufWriter::with_capacity(1 << 20, file.handle()?);
    let mut writer = arrow_ipc::writer::FileWriter::try_new(out, &schema).map_err(bad)?;
    // Each row (a tensor's, or one of its chunk rows) is written as it comes, so a unit needs one chunk of memory.
    let layer = units.quantize(index, config, &mut |batch| {
        writer.write(&batch).map_err(bad)
    })?;
    writer.write_metadata(LAYER_KEY, layer.to_json().to_string());
    writer.finish().map_err(bad)?;
    drop(writer);
    // Staged units are read back only through `read_staged`, which rejects a torn file (IPC footer and blocks
    // checked): the distributed driver then makes it again.
    file.commit_unsynced()?;
    Ok(layer)
}

/// Reads a staging file written by [`quantize_unit`]: hands its row batches (one, or a tensor's chunk rows) to
/// `write` in order, one at a time, and returns the report line.
fn read_staged(
    path: &Path,
    name: &str,
    mut write: impl FnMut(&RecordBatch) -> Result<()>,
) -> Result<LayerReport> {
    let file = std::fs::File::open(path).map_err(|e| QuantError::io(path, &e))?;
    let bad = |e: &dyn std::fmt::Display| {
        QuantError::format(path, format!("not a readable staged unit: {e}"))
    };
    let reader = crate::arrow::ipc_file::open_ipc_file(file).map_err(|e| bad(&e))?;
    let layer: serde_json::Value = reader
        .custom_metadata()
        .get(LAYER_KEY)
        .and_then(|t| serde_json::from_str(t).ok())
        .ok_or_else(|| bad(&format!("no '{LAYER_KEY}' metadata")))?;
    let layer = LayerReport::from_json(&layer, path)?;
    if layer.name != name {
        return Err(QuantError::format(
            path,
            format!(
                "staged unit holds '{}' where the checkpoint has '{name}'",
                layer.name
            ),
        ));
    }
    if reader.num_batches() == 0 {
        return Err(bad(&"no row batch"));
    }
    for batch in reader {
        let batch = batch.map_err(|e| bad(&e))?;
        if batch.num_rows() != 1 {
            return Err(bad(&format!("a batch of {} rows", batch.num_rows())));
        }
        write(&batch)?;
    }
    Ok(layer)
}

/// Writes the model file `output` of the checkpoint at `input` from its staged units (`staged[i]` holds tensor
/// `i`), with the same writer and footer as a local run: the file is byte-identical to
/// [`super::quantize_model`]'s with the same config and the same `input` path. The file appears only when every
/// unit has been written. `plan`: as for [`quantize_unit`]. The report's `seconds` is the assembly's.
pub fn assemble_units(
    input: &Path,
    config: &PipelineConfig,
    staged: &[PathBuf],
    output: &Path,
    plan: Option<&Path>,
) -> Result<Report> {
    check_distributable(config)?;
    let start = Instant::now();
    let checkpoint = Checkpoint::open(input)?;
    super::run::check_run_output(output, &checkpoint, &[], staged)?;
    let config = &config.for_output(output)?;
    let names: Vec<&str> = checkpoint.tensors().map(|(_, t)| t.name.as_str()).collect();
    if names.len() != staged.len() {
        return Err(QuantError::format(
            input,
            format!(
                "{} staged units for a checkpoint of {} tensors",
                staged.len(),
                names.len()
            ),
        ));
    }
    let mut report = Report {
        activation_bits: config.time_aware.activation_bits,
        mixed_precision: plan_for(config, plan, names.len())?.map(|p| p.summary),
        ..Report::default()
    };
    let mut writer = ModelWriter::create(output, config.format, config.quant.scale_dtype())?;
    for (path, name) in staged.iter().zip(&names) {
        let layer = read_staged(path, name, |batch| writer.write(batch))?;
        report.push(layer);
    }
    writer.finish(file_metadata(input, config, &report))?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}
