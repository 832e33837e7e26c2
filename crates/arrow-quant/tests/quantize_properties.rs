//! Properties of whole-tensor quantization: error bounds, exact constants, packed sizes, dtypes, errors.

use arrow_quant::{
    BitWidth, FlatLayout, GroupSize, Layout, Method, QuantConfig, QuantError, ScaleDtype,
    SourceDtype, TensorData, TensorView,
};
use half::{bf16, f16};
use proptest::prelude::*;

fn config(bits: BitWidth, group_size: GroupSize, symmetric: bool, method: Method) -> QuantConfig {
    QuantConfig {
        bits,
        layout: Layout::Flat(FlatLayout {
            group_size,
            symmetric,
            scale_dtype: ScaleDtype::F16,
        }),
        method,
    }
}

/// `config` with float32 scales.
fn with_f32_scales(mut cfg: QuantConfig) -> QuantConfig {
    let mut flat = cfg.flat();
    flat.scale_dtype = ScaleDtype::F32;
    cfg.layout = Layout::Flat(flat);
    cfg
}

fn quantize(shape: &[usize], w: &[f32], cfg: &QuantConfig) -> arrow_quant::QuantizedTensor {
    let view = TensorView::new("t", shape, TensorData::F32(w)).expect("shape matches");
    arrow_quant::quantize_tensor(&view, cfg).expect("finite input")
}

/// The scale and zero point of the group holding flat element `i`.
fn params_of(q: &arrow_quant::QuantizedTensor, i: usize) -> (f64, f64) {
    let view = q.view();
    let layout = view.group_layout().expect("a flat tensor");
    let (row, col) = (i / layout.cols, i % layout.cols);
    let g = row * layout.groups_per_row + col / layout.group_len;
    let scale = f64::from(view.scales().expect("flat").get(g));
    let zero = view
        .zero_points()
        .map_or(f64::from(1u32 << (q.encoding.bits().bits() - 1)), |z| {
            f64::from(z.get(g))
        });
    (scale, zero)
}

fn width() -> impl Strategy<Value = BitWidth> {
    prop_oneof![
        Just(BitWidth::Int2),
        Just(BitWidth::Int4),
        Just(BitWidth::Int8)
    ]
}

fn group() -> impl Strategy<Value = GroupSize> {
    prop_oneof![
        Just(GroupSize::Elements(32)),
        Just(GroupSize::Elements(64)),
        Just(GroupSize::Elements(128)),
        Just(GroupSize::Elements(256)),
        Just(GroupSize::PerChannel),
    ]
}

