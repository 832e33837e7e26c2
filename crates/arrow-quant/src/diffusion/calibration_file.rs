//! Calibration tables on disk: read from Parquet or Arrow IPC (detected from the magic bytes), written as Parquet
//! (zstd) through a temporary file that appears only when complete.

use super::calibration::{col, Calibration, NUM_TIMESTEPS_KEY};
use crate::arrow::ipc_file::open_ipc_file;
use crate::error::{catch_reader_panic, QuantError, Result};
use crate::pipeline::atomic_file::AtomicFile;
use arrow_array::builder::{Float32Builder, ListBuilder};
use arrow_array::{ArrayRef, Float32Array, Int64Array, RecordBatch, StringArray, UInt32Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

/// Every record batch of a Parquet or Arrow IPC file; each carries the file's metadata in its schema. A missing
/// or unreadable file is a calibration error too: to the caller it is bad calibration input.
pub(crate) fn read_batches(path: &Path) -> Result<Vec<RecordBatch>> {
    catch_reader_panic(
        || read_batches_unguarded(path),
        |message| {
            QuantError::calibration(
                path.display(),
                format!("not a readable calibration table: malformed file ({message})"),
            )
        },
    )
}

fn read_batches_unguarded(path: &Path) -> Result<Vec<RecordBatch>> {
    let unreadable = |e: std::io::Error| {
        QuantError::calibration(path.display(), format!("cannot read the file: {e}"))
    };
    let mut file = File::open(path).map_err(unreadable)?;
    let mut magic = [0u8; 6];
    let n = file.read(&mut magic).map_err(unreadable)?;
    let file = File::open(path).map_err(unreadable)?;
    let bad = |e: &dyn std::fmt::Display| {
        QuantError::calibration(
            path.display(),
            format!("not a readable calibration table: {e}"),
        )
    };
    if n >= 4 && &magic[..4] == b"PAR1" {
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(&e))?;
        let custom: HashMap<String, String> = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .into_iter()
            .flatten()
            .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?)))
            .collect();
        let reader = builder.build().map_err(|e| bad(&e))?;
        let batches = reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        with_file_metadata(batches, &custom).map_err(|e| bad(&e))
    } else if n == 6 && &magic == b"ARROW1" {
        let reader = open_ipc_file(file).map_err(|e| bad(&e))?;
        let custom = reader.custom_metadata().clone();
        let batches = reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        with_file_metadata(batches, &custom).map_err(|e| bad(&e))
    } else {
        Err(bad(
            &"neither a Parquet nor an Arrow IPC file (bad magic bytes)",
        ))
    }
}

/// File-level metadata counts like schema metadata (pyarrow and arrow-rs store it in either place).
fn with_file_metadata(
    batches: Vec<RecordBatch>,
    file: &HashMap<String, String>,
) -> std::result::Result<Vec<RecordBatch>, arrow_schema::ArrowError> {
    batches
        .into_iter()
        .map(|b| {
            let mut meta = file.clone();
            meta.extend(b.schema().metadata().clone());
            let schema = Arc::new(b.schema().as_ref().clone().with_metadata(meta));
            b.with_schema(schema)
        })
        .collect()
}

/// One row per layer and timestep; T in the schema metadata.
pub(crate) fn to_batch(calibration: &Calibration) -> Result<RecordBatch> {
    let steps: Vec<_> = calibration
        .layers()
        .flat_map(|l| l.steps.iter().map(move |s| (l.layer.as_str(), s)))
        .collect();
    let mut absmax = ListBuilder::new(Float32Builder::new());
    for (_, s) in &steps {
        match &s.channel_absmax {
            Some(a) => {
                absmax.values().append_slice(a);
                absmax.append(true);
            }
            None => absmax.append(false),
        }
    }
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            col::LAYER_NAME,
            Arc::new(StringArray::from_iter_values(steps.iter().map(|(l, _)| *l))),
        ),
        (
            col::TIMESTEP,
            Arc::new(UInt32Array::from_iter_values(
                steps.iter().map(|(_, s)| s.timestep),
            )),
        ),
        (
            col::MIN,
            Arc::new(Float32Array::from_iter_values(
                steps.iter().map(|(_, s)| s.min),
            )),
        ),
        (
            col::MAX,
            Arc::new(Float32Array::from_iter_values(
                steps.iter().map(|(_, s)| s.max),
            )),
        ),
        (col::CHANNEL_ABSMAX, Arc::new(absmax.finish())),
        (
            col::COUNT,
            Arc::new(Int64Array::from_iter_values(
                steps
                    .iter()
                    .map(|(_, s)| s.count.min(i64::MAX as u64) as i64),
            )),
        ),
    ];
    let batch = RecordBatch::try_from_iter(columns)
        .map_err(|e| QuantError::calibration(&calibration.source, e))?;
    let metadata = HashMap::from([(
        NUM_TIMESTEPS_KEY.to_string(),
        calibration.num_timesteps.to_string(),
    )]);
    let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(metadata));
    batch
        .with_schema(schema)
        .map_err(|e| QuantError::calibration(&calibration.source, e))
}

