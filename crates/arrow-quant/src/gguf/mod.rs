//! GGUF: the file format of llama.cpp, ComfyUI-GGUF, diffusers' GGUF loader and stable-diffusion.cpp.
//!
//! [`ggml_type`] is the table of the ggml tensor types we read and write (id, name, block geometry); [`blocks`]
//! holds one block codec per type, whose bytes are exactly llama.cpp's block layout (`ggml-common.h`) and whose
//! parameter search is our own. [`quantize_rows`] / [`dequantize_rows`] take a whole tensor to a type's blocks
//! and back. [`GgufWriter`] streams a GGUF v3 file (header and tensor infos first, then the data tensor by
//! tensor) and [`GgufFile`] opens one, validated, memory-mapped; [`MetaValue`] is a metadata value.
//! [`arch`] finds the model family from tensor names; [`TypePlan::choose`] gives each tensor its type and stored
//! shape ([`preset`], [`overrides`], [`fallback`], [`stored_shape`]; docs/GGUF_TYPES.md); [`llm_mix`] holds
//! llama-quantize's per-tensor rules for a language model re-quantized from its GGUF; [`Imatrix`] reads
//! llama.cpp's importance matrices (`--imatrix`).

pub mod arch;
pub(crate) mod blocks;
pub mod fallback;
mod file_reader;
mod file_writer;
pub mod ggml_type;
mod imatrix;
mod layout;
pub mod llm_mix;
mod metadata;
mod metadata_json;
pub mod overrides;
pub mod preset;
#[cfg(test)]
mod round_trip_tests;
mod rows;
pub mod stored_shape;
pub mod type_choice;

pub use arch::{detect_arch, resolve_arch, Arch};
pub use file_reader::{is_gguf, GgufFile, GgufTensorInfo};
pub use file_writer::{GgufTensorSpec, GgufWriter};
pub use ggml_type::{GgmlType, GgmlTypeInfo, GGML_TYPES};
pub use imatrix::Imatrix;
pub use layout::{
    gguf_tensor_nbytes, ALIGNMENT_KEY, GGUF_ALIGNMENT, GGUF_MAX_DIMS, GGUF_MAX_NAME_BYTES,
    GGUF_VERSION,
};
pub use metadata::{meta_get, MetaArray, MetaValue};
pub use overrides::{TypeOverride, TypeOverrides};
pub use preset::{Preset, Role};
pub use rows::{
    dequantize_rows, ggml_row_len, quantize_rows, sum_granule_rows, unfit_reason, Rounding,
};
pub(crate) use rows::{quantize_rows_with, RowWeights};
pub use stored_shape::{orig_shape_key, StoredShape};
pub use type_choice::{check_tensor_name, RowFallback, TypeChoice, TypePlan};
