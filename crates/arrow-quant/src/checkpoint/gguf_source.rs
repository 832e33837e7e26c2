//! A GGUF file as a checkpoint (an F16 / BF16 / F32 GGUF from llama.cpp's converter or ComfyUI-GGUF's, or a
//! quantized one): read through the same [`SafetensorsFile`] view as a safetensors shard, in file order, under
//! the tensors' logical shapes (`comfy.gguf.orig_shape.<name>` when the file has it), with its metadata kept for a
//! GGUF output to copy.
//!
//! A float GGUF is read in place. A GGUF with quantized tensors (Q8_0 ... IQ4_XS) is dequantized once, on open,
//! through our codecs (`gguf::dequantize_rows`, bit-exact with ggml's): its quantized tensors as F32, its float
//! ones as they are, into an unnamed temporary file in the system's temporary folder (`TMPDIR`), which is then
//! read in place like any other. It takes 4 bytes per quantized weight of disk there, one tensor of memory at a
//! time, and disappears with the checkpoint (or the process).

use super::safetensors::{Dtype, SafetensorsFile, TensorEntry};
use crate::error::{QuantError, Result};
use crate::gguf::{dequantize_rows, GgmlType, GgufFile, MetaValue};
use crate::pipeline::atomic_file::unnamed_file_in;
use memmap2::Mmap;
use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Alignment of each tensor in the dequantized file (any dtype's values can be viewed in place).
const DEQUANTIZED_ALIGNMENT: usize = 32;

/// The dtype a float ggml type is read as, if it is one.
fn float_dtype(ty: GgmlType) -> Option<Dtype> {
    match ty {
        GgmlType::F32 => Some(Dtype::F32),
        GgmlType::F16 => Some(Dtype::F16),
        GgmlType::BF16 => Some(Dtype::BF16),
        _ => None,
    }
}

/// Opens the GGUF file at `path` (validated by [`GgufFile::open`]) as one checkpoint file, with its metadata.
pub(super) fn open_gguf(path: &Path) -> Result<(SafetensorsFile, Vec<(String, MetaValue)>)> {
    let file = GgufFile::open(path)?;
    let metadata = file.metadata().to_vec();
    let float_dtypes: Option<Vec<Dtype>> =
        file.tensors().iter().map(|t| float_dtype(t.ty)).collect();
    let Some(float_dtypes) = float_dtypes else {
        let (map, tensors) = dequantized(path, &file)?;
        return Ok((SafetensorsFile::from_parts(path, map, 0, tensors), metadata));
    };
    let data_start = file.data_offset();
    let mut tensors = Vec::with_capacity(file.tensors().len());
    for (i, (info, dtype)) in file.tensors().iter().zip(float_dtypes).enumerate() {
        // The reader sized every tensor from its stored shape and type, and a logical shape has as many
        // elements, so the bytes hold exactly `shape` of `dtype`.
        let shape = file.logical_shape(i);
        debug_assert_eq!(shape.iter().product::<usize>() * dtype.size(), info.nbytes);
        let begin = info.offset - data_start;
        tensors.push(TensorEntry {
            name: info.name.clone(),
            dtype,
            shape,
            begin,
            end: begin + info.nbytes,
        });
    }
    let map = file.into_map();
    Ok((
        SafetensorsFile::from_parts(path, map, data_start, tensors),
        metadata,
    ))
}

/// An unnamed read-write file in the system's temporary folder, gone once closed.
fn anonymous_temp_file() -> std::io::Result<File> {
    let dir = std::env::temp_dir();
    if let Some(f) = unnamed_file_in(&dir) {
        return Ok(f);
    }
    let name = dir.join(format!(".arrow-quant-dequantized.{}", std::process::id()));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&name)?;
    std::fs::remove_file(&name)?;
    Ok(f)
}

