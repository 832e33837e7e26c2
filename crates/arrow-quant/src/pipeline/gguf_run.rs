//! A whole-model run to a GGUF file: every tensor of the checkpoint under its source name, as the ggml type the
//! preset, the overrides and the layer policy give it (`crate::gguf::type_choice`), quantized by our block codecs
//! with the quality floor and the fallback to wider types (`gguf_tensor`), streamed tensor by tensor into the
//! GGUF writer (a temporary file renamed into place when the run succeeds).

use super::config::PipelineConfig;
use super::config::DEFAULT_GGUF_TYPE;
use super::gguf_tensor::encode_tensor;
use super::policy::{self, decide, Decision};
use super::report::{LayerReport, Report};
use super::run::Progress;
use super::units::CalibratedLayers;
use crate::checkpoint::{float_values, Checkpoint, TensorEntry};
use crate::config::Method;
use crate::diffusion::calibration::Calibration;
use crate::error::{QuantError, Result};
use crate::gguf::llm_mix::LlmModel;
use crate::gguf::stored_shape::ORIG_SHAPE_KEY_PREFIX;
use crate::gguf::{
    meta_get, resolve_arch, Arch, GgufTensorSpec, GgufWriter, Imatrix, MetaArray, MetaValue,
    Preset, Rounding, RowFallback, RowWeights, TypeChoice, TypeOverrides, TypePlan, ALIGNMENT_KEY,
};
use crate::importance::ChannelWeights;
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

/// Metadata key of the model family.
const ARCHITECTURE_KEY: &str = "general.architecture";

/// False for the keys of a GGUF source that a GGUF output writes afresh rather than copies: the alignment (the
/// writer's), the stored shapes of flattened tensors (this run's choice) and our own `arrow_quant.*` keys.
fn copied_from_source(key: &str) -> bool {
    key != ALIGNMENT_KEY
        && !key.starts_with(ORIG_SHAPE_KEY_PREFIX)
        && !key.starts_with("arrow_quant.")
}

/// Sets `key` to `value`: in place when `metadata` has it, else at the end.
fn meta_set(metadata: &mut Vec<(String, MetaValue)>, key: &str, value: MetaValue) {
    match metadata.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => *v = value,
        None => metadata.push((key.to_string(), value)),
    }
}

/// Two optional report notes as one, `"a; b"`.
fn joined(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    }
}

