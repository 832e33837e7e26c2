//! What a tensor becomes when the type it was given cannot store it: the 32-element-block type that stands in for
//! a 256-element-block type when a row is not a whole number of its blocks ([`block_fallback`]), the float types
//! used when no block fits or when a tensor must stay in full precision, and the wider type to move to when a
//! codec's scale would not be finite ([`wider_type`]).
//!
//! The block fallback table was chosen by measurement (llama.cpp's own quantizers, docs/GGUF_TYPES.md): among the
//! 32-element-block types every GGUF loader reads (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, and IQ4_NL for IQ4_XS, which
//! its loaders read alike), the one with the lowest rel-MSE that costs at most 0.5 bit per weight more than the
//! original type, provided its rel-MSE is at most twice the original's; when no candidate qualifies, the smallest
//! whose rel-MSE is no worse than the original's.

use crate::checkpoint::Dtype;
use crate::gguf::GgmlType;

/// The type whose 32-element blocks stand in for `ty` (a 256-element-block type) on rows its blocks do not fit:
///
/// | type | b/w | fallback | b/w |
/// |---|---:|---|---:|
/// | Q2_K | 2.625 | Q4_0 | 4.5 |
/// | Q3_K | 3.4375 | Q4_0 | 4.5 |
/// | Q4_K | 4.5 | Q4_1 | 5.0 |
/// | Q5_K | 5.5 | Q5_1 | 6.0 |
/// | Q6_K | 6.5625 | Q8_0 | 8.5 |
/// | IQ4_XS | 4.25 | IQ4_NL | 4.5 |
///
/// `None` for the 32-element-block and float types (nothing smaller to fall back to but a float).
pub fn block_fallback(ty: GgmlType) -> Option<GgmlType> {
    use GgmlType as T;
    match ty {
        T::Q2_K | T::Q3_K => Some(T::Q4_0),
        T::Q4_K => Some(T::Q4_1),
        T::Q5_K => Some(T::Q5_1),
        T::Q6_K => Some(T::Q8_0),
        T::IQ4_XS => Some(T::IQ4_NL),
        T::F32 | T::F16 | T::BF16 | T::Q8_0 | T::Q4_0 | T::Q4_1 | T::Q5_0 | T::Q5_1 | T::IQ4_NL => {
            None
        }
    }
}

/// llama-quantize's stand-in for `ty` on rows its 256-element blocks do not fit (`tensor_type_fallback` in
/// `src/llama-quant.cpp`; checked against `llama_model_quantize` of llama-cpp-python 0.3.36 on rows of 896):
/// Q2_K and Q3_K -> Q4_0, IQ4_XS -> IQ4_NL, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0; `None` for the
/// 32-element-block and float types.
pub fn llama_fallback(ty: GgmlType) -> Option<GgmlType> {
    use GgmlType as T;
    match ty {
        T::Q2_K | T::Q3_K => Some(T::Q4_0),
        T::IQ4_XS => Some(T::IQ4_NL),
        T::Q4_K => Some(T::Q5_0),
        T::Q5_K => Some(T::Q5_1),
        T::Q6_K => Some(T::Q8_0),
        T::F32 | T::F16 | T::BF16 | T::Q8_0 | T::Q4_0 | T::Q4_1 | T::Q5_0 | T::Q5_1 | T::IQ4_NL => {
            None
        }
    }
}

/// The 16-bit type of a tensor kept unquantized or that no block fits: BF16 for a BF16 source (exact), F16
/// otherwise (F16 exact; for F32 sources F16's 10-bit mantissa is the closer of the two; [`wider_type`] moves a
/// tensor whose values exceed F16's range to BF16).
pub fn sixteen_bit(source: Dtype) -> GgmlType {
    if source == Dtype::BF16 {
        GgmlType::BF16
    } else {
        GgmlType::F16
    }
}

/// The type of a tensor ComfyUI-GGUF's converter keeps in full precision (1-D, at most 1024 elements, the
/// family's `keys_hiprec`, 5-D kernels): F16 for an F16 source, F32 otherwise. Both are exact (F64 aside) and both
/// are types its loader hands to torch as plain tensors, which norms, biases and bare `nn.Parameter`s need
/// (it dequantizes BF16 1-D tensors, and cannot load a BF16 `nn.Parameter`).
pub fn full_precision(source: Dtype) -> GgmlType {
    if source == Dtype::F16 {
        GgmlType::F16
    } else {
        GgmlType::F32
    }
}

/// The type to try when `ty`'s codec reports a value out of its range (a float16 scale or value beyond 65504):
/// BF16 (F32's range in 16 bits) after any block type or F16, F32 after BF16, `None` after F32.
pub fn wider_type(ty: GgmlType) -> Option<GgmlType> {
    match ty {
        GgmlType::F32 => None,
        GgmlType::BF16 => Some(GgmlType::F32),
        _ => Some(GgmlType::BF16),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GGML_TYPES;

    #[test]
    fn every_256_block_type_falls_back_to_a_32_block_type_and_the_rest_have_none() {
        for row in &GGML_TYPES {
            match block_fallback(row.ty) {
                Some(fb) => {
                    assert_eq!(row.block_len, 256, "{}", row.name);
                    assert_eq!(fb.block_len(), 32, "{}", row.name);
                    // never more than two bits a weight dearer (Q6_K -> Q8_0 is the widest step)
                    assert!(fb.bits_per_weight() - row.ty.bits_per_weight() < 2.0 + 1e-9);
                }
                None => assert!(row.block_len <= 32, "{}", row.name),
            }
        }
        assert_eq!(block_fallback(GgmlType::Q4_K), Some(GgmlType::Q4_1));
        assert_eq!(block_fallback(GgmlType::Q6_K), Some(GgmlType::Q8_0));
        assert_eq!(block_fallback(GgmlType::Q2_K), Some(GgmlType::Q4_0));
        assert_eq!(block_fallback(GgmlType::IQ4_XS), Some(GgmlType::IQ4_NL));
    }

    #[test]
    fn float_rules_follow_the_source() {
        assert_eq!(sixteen_bit(Dtype::BF16), GgmlType::BF16);
        assert_eq!(sixteen_bit(Dtype::F32), GgmlType::F16);
        assert_eq!(sixteen_bit(Dtype::F16), GgmlType::F16);
        assert_eq!(full_precision(Dtype::F16), GgmlType::F16);
        assert_eq!(full_precision(Dtype::BF16), GgmlType::F32);
        assert_eq!(full_precision(Dtype::F64), GgmlType::F32);
        assert_eq!(wider_type(GgmlType::Q4_K), Some(GgmlType::BF16));
        assert_eq!(wider_type(GgmlType::F16), Some(GgmlType::BF16));
        assert_eq!(wider_type(GgmlType::BF16), Some(GgmlType::F32));
        assert_eq!(wider_type(GgmlType::F32), None);
    }
}
