//! A `.safetensors` file, memory-mapped, its header validated before any tensor is touched.
//!
//! Layout: 8 bytes little-endian header length N, N bytes of JSON
//! `{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`, then the data
//! area; offsets are relative to the data area. Checked: N within the file and at most 100 MB, well-formed JSON
//! object, every entry with a known dtype, a shape of non-negative integers and two offsets, `begin <= end <= data
//! length`, `end - begin == product(shape) * dtype size`, and no two tensors overlapping.

use crate::error::{QuantError, Result};
use memmap2::Mmap;
use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Largest header accepted, as in the reference implementation.
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Element types of safetensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// bool, 1 byte
    Bool,
    /// u8
    U8,
    /// i8
    I8,
    /// u16
    U16,
    /// i16
    I16,
    /// u32
    U32,
    /// i32
    I32,
    /// u64
    U64,
    /// i64
    I64,
    /// float16
    F16,
    /// bfloat16
    BF16,
    /// float32
    F32,
    /// float64
    F64,
    /// float8 e4m3
    F8E4M3,
    /// float8 e5m2
    F8E5M2,
}

impl Dtype {
    /// The dtype of a header string.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "BOOL" => Self::Bool,
            "U8" => Self::U8,
            "I8" => Self::I8,
            "U16" => Self::U16,
            "I16" => Self::I16,
            "U32" => Self::U32,
            "I32" => Self::I32,
            "U64" => Self::U64,
            "I64" => Self::I64,
            "F16" => Self::F16,
            "BF16" => Self::BF16,
            "F32" => Self::F32,
            "F64" => Self::F64,
            "F8_E4M3" => Self::F8E4M3,
            "F8_E5M2" => Self::F8E5M2,
            _ => return None,
        })
    }

    /// The header string.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::U8 => "U8",
            Self::I8 => "I8",
            Self::U16 => "U16",
            Self::I16 => "I16",
            Self::U32 => "U32",
            Self::I32 => "I32",
            Self::U64 => "U64",
            Self::I64 => "I64",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::F32 => "F32",
            Self::F64 => "F64",
            Self::F8E4M3 => "F8_E4M3",
            Self::F8E5M2 => "F8_E5M2",
        }
    }

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            Self::Bool | Self::U8 | Self::I8 | Self::F8E4M3 | Self::F8E5M2 => 1,
            Self::U16 | Self::I16 | Self::F16 | Self::BF16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
        }
    }
}

/// One tensor entry of the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte range within the data area.
    pub begin: usize,
    /// End of the byte range (exclusive).
    pub end: usize,
}

impl TensorEntry {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True for a tensor without elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A validated, memory-mapped safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    map: Mmap,
    data_start: usize,
    /// Tensors in data order.
    pub tensors: Vec<TensorEntry>,
    /// The `__metadata__` object, if any (string values only).
    pub metadata: Vec<(String, String)>,
}

fn field<'a>(
    path: &Path,
    name: &str,
    entry: &'a serde_json::Map<String, Value>,
    key: &str,
) -> Result<&'a Value> {
    entry.get(key).ok_or_else(|| {
        QuantError::format(
            path,
            format!("tensor '{name}': header entry has no '{key}'"),
        )
    })
}

fn parse_entry(path: &Path, name: &str, value: &Value, data_len: usize) -> Result<TensorEntry> {
    let bad = |problem: String| QuantError::format(path, format!("tensor '{name}': {problem}"));
    let entry = value
        .as_object()
        .ok_or_else(|| bad("header entry is not an object".into()))?;
    let dtype_text = field(path, name, entry, "dtype")?
        .as_str()
        .ok_or_else(|| bad("dtype is not a string".into()))?;
    let dtype =
        Dtype::parse(dtype_text).ok_or_else(|| bad(format!("unknown dtype {dtype_text:?}")))?;
    let shape = field(path, name, entry, "shape")?
        .as_array()
        .ok_or_else(|| bad("shape is not a list".into()))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("shape holds something other than non-negative integers".into()))?;
    let offsets = field(path, name, entry, "data_offsets")?
        .as_array()
        .filter(|o| o.len() == 2)
        .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
        .ok_or_else(|| bad("data_offsets is not a pair of non-negative integers".into()))?;
    let (begin, end) = (offsets.0 as usize, offsets.1 as usize);
    if begin > end || end > data_len {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] lie outside the data area of {data_len} bytes"
        )));
    }
    let elements = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let expected = elements.and_then(|n| n.checked_mul(dtype.size()));
    if expected != Some(end - begin) {
        return Err(bad(format!(
            "shape {shape:?} of {} needs {} bytes but data_offsets [{begin}, {end}] hold {}",
            dtype.name(),
            expected.map_or_else(|| "more than 2^64".to_string(), |e| e.to_string()),
            end - begin
        )));
    }
    Ok(TensorEntry {
        name: name.to_string(),
        dtype,
        shape,
        begin,
        end,
    })
}

