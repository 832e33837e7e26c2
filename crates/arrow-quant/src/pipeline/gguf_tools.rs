//! A GGUF file read back: each tensor's logical shape (its `comfy.gguf.orig_shape.<name>` key when the file
//! stores it reshaped), its values decoded window by window, and on top of that `validate` against the source
//! checkpoint and `export` to `.safetensors`, memory bounded by one window whatever the tensor size.

use super::atomic_file::AtomicFile;
use super::entry::PLAIN_FLOOR;
use super::gguf_run::{GGUF_CONFIG_KEY, GGUF_COSINE_KEY, GGUF_REL_MSE_KEY, GGUF_SOURCE_DTYPES_KEY};
use super::output_path::{check_export_extension, check_output};
use super::tools::{ExportDtype, Validation};
use crate::checkpoint::{float_values, Checkpoint};
use crate::codec::driver::{QualitySums, CHUNK_ELEMENTS};
use crate::error::{QuantError, Result};
use crate::gguf::blocks::{block_codec, BlockCodec};
use crate::gguf::{GgufFile, MetaArray, MetaValue};
use crate::quantized::Quality;
use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::Path;

/// An f32 array of our metadata (one value per tensor), if the file has it with the right length.
fn per_tensor_f32<'a>(file: &'a GgufFile, key: &str) -> Option<&'a [f32]> {
    match file.get(key) {
        Some(MetaValue::Array(MetaArray::F32(v))) if v.len() == file.tensors().len() => Some(v),
        _ => None,
    }
}

/// The codec of tensor `index`'s type, or an error naming the tensor when this build cannot decode it.
pub(super) fn tensor_codec(file: &GgufFile, index: usize) -> Result<&'static dyn BlockCodec> {
    let info = &file.tensors()[index];
    block_codec(info.ty).ok_or_else(|| {
        QuantError::format(
            file.path(),
            format!(
                "tensor '{}' is {}, which this build cannot decode",
                info.name, info.ty
            ),
        )
    })
}

/// The source dtype names the run recorded (`arrow_quant.source_dtypes`), if the file has one per tensor.
pub(super) fn source_dtypes(file: &GgufFile) -> Option<&[String]> {
    match file.get(GGUF_SOURCE_DTYPES_KEY) {
        Some(MetaValue::Array(MetaArray::String(v))) if v.len() == file.tensors().len() => Some(v),
        _ => None,
    }
}

/// Decodes tensor `index` window by window (whole ggml rows, about [`CHUNK_ELEMENTS`] elements each), handing
/// each window and the flat index of its first element to `each`.
pub fn for_each_window(
    file: &GgufFile,
    index: usize,
    buffer: &mut Vec<f32>,
    mut each: impl FnMut(&[f32], usize) -> Result<()>,
) -> Result<()> {
    let info = &file.tensors()[index];
    let codec = tensor_codec(file, index)?;
    let cols = info.shape.last().copied().unwrap_or(1).max(1);
    let row_bytes = info.ty.row_bytes(cols).unwrap_or(0);
    let rows_per_window = (CHUNK_ELEMENTS / cols).max(1);
    let bytes = file.tensor_bytes(index);
    for (w, window) in bytes.chunks(rows_per_window * row_bytes.max(1)).enumerate() {
        let rows = window.len() / row_bytes.max(1);
        buffer.resize(rows * cols, 0.0);
        for (o, b) in buffer.chunks_mut(cols).zip(window.chunks(row_bytes.max(1))) {
            codec.dequantize_row(b, o);
        }
        each(buffer, w * rows_per_window * cols)?;
    }
    Ok(())
}

