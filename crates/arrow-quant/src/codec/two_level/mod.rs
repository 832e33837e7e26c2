//! The two-level encodings `int8_2l`, `int4_2l`, `int2_2l`: sub-blocks with small quantized scales and minima
//! inside 256-element super-blocks ([`format`]), chosen by an iterative least-squares search ([`search`]),
//! parallel over chunks of super-blocks ([`layout`]).

pub(crate) mod format;
mod layout;
pub(crate) mod search;

use super::driver::{first_non_finite, run_chunks, Chunk, ChunkFailure, QualitySums};
use super::flat::group::{LANES, TINY_SUM};
use super::{part_shape, rows_of_whole_chunks, Codec, Encoding, Plan};
use crate::config::BitWidth;
use crate::error::{QuantError, Result};
use crate::importance::ChannelWeights;
use crate::packing::{pack_codes, unpack_codes};
use crate::quantized::{Payload, PayloadRef, QuantizedTensor, QuantizedView};
use crate::simd::multiversion;
use crate::tensor::TensorView;
pub(crate) use format::SUPER_BLOCK;
use format::{decode_super_block, SuperBlockParams, TwoLevelSpec};
use layout::SuperLayout;
use search::{search_tile, Tile};
use std::ops::Range;

/// The codec of the two-level encoding of one width.
pub(crate) struct TwoLevelCodec {
    pub(crate) spec: TwoLevelSpec,
}

impl TwoLevelCodec {
    pub(crate) const fn new(bits: BitWidth) -> Self {
        Self {
            spec: TwoLevelSpec::for_bits(bits),
        }
    }
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
) -> std::result::Result<QualitySums, ChunkFailure> {
    if !super::flat::group::scan(x).finite {
        if let Some(failure) = first_non_finite(x, chunk_start) {
            return Err(failure);
        }
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
    let mut total = QualitySums::default();
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
        let sums = sums.map_err(|_| {
            ChunkFailure::Range(format!(
                "super-block {} spans a range too wide for the float16 super-block scales of {}; \
                 use layout=\"flat\" with scale_dtype=\"float32\"",
                first_super + q,
                Encoding::two_level(spec.bits)
            ))
        })?;
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
        // Sums of squares under TINY_SUM may have lost precision to subnormals (or be 0 for tiny values).
        let trustworthy = sums.iter().all(|s| s.is_finite()) && sums[0] >= TINY_SUM;
        if trustworthy {
            total.xx += f64::from(sums[0]);
            total.ee += f64::from(sums[1]);
            total.yy += f64::from(sums[2]);
        } else {
            let records = &params[q * rb..(q + count) * rb];
            let exact =
                exact_sums(spec, x, chunk_start, supers, codes, records).ok_or_else(|| {
                    ChunkFailure::Range(format!(
                        "super-block {} spans a range whose reconstruction is not finite in {}; \
                     use layout=\"flat\" with scale_dtype=\"float32\"",
                        first_super + q,
                        Encoding::two_level(spec.bits)
                    ))
                })?;
            total.add(exact);
        }
        q += count;
    }
    Ok(total)
}

/// The quality sums of the super-blocks `supers` (flat `(start, len)`, their codes in `codes` from `chunk_start`,
/// their records in `records`) in f64, decoded exactly as dequantization does: the slow path taken when the f32
/// sums of the search overflowed or underflowed. `None` when an element's reconstruction is not finite. The
/// returned `xy` is 0: the caller derives it from the other three sums, as for the fast path.
#[cold]
fn exact_sums(
    spec: TwoLevelSpec,
    x: &[f32],
    chunk_start: usize,
    supers: &[(usize, usize)],
    codes: &[u8],
    records: &[u8],
) -> Option<QualitySums> {
    let mut sums = QualitySums::default();
    let mut y = [0f32; SUPER_BLOCK];
    for (&(start, len), record) in supers.iter().zip(records.chunks_exact(spec.record_bytes())) {
        let at = start - chunk_start;
        let p = SuperBlockParams::read(spec, record);
        decode_super_block(spec, &p, &codes[at..at + len], &mut y[..len]);
        if !y[..len].iter().all(|v| v.is_finite()) {
            return None;
        }
        let s = QualitySums::of(&x[at..at + len], &y[..len]);
        sums.add(QualitySums { xy: 0.0, ..s });
    }
    Some(sums)
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
    ) -> std::result::Result<QualitySums, ChunkFailure> {
        if lay.spec.sub_len == 32 {
            chunk_impl::<32>(lay, x, chunk_start, first_super, weights, codes, params)
        } else {
            chunk_impl::<16>(lay, x, chunk_start, first_super, weights, codes, params)
        }
    }
}

