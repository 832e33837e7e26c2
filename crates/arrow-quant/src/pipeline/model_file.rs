//! The quantized model file: one row group (Parquet, zstd) or one record batch (Arrow IPC) per tensor, written
//! tensor by tensor through an [`AtomicFile`], with the run's metadata in the footer; read back lazily.

use super::atomic_file::AtomicFile;
use super::config::OutputFormat;
use crate::arrow::checksum::with_checksums;
use crate::arrow::ipc_file::open_ipc_file;
use crate::arrow::schema::{
    col, result_schema, FORMAT_KEY, FORMAT_NAME, FORMAT_VERSION, VERSION_KEY,
};
use crate::config::ScaleDtype;
use crate::error::{catch_reader_panic, QuantError, Result};
use arrow_array::RecordBatch;
use arrow_ipc::reader::FileReader;
use arrow_ipc::writer::FileWriter;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Metadata key: the source model path.
pub const SOURCE_KEY: &str = "arrow_quant.source";
/// Metadata key: the run's configuration (JSON).
pub const CONFIG_KEY: &str = "arrow_quant.config";
/// Metadata key: the quality report summary (JSON).
pub const REPORT_KEY: &str = "arrow_quant.report";
/// Metadata key: the name of every row in file order (JSON list; a chunked tensor's once per chunk row), so
/// readers need not scan the file.
pub const TENSORS_KEY: &str = "arrow_quant.tensors";

enum Sink {
    Parquet(ArrowWriter<File>),
    Ipc(FileWriter<File>),
}

/// Writes a quantized model one tensor at a time.
pub struct ModelWriter {
    sink: Sink,
    file: AtomicFile,
    path: PathBuf,
    names: Vec<String>,
}

fn parquet_err(path: &Path, e: impl std::fmt::Display) -> QuantError {
    QuantError::format(path, format!("writing failed: {e}"))
}

impl ModelWriter {
    /// Starts a model file at `path` (it appears only when [`ModelWriter::finish`] succeeds).
    /// `format` `None` takes it from the path's extension (Parquet when it names none).
    pub fn create(
        path: &Path,
        format: Option<OutputFormat>,
        scale_dtype: ScaleDtype,
    ) -> Result<Self> {
        let format = super::output_path::model_format(path, format)?;
        if format == OutputFormat::Gguf {
            return Err(QuantError::output_path(
                path,
                "GGUF files are written by local `quantize` runs only (not by distributed runs or staged \
                 units yet); name this output .parquet or .arrow",
            ));
        }
        let file = AtomicFile::create(path)?;
        let schema = std::sync::Arc::new(result_schema(scale_dtype));
        let handle = file.handle()?;
        let sink = match format {
            OutputFormat::Parquet => {
                let level = ZstdLevel::try_new(1).map_err(|e| parquet_err(path, e))?;
                let no_stats = |c: &str| ColumnPath::from(c);
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(level))
                    .set_dictionary_enabled(false)
                    .set_column_statistics_enabled(no_stats(col::DATA), EnabledStatistics::None)
                    .set_column_statistics_enabled(no_stats(col::PARAMS), EnabledStatistics::None)
                    // Packed codes are close to random bytes: zstd gains little on them and costs throughput.
                    .set_column_compression(no_stats(col::DATA), Compression::UNCOMPRESSED)
                    .build();
                Sink::Parquet(
                    ArrowWriter::try_new(handle, schema, Some(props))
                        .map_err(|e| parquet_err(path, e))?,
                )
            }
            OutputFormat::ArrowIpc | OutputFormat::Gguf => {
                Sink::Ipc(FileWriter::try_new(handle, &schema).map_err(|e| parquet_err(path, e))?)
            }
        };
        Ok(Self {
            sink,
            file,
            path: path.to_path_buf(),
            names: Vec::new(),
        })
    }

    /// Writes one row (a one-row batch of the result schema: a tensor, or one chunk row of a large tensor) as its
    /// own row group / batch, with its checksum computed.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let path = self.path.clone();
        let batch = &with_checksums(batch.clone())?;
        match &mut self.sink {
            Sink::Parquet(w) => {
                w.write(batch).map_err(|e| parquet_err(&path, e))?;
                w.flush().map_err(|e| parquet_err(&path, e))?;
            }
            Sink::Ipc(w) => w.write(batch).map_err(|e| parquet_err(&path, e))?,
        }
        if let Some(names) = batch.column_by_name(col::NAME) {
            use arrow_array::cast::AsArray;
            self.names.extend(
                names
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(str::to_string),
            );
        }
        Ok(())
    }

    /// Writes the footer with `metadata` (plus the format keys and the tensor list) and moves the file into place.
    pub fn finish(self, metadata: Vec<(String, String)>) -> Result<()> {
        let path = self.path;
        let mut all = vec![
            (FORMAT_KEY.to_string(), FORMAT_NAME.to_string()),
            (VERSION_KEY.to_string(), FORMAT_VERSION.to_string()),
            (
                TENSORS_KEY.to_string(),
                serde_json::Value::from(self.names).to_string(),
            ),
        ];
        all.extend(metadata);
        match self.sink {
            Sink::Parquet(mut w) => {
                for (k, v) in all {
                    w.append_key_value_metadata(KeyValue::new(k, v));
                }
                w.close().map_err(|e| parquet_err(&path, e))?;
            }
            Sink::Ipc(mut w) => {
                for (k, v) in all {
                    w.write_metadata(k, v);
                }
                w.finish().map_err(|e| parquet_err(&path, e))?;
            }
        }
        self.file.commit()
    }
}

