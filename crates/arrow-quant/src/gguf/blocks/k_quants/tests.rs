//! Behaviour every K-quant codec shares: round-trip error bounds, exact constants, importance, out-of-range
//! scales, and (property) any finite row decoding to finite values.

use super::super::test_support::round_trip;
use super::super::{block_codec, OutOfRange};
use crate::codec::driver::QualitySums;
use crate::gguf::GgmlType;
use proptest::prelude::*;

/// The K-quant types with a codec, and a bound on their rel-MSE on Gaussian rows (llama.cpp's on the standard
/// tensor, with a margin for the small sample).
const TYPES: [(GgmlType, f64); 5] = [
    (GgmlType::Q2_K, 9.2e-2),
    (GgmlType::Q3_K, 2.4e-2),
    (GgmlType::Q4_K, 5.3e-3),
    (GgmlType::Q5_K, 1.4e-3),
    (GgmlType::Q6_K, 3.4e-4),
];

/// Deterministic Gaussian values (xorshift and Box-Muller).
fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect()
}

fn weighted_error(x: &[f32], y: &[f32], cols: usize, w: &[f32]) -> f64 {
    x.iter()
        .zip(y)
        .enumerate()
        .map(|(i, (a, b))| f64::from(w[i % cols]) * f64::from(a - b).powi(2))
        .sum()
}

fn rel_mse(x: &[f32], y: &[f32]) -> f64 {
    let ee: f64 = x.iter().zip(y).map(|(a, b)| f64::from(a - b).powi(2)).sum();
    let xx: f64 = x.iter().map(|a| f64::from(*a).powi(2)).sum();
    ee / xx
}

#[test]
fn gaussian_rows_round_trip_within_the_bound() {
    // rows of 3 super-blocks with different gains: an odd count exercises a half-empty search tile
    let cols = 768;
    let mut x = gaussian(8 * cols, 1);
    for (r, row) in x.chunks_mut(cols).enumerate() {
        row.iter_mut()
            .for_each(|v| *v *= 0.01 * 3f32.powi(r as i32));
    }
    for (ty, bound) in TYPES {
        let e = rel_mse(&x, &round_trip(ty, &x, cols, None));
        assert!(e < bound, "{ty}: rel-MSE {e:.3e} above {bound:.1e}");
        assert!(e > bound / 50.0, "{ty}: rel-MSE {e:.3e} implausibly low");
    }
}

#[test]
fn constant_and_zero_blocks_are_exact() {
    let mut x = vec![0.0f32; 1024];
    x[256..512].fill(0.375);
    x[512..768].fill(-1.5);
    for (ty, _) in TYPES {
        assert_eq!(round_trip(ty, &x, 1024, None), x, "{ty}");
    }
}

#[test]
fn importance_lowers_the_weighted_error() {
    let cols = 512;
    let x = gaussian(16 * cols, 2);
    // a few columns matter much more than the rest
    let w: Vec<f32> = (0..cols)
        .map(|i| if i % 7 == 3 { 40.0 } else { 0.5 })
        .collect();
    for (ty, _) in TYPES {
        let plain = weighted_error(&x, &round_trip(ty, &x, cols, None), cols, &w);
        let aware = weighted_error(&x, &round_trip(ty, &x, cols, Some(&w)), cols, &w);
        assert!(
            aware < 0.9 * plain,
            "{ty}: weighted error {aware:.4e} with importance, {plain:.4e} without"
        );
        // all-zero importance searches unweighted
        let zero = round_trip(ty, &x, cols, Some(&vec![0.0; cols]));
        assert_eq!(zero, round_trip(ty, &x, cols, None), "{ty}");
    }
}

#[test]
fn a_scale_beyond_float16_is_out_of_range_at_its_block() {
    for (ty, _) in TYPES {
        let codec = block_codec(ty).unwrap();
        let mut x = gaussian(5 * 256, 3);
        // block 3: the second super-block of a two-block search tile for the 32-element sub-block types
        x[3 * 256 + 17] = 3.0e9;
        let mut out = vec![0u8; ty.row_bytes(x.len()).unwrap()];
        assert_eq!(
            codec.quantize_row(&x, None, &mut out),
            Err(OutOfRange { block: 3 }),
            "{ty}"
        );
        x[3 * 256 + 17] = 3.0e4;
        assert_eq!(codec.quantize_row(&x, None, &mut out), Ok(()), "{ty}");
    }
}

#[test]
fn a_non_finite_element_is_reported_by_its_index() {
    use crate::gguf::quantize_rows;
    use crate::{QuantError, TensorData, TensorView};
    for (ty, _) in TYPES {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = gaussian(4 * 512, 6);
            x[2 * 512 + 300] = bad;
            let shape = [4, 512];
            let t = TensorView::new("w", &shape, TensorData::F32(&x)).unwrap();
            let e = quantize_rows(&t, ty, None).unwrap_err();
            assert!(
                matches!(e, QuantError::NonFinite { index: 1324, .. }),
                "{ty} {bad}: {e}"
            );
        }
    }
}

#[test]
fn the_search_sums_are_those_of_the_decoded_row() {
    let cols = 1024;
    // a row of ordinary values and one of values so small that their squares underflow float32 (the decoded path)
    let mut x = gaussian(2 * cols, 4);
    x[cols..].iter_mut().for_each(|v| *v *= 1e-22);
    for (ty, _) in TYPES {
        let codec = block_codec(ty).unwrap();
        for row in x.chunks(cols) {
            let mut out = vec![0u8; ty.row_bytes(cols).unwrap()];
            let mut scratch = vec![0f32; cols];
            let got = codec
                .quantize_row_with_sums(row, None, &mut out, &mut scratch)
                .unwrap();
            let mut back = vec![0f32; cols];
            codec.dequantize_row(&out, &mut back);
            let want = QualitySums::of(row, &back);
            for (what, g, w) in [
                ("xx", got.xx, want.xx),
                ("ee", got.ee, want.ee),
                ("yy", got.yy, want.yy),
            ] {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs(),
                    "{ty} {what}: {g:e} against {w:e}"
                );
            }
            assert!((got.xy - want.xy).abs() <= 1e-5 * want.xy.abs(), "{ty} xy");
        }
    }
}

/// A finite value of any magnitude: normal, subnormal or zero, either sign.
fn any_finite() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -10.0f32..10.0,
        1 => prop::num::f32::NORMAL | prop::num::f32::SUBNORMAL | prop::num::f32::ZERO,
        1 => (-40i32..40).prop_map(|e| 2f32.powi(e)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn any_finite_row_decodes_to_finite_values_or_is_out_of_range(
        x in prop::collection::vec(any_finite(), 512),
        weighted in any::<bool>(),
    ) {
        let w: Vec<f32> = (0..512).map(|i| (i % 5) as f32).collect();
        let importance = weighted.then_some(&w[..]);
        for (ty, _) in TYPES {
            let codec = block_codec(ty).unwrap();
            let mut out = vec![0u8; ty.row_bytes(512).unwrap()];
            let mut back = vec![0f32; 512];
            match codec.quantize_row(&x, importance, &mut out) {
                Ok(()) => {
                    codec.dequantize_row(&out, &mut back);
                    prop_assert!(back.iter().all(|v| v.is_finite()), "{} decoded a non-finite value", ty);
                }
                Err(OutOfRange { block }) => {
                    let amax = x[block * 256..block * 256 + 256].iter().fold(0f32, |a, v| a.max(v.abs()));
                    prop_assert!(amax > 65504.0, "{} out of range at block {} of magnitude {}", ty, block, amax);
                }
            }
        }
    }
}
