//! A GGUF file opened as a model (what `load_quantized` gives for a `.gguf`): its tensor names, each tensor
//! decoded to float32 in its logical shape, a quantized tensor's blocks as a [`QuantizedTensor`] of its ggml
//! type, and the metadata as strings.

use super::gguf_tools::{for_each_window, source_dtypes, tensor_codec};
use crate::codec::Encoding;
use crate::error::{QuantError, Result};
use crate::gguf::{GgufFile, MetaValue};
use crate::quantized::{Payload, Quality, QuantizedTensor};
use crate::tensor::SourceDtype;
use std::collections::HashMap;
use std::path::Path;

/// A GGUF file read lazily, tensor by tensor.
pub struct GgufModel {
    file: GgufFile,
    /// Tensor names in file order.
    pub names: Vec<String>,
}

impl GgufModel {
    /// Opens and checks the file (header, tensor infos, data inside the file).
    pub fn open(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let names = file.tensors().iter().map(|t| t.name.clone()).collect();
        Ok(Self { file, names })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Tensor `index` decoded to float32, with its logical shape (`comfy.gguf.orig_shape.<name>` when the file
    /// stores it reshaped).
    pub fn read(&self, index: usize) -> Result<(Vec<usize>, Vec<f32>)> {
        let shape = self.file.logical_shape(index);
        let mut values = Vec::with_capacity(shape.iter().product());
        let mut buffer = Vec::new();
        for_each_window(&self.file, index, &mut buffer, |window, _| {
            values.extend_from_slice(window);
            Ok(())
        })?;
        Ok((shape, values))
    }

    /// Tensor `index`'s blocks as a [`QuantizedTensor`] of [`Encoding::Ggml`] in its stored shape (ggml rows
    /// are its last axis), quality unknown (NaN); a schema error for a tensor stored as F32 / F16 / BF16.
    pub fn quantized(&self, index: usize) -> Result<QuantizedTensor> {
        let info = &self.file.tensors()[index];
        if info.ty.is_float() {
            return Err(QuantError::schema(
                &info.name,
                format!(
                    "it is stored as {}, not quantized: read its values with model[name]",
                    info.ty
                ),
            ));
        }
        tensor_codec(&self.file, index)?;
        let source_dtype = source_dtypes(&self.file)
            .map_or(SourceDtype::F32, |d| SourceDtype::from_name(&d[index]));
        Ok(QuantizedTensor {
            name: info.name.clone(),
            shape: info.shape.clone(),
            source_dtype,
            encoding: Encoding::Ggml(info.ty),
            method: None,
            data: self.file.tensor_bytes(index).to_vec(),
            payload: Payload::Blocks(Vec::new()),
            channel_scales: None,
            quality: Quality {
                cosine: f64::NAN,
                rel_mse: f64::NAN,
            },
        })
    }

    /// Every metadata key with its value: strings as they are, everything else as JSON.
    pub fn metadata(&self) -> HashMap<String, String> {
        self.file
            .metadata()
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    MetaValue::String(s) => s.clone(),
                    other => other.to_json().to_string(),
                };
                (k.clone(), text)
            })
            .collect()
    }
}
