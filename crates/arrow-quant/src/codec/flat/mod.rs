//! The flat encodings `int8`, `int4`, `int2`: each row of the 2-D view cut into groups with one scale (and zero
//! point) each, chosen by `rtn`, `mse` or `hqq`; codes packed densely in flat element order.

pub(crate) mod group;
mod hqq;
pub(crate) mod layout;
mod mse;

use super::driver::{run_chunks, Chunk, ChunkFailure, QualitySums};
use super::{part_shape, rows_of_whole_chunks, Codec, Encoding, Plan};
use crate::config::{BitWidth, Method, ScaleDtype};
use crate::error::{QuantError, Result};
use crate::importance::ChannelWeights;
use crate::packing::{pack_codes, unpack_codes};
use crate::quantized::{
    FlatParams, ParamBuffer, ParamSlice, Payload, PayloadRef, QuantizedTensor, QuantizedView,
};
use crate::simd::multiversion;
use crate::tensor::{rows_cols, TensorView};
use group::{GroupParams, GroupRule, GroupSums};
use layout::GroupLayout;
use std::ops::Range;

/// The codec of the flat encoding of one width.
pub(crate) struct FlatCodec {
    bits: BitWidth,
}

impl FlatCodec {
    pub(crate) const fn new(bits: BitWidth) -> Self {
        Self { bits }
    }
}

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
    ) -> std::result::Result<QualitySums, ChunkFailure> {
        let layout = cols.layout;
        let direct = rule.bits == BitWidth::Int8;
        let mut total = QualitySums::default();
        let mut g = 0;
        for (row_index, row) in x.chunks(layout.cols).enumerate() {
            let row_offset = row_index * layout.cols;
            for (start, len) in layout.groups_in_row() {
                let xs = &row[start..start + len];
                let scan = group::scan(xs);
                if !scan.finite {
                    return Err(super::driver::first_non_finite(xs, cols.chunk_start + row_offset + start)
                        .unwrap_or(ChunkFailure::NonFinite { index: cols.chunk_start, value: f32::NAN }));
                }
                let w = cols.weights.slice(cols.of(row_offset + start), len);
                let p = group::choose_params(xs, scan, rule, w).map_err(|_| {
                    ChunkFailure::Range(match rule.dtype {
                        ScaleDtype::F16 => format!(
                            "group {} spans a range too wide for float16 scales (> 65504 per step); \
                             use scale_dtype=\"float32\" (--scale-dtype float32)",
                            cols.first_group + g
                        ),
                        ScaleDtype::F32 => format!(
                            "group {} spans a range whose float32 scale (or its reciprocal) is not finite; \
                             keep this layer unquantized",
                            cols.first_group + g
                        ),
                    })
                })?;
                let at = row_offset + start;
                let out = if direct { &mut packed[at..at + len] } else { &mut codes[at..at + len] };
                let sums = group::encode(xs, p, rule, out);
                if sums.trustworthy() || (scan.lo == 0.0 && scan.hi == 0.0) {
                    let GroupSums { xx, ee, xy, yy } = sums;
                    total.xx += f64::from(xx);
                    total.ee += f64::from(ee);
                    total.xy += f64::from(xy);
                    total.yy += f64::from(yy);
                } else {
                    let [xx, ee, xy, yy] = group::exact_sums(xs, out, p).ok_or_else(|| {
                        ChunkFailure::Range(format!(
                            "group {} spans a range whose reconstruction overflows float32 in {}; \
                             keep this layer unquantized",
                            cols.first_group + g,
                            Encoding::flat(rule.bits)
                        ))
                    })?;
                    total.add(QualitySums { xx, ee, xy, yy });
                }
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

/// The group layout and importance weights of a chunk; maps a chunk-local flat index to its column in the
/// tensor's 2-D view.
#[derive(Clone, Copy)]
struct ColumnOf<'a> {
    layout: &'a GroupLayout,
    weights: &'a ChannelWeights,
    chunk_start: usize,
    first_group: usize,
    cols: usize,
}

impl ColumnOf<'_> {
    #[inline(always)]
    fn of(&self, local: usize) -> usize {
        (self.chunk_start + local) % self.cols.max(1)
    }
}

impl Codec for FlatCodec {
    fn fits(&self, _cols: usize) -> bool {
        true
    }

    fn quantize(
        &self,
        tensor: &TensorView<'_>,
        plan: &Plan,
        weights: &ChannelWeights,
        rows: Range<usize>,
    ) -> Result<(QuantizedTensor, QualitySums)> {
        let flat = plan.flat;
        let view_cols = tensor.rows_cols().1;
        // The chunks are the whole tensor's; the part takes those of its rows.
        let layout = GroupLayout::new(tensor.shape, flat.group_size);
        let shape = part_shape(tensor.shape, rows.len());
        let part = GroupLayout::new(&shape, flat.group_size);
        let (first, n) = (rows.start * view_cols, part.len());
        let bits = self.bits;
        let rule = GroupRule {
            bits,
            symmetric: flat.symmetric,
            search: matches!(plan.method, Method::Mse | Method::Hqq),
            hqq: plan.method == Method::Hqq,
            dtype: flat.scale_dtype,
        };
        let mut data = vec![0u8; bits.packed_len(n)];
        let mut scales = vec![0f32; part.num_groups()];
        let mut zeros = vec![0f32; part.num_groups()];
        let chunk_rows = layout.chunk_rows();
        let chunk_elems = chunk_rows * layout.cols;
        let chunk_groups = chunk_rows * layout.groups_per_row;
        debug_assert!(chunk_elems == 0 || first % chunk_elems == 0);
        let first_chunk = first / chunk_elems.max(1);
        let chunks: Vec<_> = if n == 0 {
            Vec::new()
        } else {
            data.chunks_mut(layout.chunk_bytes(bits))
                .zip(scales.chunks_mut(chunk_groups))
                .zip(zeros.chunks_mut(chunk_groups))
                .enumerate()
                .map(|(i, ((packed, sc), zp))| {
                    let ci = first_chunk + i;
                    let start = ci * chunk_elems;
                    Chunk {
                        start,
                        len: chunk_elems.min(first + n - start),
                        out: (ci, packed, sc, zp),
                    }
                })
                .collect()
        };
        let sums = run_chunks(tensor, chunks, |x, start, codes, (ci, packed, sc, zp)| {
            if codes.len() < x.len() {
                codes.resize(x.len(), 0);
            }
            let cols = ColumnOf {
                layout: &layout,
                weights,
                chunk_start: start,
                first_group: ci * chunk_groups,
                cols: view_cols,
            };
            quantize_chunk(x, rule, codes, packed, sc, zp, cols)
        })?;
        let tensor = QuantizedTensor {
            name: tensor.name.to_string(),
            shape,
            source_dtype: tensor.data.dtype(),
            encoding: Encoding::flat(bits),
            method: Some(plan.method),
            data,
            payload: Payload::Flat(FlatParams {
                group_size: flat.group_size,
                scales: ParamBuffer::from_f32(scales, flat.scale_dtype),
                zero_points: (!flat.symmetric)
                    .then(|| ParamBuffer::from_f32(zeros, flat.scale_dtype)),
            }),
            channel_scales: None,
            quality: sums.quality(),
        };
        Ok((tensor, sums))
    }

    fn part_rows(&self, shape: &[usize], plan: &Plan) -> usize {
        let layout = GroupLayout::new(shape, plan.flat.group_size);
        rows_of_whole_chunks(layout.chunk_rows() * layout.cols, rows_cols(shape).1)
    }

    fn validate(&self, view: &QuantizedView<'_>) -> Result<()> {
        let PayloadRef::Flat {
            group_size,
            scales,
            zero_points,
        } = view.payload
        else {
            return Err(QuantError::corrupt(
                view.name,
                format!(
                    "{} keeps one scale per group, but the tensor has block records",
                    view.encoding
                ),
            ));
        };
        let layout = GroupLayout::new(view.shape, group_size);
        let want = self.bits.packed_len(layout.len());
        if view.data.len() != want {
            return Err(QuantError::corrupt(
                view.name,
                format!(
                    "data has {} bytes but shape {:?} at {} bits needs {want}",
                    view.data.len(),
                    view.shape,
                    self.bits.bits()
                ),
            ));
        }
        let groups = layout.num_groups();
        if scales.len() != groups {
            return Err(QuantError::corrupt(
                view.name,
                format!("{} scales but {groups} groups", scales.len()),
            ));
        }
        if let Some(z) = zero_points {
            if z.len() != groups {
                return Err(QuantError::corrupt(
                    view.name,
                    format!("{} zero points but {groups} groups", z.len()),
                ));
            }
            if z.dtype() != scales.dtype() {
                return Err(QuantError::corrupt(
                    view.name,
                    format!(
                        "zero points are {} but scales {}",
                        z.dtype().name(),
                        scales.dtype().name()
                    ),
                ));
            }
        }
        for (what, params) in [("scale", Some(scales)), ("zero point", zero_points)] {
            let Some(p) = params else { continue };
            if let Some(g) = (0..p.len()).find(|&g| !p.get(g).is_finite()) {
                return Err(QuantError::corrupt(
                    view.name,
                    format!(
                        "{what} of group {g} is {}; scales and zero points must be finite",
                        p.get(g)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn chunk_elements(&self, view: &QuantizedView<'_>) -> usize {
        // A view with block records has no groups; validation rejects it before any chunk is decoded.
        view.group_layout()
            .map_or(1, |layout| layout.chunk_rows() * layout.cols)
    }

    fn dequantize_chunk(
        &self,
        view: &QuantizedView<'_>,
        index: usize,
        codes: &mut Vec<u8>,
        out: &mut [f32],
    ) {
        let PayloadRef::Flat {
            group_size,
            scales,
            zero_points,
        } = view.payload
        else {
            return;
        };
        let layout = GroupLayout::new(view.shape, group_size);
        codes.resize(out.len(), 0);
        let src = ChunkSource {
            packed: &view.data[index * layout.chunk_bytes(self.bits)..],
            layout,
            bits: self.bits,
            scales,
            zeros: zero_points,
            first_group: index * layout.chunk_rows() * layout.groups_per_row,
        };
        dequantize_chunk(&src, codes, out);
    }
}

/// The read-only inputs of one dequantization chunk: its packed codes and where its parameters start.
struct ChunkSource<'a> {
    packed: &'a [u8],
    layout: GroupLayout,
    bits: BitWidth,
    scales: ParamSlice<'a>,
    zeros: Option<ParamSlice<'a>>,
    first_group: usize,
}

multiversion! {
    /// Dequantizes one chunk of rows into `out`, unpacking through `codes`.
    fn dequantize_chunk(src: &ChunkSource<'_>, codes: &mut [u8], out: &mut [f32]) -> () {
        let n = out.len();
        unpack_codes(src.packed, src.bits, &mut codes[..n]);
        let implicit_zero = (1u32 << (src.bits.bits() - 1)) as f32;
        let cols = src.layout.cols;
        let mut g = src.first_group;
        for (row_index, row) in out.chunks_mut(cols).enumerate() {
            let row_offset = row_index * cols;
            for (start, len) in src.layout.groups_in_row() {
                let p = GroupParams {
                    scale: src.scales.get(g),
                    zero: src.zeros.map_or(implicit_zero, |z| z.get(g)),
                };
                let at = row_offset + start;
                group::decode(&codes[at..at + len], p, &mut row[start..start + len]);
                g += 1;
            }
        }
    }
}
