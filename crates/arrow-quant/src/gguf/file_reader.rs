//! The GGUF reader: memory-maps a file (versions 2 and 3, little-endian) and validates all of it on open, every
//! count, length, offset and size checked against the file before anything is allocated or sliced, so that a
//! corrupt or hostile file is an error naming what is wrong and where, never a panic or an abort.

use crate::error::{QuantError, Result};
use crate::gguf::layout::{
    gguf_tensor_nbytes, pad_to, Cursor, ALIGNMENT_KEY, GGUF_ALIGNMENT, GGUF_MAGIC, GGUF_MAX_DIMS,
};
use crate::gguf::metadata::{decode_value, meta_get, MetaArray, MetaValue};
use crate::gguf::stored_shape::orig_shape_key;
use crate::gguf::GgmlType;
use memmap2::Mmap;
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Bytes of the fixed header: magic, version, tensor count, metadata count.
const HEADER_BYTES: usize = 24;
/// The fewest bytes a metadata pair takes (empty key, type id, one byte of value).
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// The fewest bytes a tensor info takes (empty name, no dims, type id, offset).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;

/// One tensor of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Shape, row-major, outermost axis first (the file's ggml dims reversed).
    pub shape: Vec<usize>,
    /// Its ggml type.
    pub ty: GgmlType,
    /// Byte offset of its data from the start of the file (the data section's start plus the stored offset).
    pub offset: usize,
    /// Bytes of its data.
    pub nbytes: usize,
}

/// A validated, memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    version: u32,
    alignment: u32,
    data_offset: usize,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<GgufTensorInfo>,
}

/// Names of the ggml type ids we do not read, for messages (`ggml.h`).
fn foreign_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        9 => "Q8_1",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        21 => "IQ3_S",
        22 => "IQ2_S",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

/// True when the file at `path` starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == GGUF_MAGIC
}

impl GgufFile {
    /// Opens and validates `path`: magic, version (2 or 3), metadata (known value types, UTF-8 keys, no key
    /// twice, `general.alignment` a `u32` power of two), tensor infos (unique UTF-8 names, at most 5 dims, known
    /// ggml types, rows a whole number of blocks, offsets multiples of the alignment) and data (every tensor
    /// inside the file, no two overlapping).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => QuantError::ModelNotFound {
                path: path.display().to_string(),
                problem: "no such file".into(),
            },
            _ => QuantError::io(path, &e),
        })?;
        let len = file.metadata().map_err(|e| QuantError::io(path, &e))?.len();
        if len < HEADER_BYTES as u64 {
            return Err(QuantError::format(
                path,
                format!(
                    "{len} bytes is too short for a GGUF file (its header alone is {HEADER_BYTES})"
                ),
            ));
        }
        // SAFETY: the map is read-only; like every reader of memory-mapped files we rely on the file not being
        // truncated while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| QuantError::io(path, &e))?;
        let parsed = parse(&map).map_err(|problem| QuantError::format(path, problem))?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment (`general.alignment`, 32 when absent).
    pub fn alignment(&self) -> u32 {
        self.alignment
    }

    /// Byte offset of the data section (tensor offsets in the file are relative to it).
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// The metadata pairs in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        meta_get(&self.metadata, key)
    }

    /// The tensors in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The shape tensor `index` stands for: its `comfy.gguf.orig_shape.<name>` when the file has one with as
    /// many elements, else its stored shape.
    pub fn logical_shape(&self, index: usize) -> Vec<usize> {
        let info = &self.tensors[index];
        match self.get(&orig_shape_key(&info.name)) {
            Some(MetaValue::Array(MetaArray::I32(dims))) if dims.iter().all(|d| *d > 0) => {
                let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
                // checked: the key is the file's, and a hostile one must not overflow
                let elements = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                if elements == Some(info.shape.iter().product::<usize>()) {
                    dims
                } else {
                    info.shape.clone()
                }
            }
            _ => info.shape.clone(),
        }
    }

    /// The index of the tensor named `name`.
    pub fn find_tensor(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.name == name)
    }

    /// The memory map of the whole file, for a reader that keeps the tensors' data in place after taking what
    /// it needs of the header.
    pub(crate) fn into_map(self) -> Mmap {
        self.map
    }

    /// The data of tensor `index` (of [`GgufFile::tensors`]), borrowed from the map; empty for an index past the
    /// last tensor.
    pub fn tensor_bytes(&self, index: usize) -> &[u8] {
        self.tensors
            .get(index)
            .and_then(|t| self.map.get(t.offset..t.offset + t.nbytes))
            .unwrap_or(&[])
    }
}

/// What [`parse`] found.
struct Parsed {
    version: u32,
    alignment: u32,
    data_offset: usize,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<GgufTensorInfo>,
}

/// Checks that `count` items of at least `min` bytes each fit in the bytes the cursor has left.
fn check_count(c: &Cursor<'_>, count: u64, min: u64, what: &str) -> Result<usize, String> {
    match count.checked_mul(min) {
        Some(bytes) if bytes <= c.remaining() as u64 => Ok(count as usize),
        _ => Err(format!(
            "the header claims {count} {what}, more than the {} bytes after it could hold",
            c.remaining()
        )),
    }
}

fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let mut c = Cursor::new(bytes);
    let magic = c.take(4, "magic")?;
    if magic != GGUF_MAGIC {
        return Err(format!(
            "not a GGUF file: it starts with {magic:?}, not b\"GGUF\""
        ));
    }
    let version = c.u32("version")?;
    match version {
        2 | 3 => {}
        1 => return Err(
            "GGUF version 1 is not supported; convert the file with a current gguf-py or llama.cpp"
                .into(),
        ),
        v if v & 0xFFFF == 0 => {
            return Err(format!(
                "GGUF version {v:#x}: a big-endian file, which is not supported"
            ))
        }
        v => {
            return Err(format!(
                "GGUF version {v} is not supported (versions 2 and 3 are)"
            ))
        }
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    let n_kv = check_count(&c, n_kv, MIN_KV_BYTES, "metadata pairs")?;
    let mut metadata: Vec<(String, MetaValue)> = Vec::with_capacity(n_kv);
    let mut keys = HashSet::with_capacity(n_kv);
    for i in 0..n_kv {
        let at = c.pos();
        let key = c.string("metadata key")?;
        let in_key =
            |problem: String| format!("metadata key '{key}' (pair {i}, at byte {at}): {problem}");
        if !keys.insert(key.clone()) {
            return Err(in_key("the key appears twice".into()));
        }
        let id = c.u32("value type").map_err(in_key)?;
        let value = decode_value(&mut c, id).map_err(in_key)?;
        metadata.push((key, value));
    }
    let alignment = match meta_get(&metadata, ALIGNMENT_KEY) {
        None => GGUF_ALIGNMENT,
        Some(MetaValue::U32(a)) if a.is_power_of_two() => *a,
        Some(v) => {
            return Err(format!(
                "metadata '{ALIGNMENT_KEY}' is {v:?}; it must be a UINT32 power of two"
            ))
        }
    };
    let n_tensors = check_count(&c, n_tensors, MIN_TENSOR_INFO_BYTES, "tensors")?;
    let mut infos = Vec::with_capacity(n_tensors);
    let mut names = HashSet::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let at = c.pos();
        let name = c.string("tensor name")?;
        let in_tensor =
            |problem: String| format!("tensor '{name}' (info {i}, at byte {at}): {problem}");
        if !names.insert(name.clone()) {
            return Err(in_tensor("two tensors have this name".into()));
        }
        let n_dims = c.u32("dimension count").map_err(in_tensor)?;
        if n_dims as usize > GGUF_MAX_DIMS {
            return Err(in_tensor(format!(
                "{n_dims} dimensions; GGUF tensors have at most {GGUF_MAX_DIMS}"
            )));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = c.u64("dimension").map_err(in_tensor)?;
            let d = usize::try_from(d)
                .map_err(|_| in_tensor(format!("dimension {d} does not fit in memory")))?;
            shape.push(d);
        }
        // The file lists ne0 (the fastest axis) first; shapes here are row-major.
        shape.reverse();
        // As in gguf.cpp: the element count must be representable (even when a zero axis makes it 0).
        let too_many = shape
            .iter()
            .try_fold(1i64, |acc, &d| {
                acc.checked_mul(i64::try_from(d.max(1)).ok()?)
            })
            .is_none();
        if too_many {
            return Err(in_tensor(format!(
                "shape {shape:?} has more than 2^63 elements"
            )));
        }
        let id = c.u32("ggml type").map_err(in_tensor)?;
        let ty = GgmlType::from_id(id).ok_or_else(|| {
            in_tensor(match foreign_type_name(id) {
                Some(known) => format!("ggml type {known} (id {id}) is not one arrow-quant reads"),
                None => format!("unknown ggml type id {id}"),
            })
        })?;
        let cols = shape.last().copied().unwrap_or(1);
        if !ty.fits_row(cols) {
            return Err(in_tensor(format!(
                "rows of {cols} elements (shape {shape:?}) are not a whole number of {ty}'s {}-element blocks",
                ty.block_len()
            )));
        }
        let nbytes = gguf_tensor_nbytes(&shape, ty)
            .filter(|&n| n <= bytes.len())
            .ok_or_else(|| {
                in_tensor(format!(
                    "shape {shape:?} of {ty} needs more bytes than the file has"
                ))
            })?;
        let offset = c.u64("tensor offset").map_err(in_tensor)?;
        if offset % u64::from(alignment) != 0 {
            return Err(in_tensor(format!(
                "data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        infos.push((name, shape, ty, offset, nbytes));
    }
    let data_offset = pad_to(c.pos() as u64, u64::from(alignment))
        .filter(|&d| d <= bytes.len() as u64 || infos.is_empty())
        .ok_or_else(|| {
            format!(
                "the data section would start past the end of the file ({} bytes)",
                bytes.len()
            )
        })? as usize;
    let mut tensors: Vec<GgufTensorInfo> = Vec::with_capacity(infos.len());
    for (name, shape, ty, offset, nbytes) in infos {
        let start = (data_offset as u64).checked_add(offset);
        let end = start.and_then(|s| s.checked_add(nbytes as u64));
        match (start, end) {
            (Some(start), Some(end)) if end <= bytes.len() as u64 => tensors.push(GgufTensorInfo {
                name,
                shape,
                ty,
                offset: start as usize,
                nbytes,
            }),
            _ => {
                return Err(format!(
                    "tensor '{name}': {nbytes} bytes at data offset {offset} (file byte {}) lie outside the file of {} bytes",
                    (data_offset as u64).saturating_add(offset),
                    bytes.len()
                ))
            }
        }
    }
    check_no_overlap(&tensors)?;
    Ok(Parsed {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
    })
}

fn check_no_overlap(tensors: &[GgufTensorInfo]) -> Result<(), String> {
    let mut by_offset: Vec<&GgufTensorInfo> = tensors.iter().filter(|t| t.nbytes > 0).collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.offset + a.nbytes > b.offset {
            return Err(format!(
                "tensors '{}' (bytes {}..{}) and '{}' (from byte {}) overlap",
                a.name,
                a.offset,
                a.offset + a.nbytes,
                b.name,
                b.offset
            ));
        }
    }
    Ok(())
}
