//! Quantization of one tensor: the config resolved for the tensor ([`crate::codec::Plan`]), then the
//! encoding's codec.

use crate::codec::driver::QualitySums;
use crate::codec::Plan;
use crate::config::QuantConfig;
use crate::error::Result;
use crate::importance::ChannelWeights;
use crate::quantized::QuantizedTensor;
use crate::tensor::TensorView;
use std::ops::Range;

/// Quantizes one tensor with `config` (`auto` layout and method resolved per tensor, see
/// [`crate::Encoding`]).
///
/// Errors: an invalid config ([`crate::QuantError::InvalidConfig`]), a NaN or infinite element
/// ([`crate::QuantError::NonFinite`], naming the tensor and the flat index), or a range the encoding cannot
/// represent ([`crate::QuantError::Range`]: a float16 scale would overflow; use float32 scales on the flat
/// layout). No encoding returns a non-finite reconstruction of finite input.
pub fn quantize_tensor(tensor: &TensorView<'_>, config: &QuantConfig) -> Result<QuantizedTensor> {
    quantize_tensor_with(tensor, config, None)
}

/// Quantizes one tensor with `config`, weighting the squared error of the parameter search by `importance`:
/// one non-negative value per column of the 2-D view (e.g. mean squared input activations), see
/// [`crate::importance`]. `rtn` ignores it.
pub fn quantize_tensor_with(
    tensor: &TensorView<'_>,
    config: &QuantConfig,
    importance: Option<&[f32]>,
) -> Result<QuantizedTensor> {
    let parts = Parts::new(tensor, config, importance)?;
    let (q, _) = parts.quantize(0..tensor.rows_cols().0)?;
    Ok(q)
}

/// Quantizes one tensor to the ggml block type `ty` (`Q4_K`, `IQ4_XS`, ...): the result's `data` is exactly that
/// type's blocks, row by row along the tensor's last axis, as a GGUF file stores them. `importance` (one value
/// per column of the 2-D view, like [`quantize_tensor_with`]) weights the parameter search; with
/// [`Rounding::Nearest`](crate::gguf::Rounding) they are round-to-nearest instead (Q8_0, Q4_0, Q4_1, Q5_0 and
/// Q5_1, llama.cpp's reference rounding; Q6_K; importance is then refused).
///
/// Errors: a float type (F32 / F16 / BF16 are not quantized), round-to-nearest of another type or with
/// importance ([`crate::QuantError::InvalidConfig`]), rows that are not a whole number of the type's
/// blocks ([`crate::QuantError::Schema`]), non-finite elements, a scale beyond float16
/// ([`crate::QuantError::Range`]).
pub fn quantize_ggml(
    tensor: &TensorView<'_>,
    ty: crate::gguf::GgmlType,
    importance: Option<&[f32]>,
    rounding: crate::gguf::Rounding,
) -> Result<QuantizedTensor> {
    use crate::gguf::Rounding;
    rounding.check(ty)?;
    if rounding != Rounding::Searched && importance.is_some() {
        return Err(crate::QuantError::config(
            "importance",
            format!("given with method {:?}", rounding.method()),
            "no importance: the plain roundings are for layers without calibration",
        ));
    }
    if crate::codec::Encoding::ggml(ty).is_none() {
        return Err(crate::QuantError::config(
            "encoding",
            ty.name(),
            "a ggml block type (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K ... Q6_K, IQ4_NL, IQ4_XS); F32 / F16 / BF16 \
             are not quantized",
        ));
    }
    let (rows, cols) = tensor.rows_cols();
    let weights = ChannelWeights::new(tensor.name, importance, cols)?;
    let (q, _) = crate::codec::ggml::quantize_part(tensor, ty, &weights, rounding, 0..rows)?;
    Ok(q)
}

/// One tensor quantized part by part: each part a run of whole rows of the 2-D view, quantized on its own to
/// exactly the codes, parameters and quality sums the whole tensor has in those rows (the streaming path of
/// large tensors, `pipeline::chunked`).
pub(crate) struct Parts<'t, 'a> {
    tensor: &'t TensorView<'a>,
    plan: Plan,
    weights: ChannelWeights,
}

