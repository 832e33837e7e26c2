//! A whole-model run to a GGUF file: every tensor of the checkpoint under its source name, as the ggml type the
//! preset, the overrides and the layer policy give it (`crate::gguf::type_choice`), quantized by our block codecs
//! with the quality floor and the fallback to wider types (`gguf_tensor`), streamed tensor by tensor into the
//! GGUF writer (a temporary file renamed into place when the run succeeds).

use super::config::PipelineConfig;
use super::gguf_tensor::encode_tensor;
use super::policy::{decide, Decision};
use super::report::{LayerReport, Report};
use super::run::Progress;
use super::units::CalibratedLayers;
use crate::checkpoint::{float_values, Checkpoint, TensorEntry};
use crate::diffusion::calibration::Calibration;
use crate::error::{QuantError, Result};
use crate::gguf::{
    GgmlType, GgufTensorSpec, GgufWriter, MetaArray, MetaValue,
};
use crate::quantized::Quality;
use crate::tensor::TensorView;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Metadata key of the source checkpoint's path.
pub const GGUF_SOURCE_KEY: &str = "arrow_quant.source";
/// Metadata key of the run's settings (JSON).
pub const GGUF_CONFIG_KEY: &str = "arrow_quant.config";
/// Metadata key of the cosine similarity of every tensor to its source (f32 array, tensor-info order).
pub const GGUF_COSINE_KEY: &str = "arrow_quant.cosine";
/// Metadata key of the relative MSE of every tensor (f32 array, tensor-info order).
pub const GGUF_REL_MSE_KEY: &str = "arrow_quant.rel_mse";
/// Metadata key of the source dtype of every tensor (`f32`, `f16`, `bf16`, `f64`; string array, tensor-info
/// order): what `export` writes by default.
pub const GGUF_SOURCE_DTYPES_KEY: &str = "arrow_quant.source_dtypes";

/// What the run decided for one tensor before quantizing it.
struct Planned<'c> {
    file: &'c crate::checkpoint::SafetensorsFile,
    entry: &'c TensorEntry,
    /// The type to try first, or `None` for a tensor that is not written.
    ty: Option<GgmlType>,
    /// Why it is kept in a float type or not written.
    kept: Option<String>,
    /// Why the type differs from the preset's (an override, a fallback for its row length).
    note: Option<String>,
    /// Per-element-of-a-row importance from calibration.
    importance: Option<Vec<f32>>,
}

