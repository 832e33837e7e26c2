//! One checkpoint entry of a run to its row batch and report line: quantized (with the quality floor and
//! fallback, channel scaling and time-aware parameters from calibration), kept in 16-bit, or carried through raw.

use super::config::PipelineConfig;
use super::layer_quant::quantize_with_fallback;
use super::policy::{layer_quant, Decision};
use super::report::LayerReport;
use crate::arrow::output::{plain_batch, tensor_batch, RowEncoding, RowMeta};
use crate::arrow::time_groups::with_time_groups;
use crate::checkpoint::{float_values, Dtype, SafetensorsFile, TensorEntry};
use crate::codec::driver::QualitySums;
use crate::config::BitWidth;
use crate::diffusion::entropy::weight_entropy;
use crate::diffusion::time_groups::TimeAwareParams;
use crate::error::{QuantError, Result};
use crate::quantized::Quality;
use crate::tensor::TensorView;
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
            let rounded: Vec<f32> = halves.iter().map(|h| h.to_f32()).collect();
            let quality = QualitySums::of(&values, &rounded).quality();
            let bytes = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
            ("f16", 16, bytes, quality)
        }
    }
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
    let (encoding, bits, bytes, quality) = keep_bytes(file, entry);
    plain_row(
        entry,
        dtype,
        (encoding, bits),
        bytes,
        quality,
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

/// Turns one checkpoint entry into its row batch (time groups attached) and its report line.
pub(crate) fn entry_batch(
    file: &SafetensorsFile,
    entry: &TensorEntry,
    plan: &EntryPlan<'_>,
    config: &PipelineConfig,
) -> Result<(RecordBatch, LayerReport)> {
    let dtype = entry.dtype.name().to_lowercase();
    let mut layer = LayerReport::new(entry, &dtype);
    let batch = match plan.decision {
        Decision::Quantize => {
            let values = float_values(file, entry)
                .ok_or_else(|| QuantError::schema(&entry.name, "not a float tensor"))?;
            layer.entropy = Some(weight_entropy(&values.data()));
            let view = TensorView::new(&entry.name, &entry.shape, values.data())?;
            let (quantized, reason) = match plan.first {
                Some(bits) => {
                    let quant = layer_quant(config, &entry.name, entry.shape.len());
                    quantize_with_fallback(&view, config, &quant, bits, plan.channel_absmax)?
                }
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
                    if plan.first.is_none() {
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
        Decision::Raw => raw_row(file, entry, &dtype, &mut layer, config)?,
    };
    let batch = match plan.time {
        Some(t) => {
            layer.time_groups = Some(t.groups.clone());
            layer.time_spread = Some(t.spread);
            with_time_groups(batch, &[Some(&t.groups)])?
        }
        None => batch,
    };
    Ok((batch, layer))
}
