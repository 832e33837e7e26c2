//! One tensor to and from a ggml type's blocks: ggml rows are the last axis of the tensor (its `ne0`), quantized
//! in parallel, each row's quality sums added up in row order (so the figures do not depend on the threads).

use crate::codec::driver::{QualitySums, CHUNK_ELEMENTS};
use crate::error::{QuantError, Result};
use crate::gguf::blocks::{block_codec, nearest_codec, unbiased_codec, weighted_codec, BlockCodec};
use crate::gguf::GgmlType;
use crate::importance::ChannelWeights;
use crate::simd::multiversion;
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

/// How a row's block parameters are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rounding {
    /// Our own parameter search, importance-weighted when weights are given.
    #[default]
    Searched,
    /// Round to nearest on scales from each block's extremes, no search, no importance: llama.cpp's reference
    /// rounding byte for byte at the block-32 types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1), the same rule at Q6_K
    /// (llama.cpp's Q6_K is a search); the other types have none.
    Nearest,
    /// A search that keeps the large weights from being clipped (Q2_K: the magnitude-weighted absolute error,
    /// llama.cpp's objective; Q3_K: the squared error weighted by magnitude plus the super-block's RMS; IQ4_NL,
    /// IQ4_XS: the squared error weighted by `x²`, llama.cpp's weighting), then each block's float16 scales
    /// rescaled to a gain of one (where the plain search's shrinkage attenuated the terrain UNet's convolutions:
    /// `gguf/blocks/k_quants/unbiased.rs`, `gguf/blocks/iq4_unbiased.rs`).
    Unbiased,
    /// Our search with each element's squared error weighted to keep the large weights from being clipped: Q4_K
    /// by `x²` plus its super-block's mean square, Q5_K by `|x|` plus its sub-block's RMS (llama.cpp's weighting;
    /// `gguf/blocks/k_quants/unbiased.rs`).
    Weighted,
}

impl Rounding {
    /// True when `ty` can be quantized this way.
    pub fn applies_to(self, ty: GgmlType) -> bool {
        self.codec(ty).is_some()
    }

    /// The codec that quantizes `ty` this way (every type has a searched one).
    fn codec(self, ty: GgmlType) -> Option<&'static dyn BlockCodec> {
        match self {
            Self::Searched => block_codec(ty),
            Self::Nearest => nearest_codec(ty),
            Self::Unbiased => unbiased_codec(ty),
            Self::Weighted => weighted_codec(ty),
        }
    }

    /// What the run report calls it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Searched => "searched",
            Self::Nearest => "round-to-nearest",
            Self::Unbiased => "gain-unbiased search",
            Self::Weighted => "magnitude-weighted search",
        }
    }

    /// The name of the method that asks for it (`quantize(..., method=...)`).
    pub fn method(self) -> &'static str {
        match self {
            Self::Searched => "auto",
            Self::Nearest => "rtn",
            Self::Unbiased | Self::Weighted => "plain",
        }
    }

    /// [`applies_to`](Self::applies_to) as a result: a configuration error naming the method and the type.
    pub fn check(self, ty: GgmlType) -> Result<()> {
        if self.applies_to(ty) {
            return Ok(());
        }
        let plain_types = match self {
            Self::Weighted => Some(("weighted", "Q4_K or Q5_K", "another search")),
            Self::Unbiased => Some(("unbiased", "Q2_K, Q3_K, IQ4_NL or IQ4_XS", "their search")),
            Self::Searched | Self::Nearest => None,
        };
        if let Some((what, types, other)) = plain_types {
            return Err(QuantError::config(
                "rounding",
                format!("{what} with {}", ty.name()),
                format!("{types} (the other types' plain rounding is round-to-nearest or {other})"),
            ));
        }
        Err(QuantError::config(
            "method",
            format!("\"rtn\" with {}", ty.name()),
            "\"auto\": only Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and Q6_K have round-to-nearest (the other types' \
             scales need a search)",
        ))
    }
}