/// Quantizes the checkpoint at `input` into the GGUF file `output` (see [`super::quantize_model`]).
/// The checkpoint is open and the output checked (`run::quantize_model_with`); `start` is when the run began.
pub(crate) fn quantize_model_gguf(
    checkpoint: &Checkpoint,
    output: &Path,
    config: &PipelineConfig,
    calibration: Option<&Calibration>,
    cancel: &AtomicBool,
    on_progress: &(dyn Fn(Progress) + Sync),
    start: Instant,
) -> Result<Report> {
    let input = checkpoint.path.as_path();
    let tensors: Vec<_> = checkpoint.tensors().collect();
    let entries: Vec<&TensorEntry> = tensors.iter().map(|(_, e)| *e).collect();
    let decisions = decide(config, &entries);
    let calibrated = CalibratedLayers::new(calibration, &entries, &decisions, config)?;
    let choice = crate::gguf::TypeChooser::new(config, &entries)?;
    let mut planned = Vec::with_capacity(tensors.len());
    for (i, ((file, entry), decision)) in tensors.iter().zip(&decisions).enumerate() {
        let importance = calibrated.channel_absmax[i]
            .as_ref()
            .map(|a| a.iter().map(|v| v * v).collect());
        let (ty, kept, note) = match decision {
            Decision::Raw => (
                None,
                Some(format!(
                    "not written: GGUF has no type for {} tensors",
                    entry.dtype.name()
                )),
                None,
            ),
            d => {
                let c = choice.choose(entry, d)?;
                (Some(c.ty), c.kept, c.note)
            }
        };
        planned.push(Planned {
            file,
            entry,
            ty,
            kept,
            note,
            importance,
        });
    }
    let specs: Vec<GgufTensorSpec> = planned
        .iter()
        .filter_map(|p| {
            p.ty.map(|ty| GgufTensorSpec {
                name: p.entry.name.clone(),
                shape: choice.stored_shape(p.entry),
                ty,
            })
        })
        .collect();
    let n_written = specs.len();
    let quality_arrays = |cos: Vec<f32>, mse: Vec<f32>| {
        vec![
            (
                GGUF_COSINE_KEY.to_string(),
                MetaValue::Array(MetaArray::F32(cos)),
            ),
            (
                GGUF_REL_MSE_KEY.to_string(),
                MetaValue::Array(MetaArray::F32(mse)),
            ),
        ]
    };
    let mut metadata = choice.metadata();
    metadata.push((
        GGUF_SOURCE_KEY.to_string(),
        MetaValue::String(input.display().to_string()),
    ));
    metadata.push((
        GGUF_CONFIG_KEY.to_string(),
        MetaValue::String(config.to_json().to_string()),
    ));
    metadata.push((
        GGUF_SOURCE_DTYPES_KEY.to_string(),
        MetaValue::Array(MetaArray::String(
            planned
                .iter()
                .filter(|p| p.ty.is_some())
                .map(|p| p.entry.dtype.name().to_lowercase())
                .collect(),
        )),
    ));
    let mut writer = GgufWriter::create(
        output,
        metadata,
        quality_arrays(vec![0.0; n_written], vec![0.0; n_written]),
        specs,
    )?;
    let data_bytes = checkpoint.data_bytes().max(1);
    let mut report = Report::default();
    let (mut cosines, mut rel_mses) = (Vec::new(), Vec::new());
    let mut bytes_done = 0;
    for (i, p) in planned.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(QuantError::Cancelled {
                tensor: p.entry.name.clone(),
            });
        }
        let mut layer = LayerReport::new(p.entry, &p.entry.dtype.name().to_lowercase());
        layer.kept = p.kept.clone();
        if let Some(first) = p.ty {
            let values = float_values(p.file, p.entry).ok_or_else(|| {
                QuantError::schema(&p.entry.name, "has no floating-point values to write")
            })?;
            let shape = p.entry.shape.clone();
            let view = TensorView::new(&p.entry.name, &shape, values.data())?;
            let mut bytes_out = 0usize;
            let row_importance = p
                .importance
                .as_deref()
                .map(|imp| row_weights(imp, &p.entry.shape));
            let encoded = encode_tensor(
                &view,
                first,
                row_importance.as_deref(),
                if p.kept.is_some() { 0.0 } else { config.quality_floor },
                config.fail_fast,
                &mut |ty| writer.begin_tensor(ty),
                &mut |bytes| {
                    bytes_out += bytes.len();
                    writer.write_tensor_data(bytes)
                },
            )?;
            p.file.release(p.entry);
            layer.set_plain(
                encoded.ty.name(),
                encoded.ty.code_bits(),
                bytes_out,
                encoded.quality,
            );
            layer.fallback = match (&p.note, encoded.fallback) {
                (None, f) => f,
                (Some(n), None) => Some(n.clone()),
                (Some(n), Some(f)) => Some(format!("{n}; {f}")),
            };
            cosines.push(encoded.quality.cosine as f32);
            rel_mses.push(encoded.quality.rel_mse as f32);
        } else {
            layer.set_plain("raw", 0, 0, Quality { cosine: 1.0, rel_mse: 0.0 });
        }
        bytes_done += p.entry.end - p.entry.begin;
        report.push(layer);
        on_progress(Progress {
            stage: "quantizing",
            tensor: p.entry.name.clone(),
            done: i + 1,
            total: planned.len(),
            bytes_done,
            bytes_total: data_bytes,
            fraction: bytes_done as f64 / data_bytes as f64,
        });
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(QuantError::Cancelled {
            tensor: "(the file footer)".into(),
        });
    }
    writer.finish(quality_arrays(cosines, rel_mses))?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// The importance of each element of a ggml row (the last axis) from the per-column importance of the 2-D view
/// (all axes but the first): the same for a 2-D tensor; for more axes, averaged over the folded ones.
fn row_weights(importance: &[f32], shape: &[usize]) -> Vec<f32> {
    let cols = shape.last().copied().unwrap_or(1).max(1);
    if importance.len() == cols {
        return importance.to_vec();
    }
    let mut w = vec![0f32; cols];
    let groups = (importance.len() / cols).max(1);
    for chunk in importance.chunks(cols) {
        for (a, b) in w.iter_mut().zip(chunk) {
            *a += b / groups as f32;
        }
    }
    w
}
