//! Many tensors at once: layers in parallel, progress as each finishes, cancellation, per-layer errors.

use crate::config::QuantConfig;
use crate::error::{QuantError, Result};
use crate::quantize::quantize_tensor;
use crate::quantized::QuantizedTensor;
use crate::tensor::TensorView;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// How a batch reacts to a failing layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnError {
    /// Stop starting new layers at the first failure (layers not started report [`QuantError::Cancelled`]).
    #[default]
    Stop,
    /// Quantize every layer; failures are reported per layer.
    Continue,
}

/// Quantizes `tensors` in parallel with one config.
///
/// `on_done(index)` is called (from a worker thread) as each layer finishes, successfully or not. Setting
/// `cancel` stops new layers from starting; they report [`QuantError::Cancelled`]. The result has one entry per
/// input, in input order.
pub fn quantize_batch(
    tensors: &[TensorView<'_>],
    config: &QuantConfig,
    on_error: OnError,
    cancel: &AtomicBool,
    on_done: &(dyn Fn(usize) + Sync),
) -> Vec<Result<QuantizedTensor>> {
    tensors
        .par_iter()
        .enumerate()
        .map(|(i, t)| {
            if cancel.load(Ordering::Relaxed) {
                return Err(QuantError::Cancelled {
                    tensor: t.name.to_string(),
                });
            }
            let r = quantize_tensor(t, config);
            if r.is_err() && on_error == OnError::Stop {
                cancel.store(true, Ordering::Relaxed);
            }
            on_done(i);
            r
        })
        .collect()
}

/// The first real failure of a batch (a cancellation caused by it is not reported instead of it).
pub fn first_error(results: &[Result<QuantizedTensor>]) -> Option<&QuantError> {
    let mut cancelled = None;
    for r in results {
        match r {
            Err(e @ QuantError::Cancelled { .. }) => {
                cancelled.get_or_insert(e);
            }
            Err(e) => return Some(e),
            Ok(_) => {}
        }
    }
    cancelled
}
