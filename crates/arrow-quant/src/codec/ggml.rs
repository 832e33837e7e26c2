//! The ggml block types as encodings (`Q8_0`, `Q4_K`, `IQ4_XS`, ...): a tensor's `data` is llama.cpp's blocks of
//! every ggml row (the last axis of the tensor) in order, exactly the bytes of a GGUF tensor; `params` is empty.
//! Quantizing and decoding go through the block codecs of `crate::gguf`.

use super::driver::{QualitySums, CHUNK_ELEMENTS};
use super::{part_shape, Codec, Encoding, Plan};
use crate::config::{BitWidth, Method};
use crate::error::{QuantError, Result};
use crate::gguf::{ggml_row_len, quantize_rows_with, GgmlType, Rounding, RowWeights};
use crate::importance::ChannelWeights;
use crate::quantized::{Payload, PayloadRef, QuantizedTensor, QuantizedView};
use crate::tensor::TensorView;
use std::ops::Range;

/// The ggml block types that are encodings, in [`GgmlType`]'s order (the float types are not).
pub(crate) const BLOCK_TYPES: [GgmlType; 12] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

/// The codec of each of [`BLOCK_TYPES`].
pub(crate) static CODECS: [GgmlCodec; 12] = [
    GgmlCodec::new(BLOCK_TYPES[0]),
    GgmlCodec::new(BLOCK_TYPES[1]),
    GgmlCodec::new(BLOCK_TYPES[2]),
    GgmlCodec::new(BLOCK_TYPES[3]),
    GgmlCodec::new(BLOCK_TYPES[4]),
    GgmlCodec::new(BLOCK_TYPES[5]),
    GgmlCodec::new(BLOCK_TYPES[6]),
    GgmlCodec::new(BLOCK_TYPES[7]),
    GgmlCodec::new(BLOCK_TYPES[8]),
    GgmlCodec::new(BLOCK_TYPES[9]),
    GgmlCodec::new(BLOCK_TYPES[10]),
    GgmlCodec::new(BLOCK_TYPES[11]),
];

/// Position of `ty` in [`BLOCK_TYPES`].
pub(crate) fn index(ty: GgmlType) -> Option<usize> {
    BLOCK_TYPES.iter().position(|t| *t == ty)
}

/// The width a ggml type counts as in the fallback ladder and the planner: the nearest of 2 / 4 / 8 bits at or
/// above its codes.
pub(crate) const fn nominal_width(ty: GgmlType) -> BitWidth {
    match ty.code_bits() {
        0..=2 => BitWidth::Int2,
        3..=4 => BitWidth::Int4,
        _ => BitWidth::Int8,
    }
}

/// The codec of one ggml block type.
pub(crate) struct GgmlCodec {
    pub(crate) ty: GgmlType,
}

impl GgmlCodec {
    const fn new(ty: GgmlType) -> Self {
        Self { ty }
    }
}

/// The ggml rows of one dequantization chunk of a tensor whose rows have `cols` elements (at least one row, about
/// [`CHUNK_ELEMENTS`] elements).
pub(crate) fn rows_per_chunk(cols: usize) -> usize {
    (CHUNK_ELEMENTS / cols.max(1)).max(1)
}

/// Rows `rows` of the 2-D view of `tensor` as `ty`'s blocks with `rounding`: one part of a tensor (see
/// [`Codec::quantize`]).
pub(crate) fn quantize_part(
    tensor: &TensorView<'_>,
    ty: GgmlType,
    weights: &ChannelWeights,
    rounding: Rounding,
    rows: Range<usize>,
) -> Result<(QuantizedTensor, QualitySums)> {
    let (_, view_cols) = tensor.rows_cols();
    let elements = rows.start * view_cols..rows.end * view_cols;
    let offset = elements.start;
    let shape = part_shape(tensor.shape, rows.len());
    let part = TensorView {
        name: tensor.name,
        shape: &shape,
        data: tensor.data.slice(elements),
    };
    let weights = RowWeights::columns(weights, view_cols, offset);
    let (data, sums) = quantize_rows_with(&part, ty, weights, rounding)?;
    let q = QuantizedTensor {
        name: tensor.name.to_string(),
        shape,
        source_dtype: tensor.data.dtype(),
        encoding: Encoding::Ggml(ty),
        method: (rounding == Rounding::Nearest).then_some(Method::Rtn),
        data,
        payload: Payload::Blocks(Vec::new()),
        channel_scales: None,
        quality: sums.quality(),
    };
    Ok((q, sums))
}

