//! A sharded checkpoint's `*.safetensors.index.json`: its weight map read (every shard path kept inside the model
//! folder) and checked against the shards (every listed tensor in the shard it names, every shard tensor listed).

use super::safetensors::SafetensorsFile;
use crate::error::{QuantError, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The shard files of a checkpoint, and for a sharded index its weight map (tensor name to shard file name).
pub(super) struct Shards {
    pub(super) files: Vec<PathBuf>,
    pub(super) index: Option<(PathBuf, HashMap<String, String>)>,
}

/// A shard file name from an index must stay inside the model folder: relative, no `..`, no root.
fn check_shard_name(index: &Path, tensor: &str, file: &str) -> Result<()> {
    use std::path::Component;
    let escapes = Path::new(file)
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if escapes || file.is_empty() {
        return Err(QuantError::format(
            index,
            format!(
                "weight_map entry '{tensor}' names shard {file:?}, which is not a file inside the model \
                 folder (absolute paths and '..' are refused)"
            ),
        ));
    }
    Ok(())
}

pub(super) fn read_index(index: &Path, dir: &Path) -> Result<Shards> {
    let text = std::fs::read_to_string(index).map_err(|e| QuantError::io(index, &e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| QuantError::format(index, format!("index is not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| QuantError::format(index, "index has no 'weight_map' object"))?;
    if map.is_empty() {
        return Err(QuantError::format(index, "index has an empty 'weight_map'"));
    }
    let mut files: Vec<String> = Vec::new();
    let mut weight_map = HashMap::with_capacity(map.len());
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            QuantError::format(
                index,
                format!("weight_map entry '{tensor}' is not a file name"),
            )
        })?;
        check_shard_name(index, tensor, file)?;
        if !files.iter().any(|f| f == file) {
            files.push(file.to_string());
        }
        weight_map.insert(tensor.clone(), file.to_string());
    }
    files.sort();
    Ok(Shards {
        files: files.into_iter().map(|f| dir.join(f)).collect(),
        index: Some((index.to_path_buf(), weight_map)),
    })
}

/// The index and the shards must agree: every tensor the index names is in the shard it names, and every
/// shard tensor is in the index.
pub(super) fn check_index_agrees(
    index: &Path,
    weight_map: &HashMap<String, String>,
    files: &[SafetensorsFile],
    shard_names: &[String],
) -> Result<()> {
    let mut found = 0usize;
    for (file, shard) in files.iter().zip(shard_names) {
        for t in &file.tensors {
            match weight_map.get(&t.name) {
                None => {
                    return Err(QuantError::format(
                        index,
                        format!(
                        "shard {shard} holds tensor '{}', which the index does not list; fix the \
                             index's weight_map",
                        t.name
                    ),
                    ))
                }
                Some(listed) if listed != shard => {
                    return Err(QuantError::format(
                        index,
                        format!(
                            "the index puts tensor '{}' in {listed}, but it is in shard {shard}",
                            t.name
                        ),
                    ))
                }
                Some(_) => found += 1,
            }
        }
    }
    if found != weight_map.len() {
        let mut missing: Vec<(&String, &String)> = weight_map
            .iter()
            .filter(|(name, shard)| {
                let at = shard_names.iter().position(|s| s == *shard);
                !at.is_some_and(|i| files[i].tensors.iter().any(|t| &t.name == *name))
            })
            .collect();
        missing.sort();
        if let Some((name, shard)) = missing.first() {
            return Err(QuantError::format(
                index,
                format!(
                    "the index lists tensor '{name}' in {shard}, but that shard has no such tensor \
                     ({} listed tensors missing); fix the index or restore the shard",
                    missing.len()
                ),
            ));
        }
    }
    Ok(())
}
