//! `quantize-many`: many checkpoints on a Ray cluster. Ray drives the run from Python, so this command runs
//! `python -m arrow_quant_v2.distributed` with the same arguments, with the interpreter named by
//! `ARROW_QUANT_PYTHON`, else the first `python3` on `PATH` (it needs `arrow_quant_v2` and `ray[data]`
//! installed), and exits with its exit code.

use arrow_quant::{QuantError, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Environment variable naming the Python interpreter of `quantize-many`.
pub const PYTHON_VAR: &str = "ARROW_QUANT_PYTHON";

/// The options of `quantize-many`, passed on to the Python driver.
#[derive(Debug, clap::Args)]
pub struct ManyArgs {
    /// The checkpoints (.safetensors files, sharded folders or index files), then the output folder
    #[arg(required = true, num_args = 2.., value_name = "SOURCES... OUTPUT_DIR")]
    paths: Vec<PathBuf>,
    /// Address of a running Ray cluster (e.g. auto, host:6379, ray://host:10001)
    #[arg(long, value_name = "ADDRESS", conflicts_with = "workers")]
    ray: Option<String>,
    /// Start a local Ray cluster with this many workers (default: one per CPU)
    #[arg(long, value_name = "N")]
    workers: Option<u32>,
    /// Actors in the pool on a --ray cluster (default: its CPUs / threads per worker)
    #[arg(long, value_name = "N", requires = "ray")]
    pool: Option<u32>,
    /// Kernel threads of each worker
    #[arg(long, default_value_t = 1)]
    threads_per_worker: u32,
    /// Deployment profile: edge, local or cloud
    #[arg(long, default_value = "local")]
    profile: String,
    /// First bit width tried: 2, 4 or 8 (overrides the profile)
    #[arg(long)]
    bits: Option<u32>,
    /// Minimum cosine similarity per layer (overrides the profile)
    #[arg(long)]
    floor: Option<f64>,
    /// Mixed precision: stored bits per weight over the whole model (as `quantize --target-bpw`)
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    target_bpw: Option<f64>,
    /// Every layer at --bits: no automatic mixed-precision plan at INT4
    #[arg(long)]
    no_auto_mixed_precision: bool,
    /// Output format: parquet or arrow
    #[arg(long, default_value = "parquet")]
    format: String,
    /// Retries of a unit whose worker was lost
    #[arg(long, default_value_t = 3)]
    max_retries: u32,
    /// Units of work: checkpoint (each quantized whole on one worker), tensor (each split, staged and assembled)
    /// or auto (whole when a checkpoint is at most 1 / (2 x pool) of the run's bytes)
    #[arg(long, default_value = "auto")]
    units: String,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// No progress output
    #[arg(long, short)]
    quiet: bool,
}

impl ManyArgs {
    /// The arguments of `python -m arrow_quant_v2.distributed`.
    fn driver_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["-m".into(), "arrow_quant_v2.distributed".into()];
        let mut opt = |name: &str, value: String| {
            a.push(name.into());
            a.push(value.into());
        };
        if let Some(r) = &self.ray {
            opt("--ray", r.clone());
        }
        if let Some(w) = self.workers {
            opt("--workers", w.to_string());
        }
        if let Some(p) = self.pool {
            opt("--pool", p.to_string());
        }
        opt("--threads-per-worker", self.threads_per_worker.to_string());
        opt("--profile", self.profile.clone());
        if let Some(b) = self.bits {
            opt("--bits", b.to_string());
        }
        if let Some(f) = self.floor {
            opt("--floor", f.to_string());
        }
        if let Some(t) = self.target_bpw {
            opt("--target-bpw", t.to_string());
        }
        opt("--format", self.format.clone());
        opt("--max-retries", self.max_retries.to_string());
        opt("--units", self.units.clone());
        if self.no_auto_mixed_precision {
            a.push("--no-auto-mixed-precision".into());
        }
        if self.json {
            a.push("--json".into());
        }
        if self.quiet {
            a.push("--quiet".into());
        }
        a.push("--".into());
        a.extend(self.paths.iter().map(|p| p.as_os_str().to_owned()));
        a
    }
}

/// Runs the Python driver and returns its exit code.
pub fn run(args: &ManyArgs) -> Result<ExitCode> {
    let python = std::env::var_os(PYTHON_VAR).unwrap_or_else(|| "python3".into());
    let status = std::process::Command::new(&python)
        .args(args.driver_args())
        .status()
        .map_err(|e| {
            let e = std::io::Error::new(
                e.kind(),
                format!("cannot run the Python driver (set {PYTHON_VAR} to an interpreter with arrow_quant_v2 and ray[data]): {e}"),
            );
            QuantError::io(Path::new(&python), &e)
        })?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(2)),
        None => ExitCode::from(2), // killed by a signal
    })
}
