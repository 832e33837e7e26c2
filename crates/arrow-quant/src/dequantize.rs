//! Dequantization of any encoding, parallel over the codec's chunks, to f32, f16 or bf16; a channel-scaled
//! tensor's values are divided by their channel scales on the way.

use crate::error::{QuantError, Result};
use crate::quantized::QuantizedView;
use half::{bf16, f16};
use rayon::prelude::*;

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

#[derive(Default)]
struct Scratch {
    codes: Vec<u8>,
    values: Vec<f32>,
}

impl QuantizedView<'_> {
    /// Decodes chunk `index` (of `chunk` elements) into `out` and divides out the channel scales.
    fn decode_chunk(&self, index: usize, chunk: usize, codes: &mut Vec<u8>, out: &mut [f32]) {
        self.encoding
            .codec()
            .dequantize_chunk(self, index, codes, out);
        if let Some(s) = self.channel_scales {
            divide_channels(
                out,
                index * chunk,
                crate::tensor::rows_cols(self.shape).1,
                s,
            );
        }
    }

    /// Dequantizes into `out` (f32), which must hold exactly one value per element.
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<()> {
        self.check_output(out.len())?;
        let chunk = self.encoding.codec().chunk_elements(self).max(1);
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each_init(Vec::<u8>::new, |codes, (ci, piece)| {
                self.decode_chunk(ci, chunk, codes, piece)
            });
        Ok(())
    }

    /// Elements of the codec's dequantization chunks: [`QuantizedView::dequantize_range_into`] starts at a
    /// multiple of it.
    pub fn chunk_elements(&self) -> usize {
        self.encoding.codec().chunk_elements(self).max(1)
    }

    /// Dequantizes the elements `start .. start + out.len()` into `out` (f32), in parallel over the codec's
    /// chunks: `start` is a multiple of [`QuantizedView::chunk_elements`], and `out` holds a whole number of
    /// chunks or ends at the last element. Reading a large tensor window by window keeps memory at one window.
    pub fn dequantize_range_into(&self, start: usize, out: &mut [f32]) -> Result<()> {
        self.validate()?;
        let chunk = self.chunk_elements();
        let (n, end) = (self.len(), start.saturating_add(out.len()));
        if !start.is_multiple_of(chunk) || end > n || (end != n && !out.len().is_multiple_of(chunk))
        {
            return Err(QuantError::corrupt(
                self.name,
                format!(
                    "elements {start}..{end} of {n} are not whole dequantization chunks of {chunk}"
                ),
            ));
        }
        let first = start / chunk;
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each_init(Vec::<u8>::new, |codes, (ci, piece)| {
                self.decode_chunk(first + ci, chunk, codes, piece)
            });
        Ok(())
    }

    /// Dequantizes into `out` as f16 or bf16 (rounded to nearest).
    pub fn dequantize_into_half<T: DequantOutput>(&self, out: &mut [T]) -> Result<()> {
        self.check_output(out.len())?;
        let chunk = self.encoding.codec().chunk_elements(self).max(1);
        out.par_chunks_mut(chunk).enumerate().for_each_init(
            Scratch::default,
            |scratch, (ci, piece)| {
                scratch.values.resize(piece.len(), 0.0);
                self.decode_chunk(ci, chunk, &mut scratch.codes, &mut scratch.values);
                T::from_f32_slice(&scratch.values, piece);
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
