//! GGUF: the file format of llama.cpp, ComfyUI-GGUF, diffusers' GGUF loader and stable-diffusion.cpp.
//!
//! [`ggml_type`] is the table of the ggml tensor types we read and write (id, name, block geometry); [`blocks`]
//! holds one block codec per type, whose bytes are exactly llama.cpp's block layout (`ggml-common.h`) and whose
//! parameter search is our own. [`quantize_rows`] / [`dequantize_rows`] take a whole tensor to a type's blocks
//! and back.

pub(crate) mod blocks;
pub mod ggml_type;
mod rows;

pub use ggml_type::{GgmlType, GgmlTypeInfo, GGML_TYPES};
pub(crate) use rows::{quantize_rows_with, RowWeights};
pub use rows::{dequantize_rows, ggml_row_len, quantize_rows, sum_granule_rows, unfit_reason};