impl<'t, 'a> Parts<'t, 'a> {
    /// Resolves `config` for `tensor` (see [`quantize_tensor_with`]).
    pub(crate) fn new(
        tensor: &'t TensorView<'a>,
        config: &QuantConfig,
        importance: Option<&[f32]>,
    ) -> Result<Self> {
        config.validate()?;
        let cols = tensor.rows_cols().1;
        let weights = ChannelWeights::new(tensor.name, importance, cols)?;
        let plan = Plan::for_tensor(config, cols);
        Ok(Self {
            tensor,
            plan,
            weights,
        })
    }

    /// Every part but the last is a multiple of this many rows.
    pub(crate) fn granule(&self) -> usize {
        self.plan
            .encoding
            .codec()
            .part_rows(self.tensor.shape, &self.plan)
            .max(1)
    }

    /// Rows `rows` as a tensor of their own, with the raw quality sums of those rows.
    pub(crate) fn quantize(&self, rows: Range<usize>) -> Result<(QuantizedTensor, QualitySums)> {
        self.plan
            .encoding
            .codec()
            .quantize(self.tensor, &self.plan, &self.weights, rows)
    }

    /// The quality sums of the whole tensor from the sums of all its parts.
    pub(crate) fn finish(&self, sums: QualitySums) -> QualitySums {
        self.plan.encoding.codec().finish_sums(sums)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BitWidth, FlatLayout, GroupSize, Layout, Method, ScaleDtype};
    use crate::quantized::Payload;
    use crate::tensor::TensorData;

    /// Quantizes `tensor` in parts of `rows_per_part` granules and joins the parts' buffers.
    fn in_parts(
        tensor: &TensorView<'_>,
        config: &QuantConfig,
        importance: Option<&[f32]>,
        granules_per_part: usize,
    ) -> (QuantizedTensor, usize) {
        let parts = Parts::new(tensor, config, importance).unwrap();
        join_parts(tensor, &parts, granules_per_part)
    }

    /// Quantizes `tensor` through `parts` in parts of `granules_per_part` granules and joins their buffers.
    fn join_parts(
        tensor: &TensorView<'_>,
        parts: &Parts<'_, '_>,
        granules_per_part: usize,
    ) -> (QuantizedTensor, usize) {
        let rows = tensor.rows_cols().0;
        let per = parts.granule() * granules_per_part;
        let mut sums = QualitySums::default();
        let mut joined: Option<QuantizedTensor> = None;
        let mut count = 0;
        for start in (0..rows).step_by(per) {
            let (q, s) = parts.quantize(start..(start + per).min(rows)).unwrap();
            sums.add(s);
            count += 1;
            joined = Some(match joined {
                None => q,
                Some(mut j) => {
                    j.shape[0] += q.shape[0];
                    j.data.extend_from_slice(&q.data);
                    match (&mut j.payload, q.payload) {
                        (Payload::Blocks(a), Payload::Blocks(b)) => a.extend_from_slice(&b),
                        (Payload::Flat(a), Payload::Flat(b)) => {
                            let join =
                                |x: &mut crate::quantized::ParamBuffer,
                                 y: crate::quantized::ParamBuffer| {
                                    match (x, y) {
                                        (
                                            crate::quantized::ParamBuffer::F16(x),
                                            crate::quantized::ParamBuffer::F16(y),
                                        ) => x.extend(y),
                                        (
                                            crate::quantized::ParamBuffer::F32(x),
                                            crate::quantized::ParamBuffer::F32(y),
                                        ) => x.extend(y),
                                        _ => panic!("scale types differ"),
                                    }
                                };
                            join(&mut a.scales, b.scales);
                            if let (Some(x), Some(y)) = (a.zero_points.as_mut(), b.zero_points) {
                                join(x, y);
                            }
                        }
                        _ => panic!("payloads differ"),
                    }
                    j
                }
            });
        }
        let mut q = joined.unwrap();
        q.quality = parts.finish(sums).quality();
        (q, count)
    }