impl SafetensorsFile {
    /// Opens and validates `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => QuantError::ModelNotFound {
                path: path.display().to_string(),
                problem: "no such file".into(),
            },
            _ => QuantError::io(path, &e),
        })?;
        // SAFETY: the map is read-only; like every reader of memory-mapped files we rely on the file not being
        // truncated while it is open (checkpoints are not modified while they are being quantized).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| QuantError::io(path, &e))?;
        Self::from_map(path, map)
    }

    fn from_map(path: &Path, map: Mmap) -> Result<Self> {
        let Header {
            tensors,
            metadata,
            data_start,
        } = parse_header(path, &map)?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            data_start,
            tensors,
            metadata,
        })
    }

    /// A file of another format read through the same view: `tensors` lie at `begin..end` of the bytes after
    /// `data_start` in `map` (checked by the caller: inside the map, sizes matching shape and dtype).
    pub(super) fn from_parts(
        path: &Path,
        map: Mmap,
        data_start: usize,
        tensors: Vec<TensorEntry>,
    ) -> Self {
        Self {
            path: path.to_path_buf(),
            map,
            data_start,
            tensors,
            metadata: Vec::new(),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw bytes of a tensor (borrowed from the map).
    pub fn bytes(&self, entry: &TensorEntry) -> &[u8] {
        &self.map[self.data_start + entry.begin..self.data_start + entry.end]
    }

    /// Asks the kernel to read a tensor's pages ahead.
    pub fn prefetch(&self, entry: &TensorEntry) {
        self.prefetch_range(entry, 0..entry.end - entry.begin);
    }

    /// Asks the kernel to read the bytes `range` (relative to the tensor's data) of a tensor ahead.
    pub fn prefetch_range(&self, entry: &TensorEntry, range: std::ops::Range<usize>) {
        #[cfg(not(unix))]
        let _ = (entry, range);
        #[cfg(unix)]
        let _ = self.map.advise_range(
            memmap2::Advice::WillNeed,
            self.data_start + entry.begin + range.start,
            range.len(),
        );
    }

    /// Drops the pages of the bytes `range` (relative to the tensor's data) of a tensor from this process once
    /// they are processed, so a tensor read in parts keeps about one part resident. Pages are whole, so the
    /// pages at the ends of `range` are dropped too (they are read back from the file if touched again).
    pub fn release_range(&self, entry: &TensorEntry, range: std::ops::Range<usize>) {
        if range.is_empty() {
            return;
        }
        #[cfg(not(unix))]
        let _ = entry;
        // SAFETY: the map is a read-only file mapping; MADV_DONTNEED only drops clean pages, which are read back
        // from the file if touched again. This process holds no borrow of these bytes across the call that relies
        // on their staying resident.
        #[cfg(unix)]
        let _ = unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                self.data_start + entry.begin + range.start,
                range.len(),
            )
        };
    }

    /// Drops a tensor's pages from this process once it is processed, so resident memory stays near one tensor.
    pub fn release(&self, entry: &TensorEntry) {
        self.release_range(entry, 0..entry.end - entry.begin);
    }
}

/// A validated header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Tensors sorted by offset.
    pub tensors: Vec<TensorEntry>,
    /// String entries of `__metadata__`.
    pub metadata: Vec<(String, String)>,
    /// Offset of the data area in the file.
    pub data_start: usize,
}

