//! Tests of [`super::Imatrix`]: both formats read as llama.cpp reads them (means per matrix, zero counts, the
//! optional legacy trailer), lookups by shape (dense, per-expert, another model's), and corrupt or truncated
//! files as errors naming the field and offset, never panics (a mutation property test).

use super::*;
use crate::gguf::{GgufTensorSpec, GgufWriter};
use proptest::prelude::*;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("aq-imatrix-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A legacy `.dat` as llama-imatrix wrote it: (name, ncall, values) entries, then chunk count and dataset.
fn legacy_bytes(entries: &[(&str, i32, &[f32])], trailer: Option<(i32, &str)>) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend((entries.len() as i32).to_le_bytes());
    for (name, ncall, values) in entries {
        b.extend((name.len() as i32).to_le_bytes());
        b.extend(name.as_bytes());
        b.extend(ncall.to_le_bytes());
        b.extend((values.len() as i32).to_le_bytes());
        for v in *values {
            b.extend(v.to_le_bytes());
        }
    }
    if let Some((chunks, dataset)) = trailer {
        b.extend(chunks.to_le_bytes());
        b.extend((dataset.len() as i32).to_le_bytes());
        b.extend(dataset.as_bytes());
    }
    b
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A GGUF imatrix with `(name, sums rows, counts)` entries.
fn write_gguf(path: &Path, entries: &[(&str, Vec<f32>, Vec<f32>)]) {
    let mut specs = Vec::new();
    let mut data = Vec::new();
    for (name, sums, counts) in entries {
        let ne0 = sums.len() / counts.len();
        specs.push(GgufTensorSpec::new(
            format!("{name}.in_sum2"),
            &[counts.len(), ne0],
            GgmlType::F32,
        ));
        specs.push(GgufTensorSpec::new(
            format!("{name}.counts"),
            &[counts.len(), 1],
            GgmlType::F32,
        ));
        data.push(f32_bytes(sums));
        data.push(f32_bytes(counts));
    }
    let metadata = vec![
        ("general.type".to_string(), MetaValue::from("imatrix")),
        (
            "imatrix.datasets".to_string(),
            MetaValue::Array(MetaArray::String(vec!["wiki.train.raw".into()])),
        ),
        ("imatrix.chunk_count".to_string(), MetaValue::U32(100)),
        ("imatrix.chunk_size".to_string(), MetaValue::U32(512)),
    ];
    let mut w = GgufWriter::create(path, metadata, Vec::new(), specs).unwrap();
    for d in data {
        w.write_tensor_data(&d).unwrap();
    }
    w.finish(Vec::new()).unwrap();
}

#[test]
fn the_gguf_format_gives_sums_over_counts_per_matrix() {
    let dir = scratch("gguf");
    let path = dir.join("imatrix.gguf");
    write_gguf(
        &path,
        &[
            ("blk.0.attn_q.weight", vec![2.0, 4.0, 6.0, 8.0], vec![2.0]),
            // two experts, the second never routed to: llama.cpp gives it ones
            (
                "blk.0.ffn_up_exps.weight",
                vec![3.0, 9.0, 5.0, 5.0],
                vec![3.0, 0.0],
            ),
        ],
    );
    let im = Imatrix::open(&path).unwrap();
    assert!(!im.legacy);
    assert_eq!((im.len(), im.chunk_count), (2, 100));
    assert_eq!(im.datasets, ["wiki.train.raw"]);
    assert_eq!(
        im.columns("blk.0.attn_q.weight", &[16, 4]).unwrap(),
        Some(vec![1.0, 2.0, 3.0, 4.0])
    );
    // experts [2, 3, 2]: the mean over experts ([1, 3] and [1, 1]), once per row of the 2-D view [2, 3 x 2]
    assert_eq!(
        im.columns("blk.0.ffn_up_exps.weight", &[2, 3, 2]).unwrap(),
        Some(vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0])
    );
    assert_eq!(im.columns("output.weight", &[16, 4]).unwrap(), None);
    // another model's shape
    let e = im
        .columns("blk.0.attn_q.weight", &[16, 8])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("another model"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_legacy_format_divides_by_the_calls_and_reads_the_trailer() {
    let dir = scratch("legacy");
    let path = dir.join("imatrix.dat");
    let bytes = legacy_bytes(
        &[
            ("blk.0.attn_k.weight", 4, &[4.0, 8.0]),
            ("blk.0.attn_v.weight", 0, &[0.5, 1.5]),
            ("blk.0.attn_output.weight", 2, &[0.0, 0.0]),
        ],
        Some((50, "calibration.txt")),
    );
    std::fs::write(&path, &bytes).unwrap();
    let im = Imatrix::open(&path).unwrap();
    assert!(im.legacy);
    assert_eq!(
        (im.chunk_count, im.datasets.clone()),
        (50, vec!["calibration.txt".to_string()])
    );
    assert_eq!(
        im.columns("blk.0.attn_k.weight", &[8, 2]).unwrap(),
        Some(vec![1.0, 2.0])
    );
    assert_eq!(
        im.columns("blk.0.attn_v.weight", &[8, 2]).unwrap(),
        Some(vec![0.5, 1.5])
    );
    // no activation recorded: no importance
    assert_eq!(
        im.columns("blk.0.attn_output.weight", &[8, 2]).unwrap(),
        None
    );
    // without the trailer
    let bare = legacy_bytes(&[("a.weight", 1, &[1.0])], None);
    let im = Imatrix::from_legacy(&path, &bare).unwrap();
    assert_eq!((im.chunk_count, im.datasets.len()), (0, 0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_files_are_errors_naming_the_field_and_offset() {
    let p = Path::new("im.dat");
    let err = |bytes: &[u8]| Imatrix::from_legacy(p, bytes).unwrap_err().to_string();
    let e = err(&0i32.to_le_bytes());
    assert!(e.contains("entry count") && e.contains("offset 0"), "{e}");
    let e = err(&[1, 0]);
    assert!(e.contains("entry count") && e.contains("truncated"), "{e}");
    let good = legacy_bytes(&[("w", 1, &[1.0, 2.0])], None);
    // the value count claims more than the file holds
    let mut big = good.clone();
    big[13..17].copy_from_slice(&1000i32.to_le_bytes());
    let e = err(&big);
    assert!(e.contains("value count") && e.contains("offset 13"), "{e}");
    // a negative name length
    let mut neg = good.clone();
    neg[4..8].copy_from_slice(&(-5i32).to_le_bytes());
    let e = err(&neg);
    assert!(e.contains("name length") && e.contains("offset 4"), "{e}");
    let e = err(&good[..good.len() - 2]);
    assert!(e.contains("truncated"), "{e}");
    // a NaN importance is refused at lookup, naming the tensor
    let nan = legacy_bytes(&[("w", 1, &[f32::NAN, 1.0])], None);
    let e = Imatrix::from_legacy(p, &nan)
        .unwrap()
        .columns("w", &[4, 2])
        .unwrap_err()
        .to_string();
    assert!(e.contains("'w'") && e.contains("NaN"), "{e}");
    // a GGUF without imatrix tensors, and one whose sums have no counts
    let dir = scratch("bad-gguf");
    let path = dir.join("model.gguf");
    let spec = GgufTensorSpec::new("x.weight", &[1, 4], GgmlType::F32);
    let mut w = GgufWriter::create(&path, Vec::new(), Vec::new(), vec![spec]).unwrap();
    w.write_tensor_data(&f32_bytes(&[1.0; 4])).unwrap();
    w.finish(Vec::new()).unwrap();
    let e = Imatrix::open(&path).unwrap_err().to_string();
    assert!(e.contains("in_sum2") && e.contains("not an imatrix"), "{e}");
    let spec = GgufTensorSpec::new("x.weight.in_sum2", &[1, 4], GgmlType::F32);
    let mut w = GgufWriter::create(&path, Vec::new(), Vec::new(), vec![spec]).unwrap();
    w.write_tensor_data(&f32_bytes(&[1.0; 4])).unwrap();
    w.finish(Vec::new()).unwrap();
    let e = Imatrix::open(&path).unwrap_err().to_string();
    assert!(e.contains("x.weight.counts"), "{e}");
    let e = Imatrix::open(&dir.join("missing.dat"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.dat"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Mutated and truncated legacy files are errors or another valid file, never panics.
    #[test]
    fn mutated_legacy_files_are_errors_not_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = legacy_bytes(
            &[("blk.0.attn_q.weight", 3, &[1.0, 2.0, 3.0, 4.0]), ("output.weight", 1, &[0.5; 4])],
            Some((10, "data")),
        );
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(im) = Imatrix::from_legacy(Path::new("m.dat"), &bytes) {
            for name in ["blk.0.attn_q.weight", "output.weight"] {
                let _ = im.columns(name, &[2, 4]);
                let _ = im.columns(name, &[2, 3, 4]);
            }
        }
    }
}
