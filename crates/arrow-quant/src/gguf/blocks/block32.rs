//! What the types with 32-element blocks share: the walk over a row four blocks at a time (the quad layout of
//! `lanes.rs`), the float16 fields, and the packing of codes into ggml's nibble and high-bit layouts.

use super::lanes::{Lanes, Quad, QUAD};
use super::OutOfRange;
use crate::codec::driver::QualitySums;
use half::f16;

/// Elements per block.
pub(super) const QK: usize = 32;

/// A row's quality sums, or its first out-of-range block.
pub(super) type RowResult = Result<QualitySums, OutOfRange>;

/// The largest block of these types, in bytes (Q8_0).
const MAX_BLOCK_BYTES: usize = 34;

/// A block-32 type's encoder of one quad (four blocks in the quad layout).
pub(super) trait QuadEncoder {
    /// Bytes per block.
    fn block_bytes(&self) -> usize;

    /// Encodes the quad `x` (importance `w`, all ones when `W` is false) into `out` (`4 * block_bytes` bytes)
    /// and returns its reconstruction (bit for bit what the decoder gives), or fails with the index of a block
    /// whose parameters are out of range.
    fn encode<L: Lanes, const W: bool>(
        &self,
        l: L,
        x: &Quad<L::V>,
        w: &Quad<L::V>,
        out: &mut [u8],
    ) -> Result<Quad<L::V>, usize>;
}

/// Quads between two flushes of the f32 quality sums into f64.
const FLUSH_QUADS: usize = 64;

/// Quality sums of quads, accumulated lane-wise in f32 and flushed into f64 (in lane order) every
/// [`FLUSH_QUADS`] quads.
struct RowSums<V> {
    acc: [V; 4],
    quads: usize,
    total: QualitySums,
}

impl<V: Copy> RowSums<V> {
    #[inline(always)]
    fn new<L: Lanes<V = V>>(l: L) -> Self {
        Self {
            acc: [l.splat(0.0); 4],
            quads: 0,
            total: QualitySums::default(),
        }
    }

    #[inline(always)]
    fn add<L: Lanes<V = V>>(&mut self, l: L, x: &Quad<V>, y: &Quad<V>) {
        let [mut xx, mut ee, mut xy, mut yy] = self.acc;
        for j in 0..8 {
            let e = l.sub(x[j], y[j]);
            xx = l.fma(x[j], x[j], xx);
            ee = l.fma(e, e, ee);
            xy = l.fma(x[j], y[j], xy);
            yy = l.fma(y[j], y[j], yy);
        }
        self.acc = [xx, ee, xy, yy];
        self.quads += 1;
        if self.quads == FLUSH_QUADS {
            self.flush(l);
        }
    }

    #[inline(always)]
    fn flush<L: Lanes<V = V>>(&mut self, l: L) {
        let mut t = [0f64; 4];
        for (t, v) in t.iter_mut().zip(self.acc) {
            for e in l.to_array(v) {
                *t += f64::from(e);
            }
        }
        self.total.add(QualitySums {
            xx: t[0],
            ee: t[1],
            xy: t[2],
            yy: t[3],
        });
        self.acc = [l.splat(0.0); 4];
        self.quads = 0;
    }
}

/// Encodes the blocks of row `x` four at a time (the last one to three blocks padded with zeros, which every
/// encoder encodes without error, to a zero reconstruction) and returns the quality sums of the row.
#[inline(always)]
pub(super) fn encode_row<L: Lanes, E: QuadEncoder>(
    l: L,
    e: &E,
    x: &[f32],
    importance: Option<&[f32]>,
    out: &mut [u8],
) -> Result<QualitySums, OutOfRange> {
    match importance {
        Some(w) => walk::<L, E, true>(l, e, x, w, out),
        None => walk::<L, E, false>(l, e, x, &[], out),
    }
}