impl Codec for GgmlCodec {
    fn fits(&self, cols: usize) -> bool {
        self.ty.fits_row(cols)
    }

    fn quantize(
        &self,
        tensor: &TensorView<'_>,
        plan: &Plan,
        weights: &ChannelWeights,
        rows: Range<usize>,
    ) -> Result<(QuantizedTensor, QualitySums)> {
        // `rtn` is round-to-nearest (llama.cpp's reference rounding at the block-32 types); every other method
        // our search
        let rounding = if plan.method == Method::Rtn {
            Rounding::Nearest
        } else {
            Rounding::Searched
        };
        quantize_part(tensor, self.ty, weights, rounding, rows)
    }

    fn part_rows(&self, shape: &[usize], _plan: &Plan) -> usize {
        // Rows of the 2-D view that hold a whole number of sum granules of ggml rows (see gguf::rows).
        let cols = ggml_row_len(shape).max(1);
        let view_cols: usize = shape.iter().skip(1).product::<usize>().max(1);
        let granule_elems = crate::gguf::sum_granule_rows(cols) * cols;
        super::rows_of_whole_chunks(granule_elems, view_cols)
    }

    fn validate(&self, view: &QuantizedView<'_>) -> Result<()> {
        let PayloadRef::Blocks(params) = view.payload else {
            return Err(QuantError::corrupt(
                view.name,
                format!(
                    "{} keeps its parameters inside its blocks (data), not per-group scales",
                    self.ty
                ),
            ));
        };
        if !params.is_empty() {
            return Err(QuantError::corrupt(
                view.name,
                format!(
                    "{} has {} bytes of params; its parameters are inside the blocks",
                    self.ty,
                    params.len()
                ),
            ));
        }
        let cols = ggml_row_len(view.shape);
        let Some(row_bytes) = self.ty.row_bytes(cols) else {
            return Err(QuantError::corrupt(
                view.name,
                format!(
                    "shape {:?} has rows of {cols} elements, not a whole number of {}'s {}-element blocks",
                    view.shape,
                    self.ty,
                    self.ty.block_len()
                ),
            ));
        };
        let want = view.len().checked_div(cols).unwrap_or(0) * row_bytes;
        if view.data.len() != want {
            return Err(QuantError::corrupt(
                view.name,
                format!(
                    "data has {} bytes but shape {:?} in {} needs {want}",
                    view.data.len(),
                    view.shape,
                    self.ty
                ),
            ));
        }
        Ok(())
    }

    fn chunk_elements(&self, view: &QuantizedView<'_>) -> usize {
        let cols = ggml_row_len(view.shape).max(1);
        rows_per_chunk(cols) * cols
    }

    fn dequantize_chunk(
        &self,
        view: &QuantizedView<'_>,
        index: usize,
        _codes: &mut Vec<u8>,
        out: &mut [f32],
    ) {
        let cols = ggml_row_len(view.shape).max(1);
        let Some(row_bytes) = self.ty.row_bytes(cols) else {
            return;
        };
        let first = index * rows_per_chunk(cols);
        let rows = out.len() / cols;
        let blocks = &view.data[first * row_bytes..(first + rows) * row_bytes];
        if let Some(codec) = crate::gguf::blocks::block_codec(self.ty) {
            for (o, b) in out.chunks_mut(cols).zip(blocks.chunks(row_bytes)) {
                codec.dequantize_row(b, o);
            }
        }
    }
}
