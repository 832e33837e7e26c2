//! One tensor to and from a ggml type's blocks: ggml rows are the last axis of the tensor (its `ne0`), quantized
//! in parallel, each row's quality sums added up in row order (so the figures do not depend on the threads).

use crate::codec::driver::QualitySums;
use crate::error::{QuantError, Result};
use crate::gguf::blocks::block_codec;
use crate::gguf::GgmlType;
use crate::tensor::{TensorData, TensorView};
use rayon::prelude::*;

/// Elements of a ggml row of `shape`: its last axis (1 for a scalar).
pub fn ggml_row_len(shape: &[usize]) -> usize {
    shape.last().copied().unwrap_or(1)
}

/// Why `ty` cannot store a tensor of `shape`, or `None` when it can (rows a whole number of blocks).
pub fn unfit_reason(ty: GgmlType, shape: &[usize]) -> Option<String> {
    let cols = ggml_row_len(shape);
    (!ty.fits_row(cols)).then(|| {
        format!(
            "rows of {cols} elements (the last axis of {shape:?}) are not a whole number of {}'s {}-element blocks",
            ty.name(),
            ty.block_len()
        )
    })
}

/// Quantizes `tensor` to `ty`'s blocks, row by row along its last axis, weighting each row's search by
/// `importance` (one weight per element of a row) when given. Returns the blocks of all rows in order and the
/// quality sums of the reconstruction.
pub fn quantize_rows(
    tensor: &TensorView<'_>,
    ty: GgmlType,
    importance: Option<&[f32]>,
) -> Result<(Vec<u8>, QualitySums)> {
    let cols = ggml_row_len(tensor.shape);
    if let Some(reason) = unfit_reason(ty, tensor.shape) {
        return Err(QuantError::schema(
            tensor.name,
            format!(
                "cannot be {}: {reason}; choose a type whose block fits",
                ty.name()
            ),
        ));
    }
    if let Some(w) = importance {
        if w.len() != cols {
            return Err(QuantError::schema(
                tensor.name,
                format!(
                    "{} importance weights given for rows of {cols} elements; pass one per element of a row",
                    w.len()
                ),
            ));
        }
        if let Some(i) = w.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(QuantError::schema(
                tensor.name,
                format!(
                    "importance weight {i} is {}; weights must be finite and >= 0",
                    w[i]
                ),
            ));
        }
    }
    let codec = block_codec(ty)
        .ok_or_else(|| QuantError::config("GGUF tensor type", ty.name(), "a type with a codec"))?;
    let row_bytes = ty.row_bytes(cols).unwrap_or(0);
    let n = tensor.data.len();
    let rows = n.checked_div(cols).unwrap_or(0);
    let mut out = vec![0u8; rows * row_bytes];
    let per_row: Vec<std::result::Result<QualitySums, QuantError>> = out
        .par_chunks_mut(row_bytes.max(1))
        .enumerate()
        .map_init(
            || (vec![0f32; cols], vec![0f32; cols]),
            |(x, back), (r, blocks)| {
                let start = r * cols;
                match tensor.data {
                    TensorData::F32(all) => x.copy_from_slice(&all[start..start + cols]),
                    _ => tensor.data.copy_to_f32(start, x),
                }
                if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                    return Err(QuantError::NonFinite {
                        tensor: tensor.name.to_string(),
                        index: start + i,
                        value: x[i].to_string(),
                    });
                }
                codec
                    .quantize_row_sums(x, importance, blocks, back)
                    .map_err(|e| QuantError::Range {
                        tensor: tensor.name.to_string(),
                        problem: format!(
                            "row {r}, block {}: a {} scale would not be finite; use a wider type or F32",
                            e.block,
                            ty.name()
                        ),
                    })
            },
        )
        .collect();
    let mut sums = QualitySums::default();
    for s in per_row {
        sums.add(s?);
    }
    Ok((out, sums))
}

/// Decodes `blocks` of type `ty` holding a tensor of `shape` to f32, exactly as ggml's `to_float` does.
pub fn dequantize_rows(
    ty: GgmlType,
    blocks: &[u8],
    shape: &[usize],
    name: &str,
) -> Result<Vec<f32>> {
    let cols = ggml_row_len(shape);
    let n: usize = shape.iter().product();
    let rows = n.checked_div(cols).unwrap_or(0);
    let expected = ty.row_bytes(cols).map(|b| b * rows);
    if expected != Some(blocks.len()) {
        return Err(QuantError::corrupt(
            name,
            format!(
                "{} bytes of {} blocks for shape {shape:?}, which needs {}",
                blocks.len(),
                ty.name(),
                expected.map_or_else(
                    || unfit_reason(ty, shape).unwrap_or_default(),
                    |b| format!("{b} bytes")
                ),
            ),
        ));
    }
    let codec = block_codec(ty)
        .ok_or_else(|| QuantError::config("GGUF tensor type", ty.name(), "a type with a codec"))?;
    let row_bytes = ty.row_bytes(cols).unwrap_or(0);
    let mut out = vec![0f32; n];
    if row_bytes > 0 {
        out.par_chunks_mut(cols)
            .zip(blocks.par_chunks(row_bytes))
            .for_each(|(o, b)| codec.dequantize_row(b, o));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn f16_rows_round_trip_and_report_exact_quality() {
        let x: Vec<f16> = (0..96)
            .map(|i| f16::from_f32((i as f32 * 0.3).sin()))
            .collect();
        let t = TensorView::new("w", &[3, 32], TensorData::F16(&x)).unwrap();
        let (bytes, sums) = quantize_rows(&t, GgmlType::F16, None).unwrap();
        assert_eq!(bytes.len(), 96 * 2);
        assert_eq!(sums.ee, 0.0);
        let back = dequantize_rows(GgmlType::F16, &bytes, &[3, 32], "w").unwrap();
        assert!(back.iter().zip(&x).all(|(a, b)| *a == b.to_f32()));
    }

    #[test]
    fn errors_name_the_tensor_and_the_problem() {
        let x = vec![0.5f32; 64];
        let t = TensorView::new("blk.0", &[2, 32], TensorData::F32(&x)).unwrap();
        let e = quantize_rows(&t, GgmlType::F16, Some(&[1.0; 3])).unwrap_err();
        assert!(
            e.to_string().contains("blk.0") && e.to_string().contains("3 importance"),
            "{e}"
        );
        let mut bad = x.clone();
        bad[40] = f32::NAN;
        let t = TensorView::new("blk.1", &[2, 32], TensorData::F32(&bad)).unwrap();
        let e = quantize_rows(&t, GgmlType::F32, None).unwrap_err();
        assert!(matches!(e, QuantError::NonFinite { index: 40, .. }), "{e}");
        let e = dequantize_rows(GgmlType::F16, &[0; 10], &[2, 32], "blk.2").unwrap_err();
        assert!(
            e.to_string().contains("blk.2") && e.to_string().contains("128 bytes"),
            "{e}"
        );
        let t = TensorView::new("blk.3", &[2, 32], TensorData::F32(&x)).unwrap();
        let e = quantize_rows(&t, GgmlType::Q4_K, None).unwrap_err();
        assert!(e.to_string().contains("256-element blocks"), "{e}");
    }
}
