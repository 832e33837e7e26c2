//! Quick throughput probe of the kernels on a pseudo-random 4096 x 4096 tensor: `cargo run --release --example throughput`.

use arrow_quant::{BitWidth, GroupSize, Method, QuantConfig, ScaleDtype, TensorData, TensorView};
use std::time::Instant;

fn main() {
    let shape = [4096usize, 4096];
    let n = shape[0] * shape[1];
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let w: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let view = TensorView::new("probe", &shape, TensorData::F32(&w)).expect("shape");
    for bits in [BitWidth::Int8, BitWidth::Int4, BitWidth::Int2] {
        for method in [Method::Rtn, Method::Mse, Method::Hqq, Method::TwoLevel] {
            let config = QuantConfig {
                bits,
                group_size: GroupSize::Elements(64),
                symmetric: false,
                method,
                scale_dtype: ScaleDtype::F16,
            };
            let mut best = f64::MAX;
            let mut q = None;
            for _ in 0..5 {
                let t = Instant::now();
                q = Some(arrow_quant::quantize_tensor(&view, &config).expect("ok"));
                best = best.min(t.elapsed().as_secs_f64());
            }
            let q = q.expect("ran");
            let mut out = vec![0f32; n];
            let mut dbest = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                q.view().dequantize_into(&mut out).expect("ok");
                dbest = dbest.min(t.elapsed().as_secs_f64());
            }
            let err: f64 = w
                .iter()
                .zip(&out)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum::<f64>()
                / w.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>();
            println!(
                "{:5} {:4} quantize {:7.0} MB/s  dequantize {:7.0} MB/s  rel_mse {:.3e} (reported {:.3e})",
                bits.encoding_name(), method.name(), n as f64 * 4.0 / best / 1e6, n as f64 * 4.0 / dbest / 1e6, err, q.quality.rel_mse
            );
        }
    }
}
