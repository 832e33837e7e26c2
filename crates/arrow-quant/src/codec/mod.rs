//! Encodings: how the codes and parameters of one quantized tensor are laid out, one row of [`TABLE`] each, and
//! the [`Codec`] that quantizes, validates and dequantizes it.
//!
//! Families live in their own folders: [`flat`] (one scale and zero point per group of a row, searched by `rtn`,
//! `mse` or `hqq`) and [`two_level`] (super-blocks of quantized sub-block scales and minima); the ggml block types
//! of GGUF files are encodings too ([`ggml`], over the block codecs of `crate::gguf`). The parallel chunk
//! loop they share is [`driver`]. Adding an encoding: a variant of [`Encoding`], its row in [`TABLE`], and a
//! codec file implementing [`Codec`] (see docs/ARCHITECTURE.md).

pub(crate) mod driver;
pub(crate) mod flat;
pub(crate) mod ggml;
pub(crate) mod two_level;

use crate::codec::driver::QualitySums;
use crate::config::{BitWidth, FlatLayout, Layout, Method, QuantConfig};
use crate::error::{QuantError, Result};
use crate::gguf::GgmlType;
use crate::importance::ChannelWeights;
use crate::quantized::{QuantizedTensor, QuantizedView};
use crate::tensor::TensorView;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// A stored encoding of a quantized tensor; its name is the `encoding` column of model files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Flat 8-bit groups: one scale (and zero point) per group.
    Int8,
    /// Flat 4-bit groups.
    Int4,
    /// Flat 2-bit groups.
    Int2,
    /// Two-level 8-bit: 32-element sub-blocks with 6-bit scales and minima in 256-element super-blocks.
    Int8TwoLevel,
    /// Two-level 4-bit: 32-element sub-blocks with 6-bit scales and minima in 256-element super-blocks.
    Int4TwoLevel,
    /// Two-level 2-bit: 16-element sub-blocks with 4-bit scales and minima in 256-element super-blocks.
    Int2TwoLevel,
    /// A ggml block type (`Q8_0` ... `IQ4_XS`, not the float types): `data` holds llama.cpp's blocks of every
    /// ggml row (the last axis) in order, codes and parameters together; `params` is empty.
    Ggml(GgmlType),
}

/// How an encoding keeps its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// One scale (and zero point) per group of a row; the group size is a setting of the tensor.
    Flat,
    /// Fixed-size parameter records (`params`), one per block of elements.
    Blocks,
}

/// One row of the encoding table.
pub struct EncodingInfo {
    /// The encoding.
    pub encoding: Encoding,
    /// Name in files and reports.
    pub name: &'static str,
    /// Code width of the fallback ladder and planner (a ggml type's nearest of 2 / 4 / 8 at or above its codes).
    pub bits: BitWidth,
    /// Bits of each element's code (`bits` for the native encodings; 3, 5 or 6 for some ggml types).
    pub code_bits: u8,
    /// Where the parameters live.
    pub family: Family,
    /// Elements sharing one scale: the sub-block length of a block encoding, 0 for flat (set per tensor).
    pub block_len: usize,
    /// Elements of one parameter record of a block encoding (0 for flat).
    pub record_len: usize,
    /// Stored bits per weight of full blocks (`None` for flat: it depends on the group size and scale type).
    pub bits_per_weight: Option<f64>,
    /// The codec.
    codec: &'static dyn Codec,
}

const FLAT8: flat::FlatCodec = flat::FlatCodec::new(BitWidth::Int8);
const FLAT4: flat::FlatCodec = flat::FlatCodec::new(BitWidth::Int4);
const FLAT2: flat::FlatCodec = flat::FlatCodec::new(BitWidth::Int2);
const TWO_LEVEL8: two_level::TwoLevelCodec = two_level::TwoLevelCodec::new(BitWidth::Int8);
const TWO_LEVEL4: two_level::TwoLevelCodec = two_level::TwoLevelCodec::new(BitWidth::Int4);
const TWO_LEVEL2: two_level::TwoLevelCodec = two_level::TwoLevelCodec::new(BitWidth::Int2);

