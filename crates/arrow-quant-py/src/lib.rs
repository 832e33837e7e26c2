//! `arrow_quant_v2._core`: the Python bindings of arrow-quant. Conversions only: numpy in (zero-copy), the GIL
//! released around all kernel work, results out as numpy arrays owning the Rust buffers, core errors mapped to
//! the exception classes registered here.

mod arrow_io;
mod batch_result;
mod calibration;
mod calibration_dict;
mod config_class;
mod detach;
mod errors;
mod input;
mod json;
mod model_runs;
mod options;
mod quantized;
mod quantized_model;
mod quantizer;
mod timing;
mod units;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<quantizer::ArrowQuantV2>()?;
    m.add_class::<quantized::PyQuantizedTensor>()?;
    m.add_class::<batch_result::BatchResult>()?;
    m.add_class::<config_class::PyDiffusionQuantConfig>()?;
    m.add_class::<quantized_model::QuantizedModel>()?;
    quantized_model::register_mapping(m)?;
    m.add_function(wrap_pyfunction!(quantized_model::load_quantized, m)?)?;
    m.add_function(wrap_pyfunction!(quantized_model::export, m)?)?;
    m.add_function(wrap_pyfunction!(calibration::read_calibration, m)?)?;
    m.add_function(wrap_pyfunction!(calibration::write_calibration, m)?)?;
    m.add_function(wrap_pyfunction!(timing::_kernel_seconds, m)?)?;
    m.add_function(wrap_pyfunction!(units::check_distributable_config, m)?)?;
    m.add_function(wrap_pyfunction!(units::plan_units, m)?)?;
    m.add_function(wrap_pyfunction!(units::quantize_unit, m)?)?;
    m.add_function(wrap_pyfunction!(units::assemble_units, m)?)?;
    m.add_function(wrap_pyfunction!(units::estimate_unit, m)?)?;
    m.add_function(wrap_pyfunction!(units::plan_from_estimates, m)?)?;
    errors::register(m)?;
    Ok(())
}