/// Where the importance of each element of a ggml row comes from.
#[derive(Clone, Copy)]
pub(crate) enum RowWeights<'a> {
    /// Unit weights.
    None,
    /// One weight per element of a ggml row, the same for every row.
    Row(&'a [f32]),
    /// Weights repeating with period `weights.len()` over the flat elements of a larger tensor (its per-column
    /// importance of the 2-D view, all axes but the first), of which this one starts at flat index `offset`:
    /// element `i` weighs `weights[(offset + i) % weights.len()]`, so a tensor stored flattened (rows that cross
    /// the source's rows) still gets each element's own weight.
    Period {
        /// One weight per column of the source's 2-D view.
        weights: &'a [f32],
        /// Flat index of this tensor's first element in the source.
        offset: usize,
    },
}

impl<'a> RowWeights<'a> {
    /// The normalised weights of a [`ChannelWeights`] (none when unit) as a period.
    pub(crate) fn columns(weights: &'a ChannelWeights, view_cols: usize, offset: usize) -> Self {
        match weights.slice(0, view_cols) {
            Some(w) => Self::Period { weights: w, offset },
            None => Self::None,
        }
    }
}

/// Rows of one sum granule: each granule's quality sums are added row by row, then the granules' in order, so
/// that parts made of whole granules add up to a whole-tensor run's sums.
pub fn sum_granule_rows(cols: usize) -> usize {
    (CHUNK_ELEMENTS / cols.max(1)).max(1)
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
    let weights = importance.map_or(RowWeights::None, RowWeights::Row);
    quantize_rows_with(tensor, ty, weights, Rounding::Searched)
}

/// [`quantize_rows`] with the weights given as [`RowWeights`] and the [`Rounding`] (a type without
/// round-to-nearest is a configuration error; round-to-nearest ignores the weights).
pub(crate) fn quantize_rows_with(
    tensor: &TensorView<'_>,
    ty: GgmlType,
    weights: RowWeights<'_>,
    rounding: Rounding,
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
    rounding.check(ty)?;
    let codec = rounding
        .codec(ty)
        .ok_or_else(|| QuantError::config("GGUF tensor type", ty.name(), "a type with a codec"))?;
    let weights = if rounding == Rounding::Nearest {
        RowWeights::None
    } else {
        weights
    };
    let row_bytes = ty.row_bytes(cols).unwrap_or(0);
    let n = tensor.data.len();
    let rows = n.checked_div(cols).unwrap_or(0);
    let granule = sum_granule_rows(cols);
    let tolerant = codec.tolerates_non_finite();
    let mut out = vec![0u8; rows * row_bytes];
    let per_granule: Vec<std::result::Result<QualitySums, QuantError>> = out
        .par_chunks_mut((granule * row_bytes).max(1))
        .enumerate()
        .map_init(
            || (vec![0f32; cols], vec![0f32; cols], vec![0f32; cols]),
            |(buf, back, gathered), (g, blocks)| {
                let mut sums = QualitySums::default();
                for (k, row_blocks) in blocks.chunks_mut(row_bytes.max(1)).enumerate() {
                    let r = g * granule + k;
                    let start = r * cols;
                    let x: &[f32] = match tensor.data {
                        TensorData::F32(all) => &all[start..start + cols],
                        _ => {
                            tensor.data.copy_to_f32(start, buf);
                            buf
                        }
                    };
                    let non_finite = |x: &[f32]| {
                        let i = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
                        QuantError::NonFinite {
                            tensor: tensor.name.to_string(),
                            index: start + i,
                            value: x[i].to_string(),
                        }
                    };
                    if !tolerant && !all_finite(x) {
                        return Err(non_finite(x));
                    }
                    let importance = match weights {
                        RowWeights::None => None,
                        RowWeights::Row(w) => Some(w),
                        RowWeights::Period { weights: w, offset } => {
                            let p = w.len().max(1);
                            let at = (offset + start) % p;
                            if at + cols <= p {
                                Some(&w[at..at + cols])
                            } else {
                                for (j, v) in gathered.iter_mut().enumerate() {
                                    *v = w[(at + j) % p];
                                }
                                Some(&gathered[..])
                            }
                        }
                    };
                    let encoded = codec.quantize_row_with_sums(x, importance, row_blocks, back);
                    // Σx² of the sums is finite only when every element is (a NaN or infinity propagates into
                    // it), so a tolerant codec's row needs the scan only when it is not (or the row failed)
                    let needs_scan = !matches!(&encoded, Ok(s) if s.xx.is_finite());
                    if tolerant && needs_scan && !all_finite(x) {
                        return Err(non_finite(x));
                    }
                    sums.add(encoded.map_err(|e| QuantError::Range {
                        tensor: tensor.name.to_string(),
                        problem: format!(
                            "row {r}, block {}: a {} scale would not be finite; use a wider type or F32",
                            e.block,
                            ty.name()
                        ),
                    })?);
                }
                Ok(sums)
            },
        )
        .collect();
    let mut sums = QualitySums::default();
    for s in per_granule {
        sums.add(s?);
    }
    Ok((out, sums))
}

