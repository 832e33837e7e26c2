//! Quantization of one tensor: parallel over chunks of rows, one pass per group, packed output.

use crate::config::{BitWidth, Method, QuantConfig};
use crate::error::{QuantError, Result};
use crate::group::{self, GroupRule, GroupSums};
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
        layout: &GroupLayout,
        rule: GroupRule,
        codes: &mut [u8],
        packed: &mut [u8],
        scales: &mut [f32],
        zeros: &mut [f32],
    ) -> ChunkResult {
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
                let p = group::choose_params(xs, scan, rule).map_err(|_| ChunkFailure::ScaleOverflow { group: g })?;
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

/// The output buffers of one tensor, sized for its layout: `data` holds `bits.packed_len(n)` bytes, `scales` and
/// `zeros` one value per group (`zeros` is filled for symmetric tensors too, with the implicit zero point).
pub struct OutputSlices<'a> {
    /// Packed codes.
    pub data: &'a mut [u8],
    /// Scales, rounded to the storage type but held as f32.
    pub scales: &'a mut [f32],
    /// Zero points, held as f32.
    pub zeros: &'a mut [f32],
}

/// Quantizes one tensor with `config` into new buffers.
///
/// Errors: a NaN or infinite element ([`QuantError::NonFinite`], naming the tensor and the flat index), or a
/// group range too wide for float16 scales ([`QuantError::Schema`]: use float32 scales).
pub fn quantize_tensor(tensor: &TensorView<'_>, config: &QuantConfig) -> Result<QuantizedTensor> {
    let layout = GroupLayout::new(tensor.shape, config.group_size);
    let mut data = vec![0u8; config.bits.packed_len(layout.len())];
    let mut scales = vec![0f32; layout.num_groups()];
    let mut zeros = vec![0f32; layout.num_groups()];
    let out = OutputSlices {
        data: &mut data,
        scales: &mut scales,
        zeros: &mut zeros,
    };
    let quality = quantize_into(tensor, config, out)?;
    Ok(QuantizedTensor {
        name: tensor.name.to_string(),
        shape: tensor.shape.to_vec(),
        source_dtype: tensor.data.dtype(),
        config: *config,
        data,
        scales: ParamBuffer::from_f32(scales, config.scale_dtype),
        zero_points: (!config.symmetric).then(|| ParamBuffer::from_f32(zeros, config.scale_dtype)),
        quality,
    })
}

/// Quantizes one tensor into caller-provided buffers (see [`OutputSlices`] for their sizes) and returns its
/// quality figures. This is how a batch writes every layer straight into one shared Arrow buffer.
pub fn quantize_into(
    tensor: &TensorView<'_>,
    config: &QuantConfig,
    out: OutputSlices<'_>,
) -> Result<Quality> {
    let layout = GroupLayout::new(tensor.shape, config.group_size);
    let n = layout.len();
    let bits = config.bits;
    if out.data.len() != bits.packed_len(n)
        || out.scales.len() != layout.num_groups()
        || out.zeros.len() != layout.num_groups()
    {
        return Err(QuantError::corrupt(
            tensor.name,
            format!(
                "output buffers of {} bytes / {} scales / {} zero points do not fit {} elements in {} groups",
                out.data.len(),
                out.scales.len(),
                out.zeros.len(),
                n,
                layout.num_groups()
            ),
        ));
    }
    let rule = GroupRule {
        bits,
        symmetric: config.symmetric,
        search: config.method == Method::Mse,
        dtype: config.scale_dtype,
    };
    let chunk_rows = layout.chunk_rows();
    let chunk_elems = chunk_rows * layout.cols;
    let chunk_groups = chunk_rows * layout.groups_per_row;
    let results: Vec<ChunkResult> = if n == 0 {
        Vec::new()
    } else {
        out.data
            .par_chunks_mut(layout.chunk_bytes(bits))
            .zip(out.scales.par_chunks_mut(chunk_groups))
            .zip(out.zeros.par_chunks_mut(chunk_groups))
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
                quantize_chunk(x, &layout, rule, &mut scratch.codes, packed, sc, zp)
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
    Ok(Quality::from_sums(sums[0], sums[1], sums[2], sums[3]))
}
