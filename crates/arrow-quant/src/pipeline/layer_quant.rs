//! Quantizing one layer of a run: plainly, or with activation-aware channel scaling when its calibration records
//! per-channel magnitudes; then the quality floor with the fallback chain (2 -> 4 -> 8 -> kept in 16-bit, or
//! 32-bit), which also moves on when an encoding cannot represent the layer's range.

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
/// A width whose encoding cannot represent the layer's range is measured at cosine -inf (no floor accepts it),
/// as the fallback chain would skip it.
pub(crate) fn estimate(
    view: &TensorView<'_>,
    config: &QuantConfig,
    channel_absmax: Option<&[f32]>,
) -> Result<Estimate> {
    match measure(view, config, channel_absmax) {
        Err(QuantError::Range { .. }) => Ok(Estimate {
            bits: f64::INFINITY,
            error: f64::INFINITY,
            cosine: f64::NEG_INFINITY,
        }),
        other => other,
    }
}

/// [`estimate`] of a width the encoding can represent.
fn measure(
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

/// The largest share of its 16-bit size a quantized layer may take: a layer whose codes, parameters and channel
/// scales would take more (over 12 bits per weight, e.g. a `[100000, 1]` tensor at 36, or `[2048, 3]` at 14.7
/// in flat int4) buys too little space for its loss of precision and is kept in 16-bit. Every regular layout
/// stays under it (int8 with float32 scales and zero points in groups of 32 takes 10 bits per weight).
pub(crate) const MAX_SHARE_OF_16_BIT: f64 = 0.75;

/// What the fallback chain decided for one layer.
#[derive(Debug, Default)]
pub(crate) struct Ladder {
    /// The accepted layer, or `None`: keep it in 16-bit (or 32-bit, see `entry::keep_bytes`).
    pub layer: Option<QuantizedLayer>,
    /// Why a wider encoding than the first was used (each miss), if one was.
    pub fallback: Option<String>,
    /// Why the layer is kept unquantized although a width met the floor (its quantized form is not smaller).
    pub kept: Option<String>,
}

/// One width tried on the fallback chain: what the ladder judges it by, and what the caller keeps if it is used.
pub(crate) struct Attempt<T> {
    /// Cosine against the source.
    pub cosine: f64,
    /// Stored bytes: codes, parameters and channel scales.
    pub stored: usize,
    /// Encoding name, for the report.
    pub encoding: String,
    /// The caller's result of the attempt.
    pub value: T,
}

/// Where the fallback chain stopped: the accepted attempt, or `None` (keep the layer), with the reasons.
pub(crate) struct Walk<T> {
    /// The width used and its attempt.
    pub accepted: Option<(BitWidth, Attempt<T>)>,
    /// Why a wider encoding than the first was used (each miss), or why the layer is kept unquantized.
    pub fallback: Option<String>,
    /// Why the layer is kept although a width met the floor (its quantized form is not smaller).
    pub kept: Option<String>,
}

/// Tries `attempt` at the first width, then the next ones while the cosine misses the floor or the encoding
/// cannot represent the layer's range ([`QuantError::Range`]); past int8 the layer is kept. An accepted width
/// whose stored form would take more than [`MAX_SHARE_OF_16_BIT`] of the 16-bit form of `elements` values is not
/// used either (wider widths only take more): the layer is kept in 16-bit and `kept` says why. With `fail_fast`
/// the first miss is a [`QuantError::Quality`] naming `name`. The one ladder of whole-tensor and chunked runs.
pub(crate) fn walk_fallback_chain<T>(
    name: &str,
    elements: usize,
    config: &PipelineConfig,
    first: BitWidth,
    mut attempt: impl FnMut(BitWidth) -> Result<Attempt<T>>,
) -> Result<Walk<T>> {
    let mut misses = Vec::new();
    let joined = |misses: &[String]| (!misses.is_empty()).then(|| misses.join("; "));
    let sixteen_bit = elements * 2;
    let limit = sixteen_bit as f64 * MAX_SHARE_OF_16_BIT;
    for bits in fallback_chain(first) {
        let miss = match attempt(bits) {
            Ok(a) if a.cosine >= config.quality_floor => {
                if a.stored as f64 > limit {
                    let bpw = if elements == 0 {
                        0.0
                    } else {
                        a.stored as f64 * 8.0 / elements as f64
                    };
                    return Ok(Walk {
                        accepted: None,
                        fallback: joined(&misses),
                        kept: Some(format!(
                            "{} would take {} bytes ({bpw:.1} bits per weight), too close to the {sixteen_bit} \
                             of 16-bit: kept in 16-bit",
                            a.encoding, a.stored
                        )),
                    });
                }
                return Ok(Walk {
                    accepted: Some((bits, a)),
                    fallback: joined(&misses),
                    kept: None,
                });
            }
            Ok(a) => format!(
                "cosine {:.4} < floor {:.4} at {}",
                a.cosine, config.quality_floor, a.encoding
            ),
            Err(QuantError::Range { problem, .. }) => problem,
            Err(e) => return Err(e),
        };
        if config.fail_fast {
            return Err(QuantError::Quality {
                tensor: name.to_string(),
                problem: miss,
            });
        }
        misses.push(miss);
    }
    misses.push("kept unquantized".into());
    Ok(Walk {
        accepted: None,
        fallback: joined(&misses),
        kept: None,
    })
}

/// Quantizes `view` along the fallback chain ([`walk_fallback_chain`]); past int8, or when the accepted form is
/// not smaller, the layer is kept (16-bit, or 32-bit when 16-bit would miss the floor).
pub(crate) fn quantize_with_fallback(
    view: &TensorView<'_>,
    config: &PipelineConfig,
    quant: &QuantConfig,
    first: BitWidth,
    channel_absmax: Option<&[f32]>,
) -> Result<Ladder> {
    let walk = walk_fallback_chain(view.name, view.data.len(), config, first, |bits| {
        let q = quantize_layer(view, &QuantConfig { bits, ..*quant }, channel_absmax)?;
        Ok(Attempt {
            cosine: q.tensor.quality.cosine,
            stored: q.tensor.nbytes(),
            encoding: q.tensor.encoding_name().to_string(),
            value: q,
        })
    })?;
    Ok(Ladder {
        layer: walk.accepted.map(|(_, a)| a.value),
        fallback: walk.fallback,
        kept: walk.kept,
    })
}