multiversion! {
    /// True when every element of `x` is finite (a vectorised scan; the caller finds the culprit if not).
    fn all_finite(x: &[f32]) -> bool {
        x.iter()
            .fold(0u32, |bad, v| bad | u32::from(v.to_bits() & 0x7f80_0000 == 0x7f80_0000))
            == 0
    }
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
    fn every_plain_rounding_writes_the_types_own_blocks_and_follows_importance() {
        let x: Vec<f32> = (0..4096)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * (1.0 + (i % 7) as f32 * 0.3))
            .collect();
        let t = TensorView::new("conv", &[8, 512], TensorData::F32(&x)).unwrap();
        let imp: Vec<f32> = (0..512).map(|i| 0.5 + (i % 3) as f32).collect();
        let mut seen = 0;
        for rounding in [Rounding::Nearest, Rounding::Unbiased, Rounding::Weighted] {
            for ty in crate::codec::ggml::BLOCK_TYPES {
                if !rounding.applies_to(ty) {
                    assert!(rounding.check(ty).is_err(), "{rounding:?} {ty:?}");
                    continue;
                }
                seen += 1;
                let (bytes, sums) = quantize_rows_with(&t, ty, RowWeights::None, rounding).unwrap();
                let (searched, s) = quantize_rows(&t, ty, None).unwrap();
                assert_eq!(bytes.len(), searched.len());
                assert_ne!(bytes, searched, "{rounding:?} {ty:?}");
                // the type's own decoder reads them, and the quality sums are the decoded blocks'
                let back = dequantize_rows(ty, &bytes, &[8, 512], "conv").unwrap();
                let ee: f64 = x
                    .iter()
                    .zip(&back)
                    .map(|(a, b)| f64::from(a - b).powi(2))
                    .sum();
                assert!(
                    (ee - sums.ee).abs() <= 1e-3 * ee,
                    "{rounding:?} {ty:?}: {ee} {}",
                    sums.ee
                );
                assert!(
                    sums.ee < 2.5 * s.ee,
                    "{rounding:?} {ty:?}: {} vs {}",
                    sums.ee,
                    s.ee
                );
                if rounding != Rounding::Nearest {
                    let w = RowWeights::Row(&imp);
                    let (weighted, _) = quantize_rows_with(&t, ty, w, rounding).unwrap();
                    assert_ne!(weighted, bytes, "{rounding:?} {ty:?} ignores importance");
                }
            }
        }
        assert_eq!(
            seen,
            6 + 4 + 2,
            "Nearest: Q8_0, 4 block-32 types, Q6_K; Unbiased 4; Weighted 2"
        );
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
