//! Quantizing one layer of a run: plainly, or with activation-aware channel scaling when its calibration records
//! per-channel magnitudes; then the quality floor with the fallback chain (2 -> 4 -> 8 -> kept in 16-bit).

use super::config::PipelineConfig;
use crate::config::{BitWidth, QuantConfig};
use crate::diffusion::channel_scaling::{
    activation_weighted_error, column_weights, quantize_channel_scaled,
};
use crate::error::{QuantError, Result};
use crate::quantize::{quantize_tensor, quantize_tensor_with};
use crate::quantized::QuantizedTensor;
use crate::tensor::TensorView;

/// A quantized layer and what channel scaling found, if it ran.
#[derive(Debug)]
pub(crate) struct QuantizedLayer {
    /// The tensor (channel scales included when scaled).
    pub tensor: QuantizedTensor,
    /// The chosen exponent of channel scaling.
    pub alpha: Option<f32>,
    /// Activation-weighted relative error (with calibration magnitudes).
    pub weighted_error: Option<f64>,
}

/// Quantizes `view` with `config`, scaling its channels first when `channel_absmax` is given.
pub(crate) fn quantize_layer(
    view: &TensorView<'_>,
    config: &QuantConfig,
    channel_absmax: Option<&[f32]>,
) -> Result<QuantizedLayer> {
    match channel_absmax {
        Some(a) => {
            let (tensor, report) = quantize_channel_scaled(view, config, a)?;
            Ok(QuantizedLayer {
                tensor,
                alpha: Some(report.alpha),
                weighted_error: Some(report.weighted_rel_error),
            })
        }
        None => Ok(QuantizedLayer {
            tensor: quantize_tensor(view, config)?,
            alpha: None,
            weighted_error: None,
        }),
    }
}

/// What the planning pass needs of a layer at one width: stored bits, error contribution, cosine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Estimate {
    /// Stored size in bits (channel scales included when the layer will be scaled).
    pub bits: f64,
    /// Relative error (activation-weighted with magnitudes): the layer's share of the planned total. Not
    /// weighted by the parameter count: a layer's relative error is what reaches the output, whatever its size
    /// (see `diffusion::allocation`).
    pub error: f64,
    /// Cosine similarity to the source.
    pub cosine: f64,
}

/// Measures `view` at `config` for the mixed-precision plan. A layer with calibration magnitudes is measured
/// with importance weights `a_j^2` only, not the channel-scaling search (which would multiply the cost of
/// planning by the search's eleven quantizations); its stored size counts the channel scales it will carry.
pub(crate) fn estimate(
    view: &TensorView<'_>,
    config: &QuantConfig,
    channel_absmax: Option<&[f32]>,
) -> Result<Estimate> {
    let Some(a) = channel_absmax else {
        let q = quantize_tensor(view, config)?;
        return Ok(Estimate {
            bits: (q.nbytes() * 8) as f64,
            error: q.quality.rel_mse,
            cosine: q.quality.cosine,
        });
    };
    let importance = column_weights(view, a, |x| x * x);
    let q = quantize_tensor_with(view, config, Some(&importance))?;
    let weighted = activation_weighted_error(view, &q.view().dequantize()?, a)?;
    Ok(Estimate {
        bits: ((q.nbytes() + 4 * a.len()) * 8) as f64,
        error: weighted,
        cosine: q.quality.cosine,
    })
}

/// The widths tried after `first`, in order.
pub(crate) fn fallback_chain(first: BitWidth) -> Vec<BitWidth> {
    [BitWidth::Int2, BitWidth::Int4, BitWidth::Int8]
        .into_iter()
        .filter(|b| *b >= first)
        .collect()
}

/// Quantizes at the first width, then the next ones while the cosine misses the floor. Returns the accepted
/// layer (or `None`: keep in 16-bit) and the reason for any fallback.
pub(crate) fn quantize_with_fallback(
    view: &TensorView<'_>,
    config: &PipelineConfig,
    quant: &QuantConfig,
    first: BitWidth,
    channel_absmax: Option<&[f32]>,
) -> Result<(Option<QuantizedLayer>, Option<String>)> {
    let mut misses = Vec::new();
    for bits in fallback_chain(first) {
        let q = quantize_layer(view, &QuantConfig { bits, ..*quant }, channel_absmax)?;
        let cosine = q.tensor.quality.cosine;
        if cosine >= config.quality_floor {
            return Ok((Some(q), (!misses.is_empty()).then(|| misses.join("; "))));
        }
        let miss = format!(
            "cosine {:.4} < floor {:.4} at {}",
            cosine,
            config.quality_floor,
            q.tensor.encoding_name()
        );
        if config.fail_fast {
            return Err(QuantError::Quality {
                tensor: view.name.to_string(),
                problem: miss,
            });
        }
        misses.push(miss);
    }
    misses.push("kept in 16-bit".into());
    Ok((None, Some(misses.join("; "))))
}