/// Writes the table as Parquet (zstd) at `path`, atomically.
pub(crate) fn write(calibration: &Calibration, path: &Path) -> Result<()> {
    let batch = to_batch(calibration)?;
    let failed =
        |e: &dyn std::fmt::Display| QuantError::format(path, format!("writing failed: {e}"));
    let file = AtomicFile::create(path)?;
    let level = ZstdLevel::try_new(3).map_err(|e| failed(&e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .build();
    let mut writer = ArrowWriter::try_new(file.handle()?, batch.schema(), Some(props))
        .map_err(|e| failed(&e))?;
    writer.write(&batch).map_err(|e| failed(&e))?;
    writer.append_key_value_metadata(parquet::file::metadata::KeyValue::new(
        NUM_TIMESTEPS_KEY.to_string(),
        calibration.num_timesteps.to_string(),
    ));
    writer.close().map_err(|e| failed(&e))?;
    file.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::calibration::CalibrationRow;

    fn table() -> Calibration {
        let rows = (0..3).flat_map(|t| {
            ["down.0", "up.1.weight"].map(|l| CalibrationRow {
                layer: l.into(),
                timestep: t * 10,
                min: -(t as f64),
                max: 1.0 + t as f64,
                count: 5,
                channel_absmax: (l == "down.0").then(|| vec![0.5, t as f32]),
            })
        });
        Calibration::from_rows("test", rows, Some(50)).unwrap()
    }

    #[test]
    fn parquet_round_trip_keeps_rows_and_timesteps() {
        let dir = std::env::temp_dir().join(format!("aq-cal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cal.parquet");
        let c = table();
        c.write(&path).unwrap();
        let back = Calibration::read(&path).unwrap();
        assert_eq!(back.num_timesteps, 50);
        assert_eq!(
            back.layers().collect::<Vec<_>>(),
            c.layers().collect::<Vec<_>>()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn arrow_ipc_files_are_read_too() {
        let dir = std::env::temp_dir().join(format!("aq-cal-ipc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cal.arrow");
        let batch = table().to_batch().unwrap();
        let mut w =
            arrow_ipc::writer::FileWriter::try_new(File::create(&path).unwrap(), &batch.schema())
                .unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        let back = Calibration::read(&path).unwrap();
        assert_eq!(back.num_timesteps, 50);
        assert_eq!(back.layers().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_and_columns_are_named() {
        let dir = std::env::temp_dir().join(format!("aq-cal-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cal.txt");
        std::fs::write(&path, b"layer,timestep\n").unwrap();
        let e = Calibration::read(&path).unwrap_err().to_string();
        assert!(e.contains("cal.txt") && e.contains("magic"), "{e}");
        let e = Calibration::read(&dir.join("missing.parquet"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.parquet"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();

        let batch = table().to_batch().unwrap();
        let without_max = batch.project(&[0, 1, 2]).unwrap();
        let e = Calibration::from_batches("t", &[without_max])
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing column 'max'"), "{e}");
        let wrong = RecordBatch::try_from_iter([
            (
                "layer_name",
                Arc::new(StringArray::from(vec!["a"])) as ArrayRef,
            ),
            (
                "timestep",
                Arc::new(Float32Array::from(vec![1.0])) as ArrayRef,
            ),
            ("min", Arc::new(Float32Array::from(vec![0.0])) as ArrayRef),
            ("max", Arc::new(Float32Array::from(vec![1.0])) as ArrayRef),
        ])
        .unwrap();
        let e = Calibration::from_batches("t", &[wrong])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("column 'timestep' has type Float32; expected an integer type"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::diffusion::calibration::CalibrationRow;
    use proptest::prelude::*;

    fn valid_file() -> Vec<u8> {
        let rows = (0..4).map(|t| CalibrationRow {
            layer: "blocks.0".into(),
            timestep: t,
            min: -1.0,
            max: 1.0,
            count: 3,
            channel_absmax: Some(vec![1.0, 2.0]),
        });
        let dir = std::env::temp_dir().join(format!("aq-cal-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cal.parquet");
        Calibration::from_rows("fuzz", rows, Some(8))
            .unwrap()
            .write(&path)
            .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        bytes
    }

    fn read_bytes(bytes: &[u8], name: &str) -> Result<Calibration> {
        let dir = std::env::temp_dir().join(format!("aq-cal-fuzz-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cal.parquet");
        std::fs::write(&path, bytes).unwrap();
        let read = Calibration::read(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        read
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Mutated calibration files give an error (or, rarely, still-valid statistics), never a panic.
        #[test]
        fn mutated_files_are_errors_not_panics(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut bytes = valid_file();
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            if let Err(e) = read_bytes(&bytes, "mutated") {
                prop_assert!(matches!(e, QuantError::Calibration { .. }), "{e}");
            }
        }
    }
}