enum Source {
    Parquet {
        file: File,
        meta: ArrowReaderMetadata,
    },
    Ipc(Mutex<FileReader<File>>),
}

/// A quantized model file opened for lazy reading, one tensor at a time.
pub struct ModelFile {
    path: PathBuf,
    source: Source,
    /// Footer metadata (format, config, report, tensors).
    pub metadata: HashMap<String, String>,
    /// Tensor names in file order (each once, however many chunk rows it has).
    pub names: Vec<String>,
    /// The rows of each tensor of `names`: one, or its chunk rows.
    rows: Vec<std::ops::Range<usize>>,
}

impl ModelFile {
    /// Opens a Parquet or Arrow IPC model file (detected from its magic bytes).
    pub fn open(path: &Path) -> Result<Self> {
        catch_reader_panic(
            || Self::open_unguarded(path),
            |message| {
                QuantError::format(path, format!("not a readable quantized model: {message}"))
            },
        )
    }

    fn open_unguarded(path: &Path) -> Result<Self> {
        let not_found = || QuantError::ModelNotFound {
            path: path.display().to_string(),
            problem: "no such file".into(),
        };
        let mut file = File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                not_found()
            } else {
                QuantError::io(path, &e)
            }
        })?;
        let mut magic = [0u8; 6];
        use std::io::Read;
        let n = file
            .read(&mut magic)
            .map_err(|e| QuantError::io(path, &e))?;
        let file = File::open(path).map_err(|e| QuantError::io(path, &e))?;
        let bad = |e: &dyn std::fmt::Display| {
            QuantError::format(path, format!("not a readable quantized model: {e}"))
        };
        let (source, metadata) = if n >= 4 && &magic[..4] == b"PAR1" {
            let meta = ArrowReaderMetadata::load(&file, Default::default()).map_err(|e| bad(&e))?;
            let kv = meta
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .cloned()
                .unwrap_or_default();
            let metadata = kv
                .into_iter()
                .filter_map(|kv| Some((kv.key, kv.value?)))
                .collect();
            (Source::Parquet { file, meta }, metadata)
        } else if n == 6 && &magic == b"ARROW1" {
            let reader = open_ipc_file(file).map_err(|e| bad(&e))?;
            let metadata = reader.custom_metadata().clone();
            (Source::Ipc(Mutex::new(reader)), metadata)
        } else {
            return Err(QuantError::format(
                path,
                "neither a Parquet nor an Arrow IPC file (bad magic bytes)",
            ));
        };
        if metadata.get(FORMAT_KEY).map(String::as_str) != Some(FORMAT_NAME) {
            return Err(QuantError::format(
                path,
                format!("no '{FORMAT_KEY} = {FORMAT_NAME}' metadata: not an arrow-quant model"),
            ));
        }
        let row_names: Vec<String> = metadata
            .get(TENSORS_KEY)
            .and_then(|t| serde_json::from_str(t).ok())
            .ok_or_else(|| {
                QuantError::format(
                    path,
                    format!("metadata '{TENSORS_KEY}' is missing or not a JSON list"),
                )
            })?;
        // Consecutive rows of one name are the chunk rows of one tensor.
        let mut names: Vec<String> = Vec::new();
        let mut rows: Vec<std::ops::Range<usize>> = Vec::new();
        for (r, name) in row_names.iter().enumerate() {
            match (names.last(), rows.last_mut()) {
                (Some(last), Some(range)) if last == name => range.end = r + 1,
                _ => {
                    names.push(name.clone());
                    rows.push(r..r + 1);
                }
            }
        }
        let model = Self {
            path: path.to_path_buf(),
            source,
            metadata,
            names,
            rows,
        };
        let stored = match &model.source {
            Source::Parquet { meta, .. } => meta.metadata().num_row_groups(),
            Source::Ipc(r) => r.lock().map_or(0, |r| r.num_batches()),
        };
        if stored != row_names.len() {
            return Err(QuantError::format(
                path,
                format!("{} rows listed but {stored} stored", row_names.len()),
            ));
        }
        Ok(model)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored rows of tensor `index` (of `names`): one, or its chunk rows in order.
    pub fn rows_of(&self, index: usize) -> std::ops::Range<usize> {
        self.rows.get(index).cloned().unwrap_or(0..0)
    }

    /// Rows stored in the file (tensors plus the extra chunk rows of chunked ones).
    pub fn num_rows(&self) -> usize {
        self.rows.last().map_or(0, |r| r.end)
    }

    /// The one-row batch of stored row `index` (a tensor, or one chunk row of one, see [`ModelFile::rows_of`];
    /// [`ModelFile::for_each_row`] reads a whole tensor).
    pub fn read_row(&self, index: usize) -> Result<RecordBatch> {
        catch_reader_panic(
            || self.read_unguarded(index),
            |message| QuantError::format(&self.path, format!("row {index}: {message}")),
        )
    }

    fn read_unguarded(&self, index: usize) -> Result<RecordBatch> {
        let bad =
            |e: &dyn std::fmt::Display| QuantError::format(&self.path, format!("row {index}: {e}"));
        match &self.source {
            Source::Parquet { file, meta } => {
                let file = file
                    .try_clone()
                    .map_err(|e| QuantError::io(&self.path, &e))?;
                let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta.clone())
                    .with_row_groups(vec![index])
                    .build()
                    .map_err(|e| bad(&e))?;
                let mut batches = reader
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| bad(&e))?;
                // Each row group holds one tensor's row, so it reads back as one batch.
                batches.pop().ok_or_else(|| bad(&"empty row group"))
            }
            Source::Ipc(reader) => {
                let mut r = reader
                    .lock()
                    .map_err(|_| bad(&"reader poisoned by an earlier panic"))?;
                r.set_index(index).map_err(|e| bad(&e))?;
                r.next()
                    .ok_or_else(|| bad(&"missing batch"))?
                    .map_err(|e| bad(&e))
            }
        }
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::arrow::output::tensor_batch;
    use crate::arrow::result::read_results;
    use crate::{quantize_tensor, QuantConfig, TensorData, TensorView};
    use proptest::prelude::*;

    fn valid_file(format: OutputFormat, dir: &Path) -> Vec<u8> {
        let w: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin()).collect();
        let path = dir.join("valid");
        let mut writer = ModelWriter::create(&path, Some(format), ScaleDtype::F16).unwrap();
        for name in ["a", "b"] {
            let view = TensorView::new(name, &[4, 128], TensorData::F32(&w)).unwrap();
            let q = quantize_tensor(&view, &QuantConfig::default()).unwrap();
            writer.write(&tensor_batch(q).unwrap()).unwrap();
        }
        writer.finish(Vec::new()).unwrap();
        std::fs::read(&path).unwrap()
    }

    /// Opens, reads and dequantizes every tensor; any error is fine, a panic is not.
    fn read_everything(path: &Path) -> Result<()> {
        let model = ModelFile::open(path)?;
        for i in 0..model.num_rows() {
            let batch = model.read_row(i)?;
            for row in read_results(std::slice::from_ref(&batch))? {
                if let Ok(view) = row.view() {
                    view.dequantize()?;
                }
            }
        }
        Ok(())
    }

    /// Regression: an Arrow IPC footer whose block claims a huge body made the reader allocate that many bytes
    /// and abort the process (found by the fuzz test below).
    #[test]
    fn ipc_block_lengths_beyond_the_file_are_an_error() {
        let dir = std::env::temp_dir().join(format!("aq-model-block-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut bytes = valid_file(OutputFormat::ArrowIpc, &dir);
        let footer_len =
            u32::from_le_bytes(bytes[bytes.len() - 10..][..4].try_into().unwrap()) as usize;
        let footer_at = bytes.len() - 10 - footer_len;
        let footer = arrow_ipc::root_as_footer(&bytes[footer_at..bytes.len() - 10]).unwrap();
        let body = footer.recordBatches().unwrap().get(1).bodyLength();
        let pattern = body.to_le_bytes();
        let at = footer_at
            + bytes[footer_at..]
                .windows(8)
                .rposition(|w| w == pattern)
                .expect("the block's body length is in the footer");
        bytes[at..at + 8].copy_from_slice(&(1i64 << 40).to_le_bytes());
        let path = dir.join("huge-block");
        std::fs::write(&path, &bytes).unwrap();
        let message = ModelFile::open(&path).err().expect("refused").to_string();
        assert!(
            message.contains("block 1") && message.contains("outside the file"),
            "{message}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Mutated and truncated model files (Parquet and Arrow IPC) give errors, never panics.
        #[test]
        fn mutated_model_files_are_errors_not_panics(
            ipc in any::<bool>(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let dir = std::env::temp_dir().join(format!("aq-model-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let format = if ipc { OutputFormat::ArrowIpc } else { OutputFormat::Parquet };
            let mut bytes = valid_file(format, &dir);
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            let path = dir.join("mutated");
            std::fs::write(&path, &bytes).unwrap();
            let _ = read_everything(&path);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
