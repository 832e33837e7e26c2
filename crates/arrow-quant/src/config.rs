//! Quantization settings: bit width, grouping, symmetry, parameter-search method, scale storage type.

use crate::error::{QuantError, Result};
use std::fmt;
use std::str::FromStr;

/// Integer code width. Codes are packed densely: 1, 2 or 4 codes per byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BitWidth {
    /// Four codes per byte; element `4i+k` in bits `2k..2k+1`.
    Int2,
    /// Two codes per byte; element `2i` in the low nibble.
    Int4,
    /// One code per byte.
    Int8,
}

impl BitWidth {
    /// Number of bits per code.
    pub const fn bits(self) -> u32 {
        match self {
            Self::Int2 => 2,
            Self::Int4 => 4,
            Self::Int8 => 8,
        }
    }

    /// Largest code value (`2^bits - 1`).
    pub const fn max_code(self) -> u32 {
        (1 << self.bits()) - 1
    }

    /// Packed bytes needed for `n` codes: `ceil(n * bits / 8)`.
    pub const fn packed_len(self, n: usize) -> usize {
        (n * self.bits() as usize).div_ceil(8)
    }

    /// The width from a bit count (2, 4 or 8).
    pub fn from_bits(bits: u32) -> Result<Self> {
        match bits {
            2 => Ok(Self::Int2),
            4 => Ok(Self::Int4),
            8 => Ok(Self::Int8),
            other => Err(QuantError::config("bit_width", other, "2, 4 or 8")),
        }
    }

    /// The encoding name used in files and reports (`int2`, `int4`, `int8`).
    pub const fn encoding_name(self) -> &'static str {
        match self {
            Self::Int2 => "int2",
            Self::Int4 => "int4",
            Self::Int8 => "int8",
        }
    }
}

/// How many consecutive elements of a row share one scale (and zero point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupSize {
    /// Groups of this many elements along the last axis (32, 64, 128 or 256); the last group of a row may be shorter.
    Elements(usize),
    /// One group per row of the 2-D view (`[out, in]`).
    PerChannel,
}

impl GroupSize {
    /// Allowed fixed group sizes.
    pub const ALLOWED: [usize; 4] = [32, 64, 128, 256];

    /// Validates a fixed group size.
    pub fn elements(n: usize) -> Result<Self> {
        if Self::ALLOWED.contains(&n) {
            Ok(Self::Elements(n))
        } else {
            Err(QuantError::config(
                "group_size",
                n,
                "32, 64, 128, 256 or \"per_channel\"",
            ))
        }
    }

    /// Group length for rows of `cols` elements.
    pub fn len_for_row(self, cols: usize) -> usize {
        match self {
            Self::Elements(g) => g,
            Self::PerChannel => cols.max(1),
        }
    }

    /// The value stored in files: the element count, or 0 for per-channel.
    pub fn as_stored(self) -> u32 {
        match self {
            Self::Elements(g) => g as u32,
            Self::PerChannel => 0,
        }
    }
}

impl fmt::Display for GroupSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Elements(g) => write!(f, "{g}"),
            Self::PerChannel => f.write_str("per_channel"),
        }
    }
}

/// How the scale and zero point of each group are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Min/max round-to-nearest: one pass, fastest.
    Rtn,
    /// Per-group search over shrunk clipping ranges for the least squared error; never worse than `Rtn`.
    Mse,
    /// Half-quadratic optimisation (HQQ) of each group's zero point and scale under a sparsity-promoting
    /// `l_p` loss (p < 1), started from the `mse` choice and never worse than it. Flat encoding, float zero points.
    Hqq,
    /// The two-level encoding (`int8_2l` / `int4_2l` / `int2_2l`, see `docs/FORMAT.md`): sub-blocks with small
    /// quantized scales and minima inside super-blocks, chosen by an iterative least-squares search. The group
    /// size is fixed by the bit width (32 elements at 8 and 4 bits, 16 at 2 bits); `group_size` is not used.
    TwoLevel,
    /// The best quality that stays at or above 1 GB/s on two threads: resolved per bit width by
    /// [`Method::resolve`] before quantizing (never stored in a result).
    Auto,
}

