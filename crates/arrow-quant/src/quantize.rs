//! Quantization of one tensor: parallel over chunks of rows, one pass per group, packed output.

use crate::config::{BitWidth, Method, QuantConfig};
use crate::error::{QuantError, Result};
use crate::group::{self, GroupRule, GroupSums};
use crate::importance::ChannelWeights;
use crate::layout::GroupLayout;
use crate::packing::pack_codes;
use crate::quantized::{ParamBuffer, Quality, QuantizedTensor};
use crate::simd::multiversion;
use crate::tensor::{TensorData, TensorView};
use rayon::prelude::*;

/// Per-thread buffers reused across chunks.
#[derive(Default)]
struct Scratch {
    codes: Vec<u8>,
    converted: Vec<f32>,
}

/// What went wrong inside a chunk, with chunk-local positions.
enum ChunkFailure {
    NonFinite { index: usize, value: f32 },
    ScaleOverflow { group: usize },
}

type ChunkResult = std::result::Result<[f64; 4], ChunkFailure>;

multiversion! {
    /// Quantizes the rows of one chunk: scales and zero points per group, codes packed into `packed`.
    fn quantize_chunk(
        x: &[f32],
        rule: GroupRule,
        codes: &mut [u8],
        packed: &mut [u8],
        scales: &mut [f32],
        zeros: &mut [f32],
        cols: ColumnOf<'_>,
    ) -> ChunkResult {
        let layout = cols.layout;
        let direct = rule.bits == BitWidth::Int8;
        let mut total = [0f64; 4];
        let mut g = 0;
        for (row_index, row) in x.chunks(layout.cols).enumerate() {
            let row_offset = row_index * layout.cols;
            for (start, len) in layout.groups_in_row() {
                let xs = &row[start..start + len];
                let scan = group::scan(xs);
                if !scan.finite {
                    let (i, &value) = xs.iter().enumerate().find(|(_, v)| !v.is_finite()).unwrap_or((0, &xs[0]));
                    return Err(ChunkFailure::NonFinite { index: row_offset + start + i, value });
                }
                let w = cols.weights.slice(cols.of(row_offset + start), len);
                let p = group::choose_params(xs, scan, rule, w).map_err(|_| ChunkFailure::ScaleOverflow { group: g })?;
                let at = row_offset + start;
                let out = if direct { &mut packed[at..at + len] } else { &mut codes[at..at + len] };
                let GroupSums { xx, ee, xy, yy } = group::encode(xs, p, rule, out);
                total[0] += f64::from(xx);
                total[1] += f64::from(ee);
                total[2] += f64::from(xy);
                total[3] += f64::from(yy);
                scales[g] = p.scale;
                zeros[g] = p.zero;
                g += 1;
            }
        }
        if !direct {
            pack_codes(&codes[..x.len()], rule.bits, packed);
        }
        Ok(total)
    }
}

/// The group layout and importance weights of a chunk; maps a chunk-local flat index to its column in the tensor's 2-D view.
#[derive(Clone, Copy)]
struct ColumnOf<'a> {
    layout: &'a GroupLayout,
    weights: &'a ChannelWeights,
    chunk_start: usize,
    cols: usize,
}

impl ColumnOf<'_> {
    #[inline(always)]
    fn of(&self, local: usize) -> usize {
        (self.chunk_start + local) % self.cols.max(1)
    }
}

/// Quantizes one tensor with `config` (`Method::Auto` is resolved by [`Method::resolve`]).
///
/// Errors: a NaN or infinite element ([`QuantError::NonFinite`], naming the tensor and the flat index), or a
/// group range too wide for float16 scales ([`QuantError::Schema`]: use float32 scales).
pub fn quantize_tensor(tensor: &TensorView<'_>, config: &QuantConfig) -> Result<QuantizedTensor> {
    quantize_tensor_with(tensor, config, None)
}

