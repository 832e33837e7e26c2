//! `inspect --verify`: every tensor of a model file checked in turn (its checksum, the fields the format
//! constrains, its decoded values finite), one line each, going on past failures; exit 2 when any fails.

use crate::table::print_rows;
use arrow_quant::arrow::checksum::{verify_row, Checksum};
use arrow_quant::arrow::output::RowEncoding;
use arrow_quant::arrow::result::read_results;
use arrow_quant::pipeline::ModelFile;
use arrow_quant::{QuantError, Result};
use std::path::Path;
use std::process::ExitCode;

/// The verdict on one tensor: its checksum state, or the first problem found.
fn check_tensor(file: &ModelFile, index: usize) -> Result<(String, Checksum)> {
    let batch = file.read(index)?;
    let checksum = (0..batch.num_rows())
        .map(|r| verify_row(&batch, r))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .fold(Checksum::Verified, |all, c| {
            if c == Checksum::Missing {
                c
            } else {
                all
            }
        });
    let rows = read_results(std::slice::from_ref(&batch))?;
    let mut encoding = String::new();
    for row in &rows {
        encoding = row.encoding.name().to_string();
        if let RowEncoding::Plain {
            encoding: "raw", ..
        } = row.encoding
        {
            continue;
        }
        let mut values = vec![0f32; row.shape.iter().product()];
        row.dequantize_into(&mut values)?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::corrupt(
                row.name,
                format!("decodes to {} at element {i}", values[i]),
            ));
        }
    }
    Ok((encoding, checksum))
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
