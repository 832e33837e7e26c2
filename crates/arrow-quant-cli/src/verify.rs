//! `inspect --verify`: every tensor of a model file checked in turn (the checksum of each of its rows, the fields
//! the format constrains, its decoded values finite), one line each, going on past failures; exit 2 when any
//! fails.

use crate::table::print_rows;
use arrow_quant::arrow::checksum::Checksum;
use arrow_quant::arrow::output::RowEncoding;
use arrow_quant::pipeline::ModelFile;
use arrow_quant::{QuantError, Result};
use std::path::Path;
use std::process::ExitCode;

/// The verdict on one tensor (every row of it: a chunked tensor's chunk rows in order): its checksum state, or
/// the first problem found. Rows are decoded window by window.
fn check_tensor(file: &ModelFile, index: usize) -> Result<(String, Checksum)> {
    let mut checksum = Checksum::Verified;
    let mut values = Vec::new();
    let stored = file.for_each_row(index, |row, first| {
        if row.checksum == Checksum::Missing {
            checksum = Checksum::Missing;
        }
        if let RowEncoding::Plain {
            encoding: "raw", ..
        } = row.encoding
        {
            return Ok(());
        }
        let n: usize = row.shape.iter().product();
        let window = row.window_elements();
        values.resize(window.min(n), 0f32);
        for start in (0..n).step_by(window) {
            let len = window.min(n - start);
            row.dequantize_window(start, &mut values[..len])?;
            if let Some(i) = values[..len].iter().position(|v| !v.is_finite()) {
                return Err(QuantError::corrupt(
                    row.name,
                    format!("decodes to {} at element {}", values[i], first + start + i),
                ));
            }
        }
        Ok(())
    })?;
    Ok((stored.encoding, checksum))
}

/// Verifies every tensor of `model` and prints one line per tensor (or JSON).
pub fn run(model: &Path, json: bool) -> Result<ExitCode> {
    let file = ModelFile::open(model)?;
    let (mut rows, mut items, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    let mut unchecked = 0usize;
    for (i, name) in file.names.iter().enumerate() {
        let (encoding, status) = match check_tensor(&file, i) {
            Ok((encoding, Checksum::Verified)) => (encoding, "ok".to_string()),
            Ok((encoding, Checksum::Missing)) => {
                unchecked += 1;
                (encoding, "ok, no checksum".to_string())
            }
            Err(e) => {
                failed.push(e.to_string());
                (String::new(), format!("FAIL: {e}"))
            }
        };
        items.push(serde_json::json!({"name": name, "encoding": encoding, "result": status}));
        rows.push(vec![name.clone(), encoding, status]);
    }
    let n = file.names.len();
    let summary = format!(
        "{n} tensors: {} verified, {unchecked} without checksum (written before checksums existed), {} failed",
        n - unchecked - failed.len(),
        failed.len()
    );
    if json {
        println!(
            "{}",
            serde_json::json!({"passed": failed.is_empty(), "summary": summary, "tensors": items})
        );
    } else {
        print_rows(&["name", "encoding", "result"], &rows);
        println!("{summary}");
    }
    match failed.first() {
        None => Ok(ExitCode::SUCCESS),
        Some(first) => {
            eprintln!(
                "error: {}: {} of {n} tensors failed verification (first: {first})",
                model.display(),
                failed.len()
            );
            Ok(ExitCode::from(2))
        }
    }
}
