//! Quantization and dequantization of whole tensors in a two-level encoding, parallel over chunks of
//! super-blocks (each chunk starts on a byte boundary of the packed codes).

use crate::config::{BitWidth, QuantConfig};
use crate::error::{QuantError, Result};
use crate::group::LANES;
use crate::importance::ChannelWeights;
use crate::packing::{pack_codes, unpack_codes};
use crate::quantized::{ParamBuffer, Quality, QuantizedTensor, QuantizedView};
use crate::simd::multiversion;
use crate::tensor::{TensorData, TensorView};
use crate::two_level::{decode_super_block, SuperBlockParams, TwoLevelSpec, SUPER_BLOCK};
use crate::two_level_search::{search_tile, Tile};
use rayon::prelude::*;

/// Elements a parallel chunk aims for.
const CHUNK_ELEMENTS: usize = 32 * 1024;

/// Where the super-blocks of a tensor lie: `rows` rows of `cols` elements, `supers_per_row` per row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SuperLayout {
    spec: TwoLevelSpec,
    rows: usize,
    cols: usize,
    supers_per_row: usize,
    /// Columns of the tensor's own 2-D view (for importance weights).
    view_cols: usize,
}

impl SuperLayout {
    pub(crate) fn new(shape: &[usize], bits: BitWidth) -> Self {
        let spec = TwoLevelSpec::for_bits(bits);
        let (view_rows, view_cols) = crate::tensor::rows_cols(shape);
        let (rows, cols) = spec.rows_cols(view_rows, view_cols);
        Self {
            spec,
            rows,
            cols,
            supers_per_row: spec.supers_per_row(cols),
            view_cols,
        }
    }

    fn len(&self) -> usize {
        self.rows * self.cols
    }

    fn num_supers(&self) -> usize {
        self.rows * self.supers_per_row
    }

    /// Super-blocks per parallel chunk: whole groups of 4 rows (so chunks start on a byte), or for a single row
    /// a run of super-blocks near `CHUNK_ELEMENTS`.
    fn chunk_supers(&self) -> usize {
        if self.rows <= 1 {
            (CHUNK_ELEMENTS / SUPER_BLOCK).max(1)
        } else {
            let rows = (CHUNK_ELEMENTS / self.cols.max(1)).max(1).div_ceil(4) * 4;
            rows * self.supers_per_row
        }
    }

    /// Flat start and length of super-block `q`.
    fn super_range(&self, q: usize) -> (usize, usize) {
        let row = q / self.supers_per_row;
        let c0 = (q % self.supers_per_row) * SUPER_BLOCK;
        (row * self.cols + c0, SUPER_BLOCK.min(self.cols - c0))
    }

    /// Flat element range of chunk `ci`.
    fn chunk_range(&self, ci: usize) -> (usize, usize) {
        let first = ci * self.chunk_supers();
        let last = (first + self.chunk_supers()).min(self.num_supers()) - 1;
        let (start, _) = self.super_range(first);
        let (ls, ll) = self.super_range(last);
        (start, ls + ll - start)
    }
}

/// Failures inside a chunk, with chunk-local positions.
enum ChunkFailure {
    NonFinite { index: usize, value: f32 },
    Overflow { super_block: usize },
}

#[derive(Default)]
struct Scratch {
    codes: Vec<u8>,
    converted: Vec<f32>,
}

/// Fills a tile with the sub-blocks of up to `16 / K` super-blocks (their flat `(start, len)` in `supers`).
/// Sets `tile.unit` when every weight of a valid lane is 1 and no lane is padded.
#[inline(always)]
fn gather<const S: usize>(
    tile: &mut Tile<S>,
    lay: &SuperLayout,
    x: &[f32],
    chunk_start: usize,
    supers: &[(usize, usize)],
    weights: &ChannelWeights,
) {
    let k = lay.spec.subs_per_super;
    let mut unit = true;
    for l in 0..LANES {
        let (g, j) = (l / k, l % k);
        let (start, len) = supers.get(g).map_or((chunk_start, 0), |&(s, n)| {
            let at = (j * S).min(n);
            (s + at, (n - at).min(S))
        });
        tile.len[l] = len;
        let local = start - chunk_start;
        let pad = if len > 0 { x[local] } else { 0.0 };
        // A sub-block never crosses a row of the 2-D view, so its columns are consecutive.
        let w = weights.slice(start % lay.view_cols.max(1), len);
        unit &= w.is_none() && (len == 0 || len == S);
        for (i, &v) in x[local..local + len].iter().enumerate() {
            tile.x[i][l] = v;
        }
        match w {
            Some(w) => (0..len).for_each(|i| tile.w[i][l] = w[i]),
            None => (0..len).for_each(|i| tile.w[i][l] = 1.0),
        }
        for i in len..S {
            tile.x[i][l] = pad;
            tile.w[i][l] = 0.0;
        }
    }
    tile.unit = unit;
}

