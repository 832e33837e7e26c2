//! The streaming GGUF v3 writer: header, metadata and tensor infos are written at once from the tensors' shapes
//! and types, then the data tensor by tensor (a tensor may come in parts), each padded with zeros to the
//! alignment. The file is an [`AtomicFile`]: it appears only when [`GgufWriter::finish`] succeeds.

use crate::error::{QuantError, Result};
use crate::gguf::layout::{
    gguf_tensor_nbytes, pad_to, put_string, ALIGNMENT_KEY, GGUF_ALIGNMENT, GGUF_MAGIC,
    GGUF_MAX_DIMS, GGUF_MAX_NAME_BYTES, GGUF_VERSION,
};
use crate::gguf::metadata::MetaValue;
use crate::gguf::GgmlType;
use crate::pipeline::atomic_file::AtomicFile;
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// One tensor of a GGUF file to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorSpec {
    /// The tensor's name (at most 127 bytes, unique in the file).
    pub name: String,
    /// Shape, row-major, outermost axis first (at most 5 axes, none of them 0); ggml rows are the last axis.
    pub shape: Vec<usize>,
    /// The ggml type its bytes are in.
    pub ty: GgmlType,
}

impl GgufTensorSpec {
    /// A spec of `name`, `shape` (row-major) and `ty`.
    pub fn new(name: impl Into<String>, shape: &[usize], ty: GgmlType) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
            ty,
        }
    }

    /// Bytes of the tensor's data, or why it cannot be written.
    fn check(&self) -> Result<u64> {
        let bad = |problem: String| QuantError::schema(&self.name, problem);
        if self.name.is_empty() {
            return Err(bad("a GGUF tensor needs a name".into()));
        }
        if self.name.len() > GGUF_MAX_NAME_BYTES {
            return Err(bad(format!(
                "the name is {} bytes; GGUF readers (stable-diffusion.cpp) take at most {GGUF_MAX_NAME_BYTES}: \
                 rename the tensor",
                self.name.len()
            )));
        }
        if self.shape.len() > GGUF_MAX_DIMS {
            return Err(bad(format!(
                "shape {:?} has {} axes; GGUF tensors have at most {GGUF_MAX_DIMS}: reshape it first",
                self.shape,
                self.shape.len()
            )));
        }
        if self.shape.contains(&0) {
            return Err(bad(format!(
                "shape {:?} has no elements; ggml readers cannot load empty tensors",
                self.shape
            )));
        }
        let cols = self.shape.last().copied().unwrap_or(1);
        if !self.ty.fits_row(cols) {
            return Err(bad(format!(
                "cannot be {}: rows of {cols} elements (the last axis of {:?}) are not a whole number of its \
                 {}-element blocks; choose a type whose block fits",
                self.ty,
                self.shape,
                self.ty.block_len()
            )));
        }
        gguf_tensor_nbytes(&self.shape, self.ty)
            .map(|n| n as u64)
            .ok_or_else(|| bad(format!("shape {:?} is too large to address", self.shape)))
    }
}

/// A value patched by [`GgufWriter::finish`]: its declaration and where its encoding starts in the file.
struct Reserved {
    key: String,
    declared: MetaValue,
    at: u64,
}

/// A tensor's type, size and where its info's type id sits in the file (patched by `finish`, with its data
/// offset, when [`GgufWriter::begin_tensor`] changed the type).
struct Slot {
    name: String,
    shape: Vec<usize>,
    ty: GgmlType,
    nbytes: u64,
    info_type_at: u64,
}

/// Writes one GGUF file in a single pass with bounded memory (the header is held once, the data is streamed).
pub struct GgufWriter {
    path: PathBuf,
    file: AtomicFile,
    out: BufWriter<File>,
    tensors: Vec<Slot>,
    /// The tensor being written (`tensors.len()` once all are complete).
    current: usize,
    /// Bytes of the current tensor written so far.
    written: u64,
    reserved: Vec<Reserved>,
    /// Set when a write failed part-way: the file is then in an unknown state and nothing more is accepted.
    broken: bool,
    /// Set when [`GgufWriter::begin_tensor`] changed a type: `finish` rewrites every tensor info's type and offset.
    retyped: bool,
}

