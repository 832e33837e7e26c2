//! Quantization settings: bit width, layout (auto, flat groups with their size / symmetry / scale type, or
//! two-level), parameter-search method; and [`QuantOptions`], the one way user options become a config.

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

/// How the scale and zero point of each group of a flat layout are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Min/max round-to-nearest: one pass, fastest.
    Rtn,
    /// Per-group search over shrunk clipping ranges for the least squared error; never worse than `Rtn`.
    Mse,
    /// Half-quadratic optimisation (HQQ) of each group's zero point and scale under a sparsity-promoting
    /// `l_p` loss (p < 1), started from the `mse` choice and never worse than it. Float zero points.
    Hqq,
    /// Chosen per layout: the two-level encodings' own least-squares search, `mse` on a flat layout (see
    /// [`crate::codec::Encoding`] and `Plan::for_tensor`). Never stored in a result.
    Auto,
}

impl Method {
    /// Name as accepted by [`FromStr`].
    pub const fn name(self) -> &'static str {
        match self {
            Self::Rtn => "rtn",
            Self::Mse => "mse",
            Self::Hqq => "hqq",
            Self::Auto => "auto",
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
            "auto" => Ok(Self::Auto),
            "two_level" => Err(QuantError::config(
                "method",
                "\"two_level\"",
                "\"auto\", \"rtn\", \"mse\" or \"hqq\": two-level is a layout (layout=\"two_level\", \
                 --layout two_level), searched by method \"auto\"",
            )),
            other => Err(QuantError::config(
                "method",
                format!("{other:?}"),
                "\"auto\", \"rtn\", \"mse\" or \"hqq\"",
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

/// The group layout of the flat encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlatLayout {
    /// Elements per group along the last axis of the 2-D view.
    pub group_size: GroupSize,
    /// Symmetric (no zero point, codes centred on `2^(bits-1)`) or asymmetric (scale and zero point).
    pub symmetric: bool,
    /// Storage type of scales and zero points.
    pub scale_dtype: ScaleDtype,
}

impl Default for FlatLayout {
    /// Groups of 128, asymmetric, float16 scales.
    fn default() -> Self {
        Self {
            group_size: GroupSize::Elements(128),
            symmetric: false,
            scale_dtype: ScaleDtype::F16,
        }
    }
}

/// Which family of encodings a tensor is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// The two-level encoding where the rows fit it and the method is `auto`, else the default flat layout.
    Auto,
    /// Flat groups with these settings.
    Flat(FlatLayout),
    /// The two-level encodings (`int8_2l` / `int4_2l` / `int2_2l`): fixed sub-blocks, searched by `auto`.
    TwoLevel,
}

impl Layout {
    /// `auto`, `flat` or `two_level`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Flat(_) => "flat",
            Self::TwoLevel => "two_level",
        }
    }
}

/// Everything the kernels need to quantize one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantConfig {
    /// Code width.
    pub bits: BitWidth,
    /// Encoding family and, for flat, its group layout.
    pub layout: Layout,
    /// Parameter choice.
    pub method: Method,
}

impl Default for QuantConfig {
    /// INT4, `auto` layout, `auto` method: `int4_2l` where rows fit.
    fn default() -> Self {
        Self {
            bits: BitWidth::Int4,
            layout: Layout::Auto,
            method: Method::Auto,
        }
    }
}

impl QuantConfig {
    /// The flat settings in force: those of a flat layout, else the defaults (used where `auto` falls back).
    pub fn flat(&self) -> FlatLayout {
        match self.layout {
            Layout::Flat(f) => f,
            _ => FlatLayout::default(),
        }
    }

    /// Storage type of scales (float16 unless a flat layout says float32).
    pub fn scale_dtype(&self) -> ScaleDtype {
        self.flat().scale_dtype
    }

    /// Checks combinations the types allow but the encodings do not: a two-level layout has one search.
    pub fn validate(&self) -> Result<()> {
        if self.layout == Layout::TwoLevel && self.method != Method::Auto {
            return Err(QuantError::config(
                "method",
                format!("{:?} with layout \"two_level\"", self.method.name()),
                "\"auto\": the two-level encodings have one least-squares search of their own \
                 (or layout \"flat\" for rtn / mse / hqq)",
            ));
        }
        Ok(())
    }