impl Method {
    /// Name as accepted by [`FromStr`].
    pub const fn name(self) -> &'static str {
        match self {
            Self::Rtn => "rtn",
            Self::Mse => "mse",
            Self::Hqq => "hqq",
            Self::TwoLevel => "two_level",
            Self::Auto => "auto",
        }
    }

    /// The concrete method `Auto` stands for (other methods are returned unchanged).
    ///
    /// `Auto` is `TwoLevel` at every bit width: measured on the standard 4096 x 4096 tensor
    /// (benchmarks/bench_quality.py, two threads) it has the lowest error per stored bit of all methods
    /// (int8_2l 2.32e-5 at 8.5 bits, int4_2l 4.97e-3 at 4.5, int2_2l 6.88e-2 at 2.625) and quantizes above
    /// 1 GB/s (about 4.0, 1.5 and 1.4 GB/s under a load average of 2.6). `hqq` is better than `mse` but runs
    /// at about 0.45 GB/s, below the 1 GB/s bar. When `flat_requested` (the caller asked for something only
    /// the flat encodings have: an explicit group size, symmetric groups or float32 scales, or the rows are
    /// short and of odd length, see [`crate::TwoLevelSpec::fits`]), `Auto` is `Mse`, the best flat method
    /// at about 1 GB/s.
    pub const fn resolve(self, flat_requested: bool) -> Self {
        match self {
            Self::Auto if flat_requested => Self::Mse,
            Self::Auto => Self::TwoLevel,
            other => other,
        }
    }
}

impl FromStr for Method {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "rtn" => Ok(Self::Rtn),
            "mse" => Ok(Self::Mse),
            "hqq" => Ok(Self::Hqq),
            "two_level" => Ok(Self::TwoLevel),
            "auto" => Ok(Self::Auto),
            other => Err(QuantError::config(
                "method",
                format!("{other:?}"),
                "\"auto\", \"rtn\", \"mse\", \"hqq\" or \"two_level\"",
            )),
        }
    }
}

/// Storage type of scales and zero points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScaleDtype {
    /// IEEE half precision (default): 2 bytes per parameter.
    F16,
    /// IEEE single precision: 4 bytes per parameter.
    F32,
}

impl ScaleDtype {
    /// Bytes per stored parameter.
    pub const fn size(self) -> usize {
        match self {
            Self::F16 => 2,
            Self::F32 => 4,
        }
    }

    /// Name as accepted by [`FromStr`].
    pub const fn name(self) -> &'static str {
        match self {
            Self::F16 => "float16",
            Self::F32 => "float32",
        }
    }
}

impl FromStr for ScaleDtype {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "float16" | "f16" => Ok(Self::F16),
            "float32" | "f32" => Ok(Self::F32),
            other => Err(QuantError::config(
                "scale_dtype",
                format!("{other:?}"),
                "\"float16\" or \"float32\"",
            )),
        }
    }
}

/// Everything the kernels need to quantize one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantConfig {
    /// Code width.
    pub bits: BitWidth,
    /// Group layout along the last axis.
    pub group_size: GroupSize,
    /// Symmetric (no zero point, codes centred on `2^(bits-1)`) or asymmetric (scale and zero point).
    pub symmetric: bool,
    /// Parameter choice.
    pub method: Method,
    /// Storage type of scales and zero points.
    pub scale_dtype: ScaleDtype,
}

impl Default for QuantConfig {
    fn default() -> Self {
        Self {
            bits: BitWidth::Int4,
            group_size: GroupSize::Elements(128),
            symmetric: false,
            method: Method::Auto,
            scale_dtype: ScaleDtype::F16,
        }
    }
}
