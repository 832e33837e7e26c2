//! Quantizes a raw float32 matrix to one ggml type with `gguf::quantize_rows` and writes the blocks, for scripts
//! that check the bytes against gguf-py / llama.cpp and time the quantizer (the best of `REPEAT` runs).
//!
//! Run: `cargo run --release -p arrow-quant --example gguf_block32 -- IN.f32 ROWS COLS TYPE OUT.bin [REPEAT]
//! [IMPORTANCE.f32]` (IMPORTANCE: one float32 per column). Prints `seconds MB/s rel_mse` (MB/s of float32 input).

use arrow_quant::gguf::{quantize_rows, GgmlType};
use arrow_quant::{TensorData, TensorView};
use std::time::Instant;

fn read_f32(path: &str) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
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
            "usage: gguf_block32 IN.f32 ROWS COLS TYPE OUT.bin [REPEAT] [IMPORTANCE.f32]".into(),
        );
    }
    let x = read_f32(&args[1])?;
    let shape = [args[2].parse::<usize>()?, args[3].parse::<usize>()?];
    let ty: GgmlType = args[4].parse()?;
    let repeat: usize = args.get(6).map_or(Ok(1), |s| s.parse())?;
    let importance = args.get(7).map(|p| read_f32(p)).transpose()?;
    let view = TensorView::new("w", &shape, TensorData::F32(&x))?;
    let mut best = f64::INFINITY;
    let mut result = None;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        let r = quantize_rows(&view, ty, importance.as_deref())?;
        best = best.min(t.elapsed().as_secs_f64());
        result = Some(r);
    }
    let (bytes, sums) = result.ok_or("no run")?;
    std::fs::write(&args[5], &bytes)?;
    println!(
        "{best:.6} {:.1} {:.6e}",
        (x.len() * 4) as f64 / best / 1e6,
        sums.ee / sums.xx
    );
    Ok(())
}