/// The tensors of `file` in order, quantized ones dequantized to F32, written to an anonymous temporary file and
/// mapped; each entry's range is inside the map.
fn dequantized(path: &Path, file: &GgufFile) -> Result<(Mmap, Vec<TensorEntry>)> {
    let temp_dir = std::env::temp_dir();
    let io = |e: std::io::Error| {
        QuantError::io(
            &temp_dir,
            &std::io::Error::new(
                e.kind(),
                format!(
                    "dequantizing {} into a temporary file: {e} (set TMPDIR to a folder with room for 4 bytes per \
                     weight)",
                    path.display()
                ),
            ),
        )
    };
    let out = anonymous_temp_file().map_err(io)?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, &out);
    let mut tensors = Vec::with_capacity(file.tensors().len());
    let mut offset = 0usize;
    for (i, info) in file.tensors().iter().enumerate() {
        let (dtype, bytes): (Dtype, Cow<[u8]>) = match float_dtype(info.ty) {
            Some(dtype) => (dtype, Cow::Borrowed(file.tensor_bytes(i))),
            None => {
                let values =
                    dequantize_rows(info.ty, file.tensor_bytes(i), &info.shape, &info.name)?;
                (
                    Dtype::F32,
                    Cow::Owned(bytemuck::cast_slice::<f32, u8>(&values).to_vec()),
                )
            }
        };
        writer.write_all(&bytes).map_err(io)?;
        let end = offset + bytes.len();
        let padded = end.div_ceil(DEQUANTIZED_ALIGNMENT) * DEQUANTIZED_ALIGNMENT;
        writer
            .write_all(&[0u8; DEQUANTIZED_ALIGNMENT][..padded - end])
            .map_err(io)?;
        tensors.push(TensorEntry {
            name: info.name.clone(),
            dtype,
            shape: file.logical_shape(i),
            begin: offset,
            end,
        });
        offset = padded;
    }
    writer.flush().map_err(io)?;
    drop(writer);
    if offset == 0 {
        // an empty map cannot be made; a file of zero-sized tensors only still needs a view
        out.set_len(DEQUANTIZED_ALIGNMENT as u64).map_err(io)?;
    }
    // SAFETY: the file is ours alone (unnamed, or unlinked at once) and is not written after this point.
    let map = unsafe { Mmap::map(&out) }.map_err(io)?;
    Ok((map, tensors))
}

