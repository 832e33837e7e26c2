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

    /// [`encode`](Self::encode) of two consecutive quads (`out` is `8 * block_bytes` bytes; a failing block's
    /// index counts from the first quad). Encoders whose search is latency-bound override it with one that
    /// interleaves the two.
    #[inline(always)]
    fn encode_pair<L: Lanes, const W: bool>(
        &self,
        l: L,
        x: &[Quad<L::V>; 2],
        w: &[Quad<L::V>; 2],
        out: &mut [u8],
    ) -> Result<[Quad<L::V>; 2], usize> {
        let (oa, ob) = out.split_at_mut(4 * self.block_bytes());
        let a = self.encode::<L, W>(l, &x[0], &w[0], oa)?;
        let b = self
            .encode::<L, W>(l, &x[1], &w[1], ob)
            .map_err(|k| 4 + k)?;
        Ok([a, b])
    }
}

/// Quads between two flushes of the f32 quality sums into f64 (128 products per lane).
const FLUSH_QUADS: usize = 16;

/// Quality sums of quads, accumulated lane-wise in f32 and flushed into f64 (in lane order) every
/// [`FLUSH_QUADS`] quads. `Σxy` is not summed: a flush derives it as `(Σx² + Σy² - Σ(x - y)²) / 2` (no
/// cancellation: the error term is the small one), one sum fewer per quad.
pub(super) struct RowSums<V> {
    /// `Σx²`, `Σ(x - y)²`, `Σy²`.
    acc: [V; 3],
    quads: usize,
    total: QualitySums,
}

impl<V: Copy> RowSums<V> {
    #[inline(always)]
    pub(super) fn new<L: Lanes<V = V>>(l: L) -> Self {
        Self {
            acc: [l.splat(0.0); 3],
            quads: 0,
            total: QualitySums::default(),
        }
    }

    /// Adds a quad `x` and its reconstruction `y`.
    #[inline(always)]
    pub(super) fn add<L: Lanes<V = V>>(&mut self, l: L, x: &Quad<V>, y: &Quad<V>) {
        // one fused multiply-add per vector and sum: the loop-carried chains (eight FMAs a quad) are far shorter
        // than a quad's search, and a tree per quad cost half as many operations again
        let [mut xx, mut ee, mut yy] = self.acc;
        for j in 0..8 {
            let e = l.sub(x[j], y[j]);
            xx = l.fma(x[j], x[j], xx);
            ee = l.fma(e, e, ee);
            yy = l.fma(y[j], y[j], yy);
        }
        self.acc = [xx, ee, yy];
        self.quads += 1;
        if self.quads == FLUSH_QUADS {
            self.flush(l);
        }
    }

    #[inline(always)]
    fn flush<L: Lanes<V = V>>(&mut self, l: L) {
        let mut t = [0f64; 3];
        for (t, v) in t.iter_mut().zip(self.acc) {
            for e in l.to_array(v) {
                *t += f64::from(e);
            }
        }
        let [xx, ee, yy] = t;
        self.total.add(QualitySums {
            xx,
            ee,
            xy: 0.5 * (xx + yy - ee),
            yy,
        });
        self.acc = [l.splat(0.0); 3];
        self.quads = 0;
    }

    /// The sums of every quad added.
    #[inline(always)]
    pub(super) fn finish<L: Lanes<V = V>>(mut self, l: L) -> QualitySums {
        self.flush(l);
        self.total
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
    let pairs = full / 2;
    for pi in 0..pairs {
        let at = 2 * pi * QUAD;
        let xs = [l.load_quad(&x[at..]), l.load_quad(&x[at + QUAD..])];
        let ws = if W {
            [l.load_quad(&w[at..]), l.load_quad(&w[at + QUAD..])]
        } else {
            [ones; 2]
        };
        let o = &mut out[2 * pi * quad_bytes..(2 * pi + 2) * quad_bytes];
        match e.encode_pair::<L, W>(l, &xs, &ws, o) {
            Ok([ya, yb]) => {
                sums.add(l, &xs[0], &ya);
                sums.add(l, &xs[1], &yb);
            }
            Err(k) => return Err(OutOfRange { block: 8 * pi + k }),
        }
    }
    for qi in 2 * pairs..full {
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
    Ok(sums.finish(l))
}

/// Index (0..4) of the first block whose lane group has a lane of `bad` set, if any.
#[inline(always)]
pub(super) fn first_block(bad: u16) -> Option<usize> {
    (bad != 0).then(|| bad.trailing_zeros() as usize / 4)
}

/// The float16 bits of each block's value of `v` (lane `4k`; the value is already a float16).
#[inline(always)]
pub(super) fn f16_bits<L: Lanes>(l: L, v: L::V) -> [[u8; 2]; 4] {
    // one vector conversion: a scalar `f16::from_f32` per block is a call (and a CPU-feature check) each
    let a = l.f16_words(v);
    [
        a[0].to_le_bytes(),
        a[4].to_le_bytes(),
        a[8].to_le_bytes(),
        a[12].to_le_bytes(),
    ]
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
