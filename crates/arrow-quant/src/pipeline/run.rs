//! The main job: a checkpoint in, a quantized model file out, tensor by tensor (memory bounded by the largest
//! tensor), with the quality floor and per-layer fallback (2 -> 4 -> 8 -> kept in 16-bit), progress, and a report.
//! With calibration statistics: time-aware activation parameters and channel scaling per calibrated layer; with
//! a bits-per-weight target: a planning pass first (`plan`), then each layer at its allotted width.

use super::config::PipelineConfig;
use super::layer_quant::quantize_with_fallback;
use super::model_file::{ModelWriter, CONFIG_KEY, REPORT_KEY, SOURCE_KEY};
use super::plan::plan_widths;
use super::policy::{decide, Decision};
use super::report::{LayerReport, Report};
use crate::arrow::output::{plain_batch, tensor_batch, RowEncoding, RowMeta};
use crate::arrow::time_groups::with_time_groups;
use crate::checkpoint::{float_values, Checkpoint, Dtype, SafetensorsFile, TensorEntry};
use crate::diffusion::calibration::Calibration;
use crate::diffusion::entropy::weight_entropy;
use crate::diffusion::time_groups::{time_aware_params, TimeAwareParams};
use crate::error::{QuantError, Result};
use crate::quantized::Quality;
use crate::tensor::TensorView;
use arrow_array::RecordBatch;
use half::f16;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Progress of a run, reported after each tensor.
#[derive(Debug, Clone)]
pub struct Progress {
    /// `planning` (the mixed-precision pass that measures every layer) or `quantizing`.
    pub stage: &'static str,
    /// The tensor just done.
    pub tensor: String,
    /// Tensors done so far.
    pub done: usize,
    /// Tensors in the checkpoint.
    pub total: usize,
    /// Source bytes done so far, over both passes when there is a planning pass.
    pub bytes_done: usize,
    /// Source bytes to go through: the checkpoint's, twice with a planning pass.
    pub bytes_total: usize,
}

/// f32 values of a tensor (for keeping in 16-bit and for validation).
pub(crate) fn values_f32(file: &SafetensorsFile, entry: &TensorEntry) -> Option<Vec<f32>> {
    if entry.dtype == Dtype::F64 {
        let b = file.bytes(entry);
        return Some(
            b.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
        );
    }
    let values = float_values(file, entry)?;
    let mut out = vec![0f32; entry.len()];
    match values.data() {
        crate::tensor::TensorData::F32(x) => out.copy_from_slice(x),
        crate::tensor::TensorData::F16(x) => {
            half::slice::HalfFloatSliceExt::convert_to_f32_slice(x, &mut out)
        }
        crate::tensor::TensorData::BF16(x) => {
            half::slice::HalfFloatSliceExt::convert_to_f32_slice(x, &mut out)
        }
    }
    Some(out)
}

