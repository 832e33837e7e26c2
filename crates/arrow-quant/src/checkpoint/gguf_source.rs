//! A GGUF file as a checkpoint (an F16 / BF16 / F32 GGUF from llama.cpp's converter or ComfyUI-GGUF's): its
//! float tensors are read in place through the same [`SafetensorsFile`] view as a safetensors shard, in file
//! order, under their logical shape (`comfy.gguf.orig_shape.<name>` when the file has it), and its metadata is
//! kept for a GGUF output to copy. A tensor of a quantized ggml type is refused by name: it would have to be
//! dequantized first (`arrow-quant export model.gguf model.safetensors`).

use super::safetensors::{Dtype, SafetensorsFile, TensorEntry};
use crate::error::{QuantError, Result};
use crate::gguf::{GgmlType, GgufFile, MetaValue};
use std::path::Path;

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
    let data_start = file.data_offset();
    let mut tensors = Vec::with_capacity(file.tensors().len());
    for (i, info) in file.tensors().iter().enumerate() {
        let dtype = float_dtype(info.ty).ok_or_else(|| {
            QuantError::format(
                path,
                format!(
                    "tensor '{}' is {}: a quantized GGUF is not read as a source; dequantize it first \
                     (`arrow-quant export {} model.safetensors`) or start from the F16 / BF16 / F32 GGUF",
                    info.name,
                    info.ty,
                    path.display()
                ),
            )
        })?;
        // The reader sized every tensor from its stored shape and type, and a logical shape has as many
        // elements, so the bytes hold exactly `shape` of `dtype`.
        let shape = file.logical_shape(i);
        debug_assert_eq!(shape.iter().product::<usize>() * dtype.size(), info.nbytes);
        let begin = info.offset - data_start;
        let end = begin + info.nbytes;
        tensors.push(TensorEntry {
            name: info.name.clone(),
            dtype,
            shape,
            begin,
            end,
        });
    }
    let metadata = file.metadata().to_vec();
    let map = file.into_map();
    Ok((
        SafetensorsFile::from_parts(path, map, data_start, tensors),
        metadata,
    ))
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
    fn a_quantized_tensor_is_refused_by_name_and_type() {
        let dir = scratch("quantized");
        let path = dir.join("model-Q8_0.gguf");
        write(
            &path,
            vec![],
            &[
                ("a.weight", vec![2, 32], GgmlType::F16, ramp(64, 0.5)),
                ("b.weight", vec![2, 32], GgmlType::Q8_0, ramp(64, 0.5)),
            ],
        );
        let e = Checkpoint::open(&path).err().expect("refused").to_string();
        assert!(
            e.contains("model-Q8_0.gguf")
                && e.contains("'b.weight' is Q8_0")
                && e.contains("export"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