    /// Chunk boundaries never change the result: for every encoding (flat int8 / int4 / int2 with rtn, mse and
    /// hqq, symmetric and asymmetric, float16 and float32 scales, per-channel groups; two-level int8_2l / int4_2l
    /// / int2_2l in both block layouts), with and without importance weights, a tensor quantized in parts of
    /// whole granules has exactly the whole tensor's codes, parameters and quality.
    #[test]
    fn parts_give_exactly_the_whole_tensor() {
        let shapes: [&[usize]; 4] = [&[2500, 96], &[3000, 3, 3, 3], &[96, 1000], &[2000, 40]];
        let mut configs = Vec::new();
        for bits in [BitWidth::Int8, BitWidth::Int4, BitWidth::Int2] {
            configs.push(QuantConfig {
                bits,
                layout: Layout::TwoLevel,
                ..QuantConfig::default()
            });
            for method in [Method::Rtn, Method::Mse, Method::Hqq] {
                for (group_size, symmetric, scale_dtype) in [
                    (GroupSize::Elements(32), false, ScaleDtype::F16),
                    (GroupSize::Elements(128), true, ScaleDtype::F32),
                    (GroupSize::PerChannel, false, ScaleDtype::F16),
                ] {
                    configs.push(QuantConfig {
                        bits,
                        layout: Layout::Flat(FlatLayout {
                            group_size,
                            symmetric,
                            scale_dtype,
                        }),
                        method,
                    });
                }
            }
        }
        let mut encodings = std::collections::HashSet::new();
        for shape in shapes {
            let n: usize = shape.iter().product();
            let cols = n / shape[0];
            let w: Vec<half::f16> = (0..n)
                .map(|i| half::f16::from_f32(((i as f32 * 0.618).sin() * 3.0).powi(3) * 0.01))
                .collect();
            let view = TensorView::new("t", shape, TensorData::F16(&w)).unwrap();
            let importance: Vec<f32> = (0..cols).map(|c| 0.5 + (c % 7) as f32).collect();
            for config in &configs {
                for imp in [None, Some(importance.as_slice())] {
                    let whole = quantize_tensor_with(&view, config, imp).unwrap();
                    encodings.insert(whole.encoding);
                    let (joined, count) = in_parts(&view, config, imp, 1);
                    assert!(count > 1, "{shape:?} {config:?}: one part only");
                    assert_eq!(
                        joined,
                        whole,
                        "{shape:?} {config:?} importance {}",
                        imp.is_some()
                    );
                }
            }
        }
        // The ggml block types, on the shapes whose rows (last axis) fit their blocks.
        for &ty in &crate::codec::ggml::BLOCK_TYPES {
            for shape in [[600usize, 256], [40, 32 * 40]] {
                if !ty.fits_row(shape[1]) {
                    continue;
                }
                let n = shape[0] * shape[1];
                let w: Vec<f32> = (0..n)
                    .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                    .collect();
                let view = TensorView::new("g", &shape, TensorData::F32(&w)).unwrap();
                let importance: Vec<f32> = (0..shape[1]).map(|c| 0.5 + (c % 7) as f32).collect();
                for imp in [None, Some(importance.as_slice())] {
                    let whole =
                        quantize_ggml(&view, ty, imp, crate::gguf::Rounding::Searched).unwrap();
                    encodings.insert(whole.encoding);
                    let parts = Parts {
                        tensor: &view,
                        plan: Plan {
                            encoding: whole.encoding,
                            flat: FlatLayout::default(),
                            method: Method::Auto,
                        },
                        weights: ChannelWeights::new("g", imp, shape[1]).unwrap(),
                    };
                    let (joined, count) = join_parts(&view, &parts, 1);
                    assert!(count > 1, "{ty}: one part only");
                    assert_eq!(joined, whole, "{ty} {shape:?}");
                }
            }
        }
        assert_eq!(
            encodings.len(),
            crate::codec::TABLE.len(),
            "every encoding is covered"
        );
    }

    /// A NaN in a later part is reported at its index in the whole tensor, as a whole-tensor run reports it.
    #[test]
    fn a_non_finite_element_is_named_by_its_index_in_the_whole_tensor() {
        let shape = [4096usize, 64];
        let mut w = vec![0.25f32; 4096 * 64];
        w[3000 * 64 + 5] = f32::NAN;
        let view = TensorView::new("t", &shape, TensorData::F32(&w)).unwrap();
        let config = QuantConfig::default();
        let whole = quantize_tensor(&view, &config).unwrap_err().to_string();
        let parts = Parts::new(&view, &config, None).unwrap();
        let g = parts.granule();
        let start = 3000 / g * g;
        let part = parts.quantize(start..4096).unwrap_err().to_string();
        assert_eq!(part, whole);
        assert!(
            whole.contains(&format!("element {}", 3000 * 64 + 5)),
            "{whole}"
        );
    }
}