#[inline(always)]
fn walk<L: Lanes, E: QuadEncoder, const W: bool>(
    l: L,
    e: &E,
    x: &[f32],
    w: &[f32],
    out: &mut [u8],
) -> Result<QualitySums, OutOfRange> {
    let blocks = x.len() / QK;
    let block_bytes = e.block_bytes();
    let quad_bytes = 4 * block_bytes;
    let full = blocks / 4;
    let ones = [l.splat(1.0); 8];
    let mut sums = RowSums::new(l);
    for qi in 0..full {
        let xs = l.load_quad(&x[qi * QUAD..]);
        let ws = if W {
            l.load_quad(&w[qi * QUAD..])
        } else {
            ones
        };
        let o = &mut out[qi * quad_bytes..(qi + 1) * quad_bytes];
        match e.encode::<L, W>(l, &xs, &ws, o) {
            Ok(y) => sums.add(l, &xs, &y),
            Err(k) => return Err(OutOfRange { block: 4 * qi + k }),
        }
    }
    let rest = blocks - 4 * full;
    if rest > 0 {
        let start = full * QUAD;
        let mut xp = [0f32; QUAD];
        xp[..rest * QK].copy_from_slice(&x[start..start + rest * QK]);
        let mut wp = [0f32; QUAD];
        if W {
            wp[..rest * QK].copy_from_slice(&w[start..start + rest * QK]);
        }
        let ws = if W { l.load_quad(&wp) } else { ones };
        let xs = l.load_quad(&xp);
        let mut op = [0u8; 4 * MAX_BLOCK_BYTES];
        match e.encode::<L, W>(l, &xs, &ws, &mut op[..quad_bytes]) {
            Ok(y) => sums.add(l, &xs, &y),
            Err(k) => {
                return Err(OutOfRange {
                    block: 4 * full + k,
                })
            }
        }
        out[full * quad_bytes..].copy_from_slice(&op[..rest * block_bytes]);
    }
    sums.flush(l);
    Ok(sums.total)
}

/// Index (0..4) of the first block whose lane group has a lane of `bad` set, if any.
#[inline(always)]
pub(super) fn first_block(bad: u16) -> Option<usize> {
    (bad != 0).then(|| bad.trailing_zeros() as usize / 4)
}

/// The float16 bits of each block's value of `v` (lane `4k`; the value is already a float16).
#[inline(always)]
pub(super) fn f16_bits<L: Lanes>(l: L, v: L::V) -> [[u8; 2]; 4] {
    let a = l.to_array(v);
    std::array::from_fn(|k| f16::from_f32(a[4 * k]).to_le_bytes())
}

/// The 16 bytes of `qs` per block for codes `0..16`: element `i` in the low nibble of byte `i`, element `i + 16`
/// in the high nibble (`block_q4_0` and its relatives).
#[inline(always)]
pub(super) fn nibbles<L: Lanes>(l: L, codes: &Quad<L::V>) -> [[u8; 16]; 4] {
    let sixteen = l.splat(16.0);
    let mut c = [sixteen; 4];
    for j in 0..4 {
        c[j] = l.fma(codes[j + 4], sixteen, codes[j]);
    }
    l.bytes_by_block(c)
}

/// Splits 5-bit codes into the low nibbles (returned in place) and each block's `qh` word: bit `i` is the high
/// bit of element `i` (`block_q5_0`).
#[inline(always)]
fn split_high_bits<L: Lanes>(l: L, codes: &mut Quad<L::V>) -> [u32; 4] {
    let mut qh = [0u32; 4];
    let (half, sixteen) = (l.splat(15.5), l.splat(16.0));
    for (j, c) in codes.iter_mut().enumerate() {
        let high = l.gt(*c, half);
        *c = l.select(high, l.sub(*c, sixteen), *c);
        for (k, h) in qh.iter_mut().enumerate() {
            *h |= u32::from((high >> (4 * k)) & 0xF) << (4 * j);
        }
    }
    qh
}

/// How a type stores a block's 32 codes after its scale fields.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Payload {
    /// 32 bytes, one code each (Q8_0: the signed byte).
    Bytes,
    /// 16 bytes of nibbles (Q4_0, Q4_1, IQ4_NL).
    Nibbles,
    /// The 32 high bits `qh`, then 16 bytes of low nibbles (Q5_0, Q5_1).
    HighBitsNibbles,
}

impl Payload {
    /// Bytes of the payload.
    pub(super) const fn len(self) -> usize {
        match self {
            Self::Bytes => 32,
            Self::Nibbles => 16,
            Self::HighBitsNibbles => 20,
        }
    }

    /// Writes the payload of the quad's blocks at offset `at` of each `block_bytes`-long block of `out`.
    #[inline(always)]
    pub(super) fn write<L: Lanes>(
        self,
        l: L,
        mut codes: Quad<L::V>,
        out: &mut [u8],
        block_bytes: usize,
        at: usize,
    ) {
        match self {
            Self::Bytes => {
                let lo = l.bytes_by_block([codes[0], codes[1], codes[2], codes[3]]);
                let hi = l.bytes_by_block([codes[4], codes[5], codes[6], codes[7]]);
                for k in 0..4 {
                    let o = &mut out[k * block_bytes + at..];
                    o[..16].copy_from_slice(&lo[k]);
                    o[16..32].copy_from_slice(&hi[k]);
                }
            }
            Self::Nibbles => {
                let qs = nibbles(l, &codes);
                for k in 0..4 {
                    out[k * block_bytes + at..][..16].copy_from_slice(&qs[k]);
                }
            }
            Self::HighBitsNibbles => {
                let qh = split_high_bits(l, &mut codes);
                let qs = nibbles(l, &codes);
                for k in 0..4 {
                    let o = &mut out[k * block_bytes + at..];
                    o[..4].copy_from_slice(&qh[k].to_le_bytes());
                    o[4..20].copy_from_slice(&qs[k]);
                }
            }
        }
    }
}

