//! Borrowed input tensors: a name, a shape and a typed slice (f32, f16 or bf16), read in place.

use crate::error::{QuantError, Result};
use half::{bf16, f16};
use std::fmt;

/// Floating-point type of a source tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceDtype {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE double precision (a checkpoint's float64 tensor, quantized from its float32 rounding).
    F64,
}

impl SourceDtype {
    /// Name as written in files and reports (`f32`, `f16`, `bf16`, `f64`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::F64 => "f64",
        }
    }

    /// The dtype a file names (`f16`, `bf16`, `f64`; anything else reads as `f32`, the dtype a quantized tensor
    /// of unknown source decodes to).
    pub fn from_name(name: &str) -> Self {
        match name {
            "f16" => Self::F16,
            "bf16" => Self::BF16,
            "f64" => Self::F64,
            _ => Self::F32,
        }
    }

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            Self::F64 => 8,
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }
}

impl fmt::Display for SourceDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The elements of a tensor, borrowed without copying.
#[derive(Debug, Clone, Copy)]
pub enum TensorData<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// f16 elements.
    F16(&'a [f16]),
    /// bf16 elements.
    BF16(&'a [bf16]),
}

impl<'a> TensorData<'a> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(x) => x.len(),
            Self::F16(x) => x.len(),
            Self::BF16(x) => x.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn dtype(&self) -> SourceDtype {
        match self {
            Self::F32(_) => SourceDtype::F32,
            Self::F16(_) => SourceDtype::F16,
            Self::BF16(_) => SourceDtype::BF16,
        }
    }

    /// Elements `range`, borrowed.
    pub(crate) fn slice(&self, range: std::ops::Range<usize>) -> TensorData<'a> {
        match *self {
            Self::F32(x) => TensorData::F32(&x[range]),
            Self::F16(x) => TensorData::F16(&x[range]),
            Self::BF16(x) => TensorData::BF16(&x[range]),
        }
    }

    /// Converts elements `range` to f32 into `out` (which must have the same length).
    pub(crate) fn copy_to_f32(&self, start: usize, out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        let end = start + out.len();
        match self {
            Self::F32(x) => out.copy_from_slice(&x[start..end]),
            Self::F16(x) => crate::simd::f16_to_f32(&x[start..end], out),
            Self::BF16(x) => x[start..end].convert_to_f32_slice(out),
        }
    }
}

/// A named tensor to quantize: the shape is row-major and its product equals the number of elements.
#[derive(Debug, Clone)]
pub struct TensorView<'a> {
    /// Layer name, used in every error message.
    pub name: &'a str,
    /// Row-major shape; empty for a scalar.
    pub shape: &'a [usize],
    /// The elements.
    pub data: TensorData<'a>,
}

impl<'a> TensorView<'a> {
    /// Builds a view after checking that the shape matches the element count.
    pub fn new(name: &'a str, shape: &'a [usize], data: TensorData<'a>) -> Result<Self> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(QuantError::schema(
                name,
                format!(
                    "shape {shape:?} holds {expected} elements but {} were given; pass the tensor's real shape",
                    data.len()
                ),
            ));
        }
        Ok(Self { name, shape, data })
    }

    /// The 2-D view `[rows, cols]` used for grouping (see [`rows_cols`]).
    pub fn rows_cols(&self) -> (usize, usize) {
        rows_cols(self.shape)
    }
}

/// The 2-D view `[rows, cols]` of a shape: the first axis is `rows` and all others fold into `cols`, so a conv
/// kernel `[out, in, kh, kw]` is `[out, in*kh*kw]`; a 1-D tensor is one row; a scalar is `[1, 1]`.
pub fn rows_cols(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (1, *n),
        [rows, rest @ ..] => (*rows, rest.iter().product()),
    }
}
