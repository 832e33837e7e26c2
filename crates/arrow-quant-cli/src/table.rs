//! Plain-text tables of reports and model files.

use arrow_quant::diffusion::markov::DEFAULT_THRESHOLD;
use arrow_quant::pipeline::Report;

fn shape(s: &[usize]) -> String {
    format!(
        "[{}]",
        s.iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The per-layer table and totals of a quantization report.
pub fn print_report(report: &Report) {
    let width = report
        .layers
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(4)
        .clamp(4, 60);
    println!(
        "{:<width$} {:>16} {:>6} {:>7} {:>9} {:>10}  note",
        "name", "shape", "enc", "bits/w", "cosine", "rel-MSE"
    );
    for l in &report.layers {
        let note = l
            .fallback
            .as_deref()
            .or(l.note.as_deref())
            .or(l.kept.as_deref())
            .unwrap_or("");
        println!(
            "{:<width$} {:>16} {:>6} {:>7.3} {:>9.6} {:>10.3e}  {}",
            l.name,
            shape(&l.shape),
            l.encoding,
            l.bits_per_weight,
            l.quality.cosine,
            l.quality.rel_mse,
            note
        );
    }
    println!();
    println!(
        "{} tensors: {} quantized, {} fell back to more bits, {} kept or carried through",
        report.layers.len(),
        report.quantized(),
        report.fallbacks(),
        report.layers.len() - report.quantized()
    );
    println!(
        "bytes in {:.1} MB, bytes out {:.1} MB, compression {:.2}x, {:.3} bits/weight overall",
        report.bytes_in() as f64 / 1e6,
        report.bytes_out() as f64 / 1e6,
        report.compression_ratio(),
        report.bits_per_weight()
    );
    if let Some(m) = &report.mixed_precision {
        let [w2, w4, w8, w16] = m.layers_per_width;
        println!(
            "mixed precision: target {:.3} bits/weight, achieved {:.3}; layers at 2/4/8/16 bits: {w2}/{w4}/{w8}/{w16}; \
             total error {:.4e}",
            m.target_bits_per_weight,
            report.bits_per_weight(),
            m.total_error
        );
    }
    if let Some(t) = report.time_aware_summary() {
        println!(
            "time-aware activation parameters for {} layers; mean range spread vs uniform groups {:.3}, vs one \
             global range {:.3}",
            t["layers"], t["spread_vs_uniform"].as_f64().unwrap_or(f64::NAN),
            t["spread_vs_global"].as_f64().unwrap_or(f64::NAN)
        );
    }
    // The run validated the activation bits, so the metrics cannot fail here.
    if let Ok(Some(m)) = report.markov_metrics(DEFAULT_THRESHOLD) {
        println!(
            "markov smoothness {:.3}; {} boundary jumps over {} (low {}, medium {}, high {})",
            m.smoothness, m.violations, m.threshold, m.low, m.medium, m.high
        );
    }
    println!(
        "worst cosine of any layer {:.6}; {:.2} s, {:.2} GB/s of input",
        report.worst_cosine(),
        report.seconds,
        report.gb_per_s()
    );
}

/// Prints rows of `(name, shape, encoding, extra columns...)`.
pub fn print_rows(header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(header.to_vec()));
    for r in rows {
        println!("{}", line(r.iter().map(String::as_str).collect()));
    }
}
