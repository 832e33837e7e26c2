//! The binary end to end: `--version` / `--help`, the four subcommands on a small checkpoint, and the exit codes
//! (0 ok, 1 quality floor missed with --fail-fast, 2 bad input) with one-line errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn arrow_quant(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arrow-quant"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A safetensors file with one 64 x 256 f32 layer of pseudo-Gaussian weights and a 1-D norm.
fn checkpoint(dir: &Path) -> PathBuf {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let weights: Vec<u8> = (0..64 * 256)
        .flat_map(|_| {
            let mut acc = 0.0f32;
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                acc += (seed >> 40) as f32 / (1u64 << 24) as f32;
            }
            (acc - 2.0).to_le_bytes()
        })
        .collect();
    let norm: Vec<u8> = (0..64).flat_map(|_| 1.0f32.to_le_bytes()).collect();
    let header = format!(
        r#"{{"blocks.0.fc.weight":{{"dtype":"F32","shape":[64,256],"data_offsets":[0,{}]}},"blocks.0.norm.weight":{{"dtype":"F32","shape":[64],"data_offsets":[{},{}]}}}}"#,
        weights.len(),
        weights.len(),
        weights.len() + norm.len()
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(weights);
    bytes.extend(norm);
    let path = dir.join("model.safetensors");
    std::fs::write(&path, bytes).expect("write checkpoint");
    path
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("aq-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn version_and_help() {
    let version = arrow_quant(&["--version"]);
    assert_eq!(
        stdout(&version).trim(),
        format!("arrow-quant {}", env!("CARGO_PKG_VERSION"))
    );
    let help = stdout(&arrow_quant(&["--help"]));
    assert!(help.contains("Weight quantization for diffusion models"));
    for command in ["quantize", "validate", "inspect", "export"] {
        assert!(help.contains(command), "{command}");
    }
}

#[test]
fn quantize_validate_inspect_export() {
    let dir = temp_dir("ok");
    let input = checkpoint(&dir);
    let out = dir.join("m.arrow");
    let (input, out_s) = (input.to_str().unwrap(), out.to_str().unwrap());
    let run = arrow_quant(&[
        "quantize", input, out_s, "--format", "arrow", "--bits", "4", "--quiet",
    ]);
    assert!(run.status.success(), "{run:?}");
    let text = stdout(&run);
    assert!(
        text.contains("blocks.0.fc.weight")
            && text.contains("int4")
            && text.contains("compression"),
        "{text}"
    );
    let json = arrow_quant(&["quantize", input, out_s, "--json", "--method", "rtn"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON report");
    assert_eq!(report["totals"]["quantized"], 1);
    let valid = arrow_quant(&["validate", input, out_s]);
    assert!(
        valid.status.success() && stdout(&valid).contains("passed"),
        "{valid:?}"
    );
    let inspect = stdout(&arrow_quant(&["inspect", out_s]));
    assert!(
        inspect.contains("blocks.0.norm.weight") && inspect.contains("f16"),
        "{inspect}"
    );
    let verify = arrow_quant(&["inspect", out_s, "--verify"]);
    assert!(
        verify.status.success() && stdout(&verify).contains("0 without checksum"),
        "{verify:?}"
    );
    let exported = dir.join("restored.safetensors");
    let export = arrow_quant(&[
        "export",
        out_s,
        exported.to_str().unwrap(),
        "--dtype",
        "bf16",
    ]);
    assert!(export.status.success() && exported.exists(), "{export:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exit_codes_and_one_line_errors() {
    let dir = temp_dir("codes");
    let input = checkpoint(&dir);
    let out = dir.join("m.parquet");
    let (input, out_s) = (input.to_str().unwrap(), out.to_str().unwrap());
    let strict = arrow_quant(&[
        "quantize",
        input,
        out_s,
        "--bits",
        "2",
        "--floor",
        "0.999",
        "--fail-fast",
        "-q",
    ]);
    assert_eq!(strict.status.code(), Some(1), "{strict:?}");
    let err = String::from_utf8_lossy(&strict.stderr);
    assert!(
        err.starts_with("error: tensor 'blocks.0.fc.weight': cosine") && err.lines().count() == 1,
        "{err}"
    );
    assert!(!out.exists(), "a failed run leaves no output");
    let missing = arrow_quant(&["quantize", "/no/such/model.safetensors", out_s]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such file"));
    let bad_bits = arrow_quant(&["quantize", input, out_s, "--bits", "3"]);
    assert_eq!(bad_bits.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_bits.stderr).contains("bit_width"));
    let fallback = arrow_quant(&[
        "quantize", input, out_s, "--bits", "2", "--floor", "0.99", "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&fallback.stdout).expect("JSON report");
    assert_eq!(report["totals"]["fallbacks"], 1);
    let remaining: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        remaining.len(),
        2,
        "only the checkpoint and the last output: {remaining:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Calibration statistics for the checkpoint's layer: 20 timesteps with growing ranges, 256 channel magnitudes.
fn calibration(dir: &Path, layer: &str, channels: Option<usize>) -> PathBuf {
    use arrow_quant::diffusion::calibration::{Calibration, CalibrationRow};
    let rows = (0..20).map(|t| CalibrationRow {
        layer: layer.into(),
        timestep: t * 50,
        min: -0.1 * f64::from(t as u32 + 1),
        max: 1.0 + (t * t) as f64 / 10.0,
        count: 100,
        channel_absmax: channels.map(|n| (0..n).map(|j| 1.0 + (j % 7) as f32).collect()),
    });
    let path = dir.join("cal.parquet");
    Calibration::from_rows("test", rows, Some(1000))
        .and_then(|c| c.write(&path))
        .expect("write calibration");
    path
}

#[test]
fn calibration_and_mixed_precision_options() {
    let dir = temp_dir("cal");
    let input = checkpoint(&dir);
    let cal = calibration(&dir, "blocks.0.fc", None);
    let out = dir.join("m.parquet");
    let (input, out_s, cal_s) = (
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        cal.to_str().unwrap(),
    );
    let run = arrow_quant(&[
        "quantize",
        input,
        out_s,
        "--calibration",
        cal_s,
        "--time-groups",
        "4",
        "--target-bpw",
        "6",
        "--json",
    ]);
    assert!(run.status.success(), "{run:?}");
    let report: serde_json::Value = serde_json::from_str(&stdout(&run)).expect("JSON report");
    let totals = &report["totals"];
    assert_eq!(totals["time_aware"]["layers"], 1);
    assert_eq!(totals["mixed_precision"]["target_bits_per_weight"], 6.0);
    assert!(totals["bits_per_weight"].as_f64().unwrap() <= 6.0);
    let fc = &report["layers"][0];
    assert_eq!(fc["name"], "blocks.0.fc.weight");
    assert_eq!(fc["time_groups"], 4);
    let table = stdout(&arrow_quant(&[
        "quantize",
        input,
        out_s,
        "--calibration",
        cal_s,
        "--target-bpw",
        "6",
        "--quiet",
    ]));
    assert!(table.contains("mixed precision: target 6.000"), "{table}");
    assert!(
        table.contains("time-aware activation parameters for 1 layers"),
        "{table}"
    );
    assert!(table.contains("markov smoothness"), "{table}");

    let wrong = calibration(&dir, "blocks.7.fc", None);
    let bad = arrow_quant(&[
        "quantize",
        input,
        out_s,
        "--calibration",
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("unknown layer") && err.contains("blocks.7.fc"),
        "{err}"
    );
    let low = arrow_quant(&["quantize", input, out_s, "--target-bpw", "1"]);
    assert_eq!(low.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&low.stderr).contains("target_bits_per_weight"));
    let _ = std::fs::remove_dir_all(&dir);
}