    /// The settings as JSON: what a run actually uses (flat settings only for a flat layout).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "bit_width": self.bits.bits(),
            "layout": self.layout.name(),
            "method": self.method.name(),
        });
        if let Layout::Flat(f) = self.layout {
            v["group_size"] = f.group_size.to_string().into();
            v["symmetric"] = f.symmetric.into();
            v["scale_dtype"] = f.scale_dtype.name().into();
        }
        v
    }
}

/// Quantization options as a user gives them (CLI flags, Python keywords): `None` keeps the base setting.
///
/// The one place that turns options into a [`QuantConfig`], so the CLI and Python agree:
/// - `layout`: `auto`, `flat` or `two_level`. Unset, a flat option (`group_size`, `symmetric`, `scale_dtype`)
///   or a flat method (`rtn`, `mse`, `hqq`) selects the flat layout; otherwise the base layout stays.
/// - A flat option with layout `two_level` or `auto` is an error (they would ignore it), and so is a flat
///   method with layout `two_level`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuantOptions<'a> {
    /// Bits per code: 2, 4 or 8.
    pub bits: Option<u32>,
    /// `auto`, `flat` or `two_level`.
    pub layout: Option<&'a str>,
    /// Group size of the flat layout.
    pub group_size: Option<GroupSize>,
    /// Symmetric groups (flat layout).
    pub symmetric: Option<bool>,
    /// `float16` or `float32` scales (flat layout).
    pub scale_dtype: Option<&'a str>,
    /// `auto`, `rtn`, `mse` or `hqq`.
    pub method: Option<&'a str>,
}