fn tensor() -> impl Strategy<Value = (Vec<usize>, Vec<f32>)> {
    (1usize..7, 1usize..300).prop_flat_map(|(rows, cols)| {
        (
            Just(vec![rows, cols]),
            proptest::collection::vec(-100.0f32..100.0, rows * cols),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// rtn, asymmetric: every element within half a step of its source, any shape and group size.
    #[test]
    fn rtn_error_within_half_a_step((shape, w) in tensor(), bits in width(), g in group()) {
        let q = quantize(&shape, &w, &config(bits, g, false, Method::Rtn));
        prop_assert_eq!(q.data.len(), bits.packed_len(w.len()));
        let back = q.view().dequantize().unwrap();
        for (i, (&x, &y)) in w.iter().zip(&back).enumerate() {
            let (scale, _) = params_of(&q, i);
            let err = (f64::from(x) - f64::from(y)).abs();
            prop_assert!(err <= 0.5 * scale * (1.0 + 1e-5) + 1e-6, "element {}: {} vs {} step {}", i, x, y, scale);
        }
    }

    /// Symmetric: within half a step, except the clipped top code on the side opposite the extreme.
    #[test]
    fn symmetric_error_bound((shape, w) in tensor(), bits in width(), g in group()) {
        let q = quantize(&shape, &w, &config(bits, g, true, Method::Rtn));
        prop_assert!(q.view().zero_points().is_none() && q.view().symmetric());
        let back = q.view().dequantize().unwrap();
        let top = f64::from((1u32 << (bits.bits() - 1)) - 1);
        for (i, (&x, &y)) in w.iter().zip(&back).enumerate() {
            let (scale, _) = params_of(&q, i);
            let x = f64::from(x);
            let clipped = (x / scale).abs() > top + 0.5 && (x / scale) > 0.0;
            let bound = if clipped { x.abs() - top * scale.abs() } else { 0.5 * scale.abs() };
            prop_assert!((x - f64::from(y)).abs() <= bound * (1.0 + 1e-5) + 1e-6);
        }
    }

    /// mse never has a higher error than rtn on any group.
    #[test]
    fn mse_never_worse_than_rtn_per_group((shape, w) in tensor(), bits in width(), g in group(), sym in any::<bool>()) {
        let rtn = quantize(&shape, &w, &config(bits, g, sym, Method::Rtn));
        let mse = quantize(&shape, &w, &config(bits, g, sym, Method::Mse));
        let (a, b) = (rtn.view().dequantize().unwrap(), mse.view().dequantize().unwrap());
        let layout = rtn.view().group_layout().expect("flat");
        let mut err = vec![(0f64, 0f64); layout.num_groups()];
        for i in 0..w.len() {
            let (row, col) = (i / layout.cols, i % layout.cols);
            let gi = row * layout.groups_per_row + col / layout.group_len;
            err[gi].0 += (f64::from(w[i]) - f64::from(a[i])).powi(2);
            err[gi].1 += (f64::from(w[i]) - f64::from(b[i])).powi(2);
        }
        for (gi, (e_rtn, e_mse)) in err.iter().enumerate() {
            prop_assert!(e_mse <= &(e_rtn * (1.0 + 1e-6)), "group {}: mse {} > rtn {}", gi, e_mse, e_rtn);
        }
    }

    /// f16 and bf16 sources give exactly what their f32 values give.
    #[test]
    fn half_inputs_match_their_f32_values((shape, w) in tensor(), bits in width()) {
        let cfg = config(bits, GroupSize::Elements(32), false, Method::Mse);
        let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let hv: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
        let qh = arrow_quant::quantize_tensor(&TensorView::new("h", &shape, TensorData::F16(&h)).unwrap(), &cfg).unwrap();
        prop_assert_eq!(qh.source_dtype, SourceDtype::F16);
        prop_assert_eq!(&qh.data, &quantize(&shape, &hv, &cfg).data);
        let b: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let bv: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
        let qb = arrow_quant::quantize_tensor(&TensorView::new("b", &shape, TensorData::BF16(&b)).unwrap(), &cfg).unwrap();
        prop_assert_eq!(&qb.data, &quantize(&shape, &bv, &cfg).data);
    }

    /// The reported quality figures equal those computed from the dequantized tensor.
    #[test]
    fn reported_quality_matches_dequantized((shape, w) in tensor(), bits in width()) {
        let q = quantize(&shape, &w, &config(bits, GroupSize::Elements(64), false, Method::Mse));
        let back = q.view().dequantize().unwrap();
        let xx: f64 = w.iter().map(|&x| f64::from(x).powi(2)).sum();
        let ee: f64 = w.iter().zip(&back).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum();
        if xx > 0.0 {
            prop_assert!((q.quality.rel_mse - ee / xx).abs() <= 1e-4 * (ee / xx) + 1e-9);
        }
    }
}

#[test]
fn constant_groups_are_exact() {
    for bits in [BitWidth::Int2, BitWidth::Int4, BitWidth::Int8] {
        for symmetric in [false, true] {
            for method in [Method::Rtn, Method::Mse] {
                for value in [0.0f32, 1.0, -2.5, 0.125, 3.0, -1024.0] {
                    let w = vec![value; 100];
                    let q = quantize(
                        &[100],
                        &w,
                        &config(bits, GroupSize::Elements(32), symmetric, method),
                    );
                    let scales = q.view().scales().expect("flat");
                    assert!((0..scales.len()).all(|i| scales.get(i).is_finite()));
                    assert_eq!(
                        q.view().dequantize().unwrap(),
                        w,
                        "{bits:?} sym={symmetric} {method:?} {value}"
                    );
                }
            }
        }
    }
    // With float32 scales any constant is exact.
    let w = vec![0.123_456_79f32; 64];
    let cfg = with_f32_scales(config(
        BitWidth::Int4,
        GroupSize::Elements(64),
        false,
        Method::Rtn,
    ));
    assert_eq!(quantize(&[64], &w, &cfg).view().dequantize().unwrap(), w);
}

#[test]
fn non_finite_input_names_tensor_and_index() {
    for (index, bad) in [
        (0usize, f32::NAN),
        (77, f32::INFINITY),
        (4095, f32::NEG_INFINITY),
    ] {
        let mut w = vec![0.5f32; 4096];
        w[index] = bad;
        let view = TensorView::new("blocks.3.attn.qkv", &[64, 64], TensorData::F32(&w)).unwrap();
        let err = arrow_quant::quantize_tensor(&view, &QuantConfig::default()).unwrap_err();
        assert!(
            matches!(&err, QuantError::NonFinite { tensor, index: i, .. } if tensor == "blocks.3.attn.qkv" && *i == index),
            "{err}"
        );
        assert!(
            err.to_string().contains(&format!("element {index}")),
            "{err}"
        );
    }
}

#[test]
fn shape_mismatch_is_an_error() {
    let w = vec![0f32; 10];
    let err = TensorView::new("x", &[3, 4], TensorData::F32(&w)).unwrap_err();
    assert!(err.to_string().contains("12 elements but 10"), "{err}");
}

#[test]
fn float16_scale_overflow_suggests_float32() {
    let w: Vec<f32> = (0..64)
        .map(|i| if i % 2 == 0 { 3e9 } else { -3e9 })
        .collect();
    let err = arrow_quant::quantize_tensor(
        &TensorView::new("big", &[64], TensorData::F32(&w)).unwrap(),
        &QuantConfig::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("float32"), "{err}");
    let cfg = with_f32_scales(QuantConfig::default());
    let q = arrow_quant::quantize_tensor(
        &TensorView::new("big", &[64], TensorData::F32(&w)).unwrap(),
        &cfg,
    )
    .unwrap();
    assert!(q.quality.cosine > 0.99);
}

#[test]
fn packed_size_and_bits_per_weight() {
    let w: Vec<f32> = (0..4096 * 64)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let q = quantize(
        &[4096, 64],
        &w,
        &config(BitWidth::Int4, GroupSize::Elements(64), false, Method::Rtn),
    );
    assert_eq!(q.data.len(), 4096 * 32);
    assert!((q.bits_per_weight() - 4.5).abs() < 1e-12);
    let q = quantize(
        &[4096, 64],
        &w,
        &config(BitWidth::Int2, GroupSize::Elements(64), true, Method::Rtn),
    );
    assert!((q.bits_per_weight() - 2.25).abs() < 1e-12);
}

#[test]
fn dequantize_to_half_types_rounds_the_f32_result() {
    let w: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.01).sin()).collect();
    let q = quantize(
        &[10, 100],
        &w,
        &config(BitWidth::Int8, GroupSize::Elements(32), false, Method::Mse),
    );
    let f = q.view().dequantize().unwrap();
    let mut h = vec![f16::ZERO; 1000];
    q.view().dequantize_into_half(&mut h).unwrap();
    assert!(h.iter().zip(&f).all(|(a, b)| *a == f16::from_f32(*b)));
    let mut b = vec![bf16::ZERO; 1000];
    q.view().dequantize_into_half(&mut b).unwrap();
    assert!(b.iter().zip(&f).all(|(a, x)| *a == bf16::from_f32(*x)));
}

#[test]
fn corrupt_views_are_rejected() {
    let w = vec![0.25f32; 256];
    let q = quantize(&[2, 128], &w, &QuantConfig::default());
    let mut view = q.view();
    view.data = &q.data[..10];
    assert!(matches!(view.dequantize(), Err(QuantError::Corrupt { .. })));
    let mut out = vec![0f32; 3];
    assert!(q
        .view()
        .dequantize_into(&mut out)
        .unwrap_err()
        .to_string()
        .contains("output buffer"));
}

#[test]
fn batch_reports_each_layer_and_stops_or_continues() {
    use arrow_quant::{first_error, quantize_batch, OnError};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let good = vec![0.5f32; 128];
    let mut bad = vec![0.5f32; 128];
    bad[5] = f32::NAN;
    let views = [
        TensorView::new("a", &[128], TensorData::F32(&good)).unwrap(),
        TensorView::new("b", &[128], TensorData::F32(&bad)).unwrap(),
        TensorView::new("c", &[128], TensorData::F32(&good)).unwrap(),
    ];
    let done = AtomicUsize::new(0);
    let cancel = AtomicBool::new(false);
    let results = quantize_batch(
        &views,
        &QuantConfig::default(),
        OnError::Continue,
        &cancel,
        &|_| {
            done.fetch_add(1, Ordering::Relaxed);
        },
    );
    assert_eq!(done.load(Ordering::Relaxed), 3);
    assert!(results[0].is_ok() && results[2].is_ok());
    assert!(
        matches!(first_error(&results), Some(QuantError::NonFinite { tensor, .. }) if tensor == "b")
    );
    let cancel = AtomicBool::new(true);
    let results = quantize_batch(
        &views,
        &QuantConfig::default(),
        OnError::Stop,
        &cancel,
        &|_| {},
    );
    assert!(results
        .iter()
        .all(|r| matches!(r, Err(QuantError::Cancelled { .. }))));
}
