//! Checkpoints: one `.safetensors` file, or a sharded folder (`*.safetensors.index.json` or every
//! `*.safetensors` file in it), tensors in file order.

pub mod safetensors;

use crate::error::{QuantError, Result};
use crate::tensor::TensorData;
use half::{bf16, f16};
pub use safetensors::{Dtype, SafetensorsFile, TensorEntry};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// An opened checkpoint: its shard files and every tensor in order (shard by shard, by offset).
pub struct Checkpoint {
    /// The path the user gave.
    pub path: PathBuf,
    /// The shard files.
    pub files: Vec<SafetensorsFile>,
    /// `(file index, tensor index)` of every tensor.
    pub order: Vec<(usize, usize)>,
}

/// A tensor's elements as the kernels take them: borrowed from the map when aligned, else copied once.
pub enum TensorValues<'a> {
    /// f32 elements.
    F32(Cow<'a, [f32]>),
    /// f16 elements.
    F16(Cow<'a, [f16]>),
    /// bf16 elements.
    BF16(Cow<'a, [bf16]>),
}

impl TensorValues<'_> {
    /// The borrowed view for the kernels.
    pub fn data(&self) -> TensorData<'_> {
        match self {
            Self::F32(v) => TensorData::F32(v),
            Self::F16(v) => TensorData::F16(v),
            Self::BF16(v) => TensorData::BF16(v),
        }
    }
}

fn cast<T: bytemuck::Pod>(bytes: &[u8]) -> Cow<'_, [T]> {
    match bytemuck::try_cast_slice(bytes) {
        Ok(slice) => Cow::Borrowed(slice),
        Err(_) => Cow::Owned(
            bytes
                .chunks_exact(size_of::<T>())
                .map(bytemuck::pod_read_unaligned)
                .collect(),
        ),
    }
}

/// The floating-point values of a tensor, or `None` for a dtype the kernels do not take.
pub fn float_values<'a>(
    file: &'a SafetensorsFile,
    entry: &TensorEntry,
) -> Option<TensorValues<'a>> {
    let bytes = file.bytes(entry);
    Some(match entry.dtype {
        Dtype::F32 => TensorValues::F32(cast(bytes)),
        Dtype::F16 => TensorValues::F16(cast(bytes)),
        Dtype::BF16 => TensorValues::BF16(cast(bytes)),
        _ => return None,
    })
}

/// The shard files of a checkpoint, and for a sharded index its weight map (tensor name to shard file name).
struct Shards {
    files: Vec<PathBuf>,
    index: Option<(PathBuf, std::collections::HashMap<String, String>)>,
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

fn read_index(index: &Path, dir: &Path) -> Result<Shards> {
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
    let mut weight_map = std::collections::HashMap::with_capacity(map.len());
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

fn shard_paths(path: &Path) -> Result<Shards> {
    let not_found = |problem: &str| QuantError::ModelNotFound {
        path: path.display().to_string(),
        problem: problem.into(),
    };
    if !path.exists() {
        return Err(not_found("no such file or folder"));
    }
    let index = if path.is_dir() {
        std::fs::read_dir(path)
            .map_err(|e| QuantError::io(path, &e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().ends_with(".safetensors.index.json"))
    } else if path.to_string_lossy().ends_with(".json") {
        Some(path.to_path_buf())
    } else {
        return Ok(Shards {
            files: vec![path.to_path_buf()],
            index: None,
        });
    };
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    if let Some(index) = index {
        return read_index(&index, dir);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| QuantError::io(path, &e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(not_found(
            "folder holds no .safetensors file and no *.safetensors.index.json",
        ));
    }
    Ok(Shards { files, index: None })
}

/// The index and the shards must agree: every tensor the index names is in the shard it names, and every
/// shard tensor is in the index.
fn check_index_agrees(
    index: &Path,
    weight_map: &std::collections::HashMap<String, String>,
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

impl Checkpoint {
    /// Opens a file, a folder or an index, validating every shard's header (and, for an index, that it and the
    /// shards list the same tensors, and that every shard is inside the model folder).
    pub fn open(path: &Path) -> Result<Self> {
        let shards = shard_paths(path)?;
        let files = shards
            .files
            .iter()
            .map(|p| SafetensorsFile::open(p))
            .collect::<Result<Vec<_>>>()?;
        if let Some((index, weight_map)) = &shards.index {
            // The shard names in the order of `files` (both sorted).
            let mut shard_names: Vec<String> = weight_map.values().cloned().collect();
            shard_names.sort();
            shard_names.dedup();
            check_index_agrees(index, weight_map, &files, &shard_names)?;
        }
        let mut order = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (fi, f) in files.iter().enumerate() {
            for (ti, t) in f.tensors.iter().enumerate() {
                if !seen.insert(t.name.as_str()) {
                    return Err(QuantError::format(
                        f.path(),
                        format!("tensor '{}' appears in more than one shard", t.name),
                    ));
                }
                order.push((fi, ti));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            files,
            order,
        })
    }

    /// Every tensor with its file, in order.
    pub fn tensors(&self) -> impl Iterator<Item = (&SafetensorsFile, &TensorEntry)> {
        self.order
            .iter()
            .map(|&(f, t)| (&self.files[f], &self.files[f].tensors[t]))
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> usize {
        self.tensors().map(|(_, t)| t.end - t.begin).sum()
    }
}