impl QuantOptions<'_> {
    /// `base` with these options applied, validated.
    pub fn apply(&self, base: QuantConfig) -> Result<QuantConfig> {
        let bits = match self.bits {
            Some(b) => BitWidth::from_bits(b)?,
            None => base.bits,
        };
        let method = match self.method {
            Some(m) => m.parse::<Method>()?,
            None => base.method,
        };
        let scale_dtype = self.scale_dtype.map(str::parse::<ScaleDtype>).transpose()?;
        let flat_option = [
            self.group_size.map(|_| "group_size"),
            self.symmetric.map(|_| "symmetric"),
            scale_dtype.map(|_| "scale_dtype"),
        ]
        .into_iter()
        .flatten()
        .next();
        let explicit = self.layout.map(parse_layout).transpose()?;
        let kind = match explicit {
            Some(kind) => kind,
            None if flat_option.is_some() => LayoutKind::Flat,
            None if self.method.is_some() && method != Method::Auto => LayoutKind::Flat,
            None => match base.layout {
                Layout::Auto => LayoutKind::Auto,
                Layout::Flat(_) => LayoutKind::Flat,
                Layout::TwoLevel => LayoutKind::TwoLevel,
            },
        };
        if let (Some(option), LayoutKind::Auto | LayoutKind::TwoLevel) = (flat_option, kind) {
            let name = if kind == LayoutKind::Auto {
                "auto"
            } else {
                "two_level"
            };
            return Err(QuantError::config(
                option,
                format!("a value with layout \"{name}\""),
                format!(
                    "no {option}: layout \"{name}\" does not use it (layout \"flat\" does, and is chosen \
                     when the layout is left unset)"
                ),
            ));
        }
        let layout = match kind {
            LayoutKind::Auto if method != Method::Auto => Layout::Flat(base.flat()),
            LayoutKind::Auto => Layout::Auto,
            LayoutKind::TwoLevel => Layout::TwoLevel,
            LayoutKind::Flat => {
                let mut flat = base.flat();
                if let Some(g) = self.group_size {
                    flat.group_size = g;
                }
                if let Some(s) = self.symmetric {
                    flat.symmetric = s;
                }
                if let Some(d) = scale_dtype {
                    flat.scale_dtype = d;
                }
                Layout::Flat(flat)
            }
        };
        let config = QuantConfig {
            bits,
            layout,
            method,
        };
        config.validate()?;
        Ok(config)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayoutKind {
    Auto,
    Flat,
    TwoLevel,
}

fn parse_layout(s: &str) -> Result<LayoutKind> {
    match s {
        "auto" => Ok(LayoutKind::Auto),
        "flat" => Ok(LayoutKind::Flat),
        "two_level" => Ok(LayoutKind::TwoLevel),
        other => Err(QuantError::config(
            "layout",
            format!("{other:?}"),
            "\"auto\", \"flat\" or \"two_level\"",
        )),
    }
}

/// Parses a group size as users write it: 32, 64, 128, 256, or `per_channel` (also `0` / `-1`).
pub fn parse_group_size(text: &str) -> Result<GroupSize> {
    match text {
        "per_channel" | "0" | "-1" => Ok(GroupSize::PerChannel),
        other => other
            .parse::<usize>()
            .map_err(|_| {
                QuantError::config(
                    "group_size",
                    format!("{other:?}"),
                    "32, 64, 128, 256 or \"per_channel\"",
                )
            })
            .and_then(GroupSize::elements),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(o: QuantOptions<'_>) -> Result<QuantConfig> {
        o.apply(QuantConfig::default())
    }

    #[test]
    fn a_group_size_selects_the_flat_layout_whatever_its_value() {
        for g in [64, 128] {
            let c = apply(QuantOptions {
                group_size: Some(GroupSize::Elements(g)),
                ..Default::default()
            })
            .unwrap();
            assert_eq!(
                c.layout,
                Layout::Flat(FlatLayout {
                    group_size: GroupSize::Elements(g),
                    ..Default::default()
                })
            );
        }
        let c = apply(QuantOptions {
            method: Some("rtn"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (c.layout, c.method),
            (Layout::Flat(FlatLayout::default()), Method::Rtn)
        );
        assert_eq!(
            apply(QuantOptions::default()).unwrap(),
            QuantConfig::default()
        );
    }

    #[test]
    fn options_the_layout_ignores_are_errors() {
        for layout in ["two_level", "auto"] {
            for o in [
                QuantOptions {
                    group_size: Some(GroupSize::Elements(64)),
                    ..Default::default()
                },
                QuantOptions {
                    symmetric: Some(true),
                    ..Default::default()
                },
                QuantOptions {
                    scale_dtype: Some("float32"),
                    ..Default::default()
                },
            ] {
                let err = apply(QuantOptions {
                    layout: Some(layout),
                    ..o
                })
                .unwrap_err();
                assert!(matches!(err, QuantError::InvalidConfig { .. }), "{err}");
            }
        }
        let err = apply(QuantOptions {
            layout: Some("two_level"),
            method: Some("hqq"),
            ..Default::default()
        });
        assert!(err.unwrap_err().to_string().contains("two_level"));
        assert!(apply(QuantOptions {
            method: Some("two_level"),
            ..Default::default()
        })
        .is_err());
        assert!(apply(QuantOptions {
            layout: Some("blocks"),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn a_flat_base_keeps_its_settings_under_new_ones() {
        let base = QuantConfig {
            layout: Layout::Flat(FlatLayout {
                group_size: GroupSize::Elements(256),
                ..Default::default()
            }),
            ..QuantConfig::default()
        };
        let c = QuantOptions {
            symmetric: Some(true),
            ..Default::default()
        }
        .apply(base)
        .unwrap();
        assert_eq!(c.flat().group_size, GroupSize::Elements(256));
        assert!(c.flat().symmetric);
        let c = QuantOptions {
            layout: Some("two_level"),
            ..Default::default()
        }
        .apply(base)
        .unwrap();
        assert_eq!(c.layout, Layout::TwoLevel);
    }

    #[test]
    fn group_sizes_parse_as_written() {
        assert_eq!(
            parse_group_size("per_channel").unwrap(),
            GroupSize::PerChannel
        );
        assert_eq!(parse_group_size("64").unwrap(), GroupSize::Elements(64));
        assert!(parse_group_size("100").is_err());
        assert!(parse_group_size("x").is_err());
    }
}
