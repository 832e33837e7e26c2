//! One tensor of a GGUF run to its ggml blocks: the chosen type, or the next wider one while the quality floor is
//! missed or a scale would not be finite, part by part (whole ggml rows, a bounded amount of source each) so that
//! a tensor of any size needs a bounded amount of memory.

use super::chunked::part_bytes;
use super::policy;
use crate::codec::driver::QualitySums;
use crate::error::{QuantError, Result};
use crate::gguf::fallback::wider_type as wider_range;
use crate::gguf::{ggml_row_len, quantize_rows_with, GgmlType, Rounding, RowWeights};
use crate::quantized::Quality;
use crate::tensor::TensorView;
use std::ops::Range;

/// The next wider type to try after `ty` misses the quality floor, for rows of `cols` elements (its block must fit
/// them), or `None` past F32. The ladder keeps a family where it can (K-quants up the K-quants, block-32 types up
/// the block-32 types), then Q8_0, F16 and F32. (A value out of a type's range goes to
/// `gguf::fallback::wider_type` instead: BF16, then F32.)
pub(crate) fn wider_type(ty: GgmlType, cols: usize) -> Option<GgmlType> {
    use GgmlType::*;
    let mut next = ty;
    loop {
        next = match next {
            Q2_K => Q3_K,
            Q3_K => Q4_K,
            Q4_K | IQ4_XS => Q5_K,
            Q5_K => Q6_K,
            Q4_0 | IQ4_NL => Q5_0,
            Q4_1 => Q5_1,
            Q5_0 | Q5_1 | Q6_K => Q8_0,
            Q8_0 => F16,
            F16 | BF16 => F32,
            F32 => return None,
        };
        if next.fits_row(cols) {
            return Some(next);
        }
    }
}

/// Where a tensor's bytes go: its type first, then its blocks in order.
pub(crate) trait TensorSink {
    /// The type the bytes that follow are in.
    fn begin(&mut self, ty: GgmlType) -> Result<()>;
    /// The next bytes of the tensor.
    fn write(&mut self, bytes: &[u8]) -> Result<()>;
}

impl TensorSink for crate::gguf::GgufWriter {
    fn begin(&mut self, ty: GgmlType) -> Result<()> {
        self.begin_tensor(ty)
    }
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_tensor_data(bytes)
    }
}

/// How a tensor was stored.
pub(crate) struct Encoded {
    /// The type written.
    pub ty: GgmlType,
    /// Its quality.
    pub quality: Quality,
    /// Why a wider type than the chosen one was written, if one was.
    pub fallback: Option<String>,
    /// How its blocks were rounded.
    pub rounding: Rounding,
}

/// The ranges of whole ggml rows (of `cols` elements, `elem_bytes` each in the source) that make the parts of a
/// tensor of `n` elements.
fn parts(n: usize, cols: usize, elem_bytes: usize) -> Vec<Range<usize>> {
    let rows = n.checked_div(cols).unwrap_or(0);
    let per = (part_bytes() / (cols.max(1) * elem_bytes)).max(1);
    (0..rows)
        .step_by(per)
        .map(|r| r..(r + per).min(rows))
        .collect()
}

/// Rows `rows` of `tensor` (ggml rows, along its last axis) as a tensor of their own.
fn rows_view<'a>(
    tensor: &TensorView<'a>,
    shape: &'a [usize],
    rows: &Range<usize>,
) -> TensorView<'a> {
    let cols = ggml_row_len(tensor.shape);
    TensorView {
        name: tensor.name,
        shape,
        data: tensor.data.slice(rows.start * cols..rows.end * cols),
    }
}

