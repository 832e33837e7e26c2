//! `inspect` of a GGUF file: its metadata and one line per tensor (type, shape, bits per weight, the quality a run
//! of ours stored); with `--verify`, every tensor decoded window by window and checked to be finite, one line each,
//! going on past failures (exit 2 when any fails).

use crate::table::print_rows;
use arrow_quant::gguf::{GgufFile, MetaArray, MetaValue};
use arrow_quant::pipeline::for_each_window;
use arrow_quant::{QuantError, Result};
use std::path::Path;
use std::process::ExitCode;

/// One value per tensor of our `arrow_quant.*` f32 arrays, when the file has them.
fn per_tensor(file: &GgufFile, key: &str) -> Option<Vec<f32>> {
    match file.get(key) {
        Some(MetaValue::Array(MetaArray::F32(v))) if v.len() == file.tensors().len() => {
            Some(v.clone())
        }
        _ => None,
    }
}

/// The metadata as a JSON object, keys in file order.
fn metadata_json(file: &GgufFile) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (k, v) in file.metadata() {
        map.insert(k.clone(), v.to_json());
    }
    serde_json::Value::Object(map)
}

/// `inspect FILE.gguf [--json]`.
pub fn run(path: &Path, json: bool) -> Result<ExitCode> {
    let file = GgufFile::open(path)?;
    let cos = per_tensor(&file, "arrow_quant.cosine");
    let mse = per_tensor(&file, "arrow_quant.rel_mse");
    let (mut rows, mut items) = (Vec::new(), Vec::new());
    for (i, t) in file.tensors().iter().enumerate() {
        let shape = file.logical_shape(i);
        let n: usize = shape.iter().product();
        let bpw = if n == 0 {
            0.0
        } else {
            t.nbytes as f64 * 8.0 / n as f64
        };
        let (c, m) = (cos.as_ref().map(|c| c[i]), mse.as_ref().map(|m| m[i]));
        items.push(serde_json::json!({"name": t.name, "shape": shape, "stored_shape": t.shape,
            "encoding": t.ty.name(), "bits_per_weight": bpw, "bytes": t.nbytes, "cosine": c, "rel_mse": m}));
        rows.push(vec![
            t.name.clone(),
            format!("{shape:?}"),
            t.ty.name().to_string(),
            format!("{bpw:.3}"),
            c.map_or("-".into(), |c| format!("{c:.6}")),
            m.map_or("-".into(), |m| format!("{m:.3e}")),
        ]);
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"format": "gguf", "version": file.version(),
            "metadata": metadata_json(&file), "tensors": items})
        );
    } else {
        for (k, v) in file.metadata() {
            if k.starts_with("general.") {
                println!("{k} = {}", v.to_json());
            }
        }
        print_rows(
            &["name", "shape", "type", "bits/w", "cosine", "rel-MSE"],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `inspect FILE.gguf --verify [--json]`: every tensor decoded and checked to be finite.
pub fn verify(path: &Path, json: bool) -> Result<ExitCode> {
    let file = GgufFile::open(path)?;
    let mut buffer = Vec::new();
    let (mut rows, mut items, mut failed) = (Vec::new(), Vec::new(), 0);
    for (i, t) in file.tensors().iter().enumerate() {
        let verdict = for_each_window(&file, i, &mut buffer, |window, first| {
            match window.iter().position(|v| !v.is_finite()) {
                Some(j) => Err(QuantError::corrupt(
                    &t.name,
                    format!("decodes to {} at element {}", window[j], first + j),
                )),
                None => Ok(()),
            }
        });
        let problem = verdict.err().map(|e| e.to_string());
        failed += usize::from(problem.is_some());
        items.push(
            serde_json::json!({"name": t.name, "encoding": t.ty.name(), "ok": problem.is_none(),
            "problem": problem}),
        );
        rows.push(vec![
            t.name.clone(),
            t.ty.name().to_string(),
            problem.unwrap_or_else(|| "ok".into()),
        ]);
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"format": "gguf", "passed": failed == 0, "tensors": items})
        );
    } else {
        print_rows(&["name", "type", "result"], &rows);
        println!("{} of {} tensors failed", failed, file.tensors().len());
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
