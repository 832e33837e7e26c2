//! The subcommands: each parses its options into core calls and prints the result.

use crate::progress::Reporter;
use crate::table::{print_report, print_rows};
use crate::{Command, DiffusionArgs, QuantArgs};
use arrow_quant::diffusion::time_groups::{Smoothing, TimeGrouping};
use arrow_quant::pipeline::{
    export_safetensors, is_gguf, quantize_model, validate_model, ExportDtype, ModelFile,
    OutputFormat, PipelineConfig,
};
use arrow_quant::{parse_group_size, QuantOptions, Result};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

/// The profile's quantization settings with the command-line options applied.
fn apply_quant(config: &mut PipelineConfig, q: &QuantArgs) -> Result<()> {
    let group_size = q.group_size.as_deref().map(parse_group_size).transpose()?;
    config.quant = QuantOptions {
        bits: q.bits,
        layout: q.layout.as_deref(),
        group_size,
        symmetric: q.symmetric.then_some(true),
        scale_dtype: q.scale_dtype.as_deref(),
        method: q.method.as_deref(),
    }
    .apply(config.quant)?;
    Ok(())
}

fn apply_diffusion(config: &mut PipelineConfig, d: DiffusionArgs) -> Result<()> {
    config.calibration_path = d.calibration;
    config.target_bits_per_weight = d.target_bpw;
    config.auto_mixed_precision = !d.no_auto_mixed_precision;
    config.enable_time_aware = !d.no_time_aware;
    config.enable_spatial = !d.no_spatial;
    // Unset options keep their defaults; set ones without --calibration are refused by the core
    // (`PipelineConfig::check_calibration_settings`), as Python's keywords are.
    let t = &mut config.time_aware;
    if let Some(n) = d.time_groups {
        t.num_groups = n;
    }
    if let Some(g) = &d.time_grouping {
        t.grouping = TimeGrouping::parse(g)?;
    }
    if let Some(b) = d.activation_bits {
        t.activation_bits = b;
    }
    if let Some(s) = &d.smoothing {
        t.smoothing = Smoothing::parse(s)?;
    }
    if let Some(w) = d.smoothing_window {
        t.smoothing_window = w;
    }
    Ok(())
}

/// Runs one subcommand; the exit code says whether quality held.
pub fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::QuantizeMany(args) => crate::many::run(&args),
        Command::Quantize {
            input,
            output,
            profile,
            quant,
            floor,
            fail_fast,
            format,
            gguf_type,
            tensor_type,
            arch,
            fallback,
            pure,
            leave_output_tensor,
            imatrix,
            json,
            quiet,
            diffusion,
        } => {
            let mut config = PipelineConfig::profile(&profile)?;
            apply_quant(&mut config, &quant)?;
            if let Some(f) = floor {
                config.quality_floor = f;
            }
            config.fail_fast = fail_fast;
            config.format = format.as_deref().map(OutputFormat::parse).transpose()?;
            config.gguf_type = gguf_type;
            config.tensor_types = tensor_type;
            config.gguf_arch = arch;
            config.gguf_fallback = fallback;
            config.gguf_pure = pure;
            config.gguf_leave_output_tensor = leave_output_tensor;
            config.imatrix_path = imatrix;
            apply_diffusion(&mut config, diffusion)?;
            let reporter = Reporter::new(quiet || json);
            let cancel = AtomicBool::new(false);
            let report =
                quantize_model(&input, &output, &config, &cancel, &|p| reporter.update(&p));
            reporter.finish();
            let report = report?;
            for warning in &report.warnings {
                eprintln!("warning: {warning}");
            }
            if json {
                println!("{}", report.to_json());
            } else {
                print_report(&report);
                println!("wrote {}", output.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate {
            original,
            quantized,
            json,
        } => {
            let v = validate_model(&original, &quantized)?;
            if json {
                println!("{}", v.to_json());
            } else {
                let rows: Vec<Vec<String>> = v
                    .layers
                    .iter()
                    .map(|(n, e, m, s, ok)| {
                        vec![
                            n.clone(),
                            e.clone(),
                            format!("{:.6}", m.cosine),
                            format!("{:.6}", s.cosine),
                            format!("{:.3e}", m.rel_mse),
                            if *ok { "ok".into() } else { "FAIL".into() },
                        ]
                    })
                    .collect();
                print_rows(
                    &["name", "encoding", "cosine", "stored", "rel-MSE", "result"],
                    &rows,
                );
                println!(
                    "floor {:.3}: {}",
                    v.floor,
                    if v.passed() { "passed" } else { "FAILED" }
                );
            }
            Ok(if v.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Inspect {
            model,
            json,
            verify,
        } if is_gguf(&model) => {
            if verify {
                crate::gguf_inspect::verify(&model, json)
            } else {
                crate::gguf_inspect::run(&model, json)
            }
        }
        Command::Inspect {
            model,
            json,
            verify: true,
        } => crate::verify::run(&model, json),
        Command::Inspect { model, json, .. } => {
            let file = ModelFile::open(&model)?;
            let mut rows = Vec::new();
            let mut items = Vec::new();
            for i in 0..file.names.len() {
                // One line per tensor: a chunked tensor's rows add up to its whole shape and size.
                let t = file.for_each_row(i, |_, _| Ok(()))?;
                let n: usize = t.shape.iter().product();
                // Every stored byte: codes, scales and zero points or block records, channel scales.
                let bpw = if n == 0 {
                    0.0
                } else {
                    t.bytes as f64 * 8.0 / n as f64
                };
                items.push(serde_json::json!({"name": t.name, "shape": t.shape, "dtype": t.dtype, "encoding": t.encoding, "bits_per_weight": bpw, "bytes": t.bytes, "rows": t.rows, "cosine": t.quality.cosine, "rel_mse": t.quality.rel_mse}));
                rows.push(vec![
                    t.name.clone(),
                    format!("{:?}", t.shape),
                    t.dtype.clone(),
                    t.encoding.clone(),
                    format!("{bpw:.3}"),
                    format!("{:.6}", t.quality.cosine),
                    format!("{:.3e}", t.quality.rel_mse),
                ]);
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({"metadata": file.metadata, "tensors": items})
                );
            } else {
                print_rows(
                    &[
                        "name", "shape", "dtype", "encoding", "bits/w", "cosine", "rel-MSE",
                    ],
                    &rows,
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Export {
            model,
            output,
            dtype,
        } => {
            let dtype = dtype.as_deref().map(ExportDtype::parse).transpose()?;
            export_safetensors(&model, &output, dtype)?;
            println!("wrote {}", output.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
