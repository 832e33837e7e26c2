//! arrow-quant: weight quantization for diffusion models.
//!
//! The core crate: the encodings (`codec`: flat INT8 / INT4 / INT2 groups searched by `rtn`, `mse` or `hqq`, and
//! the two-level `int8_2l` / `int4_2l` / `int2_2l` with their least-squares search; f32, f16, bf16 input),
//! optional per-channel importance weights, exact dequantization and per-tensor quality figures; checkpoints,
//! Arrow interfaces and the model pipeline. It knows nothing of Python; the bindings crate only converts. The
//! folders and the data flow are described in docs/ARCHITECTURE.md.
//!
//! ```
//! use arrow_quant::{quantize_tensor, QuantConfig, TensorData, TensorView};
//! let w: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin()).collect();
//! let view = TensorView::new("layer", &[2, 128], TensorData::F32(&w)).unwrap();
//! let q = quantize_tensor(&view, &QuantConfig::default()).unwrap();
//! assert_eq!(q.encoding_name(), "int4_2l"); // rows of 128 fit the two-level encoding
//! assert_eq!(q.data.len(), 128); // 256 weights at 4 bits
//! assert!(q.quality.cosine > 0.99);
//! let back = q.view().dequantize().unwrap();
//! assert_eq!(back.len(), 256);
//! ```
#![deny(missing_docs)]

pub mod arrow;
mod batch;
pub mod checkpoint;
pub mod codec;
mod config;
mod dequantize;
pub mod diffusion;
mod error;
pub mod gguf;
mod importance;
mod output;
mod packing;
pub mod pipeline;
mod quantize;
mod quantized;
mod simd;
mod tensor;

pub use batch::{first_error, quantize_batch, OnError};
pub use codec::driver::QualitySums;
pub use codec::flat::layout::GroupLayout;
pub use codec::{Encoding, EncodingInfo, Family, TABLE};
pub use config::{
    parse_group_size, BitWidth, FlatLayout, GroupSize, Layout, Method, QuantConfig, QuantOptions,
    ScaleDtype,
};
pub use dequantize::DequantOutput;
pub use error::{QuantError, Result};
pub use packing::{pack_codes, unpack_codes};
pub use quantize::{quantize_ggml, quantize_tensor, quantize_tensor_with};
pub use quantized::{
    channel_geometry, FlatParams, ParamBuffer, ParamSlice, Payload, PayloadRef, Quality,
    QuantizedTensor, QuantizedView,
};
pub use tensor::{rows_cols, SourceDtype, TensorData, TensorView};
