//! Properties of the two-level encodings and the new parameter methods: an independent reader written from
//! docs/FORMAT.md decodes every tensor bit for bit, any shape works (partial sub-blocks and super-blocks), no NaN,
//! the stored size is the promised bits per weight, importance weights steer the error, `hqq` is never worse
//! than `rtn`.

use arrow_quant::{
    quantize_tensor_with, BitWidth, Encoding, FlatLayout, GroupSize, Layout, Method, PayloadRef,
    QuantConfig, QuantError, QuantizedTensor, ScaleDtype, TensorData, TensorView,
};
use half::f16;
use proptest::prelude::*;

/// A flat layout with groups of 64.
fn config(bits: BitWidth, method: Method) -> QuantConfig {
    flat(bits, method, ScaleDtype::F16)
}

fn flat(bits: BitWidth, method: Method, scale_dtype: ScaleDtype) -> QuantConfig {
    QuantConfig {
        bits,
        layout: Layout::Flat(FlatLayout {
            group_size: GroupSize::Elements(64),
            symmetric: false,
            scale_dtype,
        }),
        method,
    }
}

/// The two-level layout.
fn two_level(bits: BitWidth) -> QuantConfig {
    QuantConfig {
        bits,
        layout: Layout::TwoLevel,
        method: Method::Auto,
    }
}

fn quantize(shape: &[usize], w: &[f32], cfg: &QuantConfig, imp: Option<&[f32]>) -> QuantizedTensor {
    let view = TensorView::new("t", shape, TensorData::F32(w)).expect("shape matches");
    quantize_tensor_with(&view, cfg, imp).expect("finite input")
}

/// A reader written from docs/FORMAT.md only (not sharing code with the crate).
fn reference_decode(shape: &[usize], bits: u32, data: &[u8], params: &[u8]) -> Vec<f32> {
    let (sub, field) = if bits == 2 {
        (16usize, 4u32)
    } else {
        (32usize, 6u32)
    };
    let k = 256 / sub;
    let field_bytes = (k * field as usize).div_ceil(8);
    let record = 4 + 2 * field_bytes;
    let rows = shape.first().copied().unwrap_or(1);
    let cols: usize = if shape.len() <= 1 {
        shape.iter().product()
    } else {
        shape[1..].iter().product()
    };
    let n = rows * cols;
    let (rows, cols) = if cols > 0 && cols.is_multiple_of(sub) {
        (1, n)
    } else {
        (rows, cols)
    };
    let code = |i: usize| -> u32 {
        let bit = i * bits as usize;
        (u32::from(data[bit / 8]) >> (bit % 8)) & ((1 << bits) - 1)
    };
    let field_at = |bytes: &[u8], j: usize| -> u32 {
        let bit = j * field as usize;
        let lo = u32::from(bytes[bit / 8]);
        let hi = bytes.get(bit / 8 + 1).map_or(0, |&b| u32::from(b));
        ((lo | (hi << 8)) >> (bit % 8)) & ((1 << field) - 1)
    };
    let supers_per_row = cols.div_ceil(256);
    let mut out = vec![0f32; n];
    for r in 0..rows {
        for sb in 0..supers_per_row {
            let rec = &params[(r * supers_per_row + sb) * record..][..record];
            let d = f16::from_le_bytes([rec[0], rec[1]]).to_f32();
            let dmin = f16::from_le_bytes([rec[2], rec[3]]).to_f32();
            let scales = &rec[4..4 + field_bytes];
            let mins = &rec[4 + field_bytes..4 + 2 * field_bytes];
            for c in sb * 256..(sb * 256 + 256).min(cols) {
                let j = (c - sb * 256) / sub;
                let step = d * field_at(scales, j) as f32;
                let min = dmin * field_at(mins, j) as f32;
                let i = r * cols + c;
                out[i] = code(i) as f32 * step - min;
            }
        }
    }
    out
}

fn width() -> impl Strategy<Value = BitWidth> {
    prop_oneof![
        Just(BitWidth::Int2),
        Just(BitWidth::Int4),
        Just(BitWidth::Int8)
    ]
}

