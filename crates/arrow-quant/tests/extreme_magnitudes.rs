//! Every encoding at extreme magnitudes (issue 12, item 7): from finite input it either returns a finite
//! reconstruction whose reported quality is the true one (computed here in f64 from the dequantized values), or
//! fails with `QuantError::Range` so that the pipeline's fallback can move on. Never a NaN cosine, never a
//! non-finite reconstruction.

use arrow_quant::{
    BitWidth, FlatLayout, GroupSize, Layout, Method, QuantConfig, QuantError, ScaleDtype,
    TensorData, TensorView,
};

/// Pseudo-Gaussian weights (sum of four uniforms) of a fixed seed, times `magnitude`.
fn weights(n: usize, magnitude: f32) -> Vec<f32> {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            let mut acc = 0.0f32;
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                acc += (seed >> 40) as f32 / (1u64 << 24) as f32;
            }
            (acc - 2.0) * magnitude
        })
        .collect()
}

/// Cosine similarity and relative MSE in f64.
fn true_quality(x: &[f32], y: &[f32]) -> (f64, f64) {
    let (mut xx, mut yy, mut xy, mut ee) = (0f64, 0f64, 0f64, 0f64);
    for (&a, &b) in x.iter().zip(y) {
        let (a, b) = (f64::from(a), f64::from(b));
        xx += a * a;
        yy += b * b;
        xy += a * b;
        ee += (a - b) * (a - b);
    }
    // A reconstruction of all zeros has cosine 0 (the core's convention), not 0 / 0.
    let cosine = if yy > 0.0 {
        xy / (xx.sqrt() * yy.sqrt())
    } else {
        0.0
    };
    (cosine, ee / xx)
}

fn flat(bits: BitWidth, scale_dtype: ScaleDtype, method: Method) -> QuantConfig {
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

fn configs() -> Vec<(String, QuantConfig)> {
    let mut out = Vec::new();
    for bits in [BitWidth::Int2, BitWidth::Int4, BitWidth::Int8] {
        for dtype in [ScaleDtype::F16, ScaleDtype::F32] {
            for method in [Method::Rtn, Method::Mse, Method::Hqq] {
                out.push((
                    format!("flat {bits:?} {dtype:?} {method:?}"),
                    flat(bits, dtype, method),
                ));
            }
        }
        out.push((
            format!("two-level {bits:?}"),
            QuantConfig {
                bits,
                layout: Layout::TwoLevel,
                method: Method::Auto,
            },
        ));
    }
    out
}

#[test]
fn finite_input_gives_a_finite_reconstruction_with_its_true_quality_or_a_range_error() {
    let shape = [16usize, 512];
    // Not the magnitudes the issue names (1e-8, 1e6, 1e20): both ends of float32's range and one in between.
    for magnitude in [1e-36f32, 1e-24, 3e-9, 2e7, 4e13, 1e25, 1e36] {
        let w = weights(shape[0] * shape[1], magnitude);
        assert!(w.iter().all(|v| v.is_finite()));
        let view = TensorView::new("layer", &shape, TensorData::F32(&w)).expect("shape matches");
        for (what, cfg) in configs() {
            let at = format!("{what} at {magnitude:e}");
            match arrow_quant::quantize_tensor(&view, &cfg) {
                Ok(q) => {
                    let y = q.view().dequantize().expect("a valid tensor");
                    assert!(y.iter().all(|v| v.is_finite()), "{at}: non-finite values");
                    let (cosine, rel_mse) = true_quality(&w, &y);
                    let reported = q.quality;
                    assert!(!reported.cosine.is_nan(), "{at}: NaN cosine");
                    assert!(
                        (reported.cosine - cosine).abs() < 1e-6,
                        "{at}: reported cosine {} but the true one is {cosine}",
                        reported.cosine
                    );
                    assert!(
                        (reported.rel_mse - rel_mse).abs() <= 1e-6 + 1e-3 * rel_mse,
                        "{at}: reported rel_mse {} but the true one is {rel_mse}",
                        reported.rel_mse
                    );
                }
                Err(QuantError::Range { tensor, problem }) => {
                    assert_eq!(tensor, "layer", "{at}");
                    assert!(!problem.contains('\n'), "{at}: one line");
                }
                Err(e) => panic!("{at}: unexpected error {e}"),
            }
        }
    }
}

#[test]
fn float32_scales_represent_magnitudes_float16_cannot() {
    // 1e25 overflows every float16 scale, but flat groups with float32 scales hold it (the sums of squares,
    // ~1e50, overflow f32 and are taken in f64).
    let shape = [8usize, 256];
    let w = weights(shape[0] * shape[1], 1e25);
    let view = TensorView::new("big", &shape, TensorData::F32(&w)).expect("shape matches");
    let half =
        arrow_quant::quantize_tensor(&view, &flat(BitWidth::Int4, ScaleDtype::F16, Method::Rtn));
    assert!(matches!(half, Err(QuantError::Range { .. })), "{half:?}");
    let single =
        arrow_quant::quantize_tensor(&view, &flat(BitWidth::Int4, ScaleDtype::F32, Method::Rtn))
            .expect("float32 scales hold 1e25");
    assert!(single.quality.cosine > 0.98, "{:?}", single.quality);
}
