//! One checkpoint entry of a run to its row batch and report line: quantized (with the quality floor and
//! fallback, channel scaling and time-aware parameters from calibration), kept in 16-bit, or carried through raw.

use super::chunked::{
    entropy_in_parts, in_parts, keep_in_parts, quantize_in_parts, raw_in_parts, Emit,
};
use super::config::PipelineConfig;
use super::layer_quant::{quantize_with_fallback, Ladder};
use super::policy::{layer_quant, Decision};
use super::report::LayerReport;
use crate::arrow::output::{plain_batch, tensor_batch, RowEncoding, RowMeta};
use crate::arrow::time_groups::with_time_groups;
use crate::checkpoint::{
    float64_beyond_f32, float64_values, float_values, Dtype, SafetensorsFile, TensorEntry,
};
use crate::codec::driver::QualitySums;
use crate::config::BitWidth;
use crate::diffusion::entropy::weight_entropy;
use crate::diffusion::time_groups::TimeAwareParams;
use crate::error::{QuantError, Result};
use crate::quantized::Quality;
use crate::tensor::{SourceDtype, TensorView};
use arrow_array::RecordBatch;
use half::f16;

/// What a run decided for one entry before quantizing it.
pub(crate) struct EntryPlan<'a> {
    /// Quantize, keep or carry through.
    pub decision: &'a Decision,
    /// The first width to try: the allotted one with mixed precision (`None`: kept in 16-bit), else the
    /// configured one.
    pub first: Option<BitWidth>,
    /// Calibration magnitudes per input channel, for channel scaling.
    pub channel_absmax: Option<&'a [f32]>,
    /// Time-aware activation parameters from calibration.
    pub time: Option<&'a TimeAwareParams>,
}

