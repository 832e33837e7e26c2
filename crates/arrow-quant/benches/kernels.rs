//! Criterion benches of the quantize and dequantize kernels on a 1024 x 4096 f32 tensor.

use arrow_quant::{
    BitWidth, Encoding, FlatLayout, GroupSize, Layout, Method, QuantConfig, TensorData, TensorView,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

fn weights(n: usize) -> Vec<f32> {
    // A cheap deterministic pseudo-Gaussian (sum of uniforms) with row gains, like real weights.
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|i| {
            let mut acc = 0.0f32;
            for _ in 0..4 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                acc += (s >> 40) as f32 / (1u64 << 24) as f32;
            }
            (acc - 2.0) * (1.0 + (i / 4096 % 7) as f32 * 0.3)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let shape = [1024usize, 4096];
    let w = weights(shape[0] * shape[1]);
    let view = TensorView::new("bench", &shape, TensorData::F32(&w)).expect("shape matches");
    let mut group = c.benchmark_group("quantize");
    group.throughput(Throughput::Bytes((w.len() * 4) as u64));
    group.sample_size(20);
    for bits in [BitWidth::Int8, BitWidth::Int4, BitWidth::Int2] {
        for method in [Method::Rtn, Method::Mse] {
            let config = QuantConfig {
                bits,
                layout: Layout::Flat(FlatLayout {
                    group_size: GroupSize::Elements(64),
                    ..FlatLayout::default()
                }),
                method,
            };
            group.bench_function(
                format!("{}-{}-g64", Encoding::flat(bits), method.name()),
                |b| {
                    b.iter(|| {
                        arrow_quant::quantize_tensor(black_box(&view), &config)
                            .expect("finite input")
                    })
                },
            );
            if method == Method::Rtn {
                let q = arrow_quant::quantize_tensor(&view, &config).expect("finite input");
                let mut out = vec![0f32; w.len()];
                group.bench_function(format!("dequantize-{}-g64", bits.encoding_name()), |b| {
                    b.iter(|| {
                        q.view()
                            .dequantize_into(black_box(&mut out))
                            .expect("valid")
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