/// Quantizes `tensor` to `first` (or wider, see [`wider_type`]) and hands its bytes to `sink` in order: first
/// the type, then the blocks part by part. `weights` weight each element's error; `plain` is the layer policy's
/// plain rounding (round-to-nearest at the types [`policy::gguf_rounding`] gives it to).
/// Below `floor` (cosine) the next wider type is tried, or with `fail_fast` the run stops with a quality error.
/// A tensor of one part is quantized once; a larger one is measured part by part first and written in a second
/// pass, so that memory stays bounded.
pub(crate) fn encode_tensor(
    tensor: &TensorView<'_>,
    first: GgmlType,
    weights: RowWeights<'_>,
    plain: bool,
    floor: f64,
    fail_fast: bool,
    sink: &mut dyn TensorSink,
) -> Result<Encoded> {
    let cols = ggml_row_len(tensor.shape);
    let ranges = parts(tensor.data.len(), cols, tensor.data.dtype().size());
    let part_shapes: Vec<Vec<usize>> = ranges
        .iter()
        .map(|r| {
            // ggml rows of a tensor of several axes: the part is [rows, cols]; a 1-D tensor is one row.
            if tensor.shape.len() < 2 {
                tensor.shape.to_vec()
            } else {
                vec![r.len(), cols]
            }
        })
        .collect();
    let mut ty = first;
    let mut fallback: Option<String> = None;
    loop {
        let rounding = policy::gguf_rounding(plain, ty);
        let attempt = measure(tensor, ty, weights, rounding, &ranges, &part_shapes);
        let why = match attempt {
            Ok((sums, single)) => {
                let quality = sums.quality();
                if quality.cosine >= floor || ty == GgmlType::F32 {
                    sink.begin(ty)?;
                    match single {
                        Some(bytes) => sink.write(&bytes)?,
                        None => {
                            for (r, shape) in ranges.iter().zip(&part_shapes) {
                                let part = rows_view(tensor, shape, r);
                                let w = part_weights(weights, r.start * cols);
                                let (bytes, _) = quantize_rows_with(&part, ty, w, rounding)?;
                                sink.write(&bytes)?;
                            }
                        }
                    }
                    return Ok(Encoded {
                        ty,
                        quality,
                        fallback,
                        rounding,
                    });
                }
                if fail_fast {
                    return Err(QuantError::Quality {
                        tensor: tensor.name.to_string(),
                        problem: format!(
                            "{} reaches cosine {:.6}, below the floor {floor}; lower the floor, choose a \
                             wider type, or drop --fail-fast to fall back to one",
                            ty.name(),
                            quality.cosine
                        ),
                    });
                }
                format!(
                    "{} cosine {:.4} below the floor {floor}",
                    ty.name(),
                    quality.cosine
                )
            }
            Err(QuantError::Range { problem, .. }) => {
                let why = format!("{}: {problem}", ty.name());
                let Some(next) = wider_range(ty) else {
                    return Err(QuantError::Range {
                        tensor: tensor.name.to_string(),
                        problem: why,
                    });
                };
                fallback = Some(match fallback {
                    None => format!("{why}; wrote {}", next.name()),
                    Some(f) => format!("{f}; {why}; wrote {}", next.name()),
                });
                ty = next;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(next) = wider_type(ty, cols) else {
            return Err(QuantError::Range {
                tensor: tensor.name.to_string(),
                problem: why,
            });
        };
        fallback = Some(match fallback {
            None => format!("{why}; wrote {}", next.name()),
            Some(f) => format!("{f}; {why}; wrote {}", next.name()),
        });
        ty = next;
    }
}

/// `weights` for a part of the tensor that starts at flat element `start`.
fn part_weights(weights: RowWeights<'_>, start: usize) -> RowWeights<'_> {
    match weights {
        RowWeights::Period { weights, offset } => RowWeights::Period {
            weights,
            offset: offset + start,
        },
        w => w,
    }
}

/// The quality sums of `tensor` at `ty` over its parts, and its bytes when it is one part.
fn measure(
    tensor: &TensorView<'_>,
    ty: GgmlType,
    weights: RowWeights<'_>,
    rounding: Rounding,
    ranges: &[Range<usize>],
    shapes: &[Vec<usize>],
) -> Result<(QualitySums, Option<Vec<u8>>)> {
    if ranges.len() <= 1 {
        let (bytes, sums) = quantize_rows_with(tensor, ty, weights, rounding)?;
        return Ok((sums, Some(bytes)));
    }
    let cols = ggml_row_len(tensor.shape);
    let mut sums = QualitySums::default();
    for (r, shape) in ranges.iter().zip(shapes) {
        let part = rows_view(tensor, shape, r);
        let (_, s) =
            quantize_rows_with(&part, ty, part_weights(weights, r.start * cols), rounding)?;
        sums.add(s);
    }
    Ok((sums, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorData;

    #[test]
    fn the_ladder_skips_types_whose_block_does_not_fit() {
        assert_eq!(wider_type(GgmlType::Q2_K, 256), Some(GgmlType::Q3_K));
        assert_eq!(wider_type(GgmlType::Q6_K, 256), Some(GgmlType::Q8_0));
        // rows of 320: no K-quant fits, Q8_0 does
        assert_eq!(wider_type(GgmlType::Q4_K, 320), Some(GgmlType::Q8_0));
        assert_eq!(wider_type(GgmlType::Q8_0, 3), Some(GgmlType::F16));
        assert_eq!(wider_type(GgmlType::F32, 3), None);
    }

    #[test]
    fn float16_overflow_falls_back_to_bf16_and_says_why() {
        let x = vec![1.0f32, 2.0e5, 3.0, 4.0];
        let t = TensorView::new("big", &[2, 2], TensorData::F32(&x)).unwrap();
        #[derive(Default)]
        struct Collect(Vec<GgmlType>, Vec<u8>);
        impl TensorSink for Collect {
            fn begin(&mut self, ty: GgmlType) -> Result<()> {
                self.0.push(ty);
                Ok(())
            }
            fn write(&mut self, bytes: &[u8]) -> Result<()> {
                self.1.extend_from_slice(bytes);
                Ok(())
            }
        }
        let mut sink = Collect::default();
        let e = encode_tensor(
            &t,
            GgmlType::F16,
            RowWeights::None,
            false,
            0.9,
            false,
            &mut sink,
        )
        .unwrap();
        assert_eq!((e.ty, sink.0), (GgmlType::BF16, vec![GgmlType::BF16]));
        assert_eq!(sink.1.len(), 8);
        assert!(e.fallback.unwrap().contains("F16"));
    }
}
