//! Quantization of one tensor: the config resolved for the tensor ([`crate::codec::Plan`]), then the
//! encoding's codec.

use crate::codec::Plan;
use crate::config::QuantConfig;
use crate::error::Result;
use crate::importance::ChannelWeights;
use crate::quantized::QuantizedTensor;
use crate::tensor::TensorView;

/// Quantizes one tensor with `config` (`auto` layout and method resolved per tensor, see
/// [`crate::Encoding`]).
///
/// Errors: an invalid config ([`crate::QuantError::InvalidConfig`]), a NaN or infinite element
/// ([`crate::QuantError::NonFinite`], naming the tensor and the flat index), or a range the encoding cannot
/// represent ([`crate::QuantError::Range`]: a float16 scale would overflow; use float32 scales on the flat
/// layout). No encoding returns a non-finite reconstruction of finite input.
pub fn quantize_tensor(tensor: &TensorView<'_>, config: &QuantConfig) -> Result<QuantizedTensor> {
    quantize_tensor_with(tensor, config, None)
}

/// Quantizes one tensor with `config`, weighting the squared error of the parameter search by `importance`:
/// one non-negative value per column of the 2-D view (e.g. mean squared input activations), see
/// [`crate::importance`]. `rtn` ignores it.
pub fn quantize_tensor_with(
    tensor: &TensorView<'_>,
    config: &QuantConfig,
    importance: Option<&[f32]>,
) -> Result<QuantizedTensor> {
    config.validate()?;
    let cols = tensor.rows_cols().1;
    let weights = ChannelWeights::new(tensor.name, importance, cols)?;
    let plan = Plan::for_tensor(config, cols);
    plan.encoding.codec().quantize(tensor, &plan, &weights)
}