fn check_keys(
    path: &Path,
    metadata: &[(String, MetaValue)],
    reserved: &[(String, MetaValue)],
) -> Result<()> {
    let mut seen = HashSet::new();
    for (key, _) in metadata.iter().chain(reserved) {
        if key == ALIGNMENT_KEY {
            return Err(QuantError::format(
                path,
                format!("metadata key '{ALIGNMENT_KEY}' is written by the GGUF writer ({GGUF_ALIGNMENT}); do not pass it"),
            ));
        }
        if key.is_empty() {
            return Err(QuantError::format(path, "a metadata key is empty"));
        }
        if !seen.insert(key.as_str()) {
            return Err(QuantError::format(
                path,
                format!("metadata key '{key}' is given twice"),
            ));
        }
    }
    Ok(())
}

/// The bytes before the data: header, metadata (the caller's, then `general.alignment`, then the reserved
/// placeholders, whose start offsets are returned), tensor infos and the padding to the alignment.
fn header_bytes(
    metadata: &[(String, MetaValue)],
    reserved: &[(String, MetaValue)],
    tensors: &[(GgufTensorSpec, u64)],
) -> (Vec<u8>, Vec<Reserved>, Vec<u64>) {
    let align = u64::from(GGUF_ALIGNMENT);
    let mut out = Vec::new();
    out.extend_from_slice(&GGUF_MAGIC);
    out.extend(GGUF_VERSION.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend(((metadata.len() + 1 + reserved.len()) as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut out, key);
        value.encode(&mut out);
    }
    put_string(&mut out, ALIGNMENT_KEY);
    MetaValue::U32(GGUF_ALIGNMENT).encode(&mut out);
    let mut patches = Vec::new();
    for (key, value) in reserved {
        put_string(&mut out, key);
        patches.push(Reserved {
            key: key.clone(),
            declared: value.clone(),
            at: out.len() as u64,
        });
        value.zeroed().encode(&mut out);
    }
    let mut offset = 0u64;
    let mut type_at = Vec::with_capacity(tensors.len());
    for (spec, nbytes) in tensors {
        put_string(&mut out, &spec.name);
        out.extend((spec.shape.len() as u32).to_le_bytes());
        // ggml lists ne0 (the fastest, last row-major axis) first.
        for &d in spec.shape.iter().rev() {
            out.extend((d as u64).to_le_bytes());
        }
        type_at.push(out.len() as u64);
        out.extend(spec.ty.id().to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += pad_to(*nbytes, align).unwrap_or(u64::MAX);
    }
    let end = pad_to(out.len() as u64, align).unwrap_or(0) as usize;
    out.resize(end, 0);
    (out, patches, type_at)
}

impl GgufWriter {
    /// Starts a GGUF file at `path`: checks the tensors (names at most 127 bytes and unique, at most 5 axes, rows a
    /// whole number of the type's blocks) and the keys (unique, not `general.alignment`, which the writer adds),
    /// then writes header, `metadata` (in the given order), `general.alignment` = 32, the `reserved` keys and the
    /// tensor infos at once. `reserved` values declare the type and length of values known only after the data
    /// is written (one f32 per tensor, say): they are written as zeros now and patched by
    /// [`GgufWriter::finish`]. The file appears only when `finish` succeeds; a failed or dropped writer leaves
    /// nothing.
    pub fn create(
        path: &Path,
        metadata: Vec<(String, MetaValue)>,
        reserved: Vec<(String, MetaValue)>,
        tensors: Vec<GgufTensorSpec>,
    ) -> Result<Self> {
        check_keys(path, &metadata, &reserved)?;
        let mut names = HashSet::new();
        let mut sized = Vec::with_capacity(tensors.len());
        let mut total = 0u64;
        for spec in tensors {
            let nbytes = spec.check()?;
            if !names.insert(spec.name.clone()) {
                return Err(QuantError::schema(
                    &spec.name,
                    "two tensors have this name; GGUF tensor names must be unique",
                ));
            }
            total = pad_to(nbytes, u64::from(GGUF_ALIGNMENT))
                .and_then(|n| total.checked_add(n))
                .ok_or_else(|| QuantError::format(path, "the tensors' data exceeds 2^64 bytes"))?;
            sized.push((spec, nbytes));
        }
        let (header, reserved, type_at) = header_bytes(&metadata, &reserved, &sized);
        let file = AtomicFile::create(path)?;
        let mut out = BufWriter::with_capacity(1 << 20, file.handle()?);
        out.write_all(&header)
            .map_err(|e| QuantError::io(path, &e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            out,
            tensors: sized
                .into_iter()
                .zip(type_at)
                .map(|((spec, nbytes), info_type_at)| Slot {
                    name: spec.name,
                    shape: spec.shape,
                    ty: spec.ty,
                    nbytes,
                    info_type_at,
                })
                .collect(),
            retyped: false,
            current: 0,
            written: 0,
            reserved,
            broken: false,
        })
    }

    fn io(&mut self, e: &std::io::Error) -> QuantError {
        self.broken = true;
        QuantError::io(&self.path, e)
    }

    fn check_usable(&self) -> Result<()> {
        if self.broken {
            return Err(QuantError::format(
                &self.path,
                "an earlier write to this GGUF file failed; start again",
            ));
        }
        Ok(())
    }

    /// Appends `bytes` to the current tensor (tensors come in the order of the specs; a tensor may come in
    /// several parts). Once a tensor is complete its padding is written and the next one begins. More bytes than
    /// the current tensor has left is an error naming it (and nothing is written).
    pub fn write_tensor_data(&mut self, bytes: &[u8]) -> Result<()> {
        self.check_usable()?;
        if bytes.is_empty() {
            return Ok(());
        }
        let Some(slot) = self.tensors.get(self.current) else {
            return Err(QuantError::format(
                &self.path,
                format!(
                    "{} more bytes after all {} tensors are complete",
                    bytes.len(),
                    self.tensors.len()
                ),
            ));
        };
        let left = slot.nbytes - self.written;
        if bytes.len() as u64 > left {
            return Err(QuantError::schema(
                &slot.name,
                format!(
                    "{} bytes given but only {left} of its {} are left to write",
                    bytes.len(),
                    slot.nbytes
                ),
            ));
        }
        let nbytes = slot.nbytes;
        if let Err(e) = self.out.write_all(bytes) {
            return Err(self.io(&e));
        }
        self.written += bytes.len() as u64;
        if self.written == nbytes {
            let padding = pad_to(nbytes, u64::from(GGUF_ALIGNMENT)).unwrap_or(nbytes) - nbytes;
            if let Err(e) = self
                .out
                .write_all(&[0u8; GGUF_ALIGNMENT as usize][..padding as usize])
            {
                return Err(self.io(&e));
            }
            self.current += 1;
            self.written = 0;
        }
        Ok(())
    }

    /// Sets the type of the current tensor before any of its bytes are written, when it differs from its spec's
    /// (a run that falls back to a wider type once it has measured the tensor). The header's size does not
    /// depend on the types, so `finish` patches the tensor infos (types and data offsets) in place. Errors: bytes
    /// of the current tensor already written, no tensor left, rows that are not a whole number of `ty`'s blocks.
    pub fn begin_tensor(&mut self, ty: GgmlType) -> Result<()> {
        self.check_usable()?;
        let written = self.written;
        let Some(slot) = self.tensors.get_mut(self.current) else {
            return Err(QuantError::format(
                &self.path,
                format!(
                    "no tensor left to begin as {ty}: all {} are complete",
                    self.tensors.len()
                ),
            ));
        };
        if slot.ty == ty {
            return Ok(());
        }
        if written > 0 {
            return Err(QuantError::schema(
                &slot.name,
                format!(
                    "{written} bytes of it were written as {}; its type cannot change now",
                    slot.ty
                ),
            ));
        }
        let spec = GgufTensorSpec::new(slot.name.clone(), &slot.shape, ty);
        slot.nbytes = spec.check()?;
        slot.ty = ty;
        self.retyped = true;
        Ok(())
    }

    /// The tensor the next bytes belong to, or `None` once all are complete.
    pub fn current_tensor(&self) -> Option<&str> {
        self.tensors.get(self.current).map(|s| s.name.as_str())
    }

    /// Checks that every tensor is complete, patches the reserved values (each declared key exactly once, of the
    /// declared type and length), flushes and moves the file into place.
    pub fn finish(self, reserved: Vec<(String, MetaValue)>) -> Result<()> {
        self.check_usable()?;
        if let Some(slot) = self.tensors.get(self.current) {
            return Err(QuantError::schema(
                &slot.name,
                format!(
                    "{} of its {} bytes were written when the GGUF file was finished ({} of {} tensors complete)",
                    self.written,
                    slot.nbytes,
                    self.current,
                    self.tensors.len()
                ),
            ));
        }
        let mut patches = Vec::with_capacity(reserved.len());
        for (key, value) in &reserved {
            let slot = self
                .reserved
                .iter()
                .find(|r| &r.key == key)
                .ok_or_else(|| {
                    QuantError::format(
                        &self.path,
                        format!(
                            "metadata key '{key}' was not reserved when the GGUF file was created"
                        ),
                    )
                })?;
            if let Some(problem) = slot.declared.layout_mismatch(value) {
                return Err(QuantError::format(
                    &self.path,
                    format!("reserved metadata key '{key}': {problem}"),
                ));
            }
            if patches.iter().any(|(at, _)| *at == slot.at) {
                return Err(QuantError::format(
                    &self.path,
                    format!("reserved metadata key '{key}' is given twice"),
                ));
            }
            patches.push((slot.at, value.encoded()));
        }
        if let Some(missing) = self
            .reserved
            .iter()
            .find(|r| !reserved.iter().any(|(k, _)| k == &r.key))
        {
            return Err(QuantError::format(
                &self.path,
                format!(
                    "reserved metadata key '{}' was not given a value at finish",
                    missing.key
                ),
            ));
        }
        let path = self.path.clone();
        let io = |e: std::io::Error| QuantError::io(&path, &e);
        if self.retyped {
            let align = u64::from(GGUF_ALIGNMENT);
            let mut offset = 0u64;
            for slot in &self.tensors {
                let mut info = slot.ty.id().to_le_bytes().to_vec();
                info.extend(offset.to_le_bytes());
                patches.push((slot.info_type_at, info));
                offset += pad_to(slot.nbytes, align).unwrap_or(u64::MAX);
            }
        }
        let mut file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        for (at, bytes) in patches {
            file.seek(SeekFrom::Start(at)).map_err(io)?;
            file.write_all(&bytes).map_err(io)?;
        }
        self.file.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("aq-gguf-w-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_header_is_laid_out_as_gguf_h_says() {
        let dir = scratch("layout");
        let path = dir.join("m.gguf");
        let tensors = vec![GgufTensorSpec::new("w", &[2, 3], GgmlType::F32)];
        let meta = vec![("general.architecture".to_string(), MetaValue::from("flux"))];
        let mut w = GgufWriter::create(&path, meta, Vec::new(), tensors).unwrap();
        w.write_tensor_data(&[7u8; 24]).unwrap();
        w.finish(Vec::new()).unwrap();
        let b = std::fs::read(&path).unwrap();
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        assert_eq!(&b[..4], b"GGUF");
        assert_eq!((u32_at(4), u64_at(8), u64_at(16)), (3, 1, 2));
        // Key 0: "general.architecture" = STRING "flux".
        assert_eq!(u64_at(24), 20);
        assert_eq!(&b[32..52], b"general.architecture");
        assert_eq!((u32_at(52), u64_at(56)), (8, 4));
        assert_eq!(&b[64..68], b"flux");
        // Key 1: general.alignment = UINT32 32.
        assert_eq!(&b[76..93], b"general.alignment");
        assert_eq!((u32_at(93), u32_at(97)), (4, 32));
        // Tensor info: "w", 2 dims listed ne0 first (3, then 2), type F32, offset 0.
        assert_eq!((u64_at(101), b[109]), (1, b'w'));
        assert_eq!((u32_at(110), u64_at(114), u64_at(122)), (2, 3, 2));
        assert_eq!((u32_at(130), u64_at(134)), (0, 0));
        // Data at 160 (142 padded to 32), then padded to 32 bytes: the file ends at 192.
        assert_eq!(b.len(), 192);
        assert!(b[142..160].iter().all(|&x| x == 0));
        assert_eq!(&b[160..184], &[7u8; 24]);
        assert!(b[184..].iter().all(|&x| x == 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_specs_and_keys_are_errors_naming_them_and_leave_no_file() {
        let dir = scratch("specs");
        let path = dir.join("m.gguf");
        let create = |tensors: Vec<GgufTensorSpec>, meta: Vec<(String, MetaValue)>| {
            GgufWriter::create(&path, meta, Vec::new(), tensors)
                .err()
                .expect("refused")
                .to_string()
        };
        let long = "d".repeat(128);
        let e = create(
            vec![GgufTensorSpec::new(&long, &[4], GgmlType::F16)],
            vec![],
        );
        assert!(
            e.contains(&long) && e.contains("128 bytes") && e.contains("at most 127"),
            "{e}"
        );
        let ok = "e".repeat(127);
        assert!(GgufWriter::create(
            &path,
            vec![],
            vec![],
            vec![GgufTensorSpec::new(&ok, &[4], GgmlType::F16)]
        )
        .is_ok());
        let twice = vec![
            GgufTensorSpec::new("a.weight", &[4], GgmlType::F32),
            GgufTensorSpec::new("b.weight", &[4], GgmlType::F32),
            GgufTensorSpec::new("a.weight", &[8], GgmlType::F16),
        ];
        let e = create(twice, vec![]);
        assert!(e.contains("'a.weight'") && e.contains("unique"), "{e}");
        let e = create(
            vec![GgufTensorSpec::new(
                "video.conv",
                &[2, 2, 3, 1, 2, 32],
                GgmlType::F16,
            )],
            vec![],
        );
        assert!(
            e.contains("video.conv") && e.contains("6 axes") && e.contains("at most 5"),
            "{e}"
        );
        let e = create(
            vec![GgufTensorSpec::new("odd", &[4, 96], GgmlType::Q6_K)],
            vec![],
        );
        assert!(
            e.contains("'odd'") && e.contains("256-element blocks"),
            "{e}"
        );
        let e = create(
            vec![GgufTensorSpec::new("empty", &[0, 32], GgmlType::Q8_0)],
            vec![],
        );
        assert!(e.contains("'empty'") && e.contains("no elements"), "{e}");
        let e = create(
            vec![],
            vec![("general.alignment".into(), MetaValue::U32(64))],
        );
        assert!(
            e.contains("general.alignment") && e.contains("do not pass it"),
            "{e}"
        );
        let e = create(
            vec![],
            vec![
                ("k".into(), MetaValue::U8(1)),
                ("k".into(), MetaValue::U8(2)),
            ],
        );
        assert!(e.contains("'k' is given twice"), "{e}");
        assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn too_many_or_too_few_bytes_are_errors_naming_the_tensor() {
        let dir = scratch("counts");
        let path = dir.join("m.gguf");
        let tensors = vec![
            GgufTensorSpec::new("first", &[2, 32], GgmlType::Q8_0),
            GgufTensorSpec::new("second", &[3], GgmlType::F32),
        ];
        let mut w = GgufWriter::create(&path, vec![], vec![], tensors.clone()).unwrap();
        w.write_tensor_data(&[1; 60]).unwrap();
        let e = w.write_tensor_data(&[1; 9]).unwrap_err().to_string();
        assert!(
            e.contains("'first'") && e.contains("only 8 of its 68"),
            "{e}"
        );
        // Nothing was written by the refused call: the tensor can still be completed.
        w.write_tensor_data(&[1; 8]).unwrap();
        assert_eq!(w.current_tensor(), Some("second"));
        w.write_tensor_data(&[2; 4]).unwrap();
        let e = w.finish(vec![]).unwrap_err().to_string();
        assert!(
            e.contains("'second'") && e.contains("4 of its 12 bytes") && e.contains("1 of 2"),
            "{e}"
        );
        assert!(!path.exists());

        let mut w = GgufWriter::create(&path, vec![], vec![], tensors).unwrap();
        w.write_tensor_data(&[1; 68]).unwrap();
        w.write_tensor_data(&[2; 12]).unwrap();
        let e = w.write_tensor_data(&[3]).unwrap_err().to_string();
        assert!(e.contains("1 more bytes after all 2 tensors"), "{e}");
        drop(w);
        assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reserved_values_must_keep_their_declared_layout_and_all_be_given() {
        let dir = scratch("reserved");
        let path = dir.join("m.gguf");
        let start = || {
            let reserved = vec![
                ("q.mse".to_string(), MetaValue::from(vec![0f32; 2])),
                ("q.name".to_string(), MetaValue::from("xx")),
            ];
            GgufWriter::create(&path, vec![], reserved, vec![]).unwrap()
        };
        let cases: Vec<(Vec<(String, MetaValue)>, &str)> = vec![
            (
                vec![("q.mse".into(), MetaValue::from(vec![1f32; 3]))],
                "declared as ARRAY of 2 FLOAT32",
            ),
            (
                vec![("q.mse".into(), MetaValue::from(vec![1f64; 2]))],
                "given as ARRAY of 2 FLOAT64",
            ),
            (
                vec![("q.name".into(), MetaValue::from("xyz"))],
                "declared 14 bytes",
            ),
            (
                vec![("q.other".into(), MetaValue::U8(1))],
                "'q.other' was not reserved",
            ),
            (
                vec![("q.mse".into(), MetaValue::from(vec![1f32; 2]))],
                "'q.name' was not given",
            ),
            (
                vec![
                    ("q.name".into(), MetaValue::from("ab")),
                    ("q.name".into(), MetaValue::from("cd")),
                ],
                "'q.name' is given twice",
            ),
        ];
        for (given, expected) in cases {
            let e = start().finish(given).unwrap_err().to_string();
            assert!(e.contains(expected), "{e} lacks {expected}");
        }
        assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