/// Rows of [`TABLE`] before the ggml block types.
const NATIVE_ROWS: usize = 6;

/// Every encoding, in the order of [`Encoding`]'s variants (the ggml block types in [`GgmlType`]'s order).
pub static TABLE: [EncodingInfo; NATIVE_ROWS + ggml::BLOCK_TYPES.len()] = [
    flat_row(Encoding::Int8, "int8", BitWidth::Int8, &FLAT8),
    flat_row(Encoding::Int4, "int4", BitWidth::Int4, &FLAT4),
    flat_row(Encoding::Int2, "int2", BitWidth::Int2, &FLAT2),
    two_level_row(Encoding::Int8TwoLevel, "int8_2l", &TWO_LEVEL8, 8.5),
    two_level_row(Encoding::Int4TwoLevel, "int4_2l", &TWO_LEVEL4, 4.5),
    two_level_row(Encoding::Int2TwoLevel, "int2_2l", &TWO_LEVEL2, 2.625),
    ggml_row(&ggml::CODECS[0]),
    ggml_row(&ggml::CODECS[1]),
    ggml_row(&ggml::CODECS[2]),
    ggml_row(&ggml::CODECS[3]),
    ggml_row(&ggml::CODECS[4]),
    ggml_row(&ggml::CODECS[5]),
    ggml_row(&ggml::CODECS[6]),
    ggml_row(&ggml::CODECS[7]),
    ggml_row(&ggml::CODECS[8]),
    ggml_row(&ggml::CODECS[9]),
    ggml_row(&ggml::CODECS[10]),
    ggml_row(&ggml::CODECS[11]),
];

const fn ggml_row(codec: &'static ggml::GgmlCodec) -> EncodingInfo {
    let ty = codec.ty;
    let info = ty.const_info();
    EncodingInfo {
        encoding: Encoding::Ggml(ty),
        name: info.name,
        bits: ggml::nominal_width(ty),
        code_bits: ty.code_bits(),
        family: Family::Blocks,
        block_len: info.block_len,
        record_len: info.block_len,
        bits_per_weight: Some((info.block_bytes * 8) as f64 / info.block_len as f64),
        codec,
    }
}

const fn flat_row(
    encoding: Encoding,
    name: &'static str,
    bits: BitWidth,
    codec: &'static flat::FlatCodec,
) -> EncodingInfo {
    EncodingInfo {
        encoding,
        name,
        bits,
        code_bits: bits.bits() as u8,
        family: Family::Flat,
        block_len: 0,
        record_len: 0,
        bits_per_weight: None,
        codec,
    }
}

const fn two_level_row(
    encoding: Encoding,
    name: &'static str,
    codec: &'static two_level::TwoLevelCodec,
    bits_per_weight: f64,
) -> EncodingInfo {
    EncodingInfo {
        encoding,
        name,
        bits: codec.spec.bits,
        code_bits: codec.spec.bits.bits() as u8,
        family: Family::Blocks,
        block_len: codec.spec.sub_len,
        record_len: two_level::SUPER_BLOCK,
        bits_per_weight: Some(bits_per_weight),
        codec,
    }
}