/// Quantizes one chunk with sub-blocks of `S` elements.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lanes index several arrays at once
fn chunk_impl<const S: usize>(
    lay: &SuperLayout,
    x: &[f32],
    chunk_start: usize,
    first_super: usize,
    weights: &ChannelWeights,
    codes: &mut [u8],
    params: &mut [u8],
) -> Result<[f64; 4], ChunkFailure> {
    if !crate::group::scan(x).finite {
        let i = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(ChunkFailure::NonFinite {
            index: i,
            value: x[i],
        });
    }
    let spec = lay.spec;
    let rb = spec.record_bytes();
    let per_tile = LANES / spec.subs_per_super;
    let n_supers = params.len() / rb;
    let mut tile = Tile::<S>::new();
    let mut out = [[0u8; LANES]; S];
    let blank = SuperBlockParams {
        d: 0.0,
        dmin: 0.0,
        sc: [0; 16],
        mn: [0; 16],
    };
    let mut found = [blank; LANES];
    let mut total = [0f64; 4];
    let mut q = 0;
    while q < n_supers {
        let count = per_tile.min(n_supers - q);
        let mut ranges = [(0usize, 0usize); 2];
        for (g, r) in ranges.iter_mut().take(count).enumerate() {
            *r = lay.super_range(first_super + q + g);
        }
        let supers = &ranges[..count];
        gather(&mut tile, lay, x, chunk_start, supers, weights);
        let found = &mut found[..count];
        let sums = if tile.unit {
            search_tile::<S, false>(&tile, spec, found, &mut out)
        } else {
            search_tile::<S, true>(&tile, spec, found, &mut out)
        };
        let sums = sums.map_err(|_| ChunkFailure::Overflow { super_block: q })?;
        for l in 0..LANES {
            let (g, j) = (l / spec.subs_per_super, l % spec.subs_per_super);
            if let Some(&(start, _)) = supers.get(g) {
                let at = start - chunk_start + j * S;
                for i in 0..tile.len[l] {
                    codes[at + i] = out[i][l];
                }
            }
        }
        for (g, p) in found.iter().enumerate() {
            p.write(spec, &mut params[(q + g) * rb..(q + g + 1) * rb]);
        }
        total[0] += f64::from(sums[0]);
        total[1] += f64::from(sums[1]);
        total[3] += f64::from(sums[2]);
        q += count;
    }
    Ok(total)
}

multiversion! {
    /// Quantizes one chunk: parameters into `params` (whole records), codes into `codes` (one byte each).
    fn quantize_chunk(
        lay: &SuperLayout,
        x: &[f32],
        chunk_start: usize,
        first_super: usize,
        weights: &ChannelWeights,
        codes: &mut [u8],
        params: &mut [u8],
    ) -> Result<[f64; 4], ChunkFailure> {
        if lay.spec.sub_len == 32 {
            chunk_impl::<32>(lay, x, chunk_start, first_super, weights, codes, params)
        } else {
            chunk_impl::<16>(lay, x, chunk_start, first_super, weights, codes, params)
        }
    }
}

