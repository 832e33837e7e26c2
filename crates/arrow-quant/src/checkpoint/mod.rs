//! Checkpoints: one `.safetensors` file, or a sharded folder (`*.safetensors.index.json` or every
//! `*.safetensors` file in it), tensors in file order; or one float GGUF file ([`gguf_source`]).

mod gguf_source;
mod index;
pub mod safetensors;

use crate::error::{QuantError, Result};
use crate::gguf::{is_gguf, MetaValue};
use crate::tensor::TensorData;
use half::{bf16, f16};
use index::{check_index_agrees, read_index, Shards};
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
    /// The metadata of a GGUF source, in file order (a GGUF output copies it); `None` for safetensors.
    pub gguf_metadata: Option<Vec<(String, MetaValue)>>,
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

/// The floating-point values of a tensor, or `None` for a dtype the kernels do not take. Float64 elements are
/// rounded to float32 (one copy): the kernels quantize them like any float tensor (values beyond the float32
/// range become infinite; [`float64_beyond_f32`] finds them first).
pub fn float_values<'a>(
    file: &'a SafetensorsFile,
    entry: &TensorEntry,
) -> Option<TensorValues<'a>> {
    let bytes = file.bytes(entry);
    Some(match entry.dtype {
        Dtype::F32 => TensorValues::F32(cast(bytes)),
        Dtype::F16 => TensorValues::F16(cast(bytes)),
        Dtype::BF16 => TensorValues::BF16(cast(bytes)),
        Dtype::F64 => TensorValues::F32(Cow::Owned(
            float64_values(bytes).map(|v| v as f32).collect(),
        )),
        _ => return None,
    })
}

/// The elements of a little-endian float64 buffer.
pub fn float64_values(bytes: &[u8]) -> impl Iterator<Item = f64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
}

/// The flat index of the first finite float64 element that float32 cannot hold (its rounding is infinite), if any.
pub fn float64_beyond_f32(bytes: &[u8]) -> Option<usize> {
    float64_values(bytes).position(|v| v.is_finite() && (v as f32).is_infinite())
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

impl Checkpoint {
    /// Opens a file, a folder or an index, validating every shard's header (and, for an index, that it and the
    /// shards list the same tensors, and that every shard is inside the model folder). A file that starts with
    /// the GGUF magic is read as a GGUF checkpoint.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_file() && is_gguf(path) {
            let (file, metadata) = gguf_source::open_gguf(path)?;
            return Ok(Self {
                path: path.to_path_buf(),
                order: (0..file.tensors.len()).map(|t| (0, t)).collect(),
                files: vec![file],
                gguf_metadata: Some(metadata),
            });
        }
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
            gguf_metadata: None,
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
