//! A quantized tensor: its encoding, packed codes, a payload of parameters (flat scales and zero points, or block
//! records) and quality figures; owned, or borrowed as a view.

use crate::codec::flat::layout::GroupLayout;
use crate::codec::Encoding;
use crate::config::{GroupSize, Method, ScaleDtype};
use crate::error::{QuantError, Result};
use crate::tensor::SourceDtype;
use half::f16;

/// Scales or zero points in their storage type.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamBuffer {
    /// float16 storage (default).
    F16(Vec<f16>),
    /// float32 storage.
    F32(Vec<f32>),
}

/// Borrowed scales or zero points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamSlice<'a> {
    /// float16 storage.
    F16(&'a [f16]),
    /// float32 storage.
    F32(&'a [f32]),
}

impl ParamBuffer {
    /// Stores `values` (already rounded to the storage type) as `dtype`.
    pub(crate) fn from_f32(values: Vec<f32>, dtype: ScaleDtype) -> Self {
        match dtype {
            ScaleDtype::F32 => Self::F32(values),
            ScaleDtype::F16 => Self::F16(values.iter().map(|&v| f16::from_f32(v)).collect()),
        }
    }

    /// A borrowed view.
    pub fn as_slice(&self) -> ParamSlice<'_> {
        match self {
            Self::F16(v) => ParamSlice::F16(v),
            Self::F32(v) => ParamSlice::F32(v),
        }
    }
}

impl ParamSlice<'_> {
    /// Number of parameters.
    pub fn len(&self) -> usize {
        match self {
            Self::F16(v) => v.len(),
            Self::F32(v) => v.len(),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parameter `i` as f32.
    #[inline(always)]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Self::F16(v) => v[i].to_f32(),
            Self::F32(v) => v[i],
        }
    }

    /// Storage type.
    pub fn dtype(&self) -> ScaleDtype {
        match self {
            Self::F16(_) => ScaleDtype::F16,
            Self::F32(_) => ScaleDtype::F32,
        }
    }

    /// Bytes of storage.
    pub fn nbytes(&self) -> usize {
        self.len() * self.dtype().size()
    }

    /// An owned copy.
    pub fn to_buffer(&self) -> ParamBuffer {
        match self {
            Self::F16(v) => ParamBuffer::F16(v.to_vec()),
            Self::F32(v) => ParamBuffer::F32(v.to_vec()),
        }
    }
}

/// Fidelity of a quantized tensor to its source, computed in the same pass as the codes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    /// Cosine similarity between the source and its dequantized form (1.0 for two zero tensors).
    pub cosine: f64,
    /// `||w - w_hat||^2 / ||w||^2` (0.0 for an exactly reconstructed tensor).
    pub rel_mse: f64,
}

impl Quality {
    /// Figures from the accumulated sums.
    pub(crate) fn from_sums(xx: f64, ee: f64, xy: f64, yy: f64) -> Self {
        let rel_mse = if xx > 0.0 {
            ee / xx
        } else if ee == 0.0 {
            0.0
        } else {
            f64::INFINITY
        };
        let cosine = if xx > 0.0 && yy > 0.0 {
            (xy / (xx.sqrt() * yy.sqrt())).clamp(-1.0, 1.0)
        } else if xx == 0.0 && yy == 0.0 {
            1.0
        } else {
            0.0
        };
        Self { cosine, rel_mse }
    }
}

/// Owned parameters of a flat tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatParams {
    /// Elements per group along the last axis of the 2-D view.
    pub group_size: GroupSize,
    /// One scale per group, row by row.
    pub scales: ParamBuffer,
    /// One zero point per group (same storage type as the scales); `None` when symmetric.
    pub zero_points: Option<ParamBuffer>,
}

/// The parameters of a quantized tensor, of the kind its encoding's family keeps.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// Per-group scales and zero points of a flat encoding.
    Flat(FlatParams),
    /// The packed parameter records of a block encoding (two-level super-blocks, see `docs/FORMAT.md`).
    Blocks(Vec<u8>),
}

/// Borrowed parameters of a quantized tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PayloadRef<'a> {
    /// Per-group parameters of a flat encoding.
    Flat {
        /// Elements per group.
        group_size: GroupSize,
        /// One scale per group.
        scales: ParamSlice<'a>,
        /// One zero point per group; `None` for symmetric tensors (implicit zero `2^(bits-1)`).
        zero_points: Option<ParamSlice<'a>>,
    },
    /// Parameter records of a block encoding.
    Blocks(&'a [u8]),
}

