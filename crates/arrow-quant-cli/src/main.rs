//! `arrow-quant`: the command line over the core crate: `quantize`, `validate`, `inspect`, `export`, and
//! `quantize-many` (many checkpoints on Ray, through the Python driver).
//!
//! Exit codes: 0 success, 1 a quality floor was missed (`quantize --fail-fast`, or `validate`), 2 bad input.

mod commands;
mod gguf_inspect;
mod many;
mod progress;
mod table;
mod verify;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Weight quantization for diffusion models: INT8 / INT4 / INT2 with a per-layer quality guarantee
#[derive(Debug, Parser)]
#[command(name = "arrow-quant", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process: the size does not matter
enum Command {
    /// Quantize a checkpoint (.safetensors file, sharded folder or index) into a model file
    Quantize {
        /// The checkpoint
        input: PathBuf,
        /// The model file to write (appears only when the run succeeds)
        output: PathBuf,
        /// Deployment profile: edge (INT2, flat groups of 256, floor 0.65), local (INT4, layout auto, 0.85),
        /// cloud (INT8, flat groups of 64, 0.95)
        #[arg(long, default_value = "local")]
        profile: String,
        #[command(flatten)]
        quant: QuantArgs,
        /// Minimum cosine similarity per layer, in [0, 1] [default: the profile's: edge 0.65, local 0.85,
        /// cloud 0.95]
        #[arg(long, allow_negative_numbers = true)]
        floor: Option<f64>,
        /// Stop with exit code 1 when a layer misses the floor instead of falling back to more bits
        #[arg(long)]
        fail_fast: bool,
        /// Output format: parquet, arrow (Arrow IPC file) or gguf. Unset: from the output's extension (.arrow,
        /// .ipc: arrow; .gguf: gguf; otherwise parquet); a format that contradicts the extension is an error
        #[arg(long)]
        format: Option<String>,
        /// GGUF output: the type preset, e.g. Q4_K_M (the default), Q8_0, Q6_K, Q5_K_M, Q4_0, Q3_K_M, Q2_K, IQ4_XS
        /// (docs/GGUF.md lists them all)
        #[arg(long = "type", value_name = "TYPE")]
        gguf_type: Option<String>,
        /// GGUF output: REGEX=TYPE gives the tensors whose name matches REGEX that type (repeatable; the first
        /// match wins)
        #[arg(long = "tensor-type", value_name = "REGEX=TYPE")]
        tensor_type: Vec<String>,
        /// GGUF output: the general.architecture to write (flux, sd1, sdxl, sd3, wan, ...) instead of the one
        /// detected from the tensor names
        #[arg(long)]
        arch: Option<String>,
        /// GGUF output: what rows that no K-quant block fits get: quality (Q8_0, the default), size (the shape
        /// fix to rows of 256, else the block fallback table: Q4_K -> Q4_1, ...) or llama (llama-quantize's table:
        /// Q4_K -> Q5_0, ...; the default for a language model from its GGUF)
        #[arg(long, value_name = "quality|size|llama")]
        fallback: Option<String>,
        /// GGUF output: every quantized tensor at the preset's base type: no mix bumps, no 16-bit keeps but the
        /// loaders' (llama-quantize's --pure; --tensor-type still applies)
        #[arg(long)]
        pure: bool,
        /// GGUF output: leave output.weight in full precision (llama-quantize's --leave-output-tensor)
        #[arg(long)]
        leave_output_tensor: bool,
        /// GGUF output: llama.cpp's importance matrix (llama-imatrix's output: GGUF or legacy .dat), searched
        /// with as llama-quantize's --imatrix; tensors it has no entry for are searched without it (a warning)
        #[arg(long, value_name = "FILE")]
        imatrix: Option<PathBuf>,
        /// Print the report as JSON instead of a table
        #[arg(long)]
        json: bool,
        /// No progress output
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        diffusion: DiffusionArgs,
    },
    /// Re-read a checkpoint and its model file and check every layer's quality
    Validate {
        /// The source checkpoint
        original: PathBuf,
        /// The model file
        quantized: PathBuf,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// List the tensors of a model file (or a GGUF file) with their encodings and quality
    Inspect {
        /// The model file
        model: PathBuf,
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// Check every tensor (checksum, stored fields, decoded values) and report each; exit 2 if any fails
        #[arg(long)]
        verify: bool,
    },
    /// Quantize many checkpoints on a Ray cluster (runs `python -m arrow_quant_v2.distributed`; the interpreter
    /// is $ARROW_QUANT_PYTHON, else python3 on PATH); outputs are OUTPUT_DIR/<name>.parquet, byte-identical to
    /// `quantize` of each checkpoint with the same settings
    QuantizeMany(many::ManyArgs),
    /// Write a dequantized .safetensors from a model file
    Export {
        /// The model file
        model: PathBuf,
        /// The .safetensors file to write
        output: PathBuf,
        /// Element type of float tensors: f16, bf16, f32 or f64. Unset: each tensor's source dtype. A value that
        /// overflows the dtype asked for is an error
        #[arg(long)]
        dtype: Option<String>,
    },
}

/// The encoding options of `quantize`; unset ones keep the profile's (see `QuantOptions` in the core).
#[derive(Debug, clap::Args)]
struct QuantArgs {
    /// First bit width tried: 2, 4 or 8 [default: the profile's: edge 2, local 4, cloud 8]
    #[arg(long)]
    bits: Option<u32>,
    /// Encoding family: auto (two-level where rows fit, else flat), flat or two_level [default: flat when a
    /// flat option or a flat method is given, else the profile's: edge flat, local auto, cloud flat]
    #[arg(long)]
    layout: Option<String>,
    /// Flat layout: elements per group, 32, 64, 128, 256 or per_channel [default: the profile's: edge 256,
    /// cloud 64, else 128]
    #[arg(long)]
    group_size: Option<String>,
    /// Flat layout: symmetric groups (no zero point) [default: asymmetric]
    #[arg(long)]
    symmetric: bool,
    /// Flat layout: storage type of scales and zero points, float16 or float32 [default: float16]
    #[arg(long)]
    scale_dtype: Option<String>,
    /// Parameter search: auto (two-level's own search, mse on flat), rtn, mse or hqq [default: auto]
    #[arg(long)]
    method: Option<String>,
}

/// The diffusion-specific options of `quantize`.
#[derive(Debug, clap::Args)]
struct DiffusionArgs {
    /// Calibration statistics (Parquet or Arrow IPC; see docs/CALIBRATION.md): enables time-aware activation
    /// parameters and activation-aware channel scaling for the layers it records
    #[arg(long, value_name = "FILE")]
    calibration: Option<PathBuf>,
    /// Mixed precision: choose 2 / 4 / 8 bits (or 16-bit) per layer for this many stored bits per weight over the
    /// whole model, minimising the total error [default: at --bits 4 with layout and method auto, 4.5 over the
    /// quantized layers (the uniform layout's size); otherwise none, the fallback chain from --bits]
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    target_bpw: Option<f64>,
    /// Every layer at --bits (with the fallback chain): no automatic mixed-precision plan at INT4
    #[arg(long)]
    no_auto_mixed_precision: bool,
    /// With calibration: number of timestep groups of the time-aware activation parameters [default: 10]
    #[arg(long)]
    time_groups: Option<usize>,
    /// With calibration: placement of the timestep groups, adaptive or uniform [default: adaptive]
    #[arg(long)]
    time_grouping: Option<String>,
    /// With calibration: bits of the activation quantization the time-aware parameters are for [default: 8]
    #[arg(long)]
    activation_bits: Option<u8>,
    /// With calibration: blend between neighbouring timestep groups, none, linear, cubic or sigmoid
    /// [default: none]
    #[arg(long)]
    smoothing: Option<String>,
    /// With calibration: timesteps on each side of a group boundary that the smoothing blends [default: 0]
    #[arg(long)]
    smoothing_window: Option<u32>,
    /// With calibration: no time-aware activation parameters
    #[arg(long)]
    no_time_aware: bool,
    /// With calibration: no activation-aware channel scaling
    #[arg(long)]
    no_spatial: bool,
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`arrow-quant inspect m.parquet | head`) like other command-line tools.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match commands::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(match e {
                arrow_quant::QuantError::Quality { .. } => 1,
                _ => 2,
            })
        }
    }
}
