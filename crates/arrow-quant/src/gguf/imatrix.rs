//! llama.cpp's importance matrices (`llama-imatrix` output, `llama-quantize --imatrix FILE`) read as the
//! per-column importance of our searches: the mean squared input activation of every column of a weight, the
//! quantity our calibration's squared channel magnitudes stand for.
//!
//! Two formats, told apart by the GGUF magic:
//! - **GGUF** (llama.cpp since mid-2025): for each weight `W`, the F32 tensors `W.in_sum2` (`n_mat * ne0` sums of
//!   squared activations, one row of `ne0` per matrix: one for a dense weight, one per expert for a stacked MoE
//!   weight) and `W.counts` (`n_mat` activation counts); `W.in_sum` may be there too (unused). Metadata
//!   `imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`. A matrix's importance is `in_sum2 / count`,
//!   or 1 where its count is 0 (llama.cpp's rule).
//! - **legacy `.dat`**: `i32` entry count; per entry an `i32` name length, the name, `i32` call count, `i32` value
//!   count and that many `f32` (sums already scaled to `ncall` calls); optionally an `i32` chunk count, an `i32`
//!   length and the dataset name. Importance is `value / ncall` (the value itself when `ncall` is 0).
//!
//! Every count, length and size is checked against the file before anything is read; a bad file is an error
//! naming the field and its byte offset.

use crate::error::{QuantError, Result};
use crate::gguf::{is_gguf, meta_get, GgmlType, GgufFile, MetaArray, MetaValue};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const SUMS_SUFFIX: &str = ".in_sum2";
const COUNTS_SUFFIX: &str = ".counts";

/// A loaded importance matrix: per weight name, the mean squared activations of its columns, `ne0` per matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Imatrix {
    /// The file it was read from.
    pub path: PathBuf,
    /// The legacy `.dat` format (else GGUF).
    pub legacy: bool,
    /// The datasets it was computed on, as the file names them.
    pub datasets: Vec<String>,
    /// Chunks of the dataset it saw (0 when the file does not say).
    pub chunk_count: u32,
    entries: HashMap<String, Vec<f32>>,
}

