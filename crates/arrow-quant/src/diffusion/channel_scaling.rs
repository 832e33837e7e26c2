//! (in progress: placeholder until the channel scaling module lands)

use crate::config::QuantConfig;
use crate::error::{QuantError, Result};
use crate::quantized::QuantizedTensor;
use crate::tensor::TensorView;

/// What the search found.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelScalingReport {
    /// The chosen exponent.
    pub alpha: f32,
    /// Activation-weighted relative error of the returned tensor.
    pub weighted_rel_error: f64,
    /// (alpha, error on the search rows).
    pub search: Vec<(f32, f64)>,
}

/// Placeholder.
pub fn quantize_channel_scaled(
    view: &TensorView<'_>,
    _config: &QuantConfig,
    _channel_absmax: &[f32],
) -> Result<(QuantizedTensor, ChannelScalingReport)> {
    Err(QuantError::schema(
        view.name,
        "channel scaling is not built yet",
    ))
}
