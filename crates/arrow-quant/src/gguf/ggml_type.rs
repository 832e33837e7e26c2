//! The ggml tensor types of GGUF files: one row of [`GGML_TYPES`] each, with the type id of `ggml.h`, the name
//! llama.cpp and gguf-py use, and the block geometry (elements per block, bytes per block) of `ggml-common.h`.

use crate::error::{QuantError, Result};
use std::fmt;
use std::str::FromStr;

/// A ggml tensor type that arrow-quant writes and reads.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    /// IEEE float32.
    F32,
    /// IEEE float16.
    F16,
    /// bfloat16.
    BF16,
    /// 8-bit symmetric, blocks of 32 with a float16 scale.
    Q8_0,
    /// 4-bit symmetric, blocks of 32 with a float16 scale.
    Q4_0,
    /// 4-bit with a float16 scale and minimum per block of 32.
    Q4_1,
    /// 5-bit symmetric, blocks of 32.
    Q5_0,
    /// 5-bit with a scale and minimum per block of 32.
    Q5_1,
    /// 2-bit K-quant: super-blocks of 256, 16-element sub-blocks with 4-bit scales and minima.
    Q2_K,
    /// 3-bit K-quant: super-blocks of 256, 16-element sub-blocks with 6-bit signed scales.
    Q3_K,
    /// 4-bit K-quant: super-blocks of 256, 32-element sub-blocks with 6-bit scales and minima.
    Q4_K,
    /// 5-bit K-quant: super-blocks of 256, 32-element sub-blocks with 6-bit scales and minima.
    Q5_K,
    /// 6-bit K-quant: super-blocks of 256, 16-element sub-blocks with 8-bit signed scales.
    Q6_K,
    /// 4-bit non-linear grid (llama.cpp's `kvalues_iq4nl`), blocks of 32 with a float16 scale.
    IQ4_NL,
    /// 4-bit non-linear grid in super-blocks of 256 with 6-bit sub-block scales.
    IQ4_XS,
}

/// One row of the type table.
#[derive(Debug)]
pub struct GgmlTypeInfo {
    /// The type.
    pub ty: GgmlType,
    /// Name as llama.cpp and gguf-py spell it (`Q4_K`).
    pub name: &'static str,
    /// The `ggml_type` id stored in a GGUF tensor info.
    pub id: u32,
    /// Elements per block (1 for the float types).
    pub block_len: usize,
    /// Bytes per block.
    pub block_bytes: usize,
}

const fn row(
    ty: GgmlType,
    name: &'static str,
    id: u32,
    block_len: usize,
    block_bytes: usize,
) -> GgmlTypeInfo {
    GgmlTypeInfo {
        ty,
        name,
        id,
        block_len,
        block_bytes,
    }
}

/// Every type, in the order of [`GgmlType`]'s variants.
pub static GGML_TYPES: [GgmlTypeInfo; 15] = [
    row(GgmlType::F32, "F32", 0, 1, 4),
    row(GgmlType::F16, "F16", 1, 1, 2),
    row(GgmlType::BF16, "BF16", 30, 1, 2),
    row(GgmlType::Q8_0, "Q8_0", 8, 32, 34),
    row(GgmlType::Q4_0, "Q4_0", 2, 32, 18),
    row(GgmlType::Q4_1, "Q4_1", 3, 32, 20),
    row(GgmlType::Q5_0, "Q5_0", 6, 32, 22),
    row(GgmlType::Q5_1, "Q5_1", 7, 32, 24),
    row(GgmlType::Q2_K, "Q2_K", 10, 256, 84),
    row(GgmlType::Q3_K, "Q3_K", 11, 256, 110),
    row(GgmlType::Q4_K, "Q4_K", 12, 256, 144),
    row(GgmlType::Q5_K, "Q5_K", 13, 256, 176),
    row(GgmlType::Q6_K, "Q6_K", 14, 256, 210),
    row(GgmlType::IQ4_NL, "IQ4_NL", 20, 32, 18),
    row(GgmlType::IQ4_XS, "IQ4_XS", 23, 256, 136),
];