#[cfg(test)]
mod tests {
    use crate::checkpoint::{float_values, Checkpoint, Dtype, TensorValues};
    use crate::gguf::{quantize_rows, GgmlType, GgufTensorSpec, GgufWriter, MetaArray, MetaValue};
    use crate::{TensorData, TensorView};
    use std::path::{Path, PathBuf};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("aq-gguf-src-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes `tensors` (name, shape, type, values) with `metadata` through our writer.
    fn write(
        path: &Path,
        metadata: Vec<(String, MetaValue)>,
        tensors: &[(&str, Vec<usize>, GgmlType, Vec<f32>)],
    ) {
        let specs = tensors
            .iter()
            .map(|(n, s, t, _)| GgufTensorSpec::new(*n, s, *t))
            .collect();
        let mut w = GgufWriter::create(path, metadata, vec![], specs).unwrap();
        for (name, shape, ty, values) in tensors {
            let view = TensorView::new(name, shape, TensorData::F32(values)).unwrap();
            let (blocks, _) = quantize_rows(&view, *ty, None).unwrap();
            w.write_tensor_data(&blocks).unwrap();
        }
        w.finish(vec![]).unwrap();
    }

    fn ramp(n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 - n as f32 / 2.0) * scale)
            .collect()
    }

    fn as_f32(v: &TensorValues<'_>) -> Vec<f32> {
        match v {
            TensorValues::F32(x) => x.to_vec(),
            TensorValues::F16(x) => x.iter().map(|h| h.to_f32()).collect(),
            TensorValues::BF16(x) => x.iter().map(|h| h.to_f32()).collect(),
        }
    }

    #[test]
    fn a_float_gguf_is_a_checkpoint_in_file_order_with_its_metadata() {
        let dir = scratch("float");
        let path = dir.join("model-F16.gguf");
        let metadata = vec![
            ("general.architecture".to_string(), MetaValue::from("llama")),
            ("llama.block_count".to_string(), MetaValue::U32(1)),
            (
                "tokenizer.ggml.tokens".to_string(),
                MetaValue::Array(MetaArray::String(vec!["<s>".into(), "a".into()])),
            ),
        ];
        // Values every float type holds exactly, in an order that is not alphabetical.
        let tensors = [
            (
                "token_embd.weight",
                vec![8, 256],
                GgmlType::F16,
                ramp(2048, 0.25),
            ),
            (
                "blk.0.attn_norm.weight",
                vec![256],
                GgmlType::F32,
                ramp(256, 0.1),
            ),
            (
                "blk.0.attn_q.weight",
                vec![4, 256],
                GgmlType::BF16,
                (0..1024).map(|i| (i % 64) as f32 - 32.0).collect(),
            ),
        ];
        write(&path, metadata.clone(), &tensors);
        let c = Checkpoint::open(&path).unwrap();
        let got: Vec<_> = c
            .tensors()
            .map(|(_, t)| (t.name.as_str(), t.shape.clone(), t.dtype))
            .collect();
        assert_eq!(
            got,
            [
                ("token_embd.weight", vec![8, 256], Dtype::F16),
                ("blk.0.attn_norm.weight", vec![256], Dtype::F32),
                ("blk.0.attn_q.weight", vec![4, 256], Dtype::BF16),
            ]
        );
        for ((file, entry), (_, _, _, values)) in c.tensors().zip(&tensors) {
            assert_eq!(
                &as_f32(&float_values(file, entry).unwrap()),
                values,
                "{}",
                entry.name
            );
        }
        // The caller's keys, then the writer's general.alignment.
        let kept = c.gguf_metadata.as_ref().unwrap();
        assert_eq!(&kept[..3], &metadata[..]);
        assert_eq!(c.data_bytes(), 2048 * 2 + 256 * 4 + 1024 * 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_flattened_tensor_has_its_own_shape() {
        let dir = scratch("flat");
        let path = dir.join("conv.gguf");
        let metadata = vec![(
            "comfy.gguf.orig_shape.conv.weight".to_string(),
            MetaValue::Array(MetaArray::I32(vec![8, 4, 3, 3])),
        )];
        write(
            &path,
            metadata,
            &[("conv.weight", vec![9, 32], GgmlType::F16, ramp(288, 0.5))],
        );
        let c = Checkpoint::open(&path).unwrap();
        assert_eq!(c.tensors().next().unwrap().1.shape, [8, 4, 3, 3]);
        // a key whose shape does not hold the tensor's elements (here: more than 2^64) is not its shape
        let huge = dir.join("huge.gguf");
        let metadata = vec![(
            "comfy.gguf.orig_shape.conv.weight".to_string(),
            MetaValue::Array(MetaArray::I32(vec![1 << 16; 4])),
        )];
        write(
            &huge,
            metadata,
            &[("conv.weight", vec![9, 32], GgmlType::F16, ramp(288, 0.5))],
        );
        let c = Checkpoint::open(&huge).unwrap();
        assert_eq!(c.tensors().next().unwrap().1.shape, [9, 32]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_quantized_gguf_is_dequantized_through_the_codecs_in_file_order() {
        let dir = scratch("quantized");
        let path = dir.join("model-Q4_K_M.gguf");
        let tensors = [
            ("a.weight", vec![2, 32], GgmlType::F16, ramp(64, 0.5)),
            ("b.weight", vec![2, 32], GgmlType::Q8_0, ramp(64, 0.01)),
            ("c.weight", vec![3, 256], GgmlType::Q4_K, ramp(768, 0.003)),
            ("norm.weight", vec![5], GgmlType::F32, ramp(5, 1.0)),
            ("d.weight", vec![1, 32], GgmlType::IQ4_NL, ramp(32, 0.1)),
        ];
        write(&path, vec![], &tensors);
        let gguf = crate::gguf::GgufFile::open(&path).unwrap();
        let c = Checkpoint::open(&path).unwrap();
        let got: Vec<_> = c.tensors().collect();
        assert_eq!(got.len(), tensors.len());
        for (i, ((file, entry), (name, shape, ty, values))) in got.iter().zip(&tensors).enumerate()
        {
            assert_eq!((entry.name.as_str(), &entry.shape), (*name, shape));
            let back = as_f32(&float_values(file, entry).unwrap());
            if ty.is_float() {
                assert_eq!(
                    entry.dtype,
                    if *ty == GgmlType::F16 {
                        Dtype::F16
                    } else {
                        Dtype::F32
                    }
                );
                assert_eq!(&back, values, "{name}");
            } else {
                // F32, and exactly what the blocks decode to
                assert_eq!(entry.dtype, Dtype::F32);
                let want =
                    crate::gguf::dequantize_rows(*ty, gguf.tensor_bytes(i), shape, name).unwrap();
                assert_eq!(back, want, "{name}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
