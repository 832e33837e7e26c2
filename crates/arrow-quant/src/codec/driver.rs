//! The one parallel chunk loop of every codec: each chunk's source elements converted to f32 in a per-thread
//! scratch buffer (f16 / bf16 sources), handed to the codec's chunk kernel with its own output slices, chunk
//! failures turned into errors that name the tensor, and the quality sums of all chunks added up.

use crate::error::{QuantError, Result};
use crate::quantized::Quality;
use crate::tensor::{TensorData, TensorView};
use rayon::prelude::*;

/// Elements a parallel chunk aims for: large enough to amortise scheduling, small enough to stay in L2.
pub(crate) const CHUNK_ELEMENTS: usize = 32 * 1024;

/// Running sums from which the cosine similarity and relative MSE of a reconstruction follow.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QualitySums {
    /// Sum of `x^2` (source).
    pub xx: f64,
    /// Sum of `(x - y)^2`.
    pub ee: f64,
    /// Sum of `x * y`.
    pub xy: f64,
    /// Sum of `y^2` (reconstruction).
    pub yy: f64,
}

impl QualitySums {
    /// Sums over the pairs of `x` (source) and `y` (reconstruction).
    pub fn of(x: &[f32], y: &[f32]) -> Self {
        let mut s = Self::default();
        s.add_pairs(x, y);
        s
    }

    /// Adds the pairs of `x` and `y` one by one, in order: over consecutive pieces of two buffers the sums are
    /// exactly [`QualitySums::of`] the whole buffers.
    pub fn add_pairs(&mut self, x: &[f32], y: &[f32]) {
        for (&a, &b) in x.iter().zip(y) {
            self.add_pair(a, b);
        }
    }

    /// Adds one pair.
    #[inline(always)]
    pub fn add_pair(&mut self, x: f32, y: f32) {
        let (a, b) = (f64::from(x), f64::from(y));
        self.xx += a * a;
        self.ee += (a - b) * (a - b);
        self.xy += a * b;
        self.yy += b * b;
    }

    /// Adds another set of sums.
    pub fn add(&mut self, other: Self) {
        self.xx += other.xx;
        self.ee += other.ee;
        self.xy += other.xy;
        self.yy += other.yy;
    }

    /// The figures.
    pub fn quality(&self) -> Quality {
        Quality::from_sums(self.xx, self.ee, self.xy, self.yy)
    }
}

/// What went wrong inside a chunk, with tensor-wide positions.
pub(crate) enum ChunkFailure {
    /// A NaN or infinity at flat index `index`.
    NonFinite { index: usize, value: f32 },
    /// A parameter that does not fit its storage type; the message says where and what to do.
    Range(String),
}

/// One unit of parallel work: the flat source range `start..start + len` and the output slices it fills.
pub(crate) struct Chunk<O> {
    pub start: usize,
    pub len: usize,
    pub out: O,
}

/// Per-thread buffers reused across chunks.
#[derive(Default)]
pub(crate) struct Scratch {
    /// Codes, one byte each, before packing.
    pub codes: Vec<u8>,
    converted: Vec<f32>,
}

/// Runs `kernel` on every chunk in parallel: `kernel(x, chunk start, codes scratch, outputs)` quantizes the
/// f32 source elements `x` of one chunk. Returns the summed quality, or the error of the first failing chunk.
pub(crate) fn run_chunks<O, K>(
    tensor: &TensorView<'_>,
    chunks: Vec<Chunk<O>>,
    kernel: K,
) -> Result<QualitySums>
where
    O: Send,
    K: Fn(&[f32], usize, &mut Vec<u8>, O) -> std::result::Result<QualitySums, ChunkFailure> + Sync,
{
    let results: Vec<std::result::Result<QualitySums, ChunkFailure>> = chunks
        .into_par_iter()
        .map_init(Scratch::default, |scratch, chunk| {
            let Scratch { codes, converted } = scratch;
            let (start, len) = (chunk.start, chunk.len);
            let x: &[f32] = match tensor.data {
                TensorData::F32(all) => &all[start..start + len],
                _ => {
                    converted.resize(len, 0.0);
                    tensor.data.copy_to_f32(start, converted);
                    converted
                }
            };
            kernel(x, start, codes, chunk.out)
        })
        .collect();
    let mut sums = QualitySums::default();
    for r in results {
        match r {
            Ok(s) => sums.add(s),
            Err(ChunkFailure::NonFinite { index, value }) => {
                return Err(QuantError::NonFinite {
                    tensor: tensor.name.to_string(),
                    index,
                    value: value.to_string(),
                })
            }
            Err(ChunkFailure::Range(problem)) => {
                return Err(QuantError::Range {
                    tensor: tensor.name.to_string(),
                    problem,
                })
            }
        }
    }
    Ok(sums)
}

/// The first non-finite element of `x` (at flat index `start + i`), if any.
pub(crate) fn first_non_finite(x: &[f32], start: usize) -> Option<ChunkFailure> {
    x.iter()
        .position(|v| !v.is_finite())
        .map(|i| ChunkFailure::NonFinite {
            index: start + i,
            value: x[i],
        })
}
