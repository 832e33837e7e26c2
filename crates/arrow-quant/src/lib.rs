//! arrow-quant: weight quantization for diffusion models.
//!
//! The core crate: packed INT8 / INT4 / INT2 groupwise kernels (f32, f16, bf16 input), parameter search
//! (`rtn`, `mse`, `hqq`), the two-level encodings (`int8_2l`, `int4_2l`, `int2_2l`) with their least-squares
//! search, optional per-channel importance weights, exact dequantization and per-tensor quality figures. It knows nothing of Python; the bindings
//! crate only converts.
//!
//! ```
//! use arrow_quant::{quantize_tensor, QuantConfig, TensorData, TensorView};
//! let w: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin()).collect();
//! let view = TensorView::new("layer", &[2, 128], TensorData::F32(&w)).unwrap();
//! let q = quantize_tensor(&view, &QuantConfig::default()).unwrap();
//! assert_eq!(q.data.len(), 128); // 256 weights at 4 bits
//! assert!(q.quality.cosine > 0.99);
//! let back = q.view().dequantize().unwrap();
//! assert_eq!(back.len(), 256);
//! ```
#![deny(missing_docs)]

pub mod arrow;
pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod dequantize;
pub mod diffusion;
pub mod error;
mod group;
mod hqq;
pub mod importance;
pub mod layout;
mod mse;
pub mod output;
pub mod packing;
pub mod pipeline;
pub mod quantize;
mod quantize_two_level;
pub mod quantized;
mod simd;
pub mod tensor;
pub mod two_level;
mod two_level_search;

pub use batch::{first_error, quantize_batch, OnError};
pub use config::{BitWidth, GroupSize, Method, QuantConfig, ScaleDtype};
pub use error::{QuantError, Result};
pub use layout::GroupLayout;
pub use quantize::{quantize_tensor, quantize_tensor_with};
pub use quantized::{ParamBuffer, ParamSlice, Quality, QuantizedTensor, QuantizedView};
pub use tensor::{SourceDtype, TensorData, TensorView};
pub use two_level::TwoLevelSpec;