/// [`super::validate_model`] of a GGUF file: every tensor decoded and measured against its source; a quantized
/// tensor passes when its cosine reaches the run's floor (`arrow_quant.config`) and agrees with the stored figure
/// (`arrow_quant.cosine`), a float one when it reaches the plain-copy floor.
pub fn validate_gguf(original: &Path, path: &Path) -> Result<Validation> {
    let checkpoint = Checkpoint::open(original)?;
    let file = GgufFile::open(path)?;
    let floor = match file.get(GGUF_CONFIG_KEY) {
        Some(MetaValue::String(c)) => serde_json::from_str::<serde_json::Value>(c)
            .ok()
            .and_then(|c| c.get("quality_floor").and_then(|f| f.as_f64()))
            .unwrap_or(0.0),
        _ => 0.0,
    };
    let stored_cos = per_tensor_f32(&file, GGUF_COSINE_KEY);
    let stored_mse = per_tensor_f32(&file, GGUF_REL_MSE_KEY);
    let sources: HashMap<&str, _> = checkpoint
        .tensors()
        .map(|(f, t)| (t.name.as_str(), (f, t)))
        .collect();
    let mut layers = Vec::new();
    let (mut buffer, mut source) = (Vec::new(), Vec::new());
    for (i, info) in file.tensors().iter().enumerate() {
        let &(src, entry) = sources.get(info.name.as_str()).ok_or_else(|| {
            QuantError::format(
                path,
                format!(
                    "tensor '{}' is not in the source checkpoint {}",
                    info.name,
                    original.display()
                ),
            )
        })?;
        let shape = file.logical_shape(i);
        if shape != entry.shape {
            return Err(QuantError::format(
                path,
                format!(
                    "tensor '{}' is stored as {shape:?} but its source is {:?}",
                    info.name, entry.shape
                ),
            ));
        }
        let values = float_values(src, entry).ok_or_else(|| {
            QuantError::format(
                path,
                format!("tensor '{}' is not a float tensor in the source", info.name),
            )
        })?;
        let mut sums = QualitySums::default();
        for_each_window(&file, i, &mut buffer, |window, first| {
            source.resize(window.len(), 0.0);
            values.data().copy_to_f32(first, &mut source);
            sums.add_pairs(&source, window);
            Ok(())
        })?;
        src.release(entry);
        let measured = sums.quality();
        let stored = Quality {
            cosine: stored_cos.map_or(f64::NAN, |c| f64::from(c[i])),
            rel_mse: stored_mse.map_or(f64::NAN, |m| f64::from(m[i])),
        };
        let passed = if info.ty.is_float() {
            measured.cosine >= PLAIN_FLOOR
        } else {
            measured.cosine >= floor && (measured.cosine - stored.cosine).abs() < 1e-6
        };
        layers.push((
            info.name.clone(),
            info.ty.name().to_string(),
            measured,
            stored,
            passed,
        ));
    }
    Ok(Validation { layers, floor })
}

/// [`super::export_safetensors`] of a GGUF file: every tensor decoded to `dtype` (`None`: the source dtype the
/// run recorded in `arrow_quant.source_dtypes`, else float32 for a quantized tensor and the stored float type for
/// a float one), in its logical shape.
pub fn export_gguf(path: &Path, output: &Path, dtype: Option<ExportDtype>) -> Result<()> {
    let file = GgufFile::open(path)?;
    check_export_extension(output)?;
    check_output(output, &[("the GGUF file", path)])?;
    let source_dtypes = source_dtypes(&file);
    let out_file = AtomicFile::create(output)?;
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    let mut plan = Vec::new();
    for (i, info) in file.tensors().iter().enumerate() {
        let d = dtype.unwrap_or_else(|| match source_dtypes.map(|s| s[i].as_str()) {
            Some(s) => ExportDtype::of_source(s),
            None => match info.ty {
                crate::gguf::GgmlType::F16 => ExportDtype::F16,
                crate::gguf::GgmlType::BF16 => ExportDtype::BF16,
                _ => ExportDtype::F32,
            },
        });
        let shape = file.logical_shape(i);
        let bytes = shape.iter().product::<usize>() * d.size();
        header.insert(
            info.name.clone(),
            serde_json::json!({"dtype": d.header_name(), "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        plan.push(d);
        offset += bytes;
    }
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "source": path.display().to_string()}),
    );
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = BufWriter::with_capacity(1 << 20, out_file.handle()?);
    let io = |e: std::io::Error| QuantError::io(output, &e);
    out.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&text).map_err(io)?;
    let (mut buffer, mut encoded) = (Vec::new(), Vec::new());
    for (i, d) in plan.iter().enumerate() {
        let name = &file.tensors()[i].name;
        for_each_window(&file, i, &mut buffer, |window, first| {
            d.encode_into(name, window, first, &mut encoded)?;
            out.write_all(&encoded).map_err(io)
        })?;
    }
    out.flush().map_err(io)?;
    drop(out);
    out_file.commit()
}
