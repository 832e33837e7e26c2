//! Mixed-precision planning: a first pass over the checkpoint measures every quantizable layer at 2, 4 and 8
//! bits (options whose cosine misses the quality floor are dropped; keeping the layer in 16-bit is always an
//! option; layers with calibration magnitudes are measured with importance weights, see `layer_quant::estimate`), then `diffusion::allocation` picks one width per layer to minimise the total error under the
//! bits-per-weight budget. The budget covers the whole model: tensors kept in 16-bit or carried through count at
//! their stored size.

use super::config::PipelineConfig;
use super::layer_quant::estimate;
use super::policy::{layer_quant, Decision};
use crate::checkpoint::{float_values, SafetensorsFile, TensorEntry};
use crate::config::{BitWidth, QuantConfig};
use crate::diffusion::allocation::{allocate, smallest_bits, LayerOption};
use crate::error::{QuantError, Result};
use crate::tensor::TensorView;
use std::sync::atomic::{AtomicBool, Ordering};

/// The widths the allocation chooses from.
const WIDTHS: [BitWidth; 3] = [BitWidth::Int2, BitWidth::Int4, BitWidth::Int8];

/// A width to quantize at (`None`: keep in 16-bit) with its size and error.
type WidthOption = (Option<BitWidth>, LayerOption);

/// The outcome of planning.
#[derive(Debug, Clone, PartialEq)]
pub struct MixedPrecision {
    /// The budget asked for, in stored bits per weight over the whole model.
    pub target_bits_per_weight: f64,
    /// The size the allocation plans, in bits per weight (the report's achieved figure is measured on the
    /// written file).
    pub planned_bits_per_weight: f64,
    /// The planned total error: sum over quantizable layers of relative error x parameters (activation-weighted
    /// where calibration magnitudes exist).
    pub total_error: f64,
    /// Quantizable layers given 2, 4, 8 bits and kept in 16-bit.
    pub layers_per_width: [usize; 4],
}

impl MixedPrecision {
    /// As JSON (report and file metadata).
    pub fn to_json(&self) -> serde_json::Value {
        let [w2, w4, w8, w16] = self.layers_per_width;
        serde_json::json!({
            "target_bits_per_weight": self.target_bits_per_weight,
            "planned_bits_per_weight": self.planned_bits_per_weight,
            "total_error": self.total_error,
            "layers_per_width": {"2": w2, "4": w4, "8": w8, "16": w16},
        })
    }
}

/// Stored bits of a tensor that is not quantized: 16 per float element (kept), its own bytes when raw.
fn fixed_bits(entry: &TensorEntry, decision: &Decision) -> f64 {
    match decision {
        Decision::Raw => ((entry.end - entry.begin) * 8) as f64,
        _ => (entry.len() * 16) as f64,
    }
}

/// Measures each quantizable layer's options and allocates the widths: one entry per tensor, `Some(width)` to
/// quantize at, `None` to keep in 16-bit (entries of tensors that are not quantizable are `None`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan_widths(
    tensors: &[(&SafetensorsFile, &TensorEntry)],
    decisions: &[Decision],
    channel_absmax: &[Option<Vec<f32>>],
    config: &PipelineConfig,
    target: f64,
    cancel: &AtomicBool,
    on_tensor: &dyn Fn(&TensorEntry),
) -> Result<(Vec<Option<BitWidth>>, MixedPrecision)> {
    // Per quantizable tensor: its index and its options (width, or None for 16-bit).
    let mut layers: Vec<(usize, Vec<WidthOption>)> = Vec::new();
    let (mut fixed, mut params) = (0.0f64, 0usize);
    for (i, ((file, entry), decision)) in tensors.iter().zip(decisions).enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(QuantError::Cancelled {
                tensor: entry.name.clone(),
            });
        }
        params += entry.len();
        if *decision != Decision::Quantize {
            fixed += fixed_bits(entry, decision);
            continue;
        }
        file.prefetch(entry);
        let values = float_values(file, entry)
            .ok_or_else(|| QuantError::schema(&entry.name, "not a float tensor"))?;
        let view = TensorView::new(&entry.name, &entry.shape, values.data())?;
        // Keeping in 16-bit is always possible; its rounding error is counted as none.
        let mut options = vec![(
            None,
            LayerOption {
                bits: (entry.len() * 16) as f64,
                error: 0.0,
            },
        )];
        let quant = layer_quant(config, &entry.name, entry.shape.len());
        for bits in WIDTHS {
            let e = estimate(
                &view,
                &QuantConfig { bits, ..quant },
                channel_absmax[i].as_deref(),
            )?;
            if e.cosine >= config.quality_floor {
                options.push((
                    Some(bits),
                    LayerOption {
                        bits: e.bits,
                        error: e.error,
                    },
                ));
            }
        }
        file.release(entry);
        on_tensor(entry);
        layers.push((i, options));
    }
    let budget = target * params as f64 - fixed;
    let table: Vec<Vec<LayerOption>> = layers
        .iter()
        .map(|(_, o)| o.iter().map(|(_, x)| *x).collect())
        .collect();
    let smallest = smallest_bits(&table);
    if budget < smallest {
        return Err(QuantError::config(
            "target_bits_per_weight",
            target,
            format!(
                "at least {:.3} for this model: every quantizable layer at its narrowest width that passes the \
                 quality floor, plus {} tensors kept in 16-bit or carried through",
                (smallest + fixed) / params.max(1) as f64,
                tensors.len() - layers.len()
            ),
        ));
    }
    let allocation = allocate(&table, budget)?;
    let mut widths = vec![None; tensors.len()];
    let mut layers_per_width = [0usize; 4];
    for ((i, options), &k) in layers.iter().zip(&allocation.choice) {
        let width = options[k].0;
        widths[*i] = width;
        layers_per_width[match width {
            Some(BitWidth::Int2) => 0,
            Some(BitWidth::Int4) => 1,
            Some(BitWidth::Int8) => 2,
            None => 3,
        }] += 1;
    }
    let summary = MixedPrecision {
        target_bits_per_weight: target,
        planned_bits_per_weight: (allocation.bits + fixed) / params.max(1) as f64,
        total_error: allocation.error,
        layers_per_width,
    };
    Ok((widths, summary))
}