impl Encoding {
    /// Its row of [`TABLE`].
    pub fn info(self) -> &'static EncodingInfo {
        let row = match self {
            Self::Int8 => 0,
            Self::Int4 => 1,
            Self::Int2 => 2,
            Self::Int8TwoLevel => 3,
            Self::Int4TwoLevel => 4,
            Self::Int2TwoLevel => 5,
            Self::Ggml(ty) => NATIVE_ROWS + ggml::index(ty).unwrap_or(0),
        };
        &TABLE[row]
    }

    /// The encoding of a ggml block type (`None` for F32 / F16 / BF16, which are not quantized).
    pub fn ggml(ty: GgmlType) -> Option<Self> {
        ggml::index(ty).map(|_| Self::Ggml(ty))
    }

    /// The ggml type of a ggml encoding.
    pub fn ggml_type(self) -> Option<GgmlType> {
        match self {
            Self::Ggml(ty) => Some(ty),
            _ => None,
        }
    }

    /// Bits of each element's code.
    pub fn code_bits(self) -> u8 {
        self.info().code_bits
    }

    /// Name in files and reports (`int4`, `int4_2l`, ...).
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Code width.
    pub fn bits(self) -> BitWidth {
        self.info().bits
    }

    /// Where the parameters live.
    pub fn family(self) -> Family {
        self.info().family
    }

    /// The flat encoding of a width.
    pub const fn flat(bits: BitWidth) -> Self {
        match bits {
            BitWidth::Int8 => Self::Int8,
            BitWidth::Int4 => Self::Int4,
            BitWidth::Int2 => Self::Int2,
        }
    }

    /// The two-level encoding of a width.
    pub const fn two_level(bits: BitWidth) -> Self {
        match bits {
            BitWidth::Int8 => Self::Int8TwoLevel,
            BitWidth::Int4 => Self::Int4TwoLevel,
            BitWidth::Int2 => Self::Int2TwoLevel,
        }
    }

    pub(crate) fn codec(self) -> &'static dyn Codec {
        self.info().codec
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Encoding {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self> {
        TABLE
            .iter()
            .find(|row| row.name == s)
            .map(|row| row.encoding)
            .ok_or_else(|| {
                let names: Vec<&str> = TABLE.iter().map(|row| row.name).collect();
                QuantError::config("encoding", format!("{s:?}"), names.join(", "))
            })
    }
}

/// What an encoding does: quantize a tensor, check and decode its stored form.
pub(crate) trait Codec: Sync {
    /// True when the encoding stays near its nominal size on a 2-D view of `cols` columns.
    fn fits(&self, cols: usize) -> bool;

    /// Quantizes the rows `rows` of `tensor`'s 2-D view as `plan` says (its encoding is this codec's),
    /// weighting the search's squared error by `weights`: a tensor of shape `[rows.len(), shape[1..]]` and the
    /// raw quality sums of those rows (add them up over the parts, then [`Codec::finish_sums`]). `rows` starts
    /// at a multiple of [`Codec::part_rows`] and ends at one or at the last row: the parallel chunks are those
    /// of the whole tensor, so every part's codes, parameters and sums are exactly the whole tensor's.
    fn quantize(
        &self,
        tensor: &TensorView<'_>,
        plan: &Plan,
        weights: &ChannelWeights,
        rows: Range<usize>,
    ) -> Result<(QuantizedTensor, QualitySums)>;

    /// The rows (of the 2-D view of `shape`) that every part of a partial quantization but the last must be a
    /// multiple of: whole parallel chunks, whole super-blocks, whole bytes of packed codes.
    fn part_rows(&self, shape: &[usize], plan: &Plan) -> usize;

    /// The quality sums of a whole tensor from the sums of its parts (two-level derives `xy` at the end).
    fn finish_sums(&self, sums: QualitySums) -> QualitySums {
        sums
    }