impl GgmlType {
    /// Its row of [`GGML_TYPES`].
    pub fn info(self) -> &'static GgmlTypeInfo {
        &GGML_TYPES[self as usize]
    }

    /// Its row, in a `const` context.
    pub const fn const_info(self) -> &'static GgmlTypeInfo {
        &GGML_TYPES[self as usize]
    }

    /// Name as llama.cpp spells it.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The `ggml_type` id.
    pub fn id(self) -> u32 {
        self.info().id
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        self.info().block_len
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.info().block_bytes
    }

    /// Stored bits per weight.
    pub fn bits_per_weight(self) -> f64 {
        let info = self.info();
        (info.block_bytes * 8) as f64 / info.block_len as f64
    }

    /// Bits of each element's code (or value, for the float types).
    pub const fn code_bits(self) -> u8 {
        match self {
            Self::F32 => 32,
            Self::F16 | Self::BF16 => 16,
            Self::Q8_0 => 8,
            Self::Q6_K => 6,
            Self::Q5_0 | Self::Q5_1 | Self::Q5_K => 5,
            Self::Q4_0 | Self::Q4_1 | Self::Q4_K | Self::IQ4_NL | Self::IQ4_XS => 4,
            Self::Q3_K => 3,
            Self::Q2_K => 2,
        }
    }

    /// True for F32, F16 and BF16 (no blocks).
    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::BF16)
    }

    /// The type with ggml id `id`, if we know it.
    pub fn from_id(id: u32) -> Option<Self> {
        GGML_TYPES.iter().find(|row| row.id == id).map(|row| row.ty)
    }

    /// True when a ggml row of `cols` elements is a whole number of this type's blocks.
    pub fn fits_row(self, cols: usize) -> bool {
        cols.is_multiple_of(self.block_len())
    }

    /// Bytes of a ggml row of `cols` elements, or `None` when `cols` is not a whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        self.fits_row(cols)
            .then(|| cols / self.block_len() * self.block_bytes())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GgmlType {
    type Err = QuantError;
    /// Parses a type name, case-insensitively (`q4_k` is `Q4_K`).
    fn from_str(s: &str) -> Result<Self> {
        GGML_TYPES
            .iter()
            .find(|row| row.name.eq_ignore_ascii_case(s))
            .map(|row| row.ty)
            .ok_or_else(|| {
                let names: Vec<&str> = GGML_TYPES.iter().map(|row| row.name).collect();
                QuantError::config("GGUF tensor type", format!("{s:?}"), names.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_variant_order_and_names_and_ids_parse_back() {
        for (i, row) in GGML_TYPES.iter().enumerate() {
            assert_eq!(row.ty as usize, i);
            assert_eq!(row.name.parse::<GgmlType>().unwrap(), row.ty);
            assert_eq!(row.name.to_lowercase().parse::<GgmlType>().unwrap(), row.ty);
            assert_eq!(GgmlType::from_id(row.id), Some(row.ty));
        }
        assert!("Q4_K_M".parse::<GgmlType>().is_err());
        assert_eq!(GgmlType::from_id(4), None); // the removed Q4_2
    }

    #[test]
    fn block_geometry_matches_ggml_common() {
        assert_eq!(GgmlType::Q4_K.bits_per_weight(), 4.5);
        assert_eq!(GgmlType::Q6_K.bits_per_weight(), 6.5625);
        assert_eq!(GgmlType::Q2_K.bits_per_weight(), 2.625);
        assert_eq!(GgmlType::Q4_0.row_bytes(64), Some(36));
        assert_eq!(GgmlType::Q4_K.row_bytes(320), None);
        assert_eq!(GgmlType::F16.row_bytes(3), Some(6));
    }
}
