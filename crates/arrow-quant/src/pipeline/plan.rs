//! Mixed-precision planning: a first pass over the checkpoint measures every quantizable layer at 2, 4 and 8
//! bits (options whose cosine misses the quality floor are dropped; keeping the layer in 16-bit is always an
//! option; layers with calibration magnitudes are measured with importance weights, see `layer_quant::estimate`;
//! a layer of more than `row_sample::SAMPLE_ELEMENTS` elements is measured on evenly spaced whole rows, its size
//! scaled up), then `diffusion::allocation` picks one width per layer to minimise the sum of the layers'
//! relative errors under the bits-per-weight budget. An explicit `target_bits_per_weight` covers the whole model
//! (tensors kept in 16-bit or carried through count at their stored size); the automatic INT4 plan covers the
//! quantized layers only, and leaves the run uniform when even that is out of reach.

use super::config::{Budget, PipelineConfig};
use super::layer_quant::{estimate, MAX_SHARE_OF_16_BIT};
use super::policy::{layer_quant, Decision};
use super::row_sample::{sample_rows, SAMPLE_ELEMENTS};
use crate::checkpoint::{float64_beyond_f32, float_values, Dtype, SafetensorsFile, TensorEntry};
use crate::config::{BitWidth, QuantConfig};
use crate::diffusion::allocation::{allocate, smallest_bits, LayerOption};
use crate::error::{QuantError, Result};
use crate::tensor::TensorView;
use std::sync::atomic::{AtomicBool, Ordering};

/// The widths the allocation chooses from.
const WIDTHS: [BitWidth; 3] = [BitWidth::Int2, BitWidth::Int4, BitWidth::Int8];

/// A width to quantize at (`None`: keep in 16-bit) with its size and error.
pub(crate) type WidthOption = (Option<BitWidth>, LayerOption);

/// The outcome of planning.
#[derive(Debug, Clone, PartialEq)]
pub struct MixedPrecision {
    /// The budget asked for, in stored bits per weight over the whole model (over the quantized layers when
    /// `automatic`).
    pub target_bits_per_weight: f64,
    /// The automatic INT4 plan (`PipelineConfig::auto_mixed_precision`), not an explicit target.
    pub automatic: bool,
    /// The size the allocation plans, in bits per weight over what the target covers (the report's achieved
    /// figure is measured on the written file, over every tensor).
    pub planned_bits_per_weight: f64,
    /// The planned total error: sum over quantizable layers of their relative error (activation-weighted where
    /// calibration magnitudes exist).
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
            "automatic": self.automatic,
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

/// The sizes the plan does not choose: tensors kept or carried through, and the parameter counts.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FixedSizes {
    /// Stored bits of the tensors that are not quantizable.
    pub bits: f64,
    /// Elements of every tensor.
    pub params: usize,
    /// Elements of the quantizable tensors.
    pub quantizable: usize,
    /// Tensors that are not quantizable.
    pub tensors: usize,
}

/// [`FixedSizes`] of a checkpoint's tensors under the policy's decisions (headers only).
pub(crate) fn fixed_sizes(entries: &[&TensorEntry], decisions: &[Decision]) -> FixedSizes {
    let mut f = FixedSizes::default();
    for (entry, decision) in entries.iter().zip(decisions) {
        f.params += entry.len();
        if *decision == Decision::Quantize {
            f.quantizable += entry.len();
        } else {
            f.bits += fixed_bits(entry, decision);
            f.tensors += 1;
        }
    }
    f
}

/// The widths a plan gives, one per tensor (`Some(width)` to quantize at, `None` to keep in 16-bit; tensors that
/// are not quantizable are `None`), and its summary.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub widths: Vec<Option<BitWidth>>,
    pub summary: MixedPrecision,
}

/// The options of one quantizable layer: 16-bit (always, at no error), then each width whose cosine meets the
/// floor, measured on the layer (or on its row sample) at the settings the layer policy gives it.
pub(crate) fn layer_options(
    file: &SafetensorsFile,
    entry: &TensorEntry,
    channel_absmax: Option<&[f32]>,
    config: &PipelineConfig,
) -> Result<Vec<WidthOption>> {
    // Float64 values float32 cannot hold are carried through as they are (`entry::entry_batch`), at 64 bits.
    if entry.dtype == Dtype::F64 && float64_beyond_f32(file.bytes(entry)).is_some() {
        return Ok(vec![(
            None,
            LayerOption {
                bits: ((entry.end - entry.begin) * 8) as f64,
                error: 0.0,
            },
        )]);
    }
    let values = float_values(file, entry)
        .ok_or_else(|| QuantError::schema(&entry.name, "not a float tensor"))?;
    let sample = sample_rows(&entry.shape, values.data(), SAMPLE_ELEMENTS);
    if sample.is_none() {
        file.prefetch(entry);
    }
    let (view, scale) = match &sample {
        Some(s) => (
            TensorView::new(&entry.name, &s.shape, s.values.data())?,
            s.scale,
        ),
        None => (
            TensorView::new(&entry.name, &entry.shape, values.data())?,
            1.0,
        ),
    };
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
        let e = estimate(&view, &QuantConfig { bits, ..quant }, channel_absmax)?;
        // A width whose stored form takes more than the share of 16-bit the ladder allows would be kept anyway.
        let too_large = e.bits * scale > MAX_SHARE_OF_16_BIT * (entry.len() * 16) as f64;
        if e.cosine >= config.quality_floor && !too_large {
            options.push((
                Some(bits),
                LayerOption {
                    bits: e.bits * scale,
                    error: e.error,
                },
            ));
        }
    }
    file.release(entry);
    Ok(options)
}

