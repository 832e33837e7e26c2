//! The shape a tensor is stored under in a GGUF file, and the metadata that gives its own shape back when the two
//! differ.
//!
//! Shapes here are in the source's (row-major, PyTorch) order; a GGUF tensor info lists them reversed (`ne0` is
//! the last axis, the ggml row). Two layouts exist:
//! - native: the tensor's own shape, with any number of dimensions. 5-D video kernels (Wan's
//!   `patch_embedding.weight`, HunyuanVideo's `img_in.proj.weight`) are stored so, as ComfyUI-GGUF's
//!   `tools/fix_5d_tensors.py` adds them (F32, a 5-dimension tensor info, no extra key). Its loader reads any
//!   number of dimensions (`reversed(tensor.shape)`), as do gguf-py and diffusers; stable-diffusion.cpp's own GGUF
//!   reader folds dimensions past the fourth into the fourth (`ne3 *= ne4`), its layout for Conv3d kernels. Only
//!   ggml's `gguf_init_from_file` (llama.cpp's tools) refuses more than 4 dimensions.
//! - flattened (ComfyUI's "shape fix", `tools/convert.py`): `[n / row, row]`, so that a type's blocks fit rows the
//!   tensor's last axis cannot give (a 3x3 convolution's rows are 3 elements), with the own shape in the
//!   metadata key `comfy.gguf.orig_shape.<name>` (an ARRAY of INT32, source order), which ComfyUI-GGUF's loader
//!   (`get_orig_shape`) and arrow-quant read. stable-diffusion.cpp and diffusers do not read that key.

use crate::error::{QuantError, Result};

/// Prefix of the metadata key that holds a flattened tensor's own shape (ComfyUI-GGUF's `comfy.gguf.orig_shape.`).
pub const ORIG_SHAPE_KEY_PREFIX: &str = "comfy.gguf.orig_shape.";

/// The metadata key holding the own shape of the flattened tensor `name`.
pub fn orig_shape_key(name: &str) -> String {
    format!("{ORIG_SHAPE_KEY_PREFIX}{name}")
}

/// How a tensor is laid out in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredShape {
    /// The shape written in the tensor info (source order; the writer reverses it).
    pub shape: Vec<usize>,
    /// The tensor's own shape when `shape` is a flattened form of it, written under [`orig_shape_key`].
    pub orig_shape: Option<Vec<usize>>,
}

impl StoredShape {
    /// The tensor's own shape, nothing extra.
    pub fn native(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            orig_shape: None,
        }
    }

    /// `[n / row, row]` with the own shape kept, or `None` when the `n` elements are not a whole number of rows.
    pub fn flattened(shape: &[usize], row: usize) -> Option<Self> {
        let n: usize = shape.iter().product();
        (row > 0 && n.is_multiple_of(row)).then(|| Self {
            shape: vec![n / row, row],
            orig_shape: Some(shape.to_vec()),
        })
    }

    /// Elements of a ggml row: the last stored axis.
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// The extra metadata entry of tensor `name`: key and INT32 array (the form ComfyUI-GGUF's loader checks), or
    /// `None` for a native layout. A dimension beyond `i32::MAX` is an error naming the tensor.
    pub fn metadata(&self, name: &str) -> Result<Option<(String, Vec<i32>)>> {
        let Some(orig) = &self.orig_shape else {
            return Ok(None);
        };
        let dims = orig
            .iter()
            .map(|&d| i32::try_from(d))
            .collect::<std::result::Result<Vec<i32>, _>>()
            .map_err(|_| {
                QuantError::schema(
                    name,
                    format!(
                        "shape {orig:?} has a dimension beyond {} that {ORIG_SHAPE_KEY_PREFIX}* (INT32) cannot \
                         hold; store it in its own shape (a type whose block fits its rows, or F16)",
                        i32::MAX
                    ),
                )
            })?;
        Ok(Some((orig_shape_key(name), dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_and_flattened_layouts() {
        let video = StoredShape::native(&[5120, 16, 1, 2, 2]);
        assert_eq!(video.shape, [5120, 16, 1, 2, 2]);
        assert_eq!(video.row_len(), 2);
        assert_eq!(video.metadata("patch_embedding.weight").unwrap(), None);
        let conv = StoredShape::flattened(&[320, 320, 3, 3], 256).unwrap();
        assert_eq!(conv.shape, [3600, 256]);
        assert_eq!(conv.row_len(), 256);
        let (key, dims) = conv
            .metadata("input_blocks.1.0.in_layers.2.weight")
            .unwrap()
            .unwrap();
        assert_eq!(
            key,
            "comfy.gguf.orig_shape.input_blocks.1.0.in_layers.2.weight"
        );
        assert_eq!(dims, [320, 320, 3, 3]);
        assert_eq!(StoredShape::flattened(&[3, 100], 256), None);
        assert_eq!(StoredShape::flattened(&[3, 100], 0), None);
    }

    #[test]
    fn a_dimension_int32_cannot_hold_is_an_error_naming_the_tensor() {
        let huge = StoredShape::flattened(&[1 << 31, 2], 256).unwrap();
        let e = huge.metadata("emb.weight").unwrap_err().to_string();
        assert!(e.contains("emb.weight") && e.contains("INT32"), "{e}");
    }
}
