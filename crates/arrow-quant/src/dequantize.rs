//! Dequantization: `(code - zero) * scale` per element (then divided by the channel scale of a channel-scaled
//! tensor), parallel over chunks, to f32, f16 or bf16.

use crate::config::BitWidth;
use crate::error::{QuantError, Result};
use crate::group::{self, GroupParams};
use crate::layout::GroupLayout;
use crate::packing::unpack_codes;
use crate::quantized::{ParamSlice, QuantizedView};
use crate::simd::multiversion;
use half::{bf16, f16};
use rayon::prelude::*;

/// The read-only inputs of one chunk: its packed codes and where its parameters start.
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

/// Divides `values`, the flat elements `start..start + values.len()` of a tensor whose 2-D view has `cols`
/// columns, by their channel scales: column `c` belongs to input channel `c / (cols / scales.len())`, so a conv
/// kernel's `kh * kw` columns share their channel's scale.
pub(crate) fn divide_channels(values: &mut [f32], start: usize, cols: usize, scales: &[f32]) {
    let per = if scales.is_empty() {
        0
    } else {
        cols / scales.len()
    };
    if per == 0 {
        return;
    }
    let mut col = start % cols;
    let mut rest = values;
    while !rest.is_empty() {
        let channel = col / per;
        let take = ((channel + 1) * per - col).min(rest.len());
        let (block, tail) = std::mem::take(&mut rest).split_at_mut(take);
        let s = scales[channel];
        block.iter_mut().for_each(|v| *v /= s);
        rest = tail;
        col += take;
        if col == cols {
            col = 0;
        }
    }
}

/// Output element types of dequantization.
pub trait DequantOutput: Copy + Default + Send + Sync {
    /// Converts a chunk of f32 values.
    fn from_f32_slice(src: &[f32], dst: &mut [Self]);
}

impl DequantOutput for f16 {
    fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
}

impl DequantOutput for bf16 {
    fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
}

/// Elements per parallel conversion chunk of the half-precision output of two-level tensors.
const CONVERT_CHUNK: usize = 32 * 1024;

#[derive(Default)]
struct Scratch {
    codes: Vec<u8>,
    values: Vec<f32>,
}

impl QuantizedView<'_> {
    /// The inputs of chunk `index` (chunks of `layout.chunk_rows()` rows).
    fn chunk_source(&self, layout: GroupLayout, index: usize) -> ChunkSource<'_> {
        ChunkSource {
            packed: &self.data[index * layout.chunk_bytes(self.bits)..],
            layout,
            bits: self.bits,
            scales: self.scales,
            zeros: self.zero_points,
            first_group: index * layout.chunk_rows() * layout.groups_per_row,
        }
    }

    /// Dequantizes into `out` (f32), which must hold exactly one value per element.
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<()> {
        self.check_output(out.len())?;
        let cols = crate::tensor::rows_cols(self.shape).1;
        if let Some(params) = self.params {
            crate::quantize_two_level::dequantize_into(self, params, out);
            if let Some(s) = self.channel_scales {
                out.par_chunks_mut(CONVERT_CHUNK)
                    .enumerate()
                    .for_each(|(ci, v)| divide_channels(v, ci * CONVERT_CHUNK, cols, s));
            }
            return Ok(());
        }
        let layout = self.layout();
        let chunk_elems = layout.chunk_rows() * layout.cols;
        out.par_chunks_mut(chunk_elems).enumerate().for_each_init(
            Scratch::default,
            |scratch, (ci, chunk)| {
                scratch.codes.resize(chunk.len(), 0);
                dequantize_chunk(&self.chunk_source(layout, ci), &mut scratch.codes, chunk);
                if let Some(s) = self.channel_scales {
                    divide_channels(chunk, ci * chunk_elems, cols, s);
                }
            },
        );
        Ok(())
    }

    /// Dequantizes into `out` as f16 or bf16 (rounded to nearest).
    pub fn dequantize_into_half<T: DequantOutput>(&self, out: &mut [T]) -> Result<()> {
        self.check_output(out.len())?;
        if self.params.is_some() {
            let mut values = crate::output::zeroed_f32(out.len());
            self.dequantize_into(&mut values)?;
            out.par_chunks_mut(CONVERT_CHUNK)
                .zip(values.par_chunks(CONVERT_CHUNK))
                .for_each(|(o, v)| T::from_f32_slice(v, o));
            return Ok(());
        }
        let layout = self.layout();
        let cols = crate::tensor::rows_cols(self.shape).1;
        let chunk_elems = layout.chunk_rows() * layout.cols;
        out.par_chunks_mut(chunk_elems).enumerate().for_each_init(
            Scratch::default,
            |scratch, (ci, chunk)| {
                scratch.codes.resize(chunk.len(), 0);
                scratch.values.resize(chunk.len(), 0.0);
                dequantize_chunk(
                    &self.chunk_source(layout, ci),
                    &mut scratch.codes,
                    &mut scratch.values,
                );
                if let Some(s) = self.channel_scales {
                    divide_channels(&mut scratch.values, ci * chunk_elems, cols, s);
                }
                T::from_f32_slice(&scratch.values, chunk);
            },
        );
        Ok(())
    }

    /// Dequantizes to a new f32 vector in row-major order.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let mut out = crate::output::zeroed_f32(self.len());
        self.dequantize_into(&mut out)?;
        Ok(out)
    }

    fn check_output(&self, len: usize) -> Result<()> {
        self.validate()?;
        let n = self.len();
        if len != n {
            return Err(QuantError::corrupt(
                self.name,
                format!("output buffer holds {len} values but the tensor has {n}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::divide_channels;

    #[test]
    fn divide_channels_from_any_offset() {
        let scales = [2.0f32, 4.0, 8.0];
        let cols = 6;
        let whole: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let mut once = whole.clone();
        divide_channels(&mut once, 0, cols, &scales);
        let mut pieces = whole.clone();
        let (a, b) = pieces.split_at_mut(7);
        divide_channels(a, 0, cols, &scales);
        divide_channels(b, 7, cols, &scales);
        assert_eq!(once, pieces);
        assert_eq!(&once[..6], &[0.0, 0.5, 0.5, 0.75, 0.5, 0.625]);
    }
}
