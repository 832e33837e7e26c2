//! The parameter search of the asymmetric K-quants (Q2_K, Q4_K, Q5_K: `x = q * (d * sc) - dmin * m`): the
//! weighted least-squares search of the two-level encodings (`codec::two_level::search`), run over the
//! super-blocks of one ggml row, sixteen sub-blocks per tile, with each type's code width and effort.

use super::transpose::to_lanes;
use super::QK_K;
use crate::codec::flat::group::{F16_MAX, LANES};
use crate::codec::two_level::format::SuperBlockParams;
use crate::codec::two_level::search::{search_tile_with, Knobs, SearchShape, Tile, TileSums};
use crate::gguf::blocks::OutOfRange;

/// A type's geometry and search effort.
pub(super) struct AsymSearch {
    /// Largest code and field, sub-blocks per super-block.
    pub shape: SearchShape,
    /// Effort of each stage.
    pub knobs: Knobs,
}

/// Searches the super-blocks of one row `x` (a whole number of super-blocks; `S`-element sub-blocks) and hands
/// each one's parameters and codes (element order) to `emit(index, params, codes)`. Returns the tile sums of
/// the reconstruction (`sum x^2`, `sum (x - y)^2`, `sum y^2` in f32, per tile, added up in f64).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lanes index several arrays at once
pub(super) fn search_row<const S: usize>(
    search: &AsymSearch,
    x: &[f32],
    weights: Option<(&[f32], f32)>,
    mut emit: impl FnMut(usize, &SuperBlockParams, &[u8; QK_K]),
) -> Result<[f64; 3], OutOfRange> {
    let k = QK_K / S;
    let per_tile = LANES / k;
    let n_blocks = x.len() / QK_K;
    let blank = SuperBlockParams {
        d: 0.0,
        dmin: 0.0,
        sc: [0; 16],
        mn: [0; 16],
    };
    let mut found = [blank; LANES];
    let mut tile = Tile::<S>::new();
    let mut codes = [[0u8; LANES]; S];
    let mut block_codes = [0u8; QK_K];
    let mut total = [0f64; 3];
    let mut b0 = 0;
    while b0 < n_blocks {
        let count = per_tile.min(n_blocks - b0);
        if count == per_tile {
            // A full tile is sixteen consecutive sub-blocks: lane l holds elements l * S .. l * S + S.
            let base = b0 * QK_K;
            to_lanes::<S>(&x[base..], &mut tile.x);
            if let Some((w, scale)) = weights {
                to_lanes::<S>(&w[base..], &mut tile.w);
                for row in tile.w.iter_mut() {
                    for v in row.iter_mut() {
                        *v *= scale;
                    }
                }
            }
            tile.len = [S; LANES];
        } else {
            for l in 0..LANES {
                let (g, j) = (l / k, l % k);
                if g < count {
                    let base = (b0 + g) * QK_K + j * S;
                    let xs = &x[base..base + S];
                    for i in 0..S {
                        tile.x[i][l] = xs[i];
                    }
                    // Unweighted, the search reads no weights.
                    if let Some((w, scale)) = weights {
                        let ws = &w[base..base + S];
                        for i in 0..S {
                            tile.w[i][l] = ws[i] * scale;
                        }
                    }
                    tile.len[l] = S;
                } else {
                    for i in 0..S {
                        tile.x[i][l] = 0.0;
                        tile.w[i][l] = 0.0;
                    }
                    tile.len[l] = 0;
                }
            }
        }
        tile.unit = weights.is_none();
        let found = &mut found[..count];
        let sums: Result<TileSums, _> = if weights.is_none() {
            search_tile_with::<S, false>(&tile, search.shape, search.knobs, found, &mut codes)
        } else {
            search_tile_with::<S, true>(&tile, search.shape, search.knobs, found, &mut codes)
        };
        let sums = sums.map_err(|_| {
            // The search stops at the first super-block whose scales overflow float16; those before it are set.
            let bad = found
                .iter()
                .position(|p| !(p.d <= F16_MAX && p.dmin <= F16_MAX))
                .unwrap_or(0);
            OutOfRange { block: b0 + bad }
        })?;
        for (g, p) in found.iter().enumerate() {
            for l in g * k..(g + 1) * k {
                let at = (l - g * k) * S;
                for i in 0..S {
                    block_codes[at + i] = codes[i][l];
                }
            }
            emit(b0 + g, p, &block_codes);
        }
        for (t, s) in total.iter_mut().zip(sums) {
            *t += f64::from(s);
        }
        b0 += count;
    }
    Ok(total)
}