/// A float16 field of a block.
#[inline(always)]
pub(super) fn read_f16(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The 5-bit codes of a block from its `qh` word and 16 `qs` bytes.
#[inline(always)]
pub(super) fn codes5(qh: &[u8], qs: &[u8]) -> [u8; QK] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    std::array::from_fn(|i| {
        let low = if i < 16 {
            qs[i] & 0x0F
        } else {
            qs[i - 16] >> 4
        };
        low | (((qh >> i) & 1) as u8) << 4
    })
}

/// The 4-bit codes of a block from its 16 `qs` bytes.
#[inline(always)]
pub(super) fn codes4(qs: &[u8]) -> [u8; QK] {
    std::array::from_fn(|i| {
        if i < 16 {
            qs[i] & 0x0F
        } else {
            qs[i - 16] >> 4
        }
    })
}

#[cfg(test)]
pub(super) mod tests {
    //! Behaviour every block-32 type shares: error bounds, finite output, the fused quality sums, importance,
    //! out-of-range scales, and a clear gain over llama.cpp's reference rounding.

    use super::super::block_codec;
    use super::super::test_support::round_trip;
    use crate::gguf::GgmlType;
    use half::f16;
    use proptest::prelude::*;

    /// The block-32 types with a codec.
    pub(in crate::gguf::blocks) const TYPES: [GgmlType; 5] = [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
    ];

    /// A deterministic pseudo-random row: Gaussian-like values with block gains spread over `decades` decades
    /// and a few outliers.
    pub(in crate::gguf::blocks) fn sample_row(cols: usize, seed: u64, decades: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut gain = 1.0;
        (0..cols)
            .map(|i| {
                if i % 32 == 0 {
                    gain = 10f32.powf((next() - 0.5) * decades);
                }
                let g = (next() + next() + next() + next() - 2.0) * 1.7;
                let outlier = if next() < 0.01 { 8.0 } else { 1.0 };
                g * gain * outlier
            })
            .collect()
    }

