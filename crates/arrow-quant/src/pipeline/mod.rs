//! The model pipeline: checkpoints to quantized model files (`run`: the tensor loop; `entry`: one tensor to its
//! row; `writer`: the writer thread), the layer policy and quality fallback, the file writer and lazy reader
//! (`model_file`), validation and export back to safetensors (`tools`), and a run cut into units of work for many
//! processes (`units`: plan from the headers, one tensor to a staging file, staged units assembled).

pub(crate) mod atomic_file;
mod chunked;
mod config;
mod entry;
mod gguf_model;
mod gguf_run;
mod gguf_tensor;
mod gguf_tools;
mod layer_quant;
mod model_file;
mod output_path;
mod plan;
pub mod policy;
mod report;
mod row_sample;
mod run;
mod stored_tensor;
mod tools;
mod unit_plan;
mod units;
mod writer;

pub use crate::gguf::is_gguf;
pub use chunked::{PART_BYTES, TEST_PART_BYTES_VAR};
pub use config::{
    Budget, OutputFormat, PipelineConfig, AUTO_PLAN_BITS_PER_WEIGHT, DEFAULT_GGUF_TYPE,
    DEFAULT_KEEP_PATTERNS, DEFAULT_UNCLIPPED_PATTERNS,
};
pub use gguf_model::GgufModel;
pub use gguf_tools::for_each_window;
pub use model_file::{ModelFile, ModelWriter, CONFIG_KEY, REPORT_KEY, SOURCE_KEY, TENSORS_KEY};
pub use output_path::{check_export_extension, check_output, model_format, same_file};
pub use plan::MixedPrecision;
pub use report::{LayerReport, Report};
pub use run::{quantize_model, quantize_model_with, Progress};
pub use stored_tensor::StoredTensor;
pub use tools::{export_safetensors, validate_model, ExportDtype, Validation};
pub use unit_plan::{estimate_unit, plan_from_estimates};
pub use units::{
    assemble_units, check_distributable, plan_units, quantize_unit, UnitInfo, LAYER_KEY,
};