fn tensor() -> impl Strategy<Value = (Vec<usize>, Vec<f32>)> {
    // magnitudes 1e-3 .. 1e4: int2_2l steps of wider ranges overflow the float16 super-block scales (an error)
    (1usize..6, 1usize..700, -3.0f32..4.0).prop_flat_map(|(rows, cols, log_scale)| {
        let scale = 10f32.powf(log_scale);
        (
            Just(vec![rows, cols]),
            proptest::collection::vec(-1.0f32..1.0, rows * cols)
                .prop_map(move |v| v.into_iter().map(|x| x * x * x * scale).collect()),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(120))]

    /// Any shape: the buffers have the documented sizes, the independent reader reproduces the crate's
    /// dequantization bit for bit, nothing is NaN, and the reported error is the error of what is stored.
    #[test]
    fn any_shape_round_trips_exactly((shape, w) in tensor(), bits in width()) {
        let q = quantize(&shape, &w, &two_level(bits), None);
        let params = q.view().params().expect("two-level tensors store params");
        prop_assert_eq!(q.data.len(), bits.packed_len(w.len()));
        prop_assert!(q.view().scales().is_none() && q.view().zero_points().is_none());
        let back = q.view().dequantize().unwrap();
        let reference = reference_decode(&shape, bits.bits(), &q.data, params);
        prop_assert!(back.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits()));
        prop_assert!(back.iter().all(|v| v.is_finite()));
        let (xx, ee) = w.iter().zip(&back).fold((0f64, 0f64), |(xx, ee), (&x, &y)| {
            (xx + f64::from(x) * f64::from(x), ee + (f64::from(x) - f64::from(y)).powi(2))
        });
        if xx > 0.0 {
            let rel = ee / xx;
            prop_assert!((q.quality.rel_mse - rel).abs() <= 1e-3 * rel + 1e-9, "{} vs {}", q.quality.rel_mse, rel);
        }
    }

    /// `hqq` starts from `mse`, which starts from `rtn`: never worse, any shape.
    #[test]
    fn hqq_is_never_worse_than_rtn((shape, w) in tensor(), bits in width(), wide in any::<bool>()) {
        // float32 scales for the widest ranges (float16 scales overflow above 65504 per step)
        let dtype = if wide { ScaleDtype::F32 } else { ScaleDtype::F16 };
        let w: Vec<f32> = if wide { w } else { w.iter().map(|x| x.clamp(-1e4, 1e4)).collect() };
        let rtn = quantize(&shape, &w, &flat(bits, Method::Rtn, dtype), None);
        let hqq = quantize(&shape, &w, &flat(bits, Method::Hqq, dtype), None);
        prop_assert!(hqq.quality.rel_mse <= rtn.quality.rel_mse * (1.0 + 1e-3) + 1e-12,
            "{} > {}", hqq.quality.rel_mse, rtn.quality.rel_mse);
    }
}

fn pseudo_normal(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            let mut acc = 0.0;
            for _ in 0..4 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                acc += (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            }
            acc * 1.7
        })
        .collect()
}

#[test]
fn bits_per_weight_are_the_promised_ones() {
    let w = pseudo_normal(384 * 384, 1);
    for (bits, bpw) in [
        (BitWidth::Int8, 8.5),
        (BitWidth::Int4, 4.5),
        (BitWidth::Int2, 2.625),
    ] {
        let q = quantize(&[384, 384], &w, &two_level(bits), None);
        assert_eq!(q.bits_per_weight(), bpw, "{bits:?}");
        assert_eq!(q.encoding_name(), format!("int{}_2l", bits.bits()));
    }
}

#[test]
fn two_level_beats_flat_methods_at_equal_bits() {
    let w = pseudo_normal(64 * 1024, 2);
    let shape = [64, 1024];
    for bits in [BitWidth::Int4, BitWidth::Int2] {
        let two = quantize(&shape, &w, &two_level(bits), None).quality.rel_mse;
        let mse = quantize(&shape, &w, &config(bits, Method::Mse), None)
            .quality
            .rel_mse;
        let hqq = quantize(&shape, &w, &config(bits, Method::Hqq), None)
            .quality
            .rel_mse;
        assert!(
            two < hqq && hqq <= mse,
            "{bits:?}: two_level {two}, hqq {hqq}, mse {mse}"
        );
    }
}