/// One quantizable layer as the allocation sees it.
#[derive(Debug, Clone)]
pub(crate) struct PlannedLayer {
    /// Position of the tensor in the checkpoint.
    pub index: usize,
    /// Its elements.
    pub elements: usize,
    /// Its options ([`layer_options`]).
    pub options: Vec<WidthOption>,
}

/// Allocates the widths from every quantizable layer's options (in tensor order) under `budget`. `Ok(None)`:
/// the automatic plan's budget is out of reach, so the run stays uniform.
pub(crate) fn allocate_widths(
    layers: &[PlannedLayer],
    n_tensors: usize,
    fixed: &FixedSizes,
    budget: Budget,
) -> Result<Option<Plan>> {
    // Layers with no quantized option (a degenerate shape, float64 beyond float32) cost what they cost in any
    // run; the automatic plan's budget covers the others, as a uniform run would store them, plus those.
    let (forced_params, forced_bits) = layers
        .iter()
        .filter(|l| l.options.len() == 1)
        .fold((0usize, 0f64), |(n, b), l| {
            (n + l.elements, b + l.options[0].1.bits)
        });
    let (target, automatic, budget_bits) = match budget {
        Budget::WholeModel(t) => (t, false, t * fixed.params as f64 - fixed.bits),
        Budget::QuantizedLayers(t) => (
            t,
            true,
            t * fixed.quantizable.saturating_sub(forced_params) as f64 + forced_bits,
        ),
    };
    let table: Vec<Vec<LayerOption>> = layers
        .iter()
        .map(|l| l.options.iter().map(|(_, x)| *x).collect())
        .collect();
    let smallest = smallest_bits(&table);
    if budget_bits < smallest {
        if automatic {
            return Ok(None);
        }
        return Err(QuantError::config(
            "target_bits_per_weight",
            target,
            format!(
                "at least {:.3} for this model: every quantizable layer at its narrowest width that passes the \
                 quality floor, plus {} tensors kept in 16-bit or carried through",
                (smallest + fixed.bits) / fixed.params.max(1) as f64,
                fixed.tensors
            ),
        ));
    }
    let allocation = allocate(&table, budget_bits)?;
    let mut widths = vec![None; n_tensors];
    let mut layers_per_width = [0usize; 4];
    for (layer, &k) in layers.iter().zip(&allocation.choice) {
        let width = layer.options[k].0;
        widths[layer.index] = width;
        layers_per_width[match width {
            Some(BitWidth::Int2) => 0,
            Some(BitWidth::Int4) => 1,
            Some(BitWidth::Int8) => 2,
            None => 3,
        }] += 1;
    }
    let summary = MixedPrecision {
        target_bits_per_weight: target,
        automatic,
        planned_bits_per_weight: if automatic {
            allocation.bits / fixed.quantizable.max(1) as f64
        } else {
            (allocation.bits + fixed.bits) / fixed.params.max(1) as f64
        },
        total_error: allocation.error,
        layers_per_width,
    };
    Ok(Some(Plan { widths, summary }))
}

/// Measures each quantizable layer's options and allocates the widths ([`allocate_widths`]).
pub(crate) fn plan_widths(
    tensors: &[(&SafetensorsFile, &TensorEntry)],
    decisions: &[Decision],
    channel_absmax: &[Option<Vec<f32>>],
    config: &PipelineConfig,
    budget: Budget,
    cancel: &AtomicBool,
    on_tensor: &dyn Fn(&TensorEntry),
) -> Result<Option<Plan>> {
    let entries: Vec<&TensorEntry> = tensors.iter().map(|(_, e)| *e).collect();
    let fixed = fixed_sizes(&entries, decisions);
    let mut layers: Vec<PlannedLayer> = Vec::new();
    for (i, ((file, entry), decision)) in tensors.iter().zip(decisions).enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(QuantError::Cancelled {
                tensor: entry.name.clone(),
            });
        }
        if *decision == Decision::Quantize {
            layers.push(PlannedLayer {
                index: i,
                elements: entry.len(),
                options: layer_options(file, entry, channel_absmax[i].as_deref(), config)?,
            });
            on_tensor(entry);
        }
    }
    allocate_widths(&layers, tensors.len(), &fixed, budget)
}
