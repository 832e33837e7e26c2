//! Working with a finished model file: validate it against its source checkpoint, export it back to
//! `.safetensors` (dequantized), both one row at a time (a large tensor's chunk rows one by one) and each row
//! window by window, so memory stays near one chunk row whatever the model.

use super::atomic_file::AtomicFile;
use super::entry::PLAIN_FLOOR;
use super::model_file::{ModelFile, CONFIG_KEY};
use super::output_path::{check_export_extension, check_output};
use crate::arrow::output::RowEncoding;
use crate::checkpoint::{float_values, Checkpoint};
use crate::codec::driver::QualitySums;
use crate::error::{QuantError, Result};
use crate::quantized::Quality;
use half::{bf16, f16};
use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Per-layer agreement of a model file with its source.
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    /// `(name, encoding, measured quality, stored quality, passed)` per tensor.
    pub layers: Vec<(String, String, Quality, Quality, bool)>,
    /// The floor used (from the model's stored config).
    pub floor: f64,
}

impl Validation {
    /// True when every layer passed.
    pub fn passed(&self) -> bool {
        self.layers.iter().all(|l| l.4)
    }

    /// `{passed, floor, layers: [{name, encoding, cosine, rel_mse, stored_cosine, passed}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let layers: Vec<_> = self
            .layers
            .iter()
            .map(|(name, encoding, measured, stored, passed)| {
                serde_json::json!({"name": name, "encoding": encoding, "cosine": measured.cosine,
                                   "rel_mse": measured.rel_mse, "stored_cosine": stored.cosine, "passed": passed})
            })
            .collect();
        serde_json::json!({"passed": self.passed(), "floor": self.floor, "layers": layers})
    }
}

/// Re-reads the source checkpoint and the model file and measures every tensor again. A quantized layer passes
/// when its measured cosine reaches the stored quality floor and agrees with the stored figure; a kept or raw
/// tensor passes when it matches its source. Tensors are read row by row (a chunked tensor chunk row by chunk
/// row) and each row window by window, with the source pages dropped once compared, so memory stays near one
/// chunk row whatever the tensor size. A GGUF file (by its magic) is validated by `gguf_tools::validate_gguf`.
pub fn validate_model(original: &Path, quantized: &Path) -> Result<Validation> {
    if crate::gguf::is_gguf(quantized) {
        return super::gguf_tools::validate_gguf(original, quantized);
    }
    let checkpoint = Checkpoint::open(original)?;
    let model = ModelFile::open(quantized)?;
    let floor = model
        .metadata
        .get(CONFIG_KEY)
        .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
        .and_then(|c| c.get("quality_floor").and_then(|f| f.as_f64()))
        .unwrap_or(0.0);
    let sources: HashMap<&str, _> = checkpoint
        .tensors()
        .map(|(f, t)| (t.name.as_str(), (f, t)))
        .collect();
    let mut layers = Vec::new();
    let (mut restored, mut source) = (Vec::new(), Vec::new());
    for (i, name) in model.names.iter().enumerate() {
        let &(file, entry) = sources.get(name.as_str()).ok_or_else(|| {
            QuantError::format(
                quantized,
                format!(
                    "tensor '{name}' is not in the source checkpoint {}",
                    original.display()
                ),
            )
        })?;
        let values = float_values(file, entry);
        let bytes = file.bytes(entry);
        let size = entry.dtype.size();
        let mut sums = QualitySums::default();
        let mut raw_same: Option<bool> = None;
        let stored = model.for_each_row(i, |row, first| {
            let n: usize = row.shape.iter().product();
            if first + n > entry.len() {
                return Err(QuantError::format(
                    quantized,
                    format!(
                        "tensor '{name}' has more elements than its source {:?}",
                        entry.shape
                    ),
                ));
            }
            if let RowEncoding::Plain {
                encoding: "raw", ..
            } = row.encoding
            {
                let same = bytes.get(first * size..first * size + row.data.len()) == Some(row.data);
                raw_same = Some(raw_same.unwrap_or(true) && same);
            } else {
                let values = values.as_ref().ok_or_else(|| {
                    QuantError::format(
                        quantized,
                        format!("tensor '{name}' is not a float tensor in the source"),
                    )
                })?;
                let window = row.window_elements();
                restored.resize(window.min(n), 0.0);
                source.resize(window.min(n), 0.0);
                for start in (0..n).step_by(window) {
                    let len = window.min(n - start);
                    row.dequantize_window(start, &mut restored[..len])?;
                    values.data().copy_to_f32(first + start, &mut source[..len]);
                    sums.add_pairs(&source[..len], &restored[..len]);
                }
            }
            // Drop the source pages again so validating a large model stays near one chunk of memory.
            file.release_range(entry, first * size..(first + n) * size);
            Ok(())
        })?;
        file.release(entry);
        if stored.shape != entry.shape {
            return Err(QuantError::format(
                quantized,
                format!(
                    "tensor '{name}' is stored as {:?} but its source is {:?}",
                    stored.shape, entry.shape
                ),
            ));
        }
        let (measured, passed) = match raw_same {
            Some(same) => (
                Quality {
                    cosine: if same { 1.0 } else { 0.0 },
                    rel_mse: if same { 0.0 } else { 1.0 },
                },
                same,
            ),
            None => {
                let q = sums.quality();
                let ok = if stored.encoding.starts_with("int") {
                    q.cosine >= floor && (q.cosine - stored.quality.cosine).abs() < 1e-6
                } else {
                    q.cosine >= PLAIN_FLOOR
                };
                (q, ok)
            }
        };
        layers.push((
            name.clone(),
            stored.encoding,
            measured,
            stored.quality,
            passed,
        ));
    }
    Ok(Validation { layers, floor })
}