/// What the run decided for one tensor before quantizing it.
struct Planned<'c> {
    file: &'c crate::checkpoint::SafetensorsFile,
    entry: &'c TensorEntry,
    /// The type to try first and the stored shape, or `None` for a tensor that is not written.
    choice: Option<TypeChoice>,
    /// Why it is kept in a float type or not written.
    kept: Option<String>,
    /// Why a wider type than wanted stores it (its rows do not fit the wanted type's blocks).
    fallback: Option<String>,
    /// Why the type differs from the preset's otherwise (an override, a mix's bump, a flattened layout, no
    /// imatrix entry).
    note: Option<String>,
    /// Importance per column of the source's 2-D view: the imatrix's entry, else from calibration (squared
    /// channel magnitudes).
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
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let forced = config
        .gguf_arch
        .as_deref()
        .map(str::parse::<Arch>)
        .transpose()?;
    let source_arch =
        checkpoint
            .gguf_metadata
            .as_deref()
            .and_then(|m| match meta_get(m, ARCHITECTURE_KEY) {
                Some(MetaValue::String(a)) => a.parse::<Arch>().ok(),
                _ => None,
            });
    let arch = resolve_arch(&names, forced.or(source_arch))?;
    let preset: Preset = config
        .gguf_type
        .as_deref()
        .unwrap_or(DEFAULT_GGUF_TYPE)
        .parse()?;
    let mut types = TypePlan::new(arch, preset);
    types.overrides = TypeOverrides::parse(&config.tensor_types)?;
    types.llm = match (&checkpoint.gguf_metadata, source_arch) {
        (Some(m), None) => LlmModel::detect(m, &names),
        _ => None,
    };
    types.pure = config.gguf_pure;
    types.leave_output = config.gguf_leave_output_tensor;
    // a language model from its GGUF falls back as llama-quantize does unless told otherwise
    let default_fallback = if types.llm.is_some() {
        RowFallback::Llama
    } else {
        RowFallback::Quality
    };
    types.row_fallback = config
        .gguf_fallback
        .as_deref()
        .map(str::parse)
        .transpose()?
        .unwrap_or(default_fallback);
    let imatrix = config
        .imatrix_path
        .as_deref()
        .map(Imatrix::open)
        .transpose()?;
    if let Some(llm) = &mut types.llm {
        llm.has_imatrix = imatrix.is_some();
    }
    let mut no_imatrix_entry = Vec::new();
    let mut planned = Vec::with_capacity(tensors.len());
    for (i, ((file, entry), decision)) in tensors.iter().zip(&decisions).enumerate() {
        let (choice, kept, mut note) = match decision {
            _ if arch.is_ignored(&entry.name) => (
                None,
                Some(format!(
                    "not written: {arch}'s loaders do not take this tensor"
                )),
                None,
            ),
            Decision::Raw => (
                None,
                Some(format!(
                    "not written: GGUF has no type for {} tensors",
                    entry.dtype.name()
                )),
                None,
            ),
            d => {
                let policy_keep = match d {
                    Decision::Keep(why) => Some(why.as_str()),
                    _ => None,
                };
                let c = types.choose(&entry.name, &entry.shape, entry.dtype, policy_keep)?;
                let (kept, note) = if c.ty.is_float() {
                    (
                        Some(c.reason.clone().unwrap_or_else(|| "kept".into())),
                        None,
                    )
                } else {
                    (None, c.reason.clone())
                };
                (Some(c), kept, note)
            }
        };
        let fell_back = choice.as_ref().is_some_and(|c| c.fell_back());
        let fallback = if fell_back { note.take() } else { None };
        let calibration_importance = || {
            calibrated.channel_absmax[i]
                .as_ref()
                .map(|a| a.iter().map(|v| v * v).collect())
        };
        let importance = match (&imatrix, &choice) {
            (Some(im), Some(c)) if !c.ty.is_float() => {
                match im.columns(&entry.name, &entry.shape)? {
                    Some(columns) => Some(columns),
                    None => {
                        no_imatrix_entry.push(entry.name.as_str());
                        note = joined(note, Some("no imatrix entry: searched without it".into()));
                        calibration_importance()
                    }
                }
            }
            _ => calibration_importance(),
        };
        planned.push(Planned {
            file,
            entry,
            choice,
            kept,
            fallback,
            note,
            importance,
        });
    }
    let specs: Vec<GgufTensorSpec> = planned
        .iter()
        .filter_map(|p| {
            p.choice.as_ref().map(|c| GgufTensorSpec {
                name: p.entry.name.clone(),
                shape: c.stored.shape.clone(),
                ty: c.ty,
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
    // A GGUF source's metadata is copied in its order (tokenizer and hyper-parameters included), but for what
    // this run writes afresh; the keys set below replace a copied value in place (readers look keys up by
    // name; llama-quantize moves them to the end).
    let mut metadata: Vec<(String, MetaValue)> = checkpoint
        .gguf_metadata
        .iter()
        .flatten()
        .filter(|(k, _)| copied_from_source(k))
        .cloned()
        .collect();
    if forced.is_some() || meta_get(&metadata, ARCHITECTURE_KEY).is_none() {
        meta_set(
            &mut metadata,
            ARCHITECTURE_KEY,
            MetaValue::String(arch.name().to_string()),
        );
    }
    meta_set(
        &mut metadata,
        "general.quantization_version",
        MetaValue::U32(2),
    );
    meta_set(
        &mut metadata,
        "general.file_type",
        MetaValue::U32(preset.file_type()),
    );
    for p in &planned {
        if let Some((key, dims)) = p
            .choice
            .as_ref()
            .map(|c| c.stored.metadata(&p.entry.name))
            .transpose()?
            .flatten()
        {
            metadata.push((key, MetaValue::Array(MetaArray::I32(dims))));
        }
    }
    metadata.push((
        GGUF_SOURCE_KEY.to_string(),
        MetaValue::String(input.display().to_string()),
    ));
    // the settings as run: the row fallback resolved (its default depends on the source)
    let mut settings = config.to_json();
    settings["gguf_fallback"] = types.row_fallback.name().into();
    metadata.push((
        GGUF_CONFIG_KEY.to_string(),
        MetaValue::String(settings.to_string()),
    ));
    metadata.push((
        GGUF_SOURCE_DTYPES_KEY.to_string(),
        MetaValue::Array(MetaArray::String(
            planned
                .iter()
                .filter(|p| p.choice.is_some())
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
    if let (Some(im), Some(first)) = (&imatrix, no_imatrix_entry.first()) {
        let quantized = planned
            .iter()
            .filter(|p| p.choice.as_ref().is_some_and(|c| !c.ty.is_float()))
            .count();
        report.warnings.push(format!(
            "the imatrix {} has no entry for {} of the {quantized} quantized tensors (the first: '{first}'); \
             they were searched without importance",
            im.path.display(),
            no_imatrix_entry.len()
        ));
    }
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
        if let Some(choice) = &p.choice {
            let values = float_values(p.file, p.entry).ok_or_else(|| {
                QuantError::schema(&p.entry.name, "has no floating-point values to write")
            })?;
            let view = TensorView::new(&p.entry.name, &choice.stored.shape, values.data())?;
            let view_cols = p.entry.shape.iter().skip(1).product::<usize>().max(1);
            let channel = ChannelWeights::new(&p.entry.name, p.importance.as_deref(), view_cols)?;
            let weights = RowWeights::columns(&channel, view_cols, 0);
            // calibration importance is searched with, as llama.cpp's imatrix path does
            let plain = config.quant.method == Method::Auto
                && p.importance.is_none()
                && policy::plain_rounding(config, &p.entry.name, p.entry.shape.len());
            let encoded = encode_tensor(
                &view,
                choice.ty,
                weights,
                plain,
                if p.kept.is_some() {
                    0.0
                } else {
                    config.quality_floor
                },
                config.fail_fast,
                &mut writer,
            )?;
            let bytes_out =
                crate::gguf::gguf_tensor_nbytes(&choice.stored.shape, encoded.ty).unwrap_or(0);
            p.file.release(p.entry);
            layer.set_plain(
                encoded.ty.name(),
                encoded.ty.code_bits(),
                bytes_out,
                encoded.quality,
            );
            layer.fallback = joined(p.fallback.clone(), encoded.fallback);
            // the layer policy's plain rounding of convolutions and conditioning layers, where it applied
            let rounded = (encoded.rounding != Rounding::Searched).then(|| {
                format!(
                    "rounded plainly ({}): a convolution or conditioning layer",
                    encoded.rounding.describe()
                )
            });
            layer.note = joined(p.note.clone(), rounded);
            cosines.push(encoded.quality.cosine as f32);
            rel_mses.push(encoded.quality.rel_mse as f32);
        } else {
            layer.set_plain(
                "raw",
                0,
                0,
                Quality {
                    cosine: 1.0,
                    rel_mse: 0.0,
                },
            );
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