/// The 16-bit form of a kept tensor: f16 and bf16 sources unchanged, f32 / f64 rounded to f16 (kept in f32 if
/// that would overflow), with the quality of that rounding.
fn keep_bytes(file: &SafetensorsFile, entry: &TensorEntry) -> (&'static str, u8, Vec<u8>, Quality) {
    let exact = Quality {
        cosine: 1.0,
        rel_mse: 0.0,
    };
    match entry.dtype {
        Dtype::F16 => ("f16", 16, file.bytes(entry).to_vec(), exact),
        Dtype::BF16 => ("bf16", 16, file.bytes(entry).to_vec(), exact),
        _ => {
            let values = values_f32(file, entry).unwrap_or_default();
            let halves: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
            if halves
                .iter()
                .zip(&values)
                .any(|(h, v)| h.is_infinite() && v.is_finite())
            {
                let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                return ("f32", 32, bytes, exact);
            }
            let (mut xx, mut ee, mut xy, mut yy) = (0f64, 0f64, 0f64, 0f64);
            for (h, &v) in halves.iter().zip(&values) {
                let (x, y) = (f64::from(v), f64::from(h.to_f32()));
                xx += x * x;
                ee += (x - y) * (x - y);
                xy += x * y;
                yy += y * y;
            }
            let bytes = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
            ("f16", 16, bytes, Quality::from_sums(xx, ee, xy, yy))
        }
    }
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
    let start = Instant::now();
    let checkpoint = Checkpoint::open(input)?;
    let tensors: Vec<(&SafetensorsFile, &TensorEntry)> = checkpoint.tensors().collect();
    let entries: Vec<&TensorEntry> = tensors.iter().map(|(_, t)| *t).collect();
    let decisions = decide(config, &entries);
    let calibrated = CalibratedLayers::new(calibration, &entries, &decisions, config)?;
    let data_bytes = checkpoint.data_bytes();
    let planning = config.target_bits_per_weight.is_some();
    let bytes_total = data_bytes * (1 + usize::from(planning));
    let mut report = Report {
        activation_bits: config.time_aware.activation_bits,
        ..Report::default()
    };
    let widths = match config.target_bits_per_weight {
        Some(target) => {
            let done = std::sync::Mutex::new((0usize, 0usize));
            let (widths, summary) = plan_widths(
                &tensors,
                &decisions,
                &calibrated.channel_absmax,
                config,
                target,
                cancel,
                &|entry| {
                    if let Ok(mut d) = done.lock() {
                        d.0 += 1;
                        d.1 += entry.end - entry.begin;
                        on_progress(Progress {
                            stage: "planning",
                            tensor: entry.name.clone(),
                            done: d.0,
                            total: tensors.len(),
                            bytes_done: d.1,
                            bytes_total,
                        });
                    }
                },
            )?;
            report.mixed_precision = Some(summary);
            Some(widths)
        }
        None => None,
    };
    let mut writer = ModelWriter::create(output, config.format, config.quant.scale_dtype)?;
    // The next tensor is quantized while the writer thread encodes and writes the previous one; the bounded
    // channel keeps at most two finished batches in memory.
    let (to_writer, batches) = std::sync::mpsc::sync_channel::<RecordBatch>(1);
    let produced = std::thread::scope(|scope| {
        let writing = scope.spawn(move || -> Result<ModelWriter> {
            for batch in batches {
                writer.write(&batch)?;
            }
            Ok(writer)
        });
        let produced = (|| -> Result<()> {
            let mut bytes_done = bytes_total - data_bytes;
            for (i, ((file, entry), decision)) in tensors.iter().zip(&decisions).enumerate() {
                if cancel.load(Ordering::Relaxed) {
                    return Err(QuantError::Cancelled {
                        tensor: entry.name.clone(),
                    });
                }
                file.prefetch(entry);
                let dtype = entry.dtype.name().to_lowercase();
                let mut layer = LayerReport::new(entry, &dtype);
                let batch = match decision {
                    Decision::Quantize => {
                        let values = float_values(file, entry)
                            .ok_or_else(|| QuantError::schema(&entry.name, "not a float tensor"))?;
                        layer.entropy = Some(weight_entropy(&values.data()));
                        let view = TensorView::new(&entry.name, &entry.shape, values.data())?;
                        let absmax = calibrated.channel_absmax[i].as_deref();
                        // The first width: the allotted one with mixed precision (None: 16-bit), else the
                        // configured one.
                        let first = widths.as_ref().map_or(Some(config.quant.bits), |w| w[i]);
                        let (quantized, reason) = match first {
                            Some(bits) => quantize_with_fallback(&view, config, bits, absmax)?,
                            None => (None, None),
                        };
                        layer.fallback = reason;
                        match quantized {
                            Some(q) => {
                                layer.set_quantized(&q.tensor);
                                layer.channel_alpha = q.alpha;
                                layer.weighted_error = q.weighted_error;
                                tensor_batch(q.tensor)?
                            }
                            None => {
                                if first.is_none() {
                                    layer.kept = Some("mixed precision: 16-bit".into());
                                }
                                keep_row(file, entry, &dtype, &mut layer, config)?
                            }
                        }
                    }
                    Decision::Keep(reason) => {
                        layer.kept = Some(reason.clone());
                        keep_row(file, entry, &dtype, &mut layer, config)?
                    }
                    Decision::Raw => {
                        layer.kept = Some(format!(
                            "{} is carried through unchanged",
                            entry.dtype.name()
                        ));
                        let bits = (entry.dtype.size() * 8) as u8;
                        let meta = RowMeta {
                            name: &entry.name,
                            shape: &entry.shape,
                            dtype: &dtype,
                            encoding: RowEncoding::Plain {
                                encoding: "raw",
                                bits,
                            },
                            quality: Quality {
                                cosine: 1.0,
                                rel_mse: 0.0,
                            },
                        };
                        layer.set_plain("raw", bits, entry.end - entry.begin, meta.quality);
                        plain_batch(&meta, file.bytes(entry).to_vec(), config.quant.scale_dtype)?
                    }
                };
                file.release(entry);
                let batch = match &calibrated.time[i] {
                    Some(t) => {
                        layer.time_groups = Some(t.groups.clone());
                        layer.time_spread = Some(t.spread);
                        with_time_groups(batch, &[Some(&t.groups)])?
                    }
                    None => batch,
                };
                if to_writer.send(batch).is_err() {
                    break; // the writer failed: its error is reported below
                }
                bytes_done += entry.end - entry.begin;
                report.push(layer);
                on_progress(Progress {
                    stage: "quantizing",
                    tensor: entry.name.clone(),
                    done: i + 1,
                    total: tensors.len(),
                    bytes_done,
                    bytes_total,
                });
            }
            Ok(())
        })();
        drop(to_writer);
        let written = writing
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        // A writer error comes first: it is why the producer stopped.
        let writer = written?;
        produced.map(|()| writer)
    });
    let writer = produced?;
    report.seconds = start.elapsed().as_secs_f64();
    let metadata = vec![
        (SOURCE_KEY.to_string(), input.display().to_string()),
        (CONFIG_KEY.to_string(), config.to_json().to_string()),
        (REPORT_KEY.to_string(), report.summary_json().to_string()),
    ];
    writer.finish(metadata)?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// What calibration gives each tensor: channel magnitudes for scaling, time-aware activation parameters.
struct CalibratedLayers {
    channel_absmax: Vec<Option<Vec<f32>>>,
    time: Vec<Option<TimeAwareParams>>,
}

impl CalibratedLayers {
    fn new(
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

fn keep_row(
    file: &SafetensorsFile,
    entry: &TensorEntry,
    dtype: &str,
    layer: &mut LayerReport,
    config: &PipelineConfig,
) -> Result<arrow_array::RecordBatch> {
    let (encoding, bits, bytes, quality) = keep_bytes(file, entry);
    layer.set_plain(encoding, bits, bytes.len(), quality);
    let meta = RowMeta {
        name: &entry.name,
        shape: &entry.shape,
        dtype,
        encoding: RowEncoding::Plain { encoding, bits },
        quality,
    };
    plain_batch(&meta, bytes, config.quant.scale_dtype)
}