multiversion! {
    /// Dequantizes one chunk of super-blocks from its unpacked codes.
    fn dequantize_supers(
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

impl Codec for TwoLevelCodec {
    /// True when the encoding stays near its nominal bits per weight: `cols` is a multiple of the sub-block
    /// length (the whole tensor is one row) or at least one full super-block long. Short odd rows (e.g. a conv
    /// kernel `[out, 3*3*3]`) would pay one super-block header per row.
    fn fits(&self, cols: usize) -> bool {
        cols.is_multiple_of(self.spec.sub_len) || cols >= SUPER_BLOCK
    }

    fn quantize(
        &self,
        tensor: &TensorView<'_>,
        _plan: &Plan,
        weights: &ChannelWeights,
        rows: Range<usize>,
    ) -> Result<(QuantizedTensor, QualitySums)> {
        // The chunks are the whole tensor's; the part takes those of its rows.
        let lay = SuperLayout::new(tensor.shape, self.spec.bits);
        let shape = part_shape(tensor.shape, rows.len());
        let part = SuperLayout::new(&shape, self.spec.bits);
        let spec = lay.spec;
        let (first, n) = (rows.start * lay.view_cols, part.len());
        let bits = spec.bits;
        let rb = spec.record_bytes();
        let mut data = vec![0u8; bits.packed_len(n)];
        let mut params = vec![0u8; part.num_supers() * rb];
        let chunk_supers = lay.chunk_supers();
        let chunk_elements = lay.chunk_elements().max(1);
        debug_assert_eq!(first % chunk_elements, 0);
        let first_chunk = first / chunk_elements;
        let chunk_bytes = lay.chunk_elements() * bits.bits() as usize / 8;
        let chunks: Vec<_> = if n == 0 {
            Vec::new()
        } else {
            data.chunks_mut(chunk_bytes.max(1))
                .zip(params.chunks_mut(chunk_supers * rb))
                .enumerate()
                .map(|(i, (packed, par))| {
                    let ci = first_chunk + i;
                    let (start, len) = lay.chunk_range(ci);
                    Chunk {
                        start,
                        len,
                        out: (ci, packed, par),
                    }
                })
                .collect()
        };
        let sums = run_chunks(tensor, chunks, |x, start, codes, (ci, packed, par)| {
            codes.resize(x.len(), 0);
            let r = quantize_chunk(&lay, x, start, ci * chunk_supers, weights, codes, par)?;
            pack_codes(codes, bits, packed);
            Ok(r)
        })?;
        let tensor = QuantizedTensor {
            name: tensor.name.to_string(),
            shape,
            source_dtype: tensor.data.dtype(),
            encoding: Encoding::two_level(bits),
            method: None,
            data,
            payload: Payload::Blocks(params),
            channel_scales: None,
            quality: self.finish_sums(sums).quality(),
        };
        Ok((tensor, sums))
    }

    fn part_rows(&self, shape: &[usize], _plan: &Plan) -> usize {
        let lay = SuperLayout::new(shape, self.spec.bits);
        rows_of_whole_chunks(lay.chunk_elements(), lay.view_cols)
    }

    fn finish_sums(&self, mut sums: QualitySums) -> QualitySums {
        // x.y from ||x - y||^2 = ||x||^2 - 2 x.y + ||y||^2.
        sums.xy = 0.5 * (sums.xx + sums.yy - sums.ee);
        sums
    }

    fn validate(&self, view: &QuantizedView<'_>) -> Result<()> {
        let PayloadRef::Blocks(params) = view.payload else {
            return Err(QuantError::corrupt(
                view.name,
                format!(
                    "{} keeps its parameters in super-block records (params), not per-group scales",
                    view.encoding
                ),
            ));
        };
        let lay = SuperLayout::new(view.shape, self.spec.bits);
        let want = self.spec.bits.packed_len(lay.len());
        if view.data.len() != want {
            return Err(QuantError::corrupt(
                view.name,
                format!("data has {} bytes but needs {want}", view.data.len()),
            ));
        }
        let want = lay.num_supers() * self.spec.record_bytes();
        if params.len() != want {
            return Err(QuantError::corrupt(
                view.name,
                format!(
                    "params has {} bytes but shape {:?} in {} needs {want}",
                    params.len(),
                    view.shape,
                    view.encoding
                ),
            ));
        }
        // Each record starts with d and dmin (float16): both finite and non-negative (docs/FORMAT.md).
        for (u, record) in params.chunks_exact(self.spec.record_bytes()).enumerate() {
            for (what, at) in [("d", 0), ("dmin", 2)] {
                let v = half::f16::from_le_bytes([record[at], record[at + 1]]).to_f32();
                if !(v.is_finite() && v >= 0.0) {
                    return Err(QuantError::corrupt(
                        view.name,
                        format!(
                            "super-block {u} has {what} = {v}; d and dmin must be finite and non-negative"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn chunk_elements(&self, view: &QuantizedView<'_>) -> usize {
        SuperLayout::new(view.shape, self.spec.bits).chunk_elements()
    }

    fn dequantize_chunk(
        &self,
        view: &QuantizedView<'_>,
        index: usize,
        codes: &mut Vec<u8>,
        out: &mut [f32],
    ) {
        let PayloadRef::Blocks(params) = view.payload else {
            return;
        };
        let lay = SuperLayout::new(view.shape, self.spec.bits);
        let (start, len) = lay.chunk_range(index);
        codes.resize(len, 0);
        unpack_codes(
            &view.data[start * self.spec.bits.bits() as usize / 8..],
            self.spec.bits,
            codes,
        );
        let rb = self.spec.record_bytes();
        let first = index * lay.chunk_supers();
        let last = (first + lay.chunk_supers()).min(lay.num_supers());
        dequantize_supers(
            &lay,
            codes,
            &params[first * rb..last * rb],
            start,
            first,
            out,
        );
    }
}
