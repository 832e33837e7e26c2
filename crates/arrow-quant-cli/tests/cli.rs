//! The binary describes itself: `--version` and `--help` succeed and say what it is.

use std::process::Command;

fn run(arg: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_arrow-quant"))
        .arg(arg)
        .output()
        .expect("binary runs");
    assert!(out.status.success(), "{arg}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn version_and_help() {
    assert_eq!(
        run("--version").trim(),
        format!("arrow-quant {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(run("--help").contains("Weight quantization for diffusion models"));
}
