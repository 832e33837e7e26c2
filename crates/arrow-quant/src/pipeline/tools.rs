//! Working with a finished model file: validate it against its source checkpoint, export it back to
//! `.safetensors` (dequantized), both one tensor at a time.

use super::atomic_file::AtomicFile;
use super::entry::{values_f32, PLAIN_FLOOR};
use super::model_file::{ModelFile, CONFIG_KEY};
use super::output_path::{check_export_extension, check_output};
use crate::arrow::output::RowEncoding;
use crate::arrow::result::read_results;
use crate::checkpoint::Checkpoint;
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
/// tensor passes when it matches its source.
pub fn validate_model(original: &Path, quantized: &Path) -> Result<Validation> {
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
    for (i, name) in model.names.iter().enumerate() {
        let batch = model.read(i)?;
        let rows = read_results(std::slice::from_ref(&batch))?;
        let row = rows
            .first()
            .ok_or_else(|| QuantError::format(quantized, format!("tensor '{name}' has no row")))?;
        let (file, entry) = sources.get(name.as_str()).ok_or_else(|| {
            QuantError::format(
                quantized,
                format!(
                    "tensor '{name}' is not in the source checkpoint {}",
                    original.display()
                ),
            )
        })?;
        let (measured, passed) = match row.encoding {
            RowEncoding::Plain {
                encoding: "raw", ..
            } => {
                let same = row.data == file.bytes(entry);
                (
                    Quality {
                        cosine: if same { 1.0 } else { 0.0 },
                        rel_mse: if same { 0.0 } else { 1.0 },
                    },
                    same,
                )
            }
            encoding => {
                let source = values_f32(file, entry).ok_or_else(|| {
                    QuantError::format(
                        quantized,
                        format!("tensor '{name}' is not a float tensor in the source"),
                    )
                })?;
                let mut restored = vec![0f32; source.len()];
                row.dequantize_into(&mut restored)?;
                let q = QualitySums::of(&source, &restored).quality();
                let ok = match encoding {
                    RowEncoding::Quantized { .. } => {
                        q.cosine >= floor && (q.cosine - row.quality.cosine).abs() < 1e-6
                    }
                    RowEncoding::Plain { .. } => q.cosine >= PLAIN_FLOOR,
                };
                (q, ok)
            }
        };
        // Drop the source pages again so validating a large model stays near one tensor of memory.
        file.release(entry);
        layers.push((
            name.clone(),
            row.encoding.name().to_string(),
            measured,
            row.quality,
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
    fn of_source(dtype: &str) -> Self {
        match dtype {
            "f16" => Self::F16,
            "bf16" => Self::BF16,
            "f64" => Self::F64,
            _ => Self::F32,
        }
    }

    fn header_name(self) -> &'static str {
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

    fn size(self) -> usize {
        match self {
            Self::F64 => 8,
            Self::F32 => 4,
            _ => 2,
        }
    }

    /// The values as little-endian bytes of this dtype; a finite value that becomes infinite is an error
    /// naming the tensor and the element.
    fn encode(self, tensor: &str, values: &[f32]) -> Result<Vec<u8>> {
        let overflow = |i: usize| {
            QuantError::schema(
                tensor,
                format!(
                    "value {} at element {i} overflows {} (becomes inf); export with a wider dtype \
                     (f32), or leave the dtype unset to keep each tensor's source dtype",
                    values[i],
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
        Ok(match self {
            Self::F64 => values
                .iter()
                .flat_map(|&v| f64::from(v).to_le_bytes())
                .collect(),
            Self::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Self::F16 => {
                check(&|v| f16::from_f32(v).is_infinite())?;
                values
                    .iter()
                    .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                    .collect()
            }
            Self::BF16 => {
                check(&|v| bf16::from_f32(v).is_infinite())?;
                values
                    .iter()
                    .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                    .collect()
            }
        })
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
    let model = ModelFile::open(quantized)?;
    check_export_extension(output)?;
    check_output(output, &[("the model file", quantized)])?;
    let file = AtomicFile::create(output)?;
    // First pass over the metadata only: names, shapes and sizes for the header.
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    let mut plan = Vec::with_capacity(model.names.len());
    for i in 0..model.names.len() {
        let batch = model.read(i)?;
        let rows = read_results(std::slice::from_ref(&batch))?;
        let row = rows
            .first()
            .ok_or_else(|| QuantError::format(quantized, format!("tensor {i} has no row")))?;
        let (name, bytes, as_dtype) = match row.encoding {
            RowEncoding::Plain {
                encoding: "raw", ..
            } => (row.dtype.to_uppercase(), row.data.len(), None),
            _ => {
                let d = dtype.unwrap_or_else(|| ExportDtype::of_source(row.dtype));
                (
                    d.header_name().to_string(),
                    row.shape.iter().product::<usize>() * d.size(),
                    Some(d),
                )
            }
        };
        header.insert(
            row.name.to_string(),
            serde_json::json!({"dtype": name, "shape": row.shape, "data_offsets": [offset, offset + bytes]}),
        );
        plan.push((bytes, as_dtype));
        offset += bytes;
    }
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "source": quantized.display().to_string()}),
    );
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = BufWriter::with_capacity(1 << 20, file.handle()?);
    let io = |e: std::io::Error| QuantError::io(output, &e);
    out.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&text).map_err(io)?;
    for (i, &(planned, as_dtype)) in plan.iter().enumerate() {
        let batch = model.read(i)?;
        let rows = read_results(std::slice::from_ref(&batch))?;
        let row = rows
            .first()
            .ok_or_else(|| QuantError::format(quantized, format!("tensor {i} has no row")))?;
        let Some(as_dtype) = as_dtype else {
            out.write_all(row.data).map_err(io)?;
            continue;
        };
        let mut values = vec![0f32; row.shape.iter().product()];
        row.dequantize_into(&mut values)?;
        let bytes = as_dtype.encode(row.name, &values)?;
        debug_assert_eq!(bytes.len(), planned);
        out.write_all(&bytes).map_err(io)?;
    }
    out.flush().map_err(io)?;
    drop(out);
    file.commit()
}