impl Imatrix {
    /// Reads the importance matrix at `path`, in either format.
    pub fn open(path: &Path) -> Result<Self> {
        if is_gguf(path) {
            return Self::from_gguf(&GgufFile::open(path)?);
        }
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => QuantError::ModelNotFound {
                path: path.display().to_string(),
                problem: "no such imatrix file".into(),
            },
            _ => QuantError::io(path, &e),
        })?;
        Self::from_legacy(path, &bytes)
    }

    /// The GGUF format, from an opened (and so validated) GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = file.path().to_path_buf();
        let bad = |problem: String| QuantError::format(&path, problem);
        let index: HashMap<&str, usize> = file
            .tensors()
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        let mut entries = HashMap::new();
        for (i, t) in file.tensors().iter().enumerate() {
            let Some(name) = t.name.strip_suffix(SUMS_SUFFIX) else {
                continue;
            };
            let counts_name = format!("{name}{COUNTS_SUFFIX}");
            let &counts_index = index.get(counts_name.as_str()).ok_or_else(|| {
                bad(format!(
                    "tensor '{}' has no '{counts_name}' beside it: not an imatrix llama.cpp wrote",
                    t.name
                ))
            })?;
            let counts_info = &file.tensors()[counts_index];
            for info in [t, counts_info] {
                if info.ty != GgmlType::F32 {
                    return Err(bad(format!(
                        "tensor '{}' at offset {} is {}; an imatrix stores F32",
                        info.name,
                        info.offset,
                        info.ty.name()
                    )));
                }
            }
            let sums = f32s(file.tensor_bytes(i));
            let counts = f32s(file.tensor_bytes(counts_index));
            if counts.is_empty() || !sums.len().is_multiple_of(counts.len()) {
                return Err(bad(format!(
                    "'{}' has {} sums for {} counts (at offset {}); the sums must be a whole number of rows, one \
                     per count",
                    t.name,
                    sums.len(),
                    counts.len(),
                    t.offset
                )));
            }
            let ne0 = sums.len() / counts.len();
            let values = sums
                .chunks_exact(ne0)
                .zip(&counts)
                .flat_map(|(row, &count)| {
                    let count = count.round();
                    row.iter()
                        .map(move |&s| if count > 0.0 { s / count } else { 1.0 })
                })
                .collect();
            entries.insert(name.to_string(), values);
        }
        if entries.is_empty() {
            return Err(bad(format!(
                "no '<tensor>{SUMS_SUFFIX}' tensors: not an imatrix (llama-imatrix writes one pair per weight)"
            )));
        }
        let datasets = match meta_get(file.metadata(), "imatrix.datasets") {
            Some(MetaValue::Array(MetaArray::String(v))) => v.clone(),
            _ => Vec::new(),
        };
        let chunk_count = meta_get(file.metadata(), "imatrix.chunk_count")
            .and_then(MetaValue::as_usize)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0);
        Ok(Self {
            path,
            legacy: false,
            datasets,
            chunk_count,
            entries,
        })
    }

    /// The legacy `.dat` format, from its bytes.
    pub fn from_legacy(path: &Path, bytes: &[u8]) -> Result<Self> {
        let mut r = LegacyReader { bytes, pos: 0 };
        let bad = |problem: String| QuantError::format(path, problem);
        let n_entries = r.i32("the entry count").map_err(bad)?;
        if n_entries < 1 {
            return Err(bad(format!(
                "the entry count at offset 0 is {n_entries}: not an imatrix (llama-imatrix writes at least one \
                 entry; is this the right file?)"
            )));
        }
        let mut entries = HashMap::new();
        for i in 0..n_entries {
            let at = r.pos;
            let len = r.len(&format!("entry {i}'s name length"), 1).map_err(bad)?;
            let name = std::str::from_utf8(r.take(len, "a name").map_err(bad)?)
                .map_err(|_| {
                    bad(format!(
                        "entry {i}'s name at offset {} is not UTF-8",
                        at + 4
                    ))
                })?
                .to_string();
            let ncall = r.i32(&format!("'{name}''s call count")).map_err(bad)?;
            let at = r.pos;
            let nval = r.len(&format!("'{name}''s value count"), 4).map_err(bad)?;
            if nval == 0 {
                return Err(bad(format!(
                    "'{name}''s value count at offset {at} is 0: every entry has values"
                )));
            }
            let sums = f32s(r.take(nval * 4, "the values").map_err(bad)?);
            let values = if ncall > 0 {
                sums.iter().map(|s| s / ncall as f32).collect()
            } else {
                sums
            };
            if entries.insert(name.clone(), values).is_some() {
                return Err(bad(format!(
                    "entry '{name}' appears twice (at offset {at})"
                )));
            }
        }
        // the chunk count and the dataset name are optional (llama.cpp reads them when present)
        let (mut chunk_count, mut datasets) = (0, Vec::new());
        if let Ok(n) = r.i32("the chunk count") {
            chunk_count = u32::try_from(n).unwrap_or(0);
            if let Ok(len) = r.len("the dataset name's length", 1) {
                if let Ok(name) = r.take(len, "the dataset name") {
                    datasets.push(String::from_utf8_lossy(name).into_owned());
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            legacy: true,
            datasets,
            chunk_count,
            entries,
        })
    }

    /// Weights it has an entry for.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when it has no entry (never, for a file that opened).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The importance of tensor `name` of row-major `shape` per column of its 2-D view `[shape[0],
    /// prod(shape[1..])]`, or `None` when the file has no entry for it (or only zeros: no activation recorded).
    /// The entry has `ne0` (the last axis) values per matrix: one matrix, repeated over the view's rows of `ne0`;
    /// or for a tensor of 3 or more axes one per `shape[0]` (MoE experts), averaged over them first (our
    /// searches take one weight per column). Errors: an entry of another size (an imatrix of another model).
    pub fn columns(&self, name: &str, shape: &[usize]) -> Result<Option<Vec<f32>>> {
        let Some(values) = self.entries.get(name) else {
            return Ok(None);
        };
        let ne0 = shape.last().copied().unwrap_or(1).max(1);
        let view_cols = shape.iter().skip(1).product::<usize>().max(1);
        let n_mat = values.len() / ne0;
        let per_expert = shape.len() >= 3 && n_mat == shape[0];
        if !values.len().is_multiple_of(ne0)
            || !(n_mat == 1 || per_expert)
            || !view_cols.is_multiple_of(ne0)
        {
            return Err(QuantError::config(
                "imatrix",
                format!(
                    "{} values for tensor '{name}' of shape {shape:?}",
                    values.len()
                ),
                format!(
                    "{ne0} values (one per column{}); {} holds another model's importance: use the imatrix \
                     computed for this model",
                    if shape.len() >= 3 {
                        format!(", or {ne0} per expert x {}", shape[0])
                    } else {
                        String::new()
                    },
                    self.path.display()
                ),
            ));
        }
        let mut row = vec![0f32; ne0];
        for m in values.chunks_exact(ne0) {
            for (r, v) in row.iter_mut().zip(m) {
                *r += v / n_mat as f32;
            }
        }
        if let Some(i) = row.iter().position(|v| !v.is_finite() || *v < 0.0) {
            return Err(QuantError::format(
                &self.path,
                format!(
                    "the importance of column {i} of '{name}' is {}: importance is finite and not negative",
                    row[i]
                ),
            ));
        }
        if row.iter().all(|v| *v == 0.0) {
            return Ok(None);
        }
        Ok(Some(row.repeat(view_cols / ne0)))
    }
}

/// Little-endian f32 values of `bytes` (whole values only).
fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A bounds-checked cursor over a legacy imatrix; errors name the field and its offset.
struct LegacyReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> LegacyReader<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!(
                "{what} at offset {} needs {n} bytes but the file ends at {}: truncated",
                self.pos,
                self.bytes.len()
            ));
        };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn i32(&mut self, what: &str) -> std::result::Result<i32, String> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A length field whose items take `item_bytes` each: not negative, and they must fit in the rest of the file.
    fn len(&mut self, what: &str, item_bytes: usize) -> std::result::Result<usize, String> {
        let at = self.pos;
        let n = self.i32(what)?;
        let left = self.bytes.len() - self.pos;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(item_bytes) <= left => Ok(n),
            _ => Err(format!(
                "{what} at offset {at} is {n}, but {left} bytes are left: corrupt or truncated"
            )),
        }
    }
}

#[cfg(test)]
#[path = "imatrix_tests.rs"]
mod tests;
