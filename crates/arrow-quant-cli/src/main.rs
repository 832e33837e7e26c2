//! `arrow-quant`: the command line over the core crate. This version only describes itself; the model
//! pipeline (`quantize`, `validate`, `inspect`, `export`) arrives with the pipeline work.

use clap::Parser;

/// Weight quantization for diffusion models: INT8 / INT4 / INT2 with a per-layer quality guarantee.
#[derive(Debug, Parser)]
#[command(name = "arrow-quant", version)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    println!(
        "arrow-quant {}: kernels for INT2/INT4/INT8 ({}); see --help",
        env!("CARGO_PKG_VERSION"),
        [arrow_quant::Method::Rtn, arrow_quant::Method::Mse]
            .map(|m| m.name())
            .join(", ")
    );
}