/// With importance, the importance-weighted error is lower than without; the plain error is not lower.
#[test]
fn importance_weights_the_objective() {
    let (rows, cols) = (64, 384);
    let w = pseudo_normal(rows * cols, 3);
    let imp: Vec<f32> = (0..cols)
        .map(|c| if c % 7 == 0 { 50.0 } else { 0.5 })
        .collect();
    let weighted = |q: &QuantizedTensor| -> (f64, f64) {
        let back = q.view().dequantize().unwrap();
        w.iter()
            .zip(&back)
            .enumerate()
            .fold((0.0, 0.0), |(we, pe), (i, (&x, &y))| {
                let e = f64::from(x - y).powi(2);
                (we + f64::from(imp[i % cols]) * e, pe + e)
            })
    };
    for cfg in [
        two_level(BitWidth::Int4),
        two_level(BitWidth::Int2),
        config(BitWidth::Int4, Method::Mse),
        config(BitWidth::Int4, Method::Hqq),
    ] {
        let (bits, method) = (cfg.bits, cfg.method);
        let (w_plain, p_plain) = weighted(&quantize(&[rows, cols], &w, &cfg, None));
        let (w_imp, p_imp) = weighted(&quantize(&[rows, cols], &w, &cfg, Some(&imp)));
        assert!(
            w_imp < w_plain,
            "{bits:?} {method:?}: weighted {w_imp} !< {w_plain}"
        );
        assert!(
            p_imp >= p_plain * 0.999,
            "{bits:?} {method:?}: plain {p_imp} < {p_plain}"
        );
    }
}

#[test]
fn bad_importance_and_corrupt_params_are_errors() {
    let w = pseudo_normal(4 * 64, 4);
    let view = TensorView::new("t", &[4, 64], TensorData::F32(&w)).unwrap();
    let cfg = two_level(BitWidth::Int4);
    let err = quantize_tensor_with(&view, &cfg, Some(&[1.0; 63])).unwrap_err();
    assert!(
        matches!(
            err,
            QuantError::InvalidConfig {
                field: "importance",
                ..
            }
        ),
        "{err}"
    );
    let q = quantize(&[4, 64], &w, &cfg, None);
    let mut v = q.view();
    let params = q.view().params().unwrap();
    v.payload = PayloadRef::Blocks(&params[1..]);
    assert!(matches!(v.dequantize(), Err(QuantError::Corrupt { .. })));
    // A flat payload under a two-level encoding is refused too.
    let flat_q = quantize(&[4, 64], &w, &config(BitWidth::Int4, Method::Rtn), None);
    let mut v = q.view();
    v.payload = flat_q.view().payload;
    assert!(matches!(v.dequantize(), Err(QuantError::Corrupt { .. })));
    let rtn = QuantConfig {
        method: Method::Rtn,
        ..cfg
    };
    assert!(matches!(
        quantize_tensor_with(&view, &rtn, None),
        Err(QuantError::InvalidConfig {
            field: "method",
            ..
        })
    ));
}

#[test]
fn constants_and_non_finite_values() {
    for c in [0.0f32, 1.5, -0.25, 3e4] {
        let w = vec![c; 3 * 100];
        let q = quantize(&[3, 100], &w, &two_level(BitWidth::Int2), None);
        assert_eq!(q.view().dequantize().unwrap(), w, "constant {c}");
    }
    let mut w = pseudo_normal(1000, 5);
    w[777] = f32::NAN;
    let view = TensorView::new("t", &[1000], TensorData::F32(&w)).unwrap();
    let err = quantize_tensor_with(&view, &two_level(BitWidth::Int4), None).unwrap_err();
    assert!(
        matches!(err, QuantError::NonFinite { index: 777, .. }),
        "{err}"
    );
}

#[test]
fn auto_resolves_to_two_level_unless_the_layout_is_flat() {
    let w = pseudo_normal(8 * 256, 6);
    let auto = QuantConfig::default();
    assert_eq!(auto.method, Method::Auto);
    let q = quantize(&[8, 256], &w, &auto, None);
    assert_eq!((q.method, q.encoding), (None, Encoding::Int4TwoLevel));
    let short_rows = pseudo_normal(8 * 27, 7);
    let q = quantize(&[8, 27], &short_rows, &auto, None);
    assert_eq!((q.method, q.encoding), (Some(Method::Mse), Encoding::Int4));
    let flat = QuantConfig {
        layout: Layout::Flat(FlatLayout::default()),
        ..auto
    };
    let q = quantize(&[8, 256], &w, &flat, None);
    assert_eq!((q.method, q.encoding), (Some(Method::Mse), Encoding::Int4));
}