/// Quantizes one tensor with `config`, weighting the squared error of the parameter search by `importance`:
/// one non-negative value per column of the 2-D view (e.g. mean squared input activations), see
/// [`crate::importance`]. `rtn` ignores it. `Method::Auto` is resolved by [`Method::resolve`]; a group size
/// other than the default, `symmetric`, float32 scales, or rows the two-level layout does not fit
/// ([`crate::TwoLevelSpec::fits`]) count as asking for the flat encoding.
pub fn quantize_tensor_with(
    tensor: &TensorView<'_>,
    config: &QuantConfig,
    importance: Option<&[f32]>,
) -> Result<QuantizedTensor> {
    let mut config = *config;
    // Settings only the flat encodings have keep `Auto` on a flat method.
    let flat_requested = config.group_size != QuantConfig::default().group_size
        || config.symmetric
        || config.scale_dtype != QuantConfig::default().scale_dtype
        || !crate::two_level::TwoLevelSpec::for_bits(config.bits).fits(tensor.rows_cols().1);
    config.method = config.method.resolve(flat_requested);
    if config.method == Method::TwoLevel {
        if config.symmetric {
            return Err(QuantError::config(
                "symmetric",
                "True with method=\"two_level\"",
                "False: two-level sub-blocks always store a minimum (or use method=\"mse\")",
            ));
        }
        return crate::quantize_two_level::quantize_two_level(tensor, &config, importance);
    }
    let config = &config;
    let weights = ChannelWeights::new(tensor.name, importance, tensor.rows_cols().1)?;
    let view_cols = tensor.rows_cols().1;
    let layout = GroupLayout::new(tensor.shape, config.group_size);
    let n = layout.len();
    let bits = config.bits;
    let rule = GroupRule {
        bits,
        symmetric: config.symmetric,
        search: matches!(config.method, Method::Mse | Method::Hqq),
        hqq: config.method == Method::Hqq,
        dtype: config.scale_dtype,
    };
    let mut data = vec![0u8; bits.packed_len(n)];
    let mut scales = vec![0f32; layout.num_groups()];
    let mut zeros = vec![0f32; layout.num_groups()];
    let chunk_rows = layout.chunk_rows();
    let chunk_elems = chunk_rows * layout.cols;
    let chunk_groups = chunk_rows * layout.groups_per_row;
    let results: Vec<ChunkResult> = if n == 0 {
        Vec::new()
    } else {
        data.par_chunks_mut(layout.chunk_bytes(bits))
            .zip(scales.par_chunks_mut(chunk_groups))
            .zip(zeros.par_chunks_mut(chunk_groups))
            .enumerate()
            .map_init(Scratch::default, |scratch, (ci, ((packed, sc), zp))| {
                let start = ci * chunk_elems;
                let len = chunk_elems.min(n - start);
                if scratch.codes.len() < len {
                    scratch.codes.resize(len, 0);
                }
                let x: &[f32] = match tensor.data {
                    TensorData::F32(all) => &all[start..start + len],
                    _ => {
                        scratch.converted.resize(len, 0.0);
                        tensor.data.copy_to_f32(start, &mut scratch.converted);
                        &scratch.converted
                    }
                };
                let cols = ColumnOf {
                    layout: &layout,
                    weights: &weights,
                    chunk_start: start,
                    cols: view_cols,
                };
                quantize_chunk(x, rule, &mut scratch.codes, packed, sc, zp, cols)
            })
            .collect()
    };
    let mut sums = [0f64; 4];
    for (ci, r) in results.into_iter().enumerate() {
        match r {
            Ok(s) => sums.iter_mut().zip(s).for_each(|(a, b)| *a += b),
            Err(ChunkFailure::NonFinite { index, value }) => {
                return Err(QuantError::NonFinite {
                    tensor: tensor.name.to_string(),
                    index: ci * chunk_elems + index,
                    value: value.to_string(),
                })
            }
            Err(ChunkFailure::ScaleOverflow { group }) => {
                return Err(QuantError::schema(
                    tensor.name,
                    format!(
                        "group {} spans a range too wide for float16 scales (> 65504 per step); \
                         use scale_dtype=\"float32\"",
                        ci * chunk_groups + group
                    ),
                ))
            }
        }
    }
    Ok(QuantizedTensor {
        name: tensor.name.to_string(),
        shape: tensor.shape.to_vec(),
        source_dtype: tensor.data.dtype(),
        config: *config,
        data,
        scales: ParamBuffer::from_f32(scales, config.scale_dtype),
        zero_points: (!config.symmetric).then(|| ParamBuffer::from_f32(zeros, config.scale_dtype)),
        params: None,
        channel_scales: None,
        quality: Quality::from_sums(sums[0], sums[1], sums[2], sums[3]),
    })
}