/// Element type of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportDtype {
    /// float16
    F16,
    /// bfloat16
    BF16,
    /// float32
    F32,
    /// float64
    F64,
}

impl ExportDtype {
    /// Parses `f16`, `bf16`, `f32` or `f64` (also `float16`, `bfloat16`, `float32`, `float64`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            "f32" | "float32" => Ok(Self::F32),
            "f64" | "float64" => Ok(Self::F64),
            other => Err(QuantError::config(
                "dtype",
                format!("{other:?}"),
                "\"f16\", \"bf16\", \"f32\" or \"f64\" (unset: each tensor's source dtype)",
            )),
        }
    }

    /// The dtype a row recorded as its source (`f32`, `f16`, `bf16`, `f64`; anything else reads as f32).
    pub(super) fn of_source(dtype: &str) -> Self {
        match dtype {
            "f16" => Self::F16,
            "bf16" => Self::BF16,
            "f64" => Self::F64,
            _ => Self::F32,
        }
    }

    pub(super) fn header_name(self) -> &'static str {
        match self {
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::F32 => "F32",
            Self::F64 => "F64",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::F32 => "f32",
            Self::F64 => "f64",
        }
    }

    pub(super) fn size(self) -> usize {
        match self {
            Self::F64 => 8,
            Self::F32 => 4,
            _ => 2,
        }
    }

    /// Appends the values as little-endian bytes of this dtype to `out` (cleared first; `first` is the flat
    /// index of `values[0]` in the tensor, for messages); a finite value that becomes infinite is an error
    /// naming the tensor and the element.
    pub(super) fn encode_into(
        self,
        tensor: &str,
        values: &[f32],
        first: usize,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let overflow = |i: usize| {
            QuantError::schema(
                tensor,
                format!(
                    "value {} at element {} overflows {} (becomes inf); export with a wider dtype \
                     (f32), or leave the dtype unset to keep each tensor's source dtype",
                    values[i],
                    first + i,
                    self.name()
                ),
            )
        };
        let check = |inf: &dyn Fn(f32) -> bool| match values
            .iter()
            .position(|&v| v.is_finite() && inf(v))
        {
            Some(i) => Err(overflow(i)),
            None => Ok(()),
        };
        out.clear();
        match self {
            Self::F64 => out.extend(values.iter().flat_map(|&v| f64::from(v).to_le_bytes())),
            Self::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
            Self::F16 => {
                check(&|v| f16::from_f32(v).is_infinite())?;
                out.extend(values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()));
            }
            Self::BF16 => {
                check(&|v| bf16::from_f32(v).is_infinite())?;
                out.extend(values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()));
            }
        }
        Ok(())
    }
}

/// Writes a dequantized `.safetensors` of a model file: float tensors as `dtype` (`None`: each tensor's source
/// dtype, as the file records it), raw tensors unchanged. A value that overflows an explicit narrower dtype is
/// an error naming the tensor; the output must not be the model file and appears only when the export succeeds.
pub fn export_safetensors(
    quantized: &Path,
    output: &Path,
    dtype: Option<ExportDtype>,
) -> Result<()> {
    if crate::gguf::is_gguf(quantized) {
        return super::gguf_tools::export_gguf(quantized, output, dtype);
    }
    let model = ModelFile::open(quantized)?;
    check_export_extension(output)?;
    check_output(output, &[("the model file", quantized)])?;
    let file = AtomicFile::create(output)?;
    // First pass over the rows for the header: names, whole shapes and sizes (a row at a time).
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    let mut plan = Vec::with_capacity(model.names.len());
    for i in 0..model.names.len() {
        let mut raw_bytes = 0usize;
        let stored = model.for_each_row(i, |row, _| {
            raw_bytes += row.data.len();
            Ok(())
        })?;
        let (name, bytes, as_dtype) = if stored.encoding == "raw" {
            (stored.dtype.to_uppercase(), raw_bytes, None)
        } else {
            let d = dtype.unwrap_or_else(|| ExportDtype::of_source(&stored.dtype));
            (
                d.header_name().to_string(),
                stored.shape.iter().product::<usize>() * d.size(),
                Some(d),
            )
        };
        header.insert(
            stored.name.clone(),
            serde_json::json!({"dtype": name, "shape": stored.shape, "data_offsets": [offset, offset + bytes]}),
        );
        plan.push((bytes, as_dtype));
        offset += bytes;
    }
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "source": quantized.display().to_string()}),
    );
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = BufWriter::with_capacity(1 << 20, file.handle()?);
    let io = |e: std::io::Error| QuantError::io(output, &e);
    out.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&text).map_err(io)?;
    // Second pass: each row window by window through two reused buffers.
    let (mut values, mut encoded) = (Vec::new(), Vec::new());
    for (i, &(planned, as_dtype)) in plan.iter().enumerate() {
        let mut written = 0usize;
        model.for_each_row(i, |row, first| {
            let Some(as_dtype) = as_dtype else {
                written += row.data.len();
                return out.write_all(row.data).map_err(io);
            };
            let n: usize = row.shape.iter().product();
            let window = row.window_elements();
            values.resize(window.min(n), 0.0);
            for start in (0..n).step_by(window) {
                let len = window.min(n - start);
                row.dequantize_window(start, &mut values[..len])?;
                as_dtype.encode_into(row.name, &values[..len], first + start, &mut encoded)?;
                written += encoded.len();
                out.write_all(&encoded).map_err(io)?;
            }
            Ok(())
        })?;
        if written != planned {
            return Err(QuantError::format(
                quantized,
                format!(
                    "tensor '{}' changed between the two passes ({written} bytes, {planned} planned)",
                    model.names[i]
                ),
            ));
        }
    }
    out.flush().map_err(io)?;
    drop(out);
    file.commit()
}