/// f32 values of a tensor (for keeping in 16-bit and for validation); float64 rounded to float32.
pub(crate) fn values_f32(file: &SafetensorsFile, entry: &TensorEntry) -> Option<Vec<f32>> {
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

/// The cosine a tensor stored plainly (kept in 16-bit, or 32-bit) must reach, whatever the quality floor: what
/// [`super::tools::validate_model`] checks of such rows.
pub(crate) const PLAIN_FLOOR: f64 = 0.999;

/// The stored form of a kept tensor and its quality, with a note when it is wider than 16-bit.
struct Kept {
    encoding: &'static str,
    bits: u8,
    bytes: Vec<u8>,
    quality: Quality,
    note: Option<String>,
}

/// The error for the first non-finite element of a kept tensor (quantized tensors get it from the codecs).
fn non_finite(entry: &TensorEntry, values: &[f32], bytes: &[u8]) -> Option<QuantError> {
    let bad = |index: usize, value: String| QuantError::NonFinite {
        tensor: entry.name.clone(),
        index,
        value,
    };
    if entry.dtype == Dtype::F64 {
        return float64_values(bytes)
            .enumerate()
            .find(|(_, v)| !v.is_finite())
            .map(|(i, v)| bad(i, v.to_string()));
    }
    values
        .iter()
        .position(|v| !v.is_finite())
        .map(|i| bad(i, values[i].to_string()))
}

/// The form of a kept tensor: f16 and bf16 sources unchanged; f32 and f64 rounded to f16 when that keeps the
/// cosine at `floor` (and at least [`PLAIN_FLOOR`]) with nothing overflowing, else stored as f32, or for an f64
/// tensor that f32 cannot hold either, carried through raw. A NaN or infinity is an error naming the element.
fn keep_bytes(file: &SafetensorsFile, entry: &TensorEntry, floor: f64) -> Result<Kept> {
    let exact = Quality {
        cosine: 1.0,
        rel_mse: 0.0,
    };
    let source = file.bytes(entry);
    let values = values_f32(file, entry).unwrap_or_default();
    if let Some(e) = non_finite(entry, &values, source) {
        return Err(e);
    }
    let plain = |encoding, bits, bytes, quality, note| Kept {
        encoding,
        bits,
        bytes,
        quality,
        note,
    };
    match entry.dtype {
        Dtype::F16 => return Ok(plain("f16", 16, source.to_vec(), exact, None)),
        Dtype::BF16 => return Ok(plain("bf16", 16, source.to_vec(), exact, None)),
        _ => {}
    }
    let floor = floor.max(PLAIN_FLOOR);
    let halves: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
    let rounded: Vec<f32> = halves.iter().map(|h| h.to_f32()).collect();
    let overflow = halves.iter().any(|h| h.is_infinite());
    let half_quality = quality_against_source(entry, &values, &rounded, source);
    if !overflow && half_quality.cosine >= floor {
        let bytes = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
        return Ok(plain("f16", 16, bytes, half_quality, None));
    }
    let why = if overflow {
        "float16 would overflow".to_string()
    } else {
        format!(
            "float16 would reach cosine {:.4} only (< {floor:.4})",
            half_quality.cosine
        )
    };
    // A float32 source stored as float32 is exact; a float64 one is measured against its own values.
    let single_quality = match entry.dtype {
        Dtype::F64 => quality_against_source(entry, &values, &values, source),
        _ => exact,
    };
    if entry.dtype == Dtype::F64
        && (float64_beyond_f32(source).is_some() || single_quality.cosine < floor)
    {
        let note = format!("{why}, and float32 too: carried through as f64");
        return Ok(plain("raw", 64, source.to_vec(), exact, Some(note)));
    }
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let note = format!("{why}: stored as f32");
    Ok(plain("f32", 32, bytes, single_quality, Some(note)))
}

/// The quality of `stored` against the source: its f32 `values`, or for an f64 tensor its f64 elements.
fn quality_against_source(
    entry: &TensorEntry,
    values: &[f32],
    stored: &[f32],
    source: &[u8],
) -> Quality {
    if entry.dtype != Dtype::F64 {
        return QualitySums::of(values, stored).quality();
    }
    let mut s = QualitySums::default();
    for (a, &b) in float64_values(source).zip(stored) {
        let b = f64::from(b);
        s.xx += a * a;
        s.ee += (a - b) * (a - b);
        s.xy += a * b;
        s.yy += b * b;
    }
    s.quality()
}

/// The row of a tensor stored plainly (`encoding` of `bits` per element), with its report line.
fn plain_row(
    entry: &TensorEntry,
    dtype: &str,
    (encoding, bits): (&'static str, u8),
    bytes: Vec<u8>,
    quality: Quality,
    layer: &mut LayerReport,
    config: &PipelineConfig,
) -> Result<RecordBatch> {
    layer.set_plain(encoding, bits, bytes.len(), quality);
    let meta = RowMeta {
        name: &entry.name,
        shape: &entry.shape,
        dtype,
        encoding: RowEncoding::Plain { encoding, bits },
        quality,
    };
    plain_batch(&meta, bytes, config.quant.scale_dtype())
}

/// The row of a tensor kept in 16-bit (or f32), with its report line.
fn keep_row(
    file: &SafetensorsFile,
    entry: &TensorEntry,
    dtype: &str,
    layer: &mut LayerReport,
    config: &PipelineConfig,
) -> Result<RecordBatch> {
    let kept = keep_bytes(file, entry, config.quality_floor)?;
    if let Some(note) = kept.note {
        layer.kept = Some(match layer.kept.take() {
            Some(reason) => format!("{reason}; {note}"),
            None => note,
        });
    }
    plain_row(
        entry,
        dtype,
        (kept.encoding, kept.bits),
        kept.bytes,
        kept.quality,
        layer,
        config,
    )
}

/// The row of a non-float tensor carried through unchanged.
fn raw_row(
    file: &SafetensorsFile,
    entry: &TensorEntry,
    dtype: &str,
    layer: &mut LayerReport,
    config: &PipelineConfig,
) -> Result<RecordBatch> {
    layer.kept = Some(format!(
        "{} is carried through unchanged",
        entry.dtype.name()
    ));
    let bits = (entry.dtype.size() * 8) as u8;
    let exact = Quality {
        cosine: 1.0,
        rel_mse: 0.0,
    };
    let bytes = file.bytes(entry).to_vec();
    plain_row(entry, dtype, ("raw", bits), bytes, exact, layer, config)
}

/// Turns one checkpoint entry into its row batches (time groups attached), handed to `emit` in order, and its
/// report line: one row, or for a tensor larger than the part size its chunk rows (`chunked`).
pub(crate) fn entry_batch(
    file: &SafetensorsFile,
    entry: &TensorEntry,
    plan: &EntryPlan<'_>,
    config: &PipelineConfig,
    emit: &mut Emit<'_>,
) -> Result<LayerReport> {
    let dtype = entry.dtype.name().to_lowercase();
    let mut layer = LayerReport::new(entry, &dtype);
    let mut out = |batch: RecordBatch| match plan.time {
        Some(t) => emit(with_time_groups(batch, &[Some(&t.groups)])?),
        None => emit(batch),
    };
    let parts = in_parts(entry);
    match plan.decision {
        Decision::Quantize => {
            let values = float_values(file, entry)
                .ok_or_else(|| QuantError::schema(&entry.name, "not a float tensor"))?;
            layer.entropy = Some(if parts {
                entropy_in_parts(file, entry, &values.data())
            } else {
                weight_entropy(&values.data())
            });
            let view = TensorView::new(&entry.name, &entry.shape, values.data())?;
            if parts && plan.channel_absmax.is_none() {
                let written = match plan.first {
                    Some(bits) => {
                        let quant = layer_quant(config, &entry.name, entry.shape.len());
                        quantize_in_parts(
                            file, entry, &view, config, &quant, bits, &mut layer, &mut out,
                        )?
                    }
                    None => false,
                };
                if !written {
                    if plan.first.is_none() && layer.kept.is_none() {
                        layer.kept = Some("mixed precision: 16-bit".into());
                    }
                    keep_in_parts(file, entry, config.quality_floor, &mut layer, &mut out)?;
                }
            } else {
                out(quantize_whole(
                    file, entry, plan, config, &view, &dtype, &mut layer,
                )?)?;
            }
        }
        Decision::Keep(reason) => {
            layer.kept = Some(reason.clone());
            if parts {
                keep_in_parts(file, entry, config.quality_floor, &mut layer, &mut out)?;
            } else {
                out(keep_row(file, entry, &dtype, &mut layer, config)?)?;
            }
        }
        Decision::Raw if parts => raw_in_parts(file, entry, &mut layer, &mut out)?,
        Decision::Raw => out(raw_row(file, entry, &dtype, &mut layer, config)?)?,
    }
    if let Some(t) = plan.time {
        layer.time_groups = Some(t.groups.clone());
        layer.time_spread = Some(t.spread);
    }
    Ok(layer)
}

/// The one row of a tensor quantized whole (with the quality floor and fallback, channel scaling), or kept.
fn quantize_whole(
    file: &SafetensorsFile,
    entry: &TensorEntry,
    plan: &EntryPlan<'_>,
    config: &PipelineConfig,
    view: &TensorView<'_>,
    dtype: &str,
    layer: &mut LayerReport,
) -> Result<RecordBatch> {
    let ladder = match plan.first {
        Some(_) if entry.dtype == Dtype::F64 && float64_beyond_f32(file.bytes(entry)).is_some() => {
            Ladder {
                kept: Some("float64 values beyond the float32 range".into()),
                ..Ladder::default()
            }
        }
        Some(bits) => {
            let quant = layer_quant(config, &entry.name, entry.shape.len());
            quantize_with_fallback(view, config, &quant, bits, plan.channel_absmax)?
        }
        None => Ladder::default(),
    };
    layer.fallback = ladder.fallback;
    layer.kept = ladder.kept;
    match ladder.layer {
        Some(mut q) => {
            if entry.dtype == Dtype::F64 {
                q.tensor.source_dtype = SourceDtype::F64;
            }
            layer.set_quantized(&q.tensor);
            layer.channel_alpha = q.alpha;
            layer.weighted_error = q.weighted_error;
            tensor_batch(q.tensor)
        }
        None => {
            if plan.first.is_none() && layer.kept.is_none() {
                layer.kept = Some("mixed precision: 16-bit".into());
            }
            keep_row(file, entry, dtype, layer, config)
        }
    }
}
