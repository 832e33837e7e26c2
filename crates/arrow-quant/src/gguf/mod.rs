//! GGUF: the file format of llama.cpp, ComfyUI-GGUF, diffusers' GGUF loader and stable-diffusion.cpp.
//!
//! [`ggml_type`] is the table of the ggml tensor types we read and write (id, name, block geometry); [`blocks`]
//! holds one block codec per type, whose bytes are exactly llama.cpp's block layout (`ggml-common.h`) and whose
//! parameter search is our own. [`quantize_rows`] / [`dequantize_rows`] take a whole tensor to a type's blocks
//! and back. [`arch`] finds the model family from tensor names; [`TypePlan::choose`] gives each tensor its type
//! and stored shape ([`preset`], [`overrides`], [`fallback`], [`stored_shape`]; docs/GGUF_TYPES.md).

pub mod arch;
pub(crate) mod blocks;
pub mod fallback;
pub mod ggml_type;
pub mod overrides;
pub mod preset;
mod rows;
pub mod stored_shape;
pub mod type_choice;

pub use arch::{detect_arch, resolve_arch, Arch};
pub use ggml_type::{GgmlType, GgmlTypeInfo, GGML_TYPES};
pub use overrides::{TypeOverride, TypeOverrides};
pub use preset::{Preset, Role};
pub use rows::{dequantize_rows, ggml_row_len, quantize_rows, unfit_reason};
pub use stored_shape::StoredShape;
pub use type_choice::{check_tensor_name, TypeChoice, TypePlan};
