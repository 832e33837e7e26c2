//! A timing hook for the benchmarks: the core batch kernel timed from Rust, with no Python boundary in the loop,
//! so scripts can measure the overhead of the Python API as `API time - kernel time` on the same data.

use crate::errors::Result;
use crate::input::LayerInput;
use crate::options::Overrides;
use arrow_quant::{quantize_batch, OnError, QuantConfig};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// `_kernel_seconds(weights, bit_width=4, group_size=128, method="mse", repeats=5)`: the fastest of `repeats`
/// runs of the core batch quantizer over the same arrays, in seconds (results are discarded).
#[pyfunction]
#[pyo3(signature = (weights, bit_width = 4, group_size = None, method = "mse", repeats = 5))]
pub fn _kernel_seconds<'py>(
    py: Python<'py>,
    weights: &Bound<'py, PyDict>,
    bit_width: i64,
    group_size: Option<&Bound<'py, PyAny>>,
    method: &str,
    repeats: usize,
) -> Result<f64> {
    let config = Overrides::new(Some(bit_width), None, group_size, None, Some(method), None)
        .apply(QuantConfig::default())?;
    let layers = weights
        .iter()
        .map(|(k, v)| LayerInput::from_py(k.extract()?, &v))
        .collect::<Result<Vec<_>>>()?;
    let views = layers
        .iter()
        .map(LayerInput::view)
        .collect::<Result<Vec<_>>>()?;
    let best = py.detach(|| {
        let mut best = f64::INFINITY;
        for _ in 0..repeats.max(1) {
            let cancel = AtomicBool::new(false);
            let start = Instant::now();
            let results = quantize_batch(&views, &config, OnError::Stop, &cancel, &|_| {});
            best = best.min(start.elapsed().as_secs_f64());
            drop(results);
        }
        best
    });
    Ok(best)
}