/// Quantizes `tensor` in the two-level encoding of `config.bits`, weighting the error by `importance` (one
/// non-negative value per column of the 2-D view) when given.
pub(crate) fn quantize_two_level(
    tensor: &TensorView<'_>,
    config: &QuantConfig,
    importance: Option<&[f32]>,
) -> Result<QuantizedTensor> {
    let lay = SuperLayout::new(tensor.shape, config.bits);
    let weights = ChannelWeights::new(tensor.name, importance, lay.view_cols)?;
    let spec = lay.spec;
    let n = lay.len();
    let bits = config.bits;
    let mut data = vec![0u8; bits.packed_len(n)];
    let mut params = vec![0u8; lay.num_supers() * spec.record_bytes()];
    let chunk_supers = lay.chunk_supers();
    let chunk_bytes = chunk_supers * SUPER_BLOCK * bits.bits() as usize / 8;
    let chunk_bytes = if lay.rows <= 1 {
        chunk_bytes
    } else {
        chunk_supers / lay.supers_per_row * lay.cols * bits.bits() as usize / 8
    };
    let results: Vec<Result<[f64; 4], ChunkFailure>> = if n == 0 {
        Vec::new()
    } else {
        data.par_chunks_mut(chunk_bytes.max(1))
            .zip(params.par_chunks_mut(chunk_supers * spec.record_bytes()))
            .enumerate()
            .map_init(Scratch::default, |scratch, (ci, (packed, par))| {
                let (start, len) = lay.chunk_range(ci);
                scratch.codes.resize(len, 0);
                let x: &[f32] = match tensor.data {
                    TensorData::F32(all) => &all[start..start + len],
                    _ => {
                        scratch.converted.resize(len, 0.0);
                        tensor.data.copy_to_f32(start, &mut scratch.converted);
                        &scratch.converted
                    }
                };
                let codes = &mut scratch.codes[..len];
                let r = quantize_chunk(&lay, x, start, ci * chunk_supers, &weights, codes, par)?;
                pack_codes(codes, bits, packed);
                Ok(r)
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
                    index: lay.chunk_range(ci).0 + index,
                    value: value.to_string(),
                })
            }
            Err(ChunkFailure::Overflow { super_block }) => {
                return Err(QuantError::schema(
                    tensor.name,
                    format!(
                        "super-block {} spans a range too wide for the float16 super-block scales of {}; \
                         use method=\"mse\" with scale_dtype=\"float32\"",
                        ci * chunk_supers + super_block,
                        spec.encoding_name()
                    ),
                ))
            }
        }
    }
    // x.y from ||x - y||^2 = ||x||^2 - 2 x.y + ||y||^2.
    sums[2] = 0.5 * (sums[0] + sums[3] - sums[1]);
    let mut cfg = *config;
    cfg.group_size = crate::config::GroupSize::Elements(spec.sub_len);
    Ok(QuantizedTensor {
        name: tensor.name.to_string(),
        shape: tensor.shape.to_vec(),
        source_dtype: tensor.data.dtype(),
        config: cfg,
        data,
        scales: ParamBuffer::from_f32(Vec::new(), config.scale_dtype),
        zero_points: None,
        params: Some(params),
        channel_scales: None,
        quality: Quality::from_sums(sums[0], sums[1], sums[2], sums[3]),
    })
}

multiversion! {
    /// Dequantizes one chunk of super-blocks from its unpacked codes.
    fn dequantize_chunk(
        lay: &SuperLayout,
        codes: &[u8],
        params: &[u8],
        chunk_start: usize,
        first_super: usize,
        out: &mut [f32],
    ) -> () {
        let spec = lay.spec;
        let rb = spec.record_bytes();
        for (q, record) in params.chunks_exact(rb).enumerate() {
            let (start, len) = lay.super_range(first_super + q);
            let at = start - chunk_start;
            let p = SuperBlockParams::read(spec, record);
            decode_super_block(spec, &p, &codes[at..at + len], &mut out[at..at + len]);
        }
    }
}

/// Checks the buffers of a two-level view against its shape.
pub(crate) fn validate(view: &QuantizedView<'_>, params: &[u8]) -> Result<()> {
    let lay = SuperLayout::new(view.shape, view.bits);
    let want = lay.num_supers() * lay.spec.record_bytes();
    if params.len() != want {
        return Err(QuantError::corrupt(
            view.name,
            format!(
                "params has {} bytes but shape {:?} in {} needs {want}",
                params.len(),
                view.shape,
                lay.spec.encoding_name()
            ),
        ));
    }
    Ok(())
}

/// Dequantizes a (validated) two-level view into `out`.
pub(crate) fn dequantize_into(view: &QuantizedView<'_>, params: &[u8], out: &mut [f32]) {
    let lay = SuperLayout::new(view.shape, view.bits);
    let chunk_supers = lay.chunk_supers();
    let rb = lay.spec.record_bytes();
    let bits = view.bits;
    let n_chunks = lay.num_supers().div_ceil(chunk_supers);
    let mut bounds: Vec<(usize, usize)> = (0..n_chunks).map(|ci| lay.chunk_range(ci)).collect();
    // Split `out` at the chunk boundaries.
    let mut pieces: Vec<(usize, &mut [f32])> = Vec::with_capacity(n_chunks);
    let mut rest = out;
    let mut offset = 0;
    for (ci, (start, len)) in bounds.drain(..).enumerate() {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(start - offset);
        let (piece, tail) = tail.split_at_mut(len);
        pieces.push((ci, piece));
        rest = tail;
        offset = start + len;
    }
    pieces
        .into_par_iter()
        .for_each_init(Vec::<u8>::new, |codes, (ci, piece)| {
            let (start, len) = lay.chunk_range(ci);
            codes.resize(len, 0);
            let byte0 = start * bits.bits() as usize / 8;
            unpack_codes(&view.data[byte0..], bits, codes);
            let first = ci * chunk_supers;
            let last = (first + chunk_supers).min(lay.num_supers());
            dequantize_chunk(
                &lay,
                codes,
                &params[first * rb..last * rb],
                start,
                first,
                piece,
            );
        });
}
