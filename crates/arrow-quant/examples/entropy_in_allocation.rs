//! Does weight entropy help the mixed-precision allocation? Measures every quantizable layer of a checkpoint at
//! 2, 4 and 8 bits (default method, as the pipeline's planning pass does), then allocates widths at several
//! budgets twice: by the measured errors (what the pipeline does), and by the measured errors weighted with each
//! layer's entropy relative to the mean (the "thermodynamic" sensitivity of the earlier design). Prints the true
//! total error (the pipeline's objective: sum of the layers' relative MSE) of both allocations.
//!
//! Run: `cargo run --release -p arrow-quant --example entropy_in_allocation -- model.safetensors`
//! (`benchmarks/bench_diffusion.py` runs it on the MiniLM checkpoint).

use arrow_quant::checkpoint::{float_values, Checkpoint};
use arrow_quant::diffusion::allocation::{allocate, LayerOption};
use arrow_quant::diffusion::entropy::weight_entropy;
use arrow_quant::pipeline::policy::{decide, Decision};
use arrow_quant::pipeline::PipelineConfig;
use arrow_quant::{quantize_tensor, BitWidth, QuantConfig, TensorView};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: entropy_in_allocation CHECKPOINT")?;
    let checkpoint = Checkpoint::open(std::path::Path::new(&path))?;
    let config = PipelineConfig::default();
    let entries: Vec<_> = checkpoint.tensors().map(|(_, e)| e).collect();
    let decisions = decide(&config, &entries);
    let mut options: Vec<Vec<LayerOption>> = Vec::new();
    let mut entropies = Vec::new();
    let (mut fixed, mut params) = (0.0, 0usize);
    for ((file, entry), decision) in checkpoint.tensors().zip(&decisions) {
        params += entry.len();
        if *decision != Decision::Quantize {
            fixed += (entry.len() * 16) as f64;
            continue;
        }
        let values = float_values(file, entry).ok_or("not a float tensor")?;
        let view = TensorView::new(&entry.name, &entry.shape, values.data())?;
        entropies.push(weight_entropy(&values.data()));
        let mut layer = vec![LayerOption {
            bits: (entry.len() * 16) as f64,
            error: 0.0,
        }];
        for bits in [BitWidth::Int2, BitWidth::Int4, BitWidth::Int8] {
            let q = quantize_tensor(
                &view,
                &QuantConfig {
                    bits,
                    ..config.quant
                },
            )?;
            layer.push(LayerOption {
                bits: (q.nbytes() * 8) as f64,
                error: q.quality.rel_mse,
            });
        }
        options.push(layer);
    }
    let mean = entropies.iter().sum::<f64>() / entropies.len().max(1) as f64;
    let weighted: Vec<Vec<LayerOption>> = options
        .iter()
        .zip(&entropies)
        .map(|(o, h)| {
            o.iter()
                .map(|x| LayerOption {
                    bits: x.bits,
                    error: x.error * h / mean,
                })
                .collect()
        })
        .collect();
    println!(
        "{} quantizable layers, entropy {:.3} .. {:.3} bits (mean {mean:.3})",
        options.len(),
        entropies.iter().copied().fold(f64::INFINITY, f64::min),
        entropies.iter().copied().fold(0.0, f64::max)
    );
    println!("target_bpw  error_by_measured_error  error_entropy_weighted  ratio");
    for target in [2.75, 3.0, 3.5, 4.0, 5.0, 6.0] {
        let budget = target * params as f64 - fixed;
        let plain = allocate(&options, budget)?;
        let by_entropy = allocate(&weighted, budget)?;
        // The true error of the entropy-weighted choice: its options' unweighted errors.
        let true_error: f64 = by_entropy
            .choice
            .iter()
            .zip(&options)
            .map(|(&k, o)| o[k].error)
            .sum();
        println!(
            "{target:>10.2}  {:>23.6e}  {:>22.6e}  {:>5.3}",
            plain.error,
            true_error,
            true_error / plain.error
        );
    }
    Ok(())
}