/// Parses and validates the header of a safetensors image.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    let file_len = bytes.len() as u64;
    if file_len < 8 {
        return Err(QuantError::format(
            path,
            format!("{file_len} bytes is too short for a safetensors header"),
        ));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[..8]);
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(QuantError::format(
            path,
            format!("header length {header_len} exceeds the limit of {MAX_HEADER_BYTES}"),
        ));
    }
    if header_len > file_len - 8 {
        return Err(QuantError::format(
            path,
            format!("header length {header_len} runs past the end of the file ({file_len} bytes)"),
        ));
    }
    let data_start = 8 + header_len as usize;
    let header: Value = serde_json::from_slice(&bytes[8..data_start])
        .map_err(|e| QuantError::format(path, format!("header is not valid JSON: {e}")))?;
    let object = header
        .as_object()
        .ok_or_else(|| QuantError::format(path, "header is not a JSON object"))?;
    let data_len = bytes.len() - data_start;
    let mut tensors = Vec::with_capacity(object.len());
    let mut metadata = Vec::new();
    for (name, value) in object {
        if name == "__metadata__" {
            if let Some(m) = value.as_object() {
                metadata = m
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect();
            }
            continue;
        }
        tensors.push(parse_entry(path, name, value, data_len)?);
    }
    tensors.sort_by_key(|t| (t.begin, t.end));
    for pair in tensors.windows(2) {
        if pair[1].begin < pair[0].end {
            return Err(QuantError::format(
                path,
                format!(
                    "tensors '{}' [{}, {}] and '{}' [{}, {}] overlap",
                    pair[0].name,
                    pair[0].begin,
                    pair[0].end,
                    pair[1].name,
                    pair[1].begin,
                    pair[1].end
                ),
            ));
        }
    }
    Ok(Header {
        tensors,
        metadata,
        data_start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn image(header: &str, data: usize) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend(std::iter::repeat_n(0u8, data));
        out
    }

    fn err(bytes: &[u8]) -> String {
        parse_header(Path::new("m.safetensors"), bytes)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn valid_header() {
        let h = r#"{"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}}"#;
        let Header {
            tensors: t,
            metadata: m,
            data_start: start,
        } = parse_header(Path::new("x"), &image(h, 12)).unwrap();
        assert_eq!(
            t.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(m, vec![("format".to_string(), "pt".to_string())]);
        assert_eq!(start, 8 + h.len());
    }

    #[test]
    fn every_violation_is_named() {
        assert!(err(&[1, 2, 3]).contains("too short"));
        let mut huge = image("{}", 0);
        huge[..8].copy_from_slice(&1000u64.to_le_bytes());
        assert!(err(&huge).contains("header length 1000 runs past the end of the file (10 bytes)"));
        assert!(err(&image("{not json", 0)).contains("not valid JSON"));
        assert!(err(&image(
            r#"{"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}"#,
            1
        ))
        .contains("tensor 'w': unknown dtype \"Q4\""));
        assert!(err(&image(
            r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}"#,
            12
        ))
        .contains("tensor 'w': shape [4] of F32 needs 16 bytes but data_offsets [0, 12] hold 12"));
        assert!(err(&image(
            r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            8
        ))
        .contains("tensor 'w': data_offsets [0, 16] lie outside the data area of 8 bytes"));
        let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
        assert!(err(&image(overlap, 12)).contains("tensors 'a' [0, 8] and 'b' [4, 12] overlap"));
        assert!(err(&image(
            r#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
            4
        ))
        .contains("non-negative"));
    }

    proptest! {
        /// Arbitrary bytes never panic: the parser returns a header or an error.
        #[test]
        fn fuzz_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_header(Path::new("f"), &bytes);
        }

        /// Valid headers with mutated bytes never panic either.
        #[test]
        fn fuzz_mutated_headers(pos in 0usize..120, byte in any::<u8>(), cut in 0usize..140) {
            let h = r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]}}"#;
            let mut img = image(h, 32);
            if pos < img.len() { img[pos] = byte; }
            img.truncate(cut.max(1).min(img.len()));
            let _ = parse_header(Path::new("f"), &img);
        }
    }
}
