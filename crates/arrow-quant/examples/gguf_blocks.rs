//! Quantizes a raw float32 matrix to a ggml type's blocks and reports the time and quality: a probe for
//! throwaway comparison scripts (against llama.cpp's quantizers, gguf-py's dequantizers), not a benchmark.
//!
//! Run: `cargo run --release -p arrow-quant --example gguf_blocks -- TYPE IN.f32 ROWS COLS OUT.blocks
//! [IMPORTANCE.f32|-] [REPEATS]`. IN.f32 holds ROWS x COLS little-endian float32 values, IMPORTANCE.f32 (or `-`
//! for none) COLS weights. Prints one JSON line: the fastest of REPEATS runs of `gguf::quantize_rows` (MB/s of
//! float32 input) and the relative MSE from its quality sums; writes the blocks of the last run.

use arrow_quant::gguf::{quantize_rows, GgmlType};
use arrow_quant::{TensorData, TensorView};
use std::time::Instant;

fn floats(path: &str) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    let bytes = std::fs::read(path)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        return Err(
            "usage: gguf_blocks TYPE IN.f32 ROWS COLS OUT.blocks [IMPORTANCE.f32|-] [REPEATS]"
                .into(),
        );
    }
    let ty: GgmlType = args[1].parse()?;
    let x = floats(&args[2])?;
    let (rows, cols): (usize, usize) = (args[3].parse()?, args[4].parse()?);
    let importance = match args.get(6).map(String::as_str) {
        None | Some("-") => None,
        Some(path) => Some(floats(path)?),
    };
    let repeats: usize = args.get(7).map_or(Ok(3), |s| s.parse())?;
    let shape = [rows, cols];
    let tensor = TensorView::new("probe", &shape, TensorData::F32(&x))?;
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let r = quantize_rows(&tensor, ty, importance.as_deref())?;
        best = best.min(t.elapsed().as_secs_f64());
        last = Some(r);
    }
    let (blocks, sums) = last.ok_or("no run")?;
    std::fs::write(&args[5], &blocks)?;
    println!(
        "{{\"type\": \"{ty}\", \"seconds\": {best:.6}, \"mbps\": {:.1}, \"rel_mse\": {:.6e}}}",
        (x.len() * 4) as f64 / best / 1e6,
        sums.ee / sums.xx
    );
    Ok(())
}
