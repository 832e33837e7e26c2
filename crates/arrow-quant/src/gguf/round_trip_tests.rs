//! Writer-to-reader tests of GGUF files: every metadata type and every ggml type round trip, tensors streamed in
//! parts, corrupt files named precisely, and a fuzz test that mutated or truncated files are errors, never
//! panics or aborts.

use super::metadata::tests::every_kind;
use super::*;
use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("aq-gguf-rt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deterministic bytes standing in for a tensor's blocks (the codecs need not exist for the file format).
fn fake_bytes(n: usize, seed: usize) -> Vec<u8> {
    (0..n)
        .map(|i| ((i * 131 + seed * 17 + 7) % 251) as u8)
        .collect()
}

/// One tensor per ggml type (rows of two or three blocks, a few outer axes), plus a scalar, a 1-D and a 4-D one.
fn every_type_specs() -> Vec<GgufTensorSpec> {
    let mut specs: Vec<GgufTensorSpec> = GGML_TYPES
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let cols = row.block_len * (2 + i % 2) + if row.ty.is_float() { 3 } else { 0 };
            GgufTensorSpec::new(
                format!("blk.{i}.{}.weight", row.name),
                &[i % 3 + 1, cols],
                row.ty,
            )
        })
        .collect();
    specs.push(GgufTensorSpec::new("scalar", &[], GgmlType::F32));
    specs.push(GgufTensorSpec::new("bias", &[5], GgmlType::F16));
    specs.push(GgufTensorSpec::new(
        "conv.weight",
        &[2, 3, 3, 64],
        GgmlType::Q4_0,
    ));
    specs
}

/// Writes `specs` with `metadata`, each tensor's bytes in parts of 1, 7 and the rest; returns each tensor's bytes.
fn write_file(
    path: &Path,
    metadata: Vec<(String, MetaValue)>,
    specs: &[GgufTensorSpec],
) -> Vec<Vec<u8>> {
    let mut w = GgufWriter::create(path, metadata, Vec::new(), specs.to_vec()).unwrap();
    let mut all = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let bytes = fake_bytes(gguf_tensor_nbytes(&spec.shape, spec.ty).unwrap(), i);
        let (first, rest) = bytes.split_at(1);
        let (second, rest) = rest.split_at(rest.len().min(7));
        for part in [first, second, rest].into_iter().filter(|p| !p.is_empty()) {
            assert_eq!(w.current_tensor(), Some(spec.name.as_str()));
            w.write_tensor_data(part).unwrap();
        }
        all.push(bytes);
    }
    assert_eq!(w.current_tensor(), None);
    w.finish(Vec::new()).unwrap();
    all
}