impl Payload {
    /// A borrowed view.
    pub fn as_ref(&self) -> PayloadRef<'_> {
        match self {
            Self::Flat(p) => PayloadRef::Flat {
                group_size: p.group_size,
                scales: p.scales.as_slice(),
                zero_points: p.zero_points.as_ref().map(ParamBuffer::as_slice),
            },
            Self::Blocks(records) => PayloadRef::Blocks(records),
        }
    }
}

impl PayloadRef<'_> {
    /// An owned copy.
    pub fn to_owned(&self) -> Payload {
        match *self {
            Self::Flat {
                group_size,
                scales,
                zero_points,
            } => Payload::Flat(FlatParams {
                group_size,
                scales: scales.to_buffer(),
                zero_points: zero_points.map(|z| z.to_buffer()),
            }),
            Self::Blocks(records) => Payload::Blocks(records.to_vec()),
        }
    }

    /// Bytes of storage.
    pub fn nbytes(&self) -> usize {
        match self {
            Self::Flat {
                scales,
                zero_points,
                ..
            } => scales.nbytes() + zero_points.map_or(0, |z| z.nbytes()),
            Self::Blocks(records) => records.len(),
        }
    }
}

/// An owned quantized tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedTensor {
    /// Layer name.
    pub name: String,
    /// Shape of the source tensor.
    pub shape: Vec<usize>,
    /// Element type of the source tensor.
    pub source_dtype: SourceDtype,
    /// How the codes and parameters are stored.
    pub encoding: Encoding,
    /// The flat parameter search that chose the parameters (`rtn`, `mse`, `hqq`); for a ggml type `rtn` when it
    /// is round-to-nearest ([`crate::gguf::Rounding::Nearest`]), `None` for its search; `None` for the other block encodings (they have
    /// one search of their own) and for tensors read back from a file (the method is not stored).
    pub method: Option<Method>,
    /// Packed codes, `ceil(n * bits / 8)` bytes.
    pub data: Vec<u8>,
    /// Scales and zero points, or block records.
    pub payload: Payload,
    /// Activation-aware channel scales `s` (one per input channel, `shape[1]` values; see
    /// [`crate::diffusion::channel_scaling`]): the codes encode `w[i, c] * s[channel(c)]`, and dequantization
    /// divides by them. `None` for a plainly quantized tensor.
    pub channel_scales: Option<Vec<f32>>,
    /// Fidelity to the source (for a channel-scaled tensor: of the dequantized values, scales undone, to the
    /// original weights).
    pub quality: Quality,
}

impl QuantizedTensor {
    /// A borrowed view, for dequantization.
    pub fn view(&self) -> QuantizedView<'_> {
        QuantizedView {
            name: &self.name,
            shape: &self.shape,
            encoding: self.encoding,
            data: &self.data,
            payload: self.payload.as_ref(),
            channel_scales: self.channel_scales.as_deref(),
        }
    }

    /// The encoding name: `int8` / `int4` / `int2` (flat) or `int8_2l` / `int4_2l` / `int2_2l` (two-level).
    pub fn encoding_name(&self) -> &'static str {
        self.encoding.name()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True for an empty tensor.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stored bytes: packed codes plus scales and zero points (or block records) plus channel scales.
    pub fn nbytes(&self) -> usize {
        self.view().nbytes()
    }

    /// Stored bits per weight, counting every parameter.
    pub fn bits_per_weight(&self) -> f64 {
        self.view().bits_per_weight()
    }
}

/// A borrowed quantized tensor (for example buffers owned by numpy or Arrow).
#[derive(Debug, Clone, Copy)]
pub struct QuantizedView<'a> {
    /// Layer name, used in error messages.
    pub name: &'a str,
    /// Shape of the source tensor.
    pub shape: &'a [usize],
    /// How the codes and parameters are stored.
    pub encoding: Encoding,
    /// Packed codes.
    pub data: &'a [u8],
    /// Scales and zero points, or block records.
    pub payload: PayloadRef<'a>,
    /// Activation-aware channel scales, one per input channel (`shape[1]`), positive and finite; dequantized
    /// values are divided by the scale of their channel. `None` for a plainly quantized tensor.
    pub channel_scales: Option<&'a [f32]>,
}