    /// The largest error a block of `x` may show: its own range (the codes can always reach 0 or the minimum),
    /// plus the float16 rounding of the stored minimum and a float16 subnormal step.
    fn bound(ty: GgmlType, block: &[f32]) -> f32 {
        let lo = block.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let amax = lo.abs().max(hi.abs());
        let range = if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
            hi - lo
        } else {
            amax
        };
        range + amax / 1024.0 + 1e-7
    }

    fn check_row(ty: GgmlType, x: &[f32]) {
        let y = round_trip(ty, x, x.len(), None);
        for (b, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let limit = bound(ty, xb);
            for (u, v) in xb.iter().zip(yb) {
                assert!(
                    v.is_finite() && (u - v).abs() <= limit,
                    "{ty} block {b}: {u} -> {v} (bound {limit})"
                );
            }
        }
    }

    #[test]
    fn rows_of_any_block_count_round_trip_within_the_block_bounds() {
        for ty in TYPES {
            for blocks in 1..=9 {
                check_row(ty, &sample_row(32 * blocks, blocks as u64, 3.0));
            }
            // tiny blocks: the scales are float16 subnormals
            check_row(
                ty,
                &sample_row(256, 7, 2.0)
                    .iter()
                    .map(|v| v * 1e-6)
                    .collect::<Vec<_>>(),
            );
            check_row(ty, &[0.0; 64]);
            check_row(ty, &[-3.25; 64]);
        }
    }

    #[test]
    fn fused_quality_sums_match_the_decoded_row() {
        for ty in TYPES {
            let codec = block_codec(ty).unwrap();
            let x = sample_row(32 * 7, 3, 1.0);
            let mut out = vec![0u8; ty.row_bytes(x.len()).unwrap()];
            let mut scratch = vec![0f32; x.len()];
            let sums = codec
                .quantize_row_with_sums(&x, None, &mut out, &mut scratch)
                .unwrap();
            let mut back = vec![0f32; x.len()];
            codec.dequantize_row(&out, &mut back);
            let ee: f64 = x
                .iter()
                .zip(&back)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            let xx: f64 = x.iter().map(|a| f64::from(*a).powi(2)).sum();
            assert!(
                (sums.ee - ee).abs() <= 1e-5 * ee,
                "{ty}: {} vs {ee}",
                sums.ee
            );
            assert!((sums.xx - xx).abs() <= 1e-6 * xx, "{ty}");
        }
    }

    fn weighted_error(x: &[f32], y: &[f32], w: &[f32]) -> f64 {
        x.iter()
            .zip(y)
            .zip(w)
            .map(|((a, b), w)| f64::from(*w) * f64::from(a - b).powi(2))
            .sum()
    }

    #[test]
    fn importance_lowers_the_weighted_error() {
        let cols = 32 * 16;
        // a few heavy columns in every block, as activation statistics are
        let w: Vec<f32> = (0..cols)
            .map(|i| {
                if i % 7 == 3 {
                    40.0
                } else {
                    0.5 + (i % 5) as f32 * 0.1
                }
            })
            .collect();
        for ty in TYPES {
            let (mut plain, mut weighted) = (0.0, 0.0);
            for seed in 0..8 {
                let x = sample_row(cols, 100 + seed, 1.0);
                plain += weighted_error(&x, &round_trip(ty, &x, cols, None), &w);
                weighted += weighted_error(&x, &round_trip(ty, &x, cols, Some(&w)), &w);
            }
            assert!(weighted < 0.9 * plain, "{ty}: {weighted} vs {plain}");
        }
    }

    #[test]
    fn a_scale_beyond_float16_is_out_of_range_at_its_block() {
        for ty in TYPES {
            let mut x = sample_row(32 * 6, 5, 1.0);
            // a scale of amax / 127 (Q8_0) or / 16 (Q5_0) passes 65504 later than Q4_0's amax / 8
            x[32 * 4 + 9] = if ty == GgmlType::Q8_0 { 1.0e7 } else { -2.0e6 };
            let mut out = vec![0u8; ty.row_bytes(x.len()).unwrap()];
            let err = block_codec(ty).unwrap().quantize_row(&x, None, &mut out);
            assert_eq!(err, Err(super::OutOfRange { block: 4 }), "{ty}");
        }
    }

    /// llama.cpp's reference rounding (`quantize_row_*_ref`), decoded: the baseline the search must beat.
    fn reference(ty: GgmlType, x: &[f32]) -> Vec<f32> {
        let h = |v: f32| f16::from_f32(v).to_f32();
        let mut y = Vec::with_capacity(x.len());
        for b in x.chunks(32) {
            let lo = b.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let m = if -lo > hi { lo } else { hi };
            let inv = |d: f32| if d == 0.0 { 0.0 } else { 1.0 / d };
            match ty {
                GgmlType::Q8_0 => {
                    let d = m.abs() / 127.0;
                    y.extend(b.iter().map(|v| (v * inv(d)).round() * h(d)));
                }
                GgmlType::Q4_0 | GgmlType::Q5_0 => {
                    let n = if ty == GgmlType::Q4_0 { 8.0 } else { 16.0 };
                    let d = m / -n;
                    y.extend(
                        b.iter().map(|v| {
                            ((v * inv(d) + n + 0.5).trunc().min(2.0 * n - 1.0) - n) * h(d)
                        }),
                    );
                }
                _ => {
                    let nq = if ty == GgmlType::Q4_1 { 15.0 } else { 31.0 };
                    let d = (hi - lo) / nq;
                    y.extend(
                        b.iter()
                            .map(|v| ((v - lo) * inv(d) + 0.5).trunc().min(nq) * h(d) + h(lo)),
                    );
                }
            }
        }
        y
    }

    #[test]
    fn the_search_clearly_beats_llama_cpp_reference_rounding() {
        for ty in TYPES {
            let x = sample_row(32 * 256, 11, 1.0);
            let err = |y: &[f32]| weighted_error(&x, y, &vec![1.0; x.len()]);
            let (ours, theirs) = (
                err(&round_trip(ty, &x, x.len(), None)),
                err(&reference(ty, &x)),
            );
            // about 0.8-0.9 on the standard tensor; this sample has lighter tails
            assert!(ours < 0.97 * theirs, "{ty}: {ours} vs {theirs}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_finite_row_decodes_finite_within_the_block_bounds(
            blocks in 1usize..7,
            seed in any::<u64>(),
            decades in 0.0f32..6.0,
            scale in -20i32..=0,
            zeros in any::<bool>(),
        ) {
            // values up to about 3e4: every type's scales fit float16
            let gain = 10f32.powi(scale);
            let mut x: Vec<f32> = sample_row(32 * blocks, seed, decades).iter().map(|v| v * gain).collect();
            if zeros {
                x.iter_mut().step_by(3).for_each(|v| *v = 0.0);
            }
            for ty in TYPES {
                check_row(ty, &x);
            }
        }
    }
}
