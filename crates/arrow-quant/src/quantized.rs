//! A quantized tensor: packed codes, scales, zero points and quality figures; owned, or borrowed as a view.

use crate::config::{BitWidth, GroupSize, Method, QuantConfig, ScaleDtype};
use crate::error::{QuantError, Result};
use crate::layout::GroupLayout;
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

/// An owned quantized tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedTensor {
    /// Layer name.
    pub name: String,
    /// Shape of the source tensor.
    pub shape: Vec<usize>,
    /// Element type of the source tensor.
    pub source_dtype: SourceDtype,
    /// The settings it was quantized with.
    pub config: QuantConfig,
    /// Packed codes, `ceil(n * bits / 8)` bytes.
    pub data: Vec<u8>,
    /// One scale per group, row by row.
    pub scales: ParamBuffer,
    /// One zero point per group; `None` when symmetric.
    pub zero_points: Option<ParamBuffer>,
    /// The packed super-block records of a two-level encoding (see `docs/FORMAT.md`); `None` for the flat
    /// encodings. When present, `scales` is empty and `zero_points` is `None`.
    pub params: Option<Vec<u8>>,
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
            bits: self.config.bits,
            group_size: self.config.group_size,
            data: &self.data,
            scales: self.scales.as_slice(),
            zero_points: self.zero_points.as_ref().map(ParamBuffer::as_slice),
            params: self.params.as_deref(),
            channel_scales: self.channel_scales.as_deref(),
        }
    }

    /// The encoding name: `int8` / `int4` / `int2` (flat) or `int8_2l` / `int4_2l` / `int2_2l` (two-level).
    pub fn encoding_name(&self) -> &'static str {
        self.view().encoding_name()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True for an empty tensor.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stored bytes: packed codes plus scales plus zero points plus two-level params plus channel scales.
    pub fn nbytes(&self) -> usize {
        self.view().nbytes()
    }

    /// Stored bits per weight, counting scales and zero points.
    pub fn bits_per_weight(&self) -> f64 {
        self.view().bits_per_weight()
    }

    /// The parameter-choice method used.
    pub fn method(&self) -> Method {
        self.config.method
    }
}

/// A borrowed quantized tensor (for example buffers owned by numpy or Arrow).
#[derive(Debug, Clone, Copy)]
pub struct QuantizedView<'a> {
    /// Layer name, used in error messages.
    pub name: &'a str,
    /// Shape of the source tensor.
    pub shape: &'a [usize],
    /// Code width.
    pub bits: BitWidth,
    /// Group layout.
    pub group_size: GroupSize,
    /// Packed codes.
    pub data: &'a [u8],
    /// One scale per group.
    pub scales: ParamSlice<'a>,
    /// One zero point per group; `None` for symmetric tensors (implicit zero `2^(bits-1)`).
    pub zero_points: Option<ParamSlice<'a>>,
    /// Super-block records of a two-level encoding; `None` for flat encodings (then `scales` holds the
    /// parameters). When present, `scales` must be empty and `zero_points` `None`.
    pub params: Option<&'a [u8]>,
    /// Activation-aware channel scales, one per input channel (`shape[1]`), positive and finite; dequantized
    /// values are divided by the scale of their channel. `None` for a plainly quantized tensor.
    pub channel_scales: Option<&'a [f32]>,
}

impl QuantizedView<'_> {
    /// Group geometry.
    pub fn layout(&self) -> GroupLayout {
        GroupLayout::new(self.shape, self.group_size)
    }

    /// The encoding name: `int8` / `int4` / `int2` (flat) or `int8_2l` / `int4_2l` / `int2_2l` (two-level).
    pub fn encoding_name(&self) -> &'static str {
        match self.params {
            None => self.bits.encoding_name(),
            Some(_) => crate::two_level::TwoLevelSpec::for_bits(self.bits).encoding_name(),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True for an empty tensor.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that every buffer has the length its metadata implies (and that channel scales are positive and
    /// finite).
    pub fn validate(&self) -> Result<()> {
        self.validate_channel_scales()?;
        let layout = self.layout();
        let n = layout.len();
        if let Some(params) = self.params {
            let want = self.bits.packed_len(self.len());
            if self.data.len() != want {
                return Err(QuantError::corrupt(
                    self.name,
                    format!("data has {} bytes but needs {want}", self.data.len()),
                ));
            }
            if !self.scales.is_empty() || self.zero_points.is_some() {
                return Err(QuantError::corrupt(
                    self.name,
                    "a two-level tensor keeps its parameters in params: scales must be empty and \
                     zero_points absent",
                ));
            }
            return crate::quantize_two_level::validate(self, params);
        }
        let want = self.bits.packed_len(n);
        if self.data.len() != want {
            return Err(QuantError::corrupt(
                self.name,
                format!(
                    "data has {} bytes but shape {:?} at {} bits needs {want}",
                    self.data.len(),
                    self.shape,
                    self.bits.bits()
                ),
            ));
        }
        let groups = layout.num_groups();
        if self.scales.len() != groups {
            return Err(QuantError::corrupt(
                self.name,
                format!("{} scales but {groups} groups", self.scales.len()),
            ));
        }
        if let Some(z) = self.zero_points {
            if z.len() != groups {
                return Err(QuantError::corrupt(
                    self.name,
                    format!("{} zero points but {groups} groups", z.len()),
                ));
            }
        }
        Ok(())
    }

    /// Input channels of the tensor (`shape[1]`) and the columns of the 2-D view per channel (the product of
    /// the axes after the second: `kh * kw` for a conv kernel); `None` for a tensor with fewer than 2 axes.
    pub fn channel_geometry(&self) -> Option<(usize, usize)> {
        match self.shape {
            [_, channels, rest @ ..] => Some((*channels, rest.iter().product())),
            _ => None,
        }
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

    /// Stored bytes: packed codes plus scales plus zero points plus two-level params plus channel scales.
    pub fn nbytes(&self) -> usize {
        self.data.len()
            + self.channel_scales.map_or(0, |s| s.len() * 4)
            + self.scales.nbytes()
            + self.zero_points.map_or(0, |z| z.nbytes())
            + self.params.map_or(0, <[u8]>::len)
    }

    /// Stored bits per weight, counting scales and zero points.
    pub fn bits_per_weight(&self) -> f64 {
        let n: usize = self.shape.iter().product();
        if n == 0 {
            0.0
        } else {
            self.nbytes() as f64 * 8.0 / n as f64
        }
    }
}