impl<'a> QuantizedView<'a> {
    /// Scales of a flat tensor; `None` for block encodings.
    pub fn scales(&self) -> Option<ParamSlice<'a>> {
        match self.payload {
            PayloadRef::Flat { scales, .. } => Some(scales),
            PayloadRef::Blocks(_) => None,
        }
    }

    /// Zero points of an asymmetric flat tensor; `None` when symmetric and for block encodings.
    pub fn zero_points(&self) -> Option<ParamSlice<'a>> {
        match self.payload {
            PayloadRef::Flat { zero_points, .. } => zero_points,
            PayloadRef::Blocks(_) => None,
        }
    }

    /// Parameter records of a block encoding; `None` for flat tensors.
    pub fn params(&self) -> Option<&'a [u8]> {
        match self.payload {
            PayloadRef::Flat { .. } => None,
            PayloadRef::Blocks(records) => Some(records),
        }
    }

    /// Group geometry of a flat tensor; `None` for block encodings.
    pub fn group_layout(&self) -> Option<GroupLayout> {
        self.group_size().map(|g| GroupLayout::new(self.shape, g))
    }
}

impl QuantizedView<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True for an empty tensor.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Group size of a flat tensor; `None` for block encodings.
    pub fn group_size(&self) -> Option<GroupSize> {
        match self.payload {
            PayloadRef::Flat { group_size, .. } => Some(group_size),
            PayloadRef::Blocks(_) => None,
        }
    }

    /// True for a flat tensor without zero points.
    pub fn symmetric(&self) -> bool {
        matches!(
            self.payload,
            PayloadRef::Flat {
                zero_points: None,
                ..
            }
        )
    }

    /// Storage type of the scales (float16 for block encodings, whose records hold float16 headers).
    pub fn scale_dtype(&self) -> ScaleDtype {
        match self.payload {
            PayloadRef::Flat { scales, .. } => scales.dtype(),
            PayloadRef::Blocks(_) => ScaleDtype::F16,
        }
    }

    /// Checks that every buffer has the length its encoding and shape imply (and that channel scales are
    /// positive and finite).
    pub fn validate(&self) -> Result<()> {
        self.validate_channel_scales()?;
        self.encoding.codec().validate(self)
    }

    /// Input channels of the tensor (`shape[1]`) and the columns of the 2-D view per channel (the product of
    /// the axes after the second: `kh * kw` for a conv kernel); `None` for a tensor with fewer than 2 axes.
    pub fn channel_geometry(&self) -> Option<(usize, usize)> {
        channel_geometry(self.shape)
    }

    fn validate_channel_scales(&self) -> Result<()> {
        let Some(s) = self.channel_scales else {
            return Ok(());
        };
        let Some((channels, _)) = self.channel_geometry() else {
            return Err(QuantError::corrupt(
                self.name,
                format!(
                    "has channel scales but shape {:?} has no input-channel axis (needs ndim >= 2)",
                    self.shape
                ),
            ));
        };
        if s.len() != channels {
            return Err(QuantError::corrupt(
                self.name,
                format!(
                    "{} channel scales but shape {:?} has {channels} input channels (shape[1])",
                    s.len(),
                    self.shape
                ),
            ));
        }
        if let Some(i) = s.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(QuantError::corrupt(
                self.name,
                format!(
                    "channel scale {i} is {}; channel scales must be positive and finite",
                    s[i]
                ),
            ));
        }
        Ok(())
    }

    /// Stored bytes: packed codes plus scales and zero points (or block records) plus channel scales.
    pub fn nbytes(&self) -> usize {
        self.data.len() + self.payload.nbytes() + self.channel_scales.map_or(0, |s| s.len() * 4)
    }

    /// Stored bits per weight, counting every parameter.
    pub fn bits_per_weight(&self) -> f64 {
        let n: usize = self.shape.iter().product();
        if n == 0 {
            0.0
        } else {
            self.nbytes() as f64 * 8.0 / n as f64
        }
    }
}

/// Input channels of a tensor of `shape` (`shape[1]`) and the columns of its 2-D view per channel (the product
/// of the axes after the second: `kh * kw` for a conv kernel); `None` for a tensor with fewer than 2 axes.
pub fn channel_geometry(shape: &[usize]) -> Option<(usize, usize)> {
    match shape {
        [_, channels, rest @ ..] => Some((*channels, rest.iter().product())),
        _ => None,
    }
}