#[test]
fn every_metadata_type_and_every_ggml_type_round_trips() {
    let dir = scratch("every");
    let path = dir.join("every.gguf");
    let metadata = every_kind();
    let specs = every_type_specs();
    let bytes = write_file(&path, metadata.clone(), &specs);
    let file = GgufFile::open(&path).unwrap();
    assert_eq!((file.version(), file.alignment()), (3, 32));
    // The caller's keys in order, then general.alignment.
    let (alignment, keys) = file.metadata().split_last().unwrap();
    assert_eq!(keys, &metadata[..]);
    assert_eq!(alignment, &(ALIGNMENT_KEY.to_string(), MetaValue::U32(32)));
    assert_eq!(
        file.get("test.key12").and_then(MetaValue::as_str),
        Some("flux ✓ ünïcode")
    );
    assert_eq!(file.tensors().len(), specs.len());
    let mut expected_offset = file.data_offset();
    for (i, (info, spec)) in file.tensors().iter().zip(&specs).enumerate() {
        assert_eq!(
            (&info.name, &info.shape, info.ty),
            (&spec.name, &spec.shape, spec.ty)
        );
        assert_eq!(
            info.offset, expected_offset,
            "{}: tensors are contiguous, in spec order",
            info.name
        );
        assert_eq!(info.offset % 32, 0);
        assert_eq!(file.tensor_bytes(i), &bytes[i][..], "{}", info.name);
        expected_offset += info.nbytes.div_ceil(32) * 32;
    }
    assert_eq!(
        std::fs::metadata(&path).unwrap().len() as usize,
        expected_offset
    );
    assert_eq!(file.find_tensor("bias"), Some(specs.len() - 2));
    assert!(file.tensor_bytes(specs.len()).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn float_tensors_read_back_through_the_codecs() {
    let dir = scratch("codec");
    let path = dir.join("f.gguf");
    let x: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
    let view = crate::TensorView::new("w", &[4, 6], crate::TensorData::F32(&x)).unwrap();
    let (blocks, _) = quantize_rows(&view, GgmlType::F16, None).unwrap();
    let mut w = GgufWriter::create(
        &path,
        vec![("general.architecture".into(), "flux".into())],
        vec![],
        vec![GgufTensorSpec::new("w", &[4, 6], GgmlType::F16)],
    )
    .unwrap();
    w.write_tensor_data(&blocks).unwrap();
    w.finish(vec![]).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let t = &file.tensors()[0];
    let back = dequantize_rows(t.ty, file.tensor_bytes(0), &t.shape, &t.name).unwrap();
    assert_eq!(back, x);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reserved_values_are_patched_in_place() {
    let dir = scratch("patch");
    let path = dir.join("p.gguf");
    let reserved = vec![
        (
            "arrow_quant.rel_mse".to_string(),
            MetaValue::from(vec![0f32; 2]),
        ),
        ("arrow_quant.tag".to_string(), MetaValue::from("----")),
    ];
    let specs = vec![
        GgufTensorSpec::new("a", &[32], GgmlType::Q8_0),
        GgufTensorSpec::new("b", &[2, 32], GgmlType::IQ4_NL),
    ];
    let mut w = GgufWriter::create(&path, vec![("x".into(), 1u8.into())], reserved, specs).unwrap();
    w.write_tensor_data(&[1; 34]).unwrap();
    w.write_tensor_data(&[2; 36]).unwrap();
    w.finish(vec![
        ("arrow_quant.tag".into(), "done".into()),
        ("arrow_quant.rel_mse".into(), vec![0.5f32, 1e-3].into()),
    ])
    .unwrap();
    let file = GgufFile::open(&path).unwrap();
    let keys: Vec<&str> = file.metadata().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["x", ALIGNMENT_KEY, "arrow_quant.rel_mse", "arrow_quant.tag"]
    );
    assert_eq!(
        file.get("arrow_quant.rel_mse"),
        Some(&vec![0.5f32, 1e-3].into())
    );
    assert_eq!(file.get("arrow_quant.tag"), Some(&"done".into()));
    assert_eq!(file.tensor_bytes(1), &[2; 36]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A small valid file: a few keys, tensors `t0` (F32 [2, 3]), `t1` (Q8_0 [32]) and `t2` (BF16 [4]).
fn small_file(dir: &Path) -> Vec<u8> {
    let path = dir.join("small.gguf");
    let metadata = vec![
        ("general.architecture".to_string(), MetaValue::from("sd1")),
        ("general.file_type".to_string(), MetaValue::U32(7)),
        (
            "names".to_string(),
            MetaValue::from(vec!["p".to_string(), "qq".to_string()]),
        ),
        ("flags".to_string(), MetaValue::from(vec![true, false])),
    ];
    let specs = vec![
        GgufTensorSpec::new("t0", &[2, 3], GgmlType::F32),
        GgufTensorSpec::new("t1", &[32], GgmlType::Q8_0),
        GgufTensorSpec::new("t2", &[4], GgmlType::BF16),
    ];
    write_file(&path, metadata, &specs);
    std::fs::read(&path).unwrap()
}

/// Where tensor `name`'s info starts (its name's length field).
fn info_at(bytes: &[u8], name: &str) -> usize {
    let mut pattern = (name.len() as u64).to_le_bytes().to_vec();
    pattern.extend_from_slice(name.as_bytes());
    bytes
        .windows(pattern.len())
        .position(|w| w == pattern.as_slice())
        .expect("the tensor info is in the file")
}

fn open_error(dir: &Path, bytes: &[u8]) -> String {
    let path = dir.join("corrupt.gguf");
    std::fs::write(&path, bytes).unwrap();
    let message = GgufFile::open(&path).err().expect("refused").to_string();
    assert!(
        message.starts_with(&path.display().to_string()),
        "{message}"
    );
    message
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn corrupt_headers_are_errors_that_say_what_and_where() {
    let dir = scratch("corrupt");
    let good = small_file(&dir);
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        open_error(&dir, &b)
    };
    let e = edit(&|b| put_u64(b, 16, 1 << 60));
    assert!(
        e.contains("claims 1152921504606846976 metadata pairs"),
        "{e}"
    );
    let e = edit(&|b| put_u64(b, 8, u64::MAX));
    assert!(e.contains("tensors, more than"), "{e}");
    // The first key's length: 600 GB.
    let e = edit(&|b| put_u64(b, 24, 600 << 30));
    assert!(
        e.contains("metadata key at byte 32 needs 644245094400 bytes"),
        "{e}"
    );
    let e = edit(&|b| put_u32(b, 4, 1));
    assert!(e.contains("version 1 is not supported"), "{e}");
    let e = edit(&|b| put_u32(b, 4, 3 << 24));
    assert!(e.contains("big-endian"), "{e}");
    let e = edit(&|b| b[0] = b'g');
    assert!(e.contains("not a GGUF file"), "{e}");
    // general.file_type's value type (after its 8-byte length and 17-byte key) becomes 13.
    let e = edit(&|b| {
        let at = info_at(b, "general.file_type") + 8 + 17;
        put_u32(b, at, 13);
    });
    assert!(
        e.contains("'general.file_type'") && e.contains("unknown value type 13"),
        "{e}"
    );
    let e = edit(&|b| {
        let at = info_at(b, "general.alignment") + 8 + 17 + 4;
        put_u32(b, at, 48);
    });
    assert!(
        e.contains("general.alignment") && e.contains("power of two"),
        "{e}"
    );
    let e = edit(&|b| {
        let at = info_at(b, "t1") + 10;
        put_u32(b, at, 6);
    });
    assert!(
        e.contains("tensor 't1'") && e.contains("6 dimensions"),
        "{e}"
    );
    // t1's type (after name, n_dims and one dim) becomes Q8_1, then an id nobody knows.
    let t1_type = info_at(&good, "t1") + 10 + 4 + 8;
    let e = edit(&|b| put_u32(b, t1_type, 9));
    assert!(
        e.contains("'t1'") && e.contains("Q8_1 (id 9) is not one arrow-quant reads"),
        "{e}"
    );
    let e = edit(&|b| put_u32(b, t1_type, 77));
    assert!(e.contains("unknown ggml type id 77"), "{e}");
    // t1 as Q4_K: 32 elements are not a whole 256-element block.
    let e = edit(&|b| put_u32(b, t1_type, 12));
    assert!(
        e.contains("'t1'") && e.contains("256-element blocks"),
        "{e}"
    );
    let e = edit(&|b| put_u64(b, t1_type + 4, 16));
    assert!(
        e.contains("'t1'") && e.contains("data offset 16 is not a multiple"),
        "{e}"
    );
    let e = edit(&|b| put_u64(b, t1_type + 4, 0));
    assert!(
        e.contains("'t0'") && e.contains("'t1'") && e.contains("overlap"),
        "{e}"
    );
    let e = edit(&|b| put_u64(b, t1_type + 4, 1 << 62));
    assert!(e.contains("'t1'") && e.contains("outside the file"), "{e}");
    let e = edit(&|b| {
        let at = info_at(b, "t2") + 9;
        b[at] = b'1';
    });
    assert!(
        e.contains("tensor 't1'") && e.contains("two tensors have this name"),
        "{e}"
    );
    let e = edit(&|b| b.truncate(b.len() - 40));
    assert!(e.contains("'t2'") && e.contains("outside the file"), "{e}");
    let e = edit(&|b| {
        let at = info_at(b, "general.architecture") + 8 + 20 + 4 + 8;
        b[at] = 0xff;
    });
    assert!(
        e.contains("'general.architecture'") && e.contains("not UTF-8"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn version_2_files_are_read() {
    let dir = scratch("v2");
    let mut bytes = small_file(&dir);
    put_u32(&mut bytes, 4, 2);
    let path = dir.join("v2.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version(), 2);
    assert_eq!(file.tensors()[2].shape, vec![4]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Opens `path` and touches everything: metadata, every tensor's bytes, and decoding where a codec exists.
fn read_everything(path: &Path) -> crate::Result<usize> {
    let file = GgufFile::open(path)?;
    let mut seen = file.metadata().len();
    for (i, t) in file.tensors().iter().enumerate() {
        let bytes = file.tensor_bytes(i);
        assert_eq!(bytes.len(), t.nbytes);
        seen += bytes.len();
        if let Ok(values) = dequantize_rows(t.ty, bytes, &t.shape, &t.name) {
            seen += values.len();
        }
    }
    Ok(seen)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Mutated and truncated GGUF files give errors (or read as another valid file), never panics or aborts.
    #[test]
    fn mutated_gguf_files_are_errors_not_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        header_edits in prop::collection::vec((0usize..200, any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let dir = scratch("fuzz");
        let mut bytes = small_file(&dir);
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        // Most of a small file's bytes are its header: hit it more often.
        for (at, value) in header_edits {
            let i = at % bytes.len();
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        let path = dir.join("mutated.gguf");
        std::fs::write(&path, &bytes).unwrap();
        let _ = read_everything(&path);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Writes a sample file for checking with gguf-py outside the test suite: every metadata kind, one tensor per
/// ggml type (bytes from [`fake_bytes`]) and `real.f16` / `real.bf16` / `real.f32` holding `i * 0.25 - 3` of
/// shape [3, 8], at the path in `AQ_GGUF_SAMPLE`
/// (`AQ_GGUF_SAMPLE=/tmp/s.gguf cargo test -p arrow-quant --lib gguf_sample -- --ignored`).
#[test]
#[ignore]
fn write_gguf_sample_for_gguf_py() {
    let Some(path) = std::env::var_os("AQ_GGUF_SAMPLE") else {
        return;
    };
    let path = PathBuf::from(path);
    let mut metadata = vec![("general.architecture".to_string(), MetaValue::from("flux"))];
    metadata.extend(every_kind());
    let mut specs = every_type_specs();
    let x: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 3.0).collect();
    let view = crate::TensorView::new("real", &[3, 8], crate::TensorData::F32(&x)).unwrap();
    let mut data: Vec<Vec<u8>> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| fake_bytes(gguf_tensor_nbytes(&s.shape, s.ty).unwrap(), i))
        .collect();
    for (name, ty) in [
        ("real.f16", GgmlType::F16),
        ("real.bf16", GgmlType::BF16),
        ("real.f32", GgmlType::F32),
    ] {
        specs.push(GgufTensorSpec::new(name, &[3, 8], ty));
        data.push(quantize_rows(&view, ty, None).unwrap().0);
    }
    let reserved = vec![(
        "arrow_quant.patched".to_string(),
        MetaValue::from(vec![0f32; 3]),
    )];
    let mut w = GgufWriter::create(&path, metadata, reserved, specs).unwrap();
    for bytes in &data {
        for part in bytes.chunks(13) {
            w.write_tensor_data(part).unwrap();
        }
    }
    w.finish(vec![(
        "arrow_quant.patched".into(),
        vec![1.5f32, -2.0, 0.125].into(),
    )])
    .unwrap();
    assert!(GgufFile::open(&path).is_ok());
}