    /// Checks that the buffers of `view` have the sizes its shape implies and hold valid values.
    fn validate(&self, view: &QuantizedView<'_>) -> Result<()>;

    /// Elements per dequantization chunk of a validated view (every chunk but the last has this many).
    fn chunk_elements(&self, view: &QuantizedView<'_>) -> usize;

    /// Dequantizes chunk `index` of a validated view into `out` (its elements, channel scales not yet divided
    /// out), unpacking through `codes`.
    fn dequantize_chunk(
        &self,
        view: &QuantizedView<'_>,
        index: usize,
        codes: &mut Vec<u8>,
        out: &mut [f32],
    );
}

/// The shape of `rows` rows of a tensor of `shape` (along its first axis; a tensor of fewer than 2 axes is one
/// row, so a part of it is the whole).
pub(crate) fn part_shape(shape: &[usize], rows: usize) -> Vec<usize> {
    match shape {
        [_, rest @ ..] if !rest.is_empty() => {
            std::iter::once(rows).chain(rest.iter().copied()).collect()
        }
        _ => shape.to_vec(),
    }
}

/// The fewest rows of `cols` elements that make a whole number of chunks of `chunk` elements.
pub(crate) fn rows_of_whole_chunks(chunk: usize, cols: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    if chunk == 0 || cols == 0 {
        1
    } else {
        chunk / gcd(chunk, cols)
    }
}

/// The settings of one tensor once `auto` is resolved: its encoding, and for a flat one the group layout and the
/// parameter search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The encoding to write.
    pub encoding: Encoding,
    /// Group layout (used by the flat family only).
    pub flat: FlatLayout,
    /// Parameter search of the flat family (`Rtn`, `Mse` or `Hqq`; never `Auto`).
    pub method: Method,
}

impl Plan {
    /// Resolves `config` for a tensor whose 2-D view has `cols` columns. `Layout::Auto` is the two-level
    /// encoding where it fits ([`Codec::fits`]) and `method` is `auto`, else the default flat layout;
    /// `Method::Auto` on a flat layout is `mse`.
    ///
    /// Measured on the standard 4096 x 4096 tensor (benchmarks/bench_quality.py, two threads) two-level has the
    /// lowest error per stored bit of all methods (int8_2l 2.32e-5 at 8.5 bits, int4_2l 4.97e-3 at 4.5, int2_2l
    /// 6.88e-2 at 2.625) above 1 GB/s; `mse` is the best flat method at about 1 GB/s (`hqq` is better but near
    /// 0.45 GB/s).
    pub fn for_tensor(config: &QuantConfig, cols: usize) -> Self {
        let flat_method = match config.method {
            Method::Auto => Method::Mse,
            m => m,
        };
        let two_level = Encoding::two_level(config.bits);
        let flat = |layout: FlatLayout| Self {
            encoding: Encoding::flat(config.bits),
            flat: layout,
            method: flat_method,
        };
        let use_two_level = match config.layout {
            Layout::Flat(layout) => return flat(layout),
            Layout::TwoLevel => true,
            Layout::Auto => config.method == Method::Auto && two_level.codec().fits(cols),
        };
        if use_two_level {
            Self {
                encoding: two_level,
                flat: FlatLayout::default(),
                method: Method::Auto,
            }
        } else {
            flat(FlatLayout::default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_variant_order_and_names_parse_back() {
        for (i, row) in TABLE.iter().enumerate() {
            assert!(std::ptr::eq(row.encoding.info(), row), "row {i}");
            assert_eq!(row.name.parse::<Encoding>().unwrap(), row.encoding);
            assert_eq!(row.encoding.to_string(), row.name);
        }
        assert_eq!(
            "Q4_K".parse::<Encoding>().unwrap(),
            Encoding::Ggml(GgmlType::Q4_K)
        );
        assert_eq!(Encoding::ggml(GgmlType::F16), None);
        assert_eq!(Encoding::Ggml(GgmlType::Q6_K).code_bits(), 6);
        assert_eq!(Encoding::Ggml(GgmlType::Q6_K).bits(), BitWidth::Int8);
        assert!("q4_k".parse::<Encoding>().is_err());
    }

    #[test]
    fn auto_is_two_level_where_it_fits() {
        let config = QuantConfig::default();
        assert_eq!(
            Plan::for_tensor(&config, 384).encoding,
            Encoding::Int4TwoLevel
        );
        // 27 columns (a 3x3x3 conv kernel) would pay one super-block header per row.
        let short = Plan::for_tensor(&config, 27);
        assert_eq!(
            (short.encoding, short.method),
            (Encoding::Int4, Method::Mse)
        );
        let rtn = QuantConfig {
            method: Method::Rtn,
            ..config
        };
        assert_eq!(Plan::for_tensor(&rtn, 384).encoding, Encoding::Int4);
    }
}
