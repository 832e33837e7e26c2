//! The byte format of the two-level encodings `int8_2l`, `int4_2l`, `int2_2l`: geometry, the super-block records
//! of the `params` buffer and exact decoding. The normative description is `docs/FORMAT.md`, section "Encodings".
//!
//! The tensor is seen as rows: when the last-axis length of its 2-D view is a multiple of the sub-block length
//! `S`, as one row of all `n` elements; otherwise as the `[rows, cols]` view. Each row is cut into sub-blocks of
//! `S` elements and super-blocks of `K` sub-blocks (`K * S = 256`), the last of each possibly shorter. Element `i`
//! of sub-block `j` of a super-block with header `(d, dmin)` and fields `(sc_j, mn_j)` dequantizes to
//! `q_i * (d * sc_j) - dmin * mn_j`, every operation in f32 with its own rounding (no fused multiply-add).
//! Codes are packed exactly like the flat encodings of the same width, in flat element order.

use crate::config::BitWidth;
use half::f16;

/// Elements of a full super-block, at every width.
pub const SUPER_BLOCK: usize = 256;
/// Bytes of a super-block header: `d` and `dmin` as little-endian float16.
const HEADER_BYTES: usize = 4;

/// Geometry of a two-level encoding, fixed by its code width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwoLevelSpec {
    /// Code width.
    pub bits: BitWidth,
    /// Elements per sub-block (`S`).
    pub sub_len: usize,
    /// Sub-blocks per super-block (`K = 256 / S`).
    pub subs_per_super: usize,
    /// Bits of each sub-block scale and minimum field (`F`).
    pub field_bits: u32,
}

impl TwoLevelSpec {
    /// The spec of the two-level encoding at `bits`: `int8_2l` and `int4_2l` use 32-element sub-blocks with
    /// 6-bit fields, `int2_2l` 16-element sub-blocks with 4-bit fields.
    pub const fn for_bits(bits: BitWidth) -> Self {
        let (sub_len, field_bits) = match bits {
            BitWidth::Int8 | BitWidth::Int4 => (32, 6),
            BitWidth::Int2 => (16, 4),
        };
        Self {
            bits,
            sub_len,
            subs_per_super: SUPER_BLOCK / sub_len,
            field_bits,
        }
    }

    /// Largest value of a scale or minimum field (`2^F - 1`).
    pub const fn field_max(self) -> u32 {
        (1 << self.field_bits) - 1
    }

    /// Bytes of one super-block record in `params`: header plus `K` scales plus `K` minima.
    pub const fn record_bytes(self) -> usize {
        HEADER_BYTES + 2 * (self.subs_per_super * self.field_bits as usize).div_ceil(8)
    }

    /// Bytes of the scale fields (and, equally, of the minimum fields) of one record.
    const fn field_bytes(self) -> usize {
        (self.subs_per_super * self.field_bits as usize).div_ceil(8)
    }

    /// The rows the encoding sees for a tensor whose 2-D view is `[rows, cols]`: one row of all elements when
    /// `cols` is a multiple of the sub-block length, else the view itself.
    pub fn rows_cols(self, rows: usize, cols: usize) -> (usize, usize) {
        if rows == 0 || cols == 0 {
            (0, 0)
        } else if cols.is_multiple_of(self.sub_len) {
            (1, rows * cols)
        } else {
            (rows, cols)
        }
    }

    /// Super-blocks per row of `cols` elements.
    pub fn supers_per_row(self, cols: usize) -> usize {
        cols.div_ceil(SUPER_BLOCK)
    }
}

/// The decoded parameters of one super-block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuperBlockParams {
    /// Super-block scale (float16 value as f32).
    pub d: f32,
    /// Super-block minimum scale (float16 value as f32).
    pub dmin: f32,
    /// Sub-block scale fields (first `K` used).
    pub sc: [u8; 16],
    /// Sub-block minimum fields (first `K` used).
    pub mn: [u8; 16],
}

/// Writes `values` (each `< 2^bits`) as a little-endian bit stream: value `j` in bits `j*bits..j*bits+bits-1`.
fn put_fields(values: &[u8], bits: u32, out: &mut [u8]) {
    out.fill(0);
    for (j, &v) in values.iter().enumerate() {
        let at = j * bits as usize;
        let word = u16::from(v) << (at % 8);
        out[at / 8] |= word as u8;
        if at / 8 + 1 < out.len() {
            out[at / 8 + 1] |= (word >> 8) as u8;
        }
    }
}

/// Reads `out.len()` values of `bits` bits from a little-endian bit stream (inverse of [`put_fields`]).
#[inline(always)]
fn get_fields(bytes: &[u8], bits: u32, out: &mut [u8]) {
    let mask = (1u16 << bits) - 1;
    for (j, o) in out.iter_mut().enumerate() {
        let at = j * bits as usize;
        let lo = u16::from(bytes[at / 8]);
        let hi = bytes.get(at / 8 + 1).map_or(0, |&b| u16::from(b));
        *o = (((lo | (hi << 8)) >> (at % 8)) & mask) as u8;
    }
}

impl SuperBlockParams {
    /// Serialises into one record of `spec.record_bytes()` bytes.
    pub fn write(&self, spec: TwoLevelSpec, out: &mut [u8]) {
        let k = spec.subs_per_super;
        let fb = spec.field_bytes();
        out[0..2].copy_from_slice(&f16::from_f32(self.d).to_le_bytes());
        out[2..4].copy_from_slice(&f16::from_f32(self.dmin).to_le_bytes());
        put_fields(&self.sc[..k], spec.field_bits, &mut out[4..4 + fb]);
        put_fields(&self.mn[..k], spec.field_bits, &mut out[4 + fb..4 + 2 * fb]);
    }

    /// Parses one record (the slice must hold at least `spec.record_bytes()` bytes).
    #[inline(always)]
    pub fn read(spec: TwoLevelSpec, record: &[u8]) -> Self {
        let k = spec.subs_per_super;
        let fb = spec.field_bytes();
        let mut p = Self {
            d: f16::from_le_bytes([record[0], record[1]]).to_f32(),
            dmin: f16::from_le_bytes([record[2], record[3]]).to_f32(),
            sc: [0; 16],
            mn: [0; 16],
        };
        get_fields(&record[4..4 + fb], spec.field_bits, &mut p.sc[..k]);
        get_fields(&record[4 + fb..4 + 2 * fb], spec.field_bits, &mut p.mn[..k]);
        p
    }

    /// Sub-block `j`'s step and minimum, exactly as dequantization computes them.
    #[inline(always)]
    pub fn sub_block(&self, j: usize) -> (f32, f32) {
        (
            self.d * f32::from(self.sc[j]),
            self.dmin * f32::from(self.mn[j]),
        )
    }
}

/// Dequantizes the codes of one super-block row segment: `out[i] = codes[i] * s_j - m_j`.
#[inline(always)]
pub(crate) fn decode_super_block(
    spec: TwoLevelSpec,
    p: &SuperBlockParams,
    codes: &[u8],
    out: &mut [f32],
) {
    match spec.sub_len {
        32 => decode_subs::<32>(p, codes, out),
        _ => decode_subs::<16>(p, codes, out),
    }
}

/// [`decode_super_block`] with the sub-block length known at compile time (full sub-blocks vectorise).
#[inline(always)]
fn decode_subs<const S: usize>(p: &SuperBlockParams, codes: &[u8], out: &mut [f32]) {
    let mut cs = codes.chunks_exact(S);
    let mut os = out.chunks_exact_mut(S);
    let mut j = 0;
    for (c, o) in (&mut cs).zip(&mut os) {
        let (s, m) = p.sub_block(j);
        for i in 0..S {
            o[i] = f32::from(c[i]) * s - m;
        }
        j += 1;
    }
    let (s, m) = p.sub_block(j.min(15));
    for (o, &q) in os.into_remainder().iter_mut().zip(cs.remainder()) {
        *o = f32::from(q) * s - m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sizes_give_the_promised_bits_per_weight() {
        let bpw = |bits: BitWidth| {
            let s = TwoLevelSpec::for_bits(bits);
            (SUPER_BLOCK * bits.bits() as usize + 8 * s.record_bytes()) as f64 / SUPER_BLOCK as f64
        };
        assert_eq!(bpw(BitWidth::Int4), 4.5);
        assert_eq!(bpw(BitWidth::Int8), 8.5);
        assert_eq!(bpw(BitWidth::Int2), 2.625);
    }

    #[test]
    fn fields_round_trip_and_follow_the_bit_order() {
        for bits in [BitWidth::Int2, BitWidth::Int4] {
            let spec = TwoLevelSpec::for_bits(bits);
            let max = spec.field_max() as u8;
            let mut p = SuperBlockParams {
                d: 0.5,
                dmin: -0.25,
                sc: [0; 16],
                mn: [0; 16],
            };
            for j in 0..spec.subs_per_super {
                p.sc[j] = (j as u8 * 7 + 3) & max;
                p.mn[j] = max - (j as u8 & max);
            }
            let mut rec = vec![0xAA; spec.record_bytes()];
            p.write(spec, &mut rec);
            assert_eq!(SuperBlockParams::read(spec, &rec), p);
            assert_eq!(&rec[0..2], &f16::from_f32(0.5).to_le_bytes());
            // the first scale field sits in the low bits of byte 4
            assert_eq!(u32::from(rec[4]) & spec.field_max(), u32::from(p.sc[0]));
        }
    }

    #[test]
    fn rows_fold_when_the_sub_block_divides_the_row() {
        let s = TwoLevelSpec::for_bits(BitWidth::Int4);
        assert_eq!(s.rows_cols(384, 384), (1, 384 * 384));
        assert_eq!(s.rows_cols(3, 100), (3, 100));
        assert_eq!(
            s.supers_per_row(384 * 384) * s.record_bytes(),
            384 * 384 / 256 * 16
        );
        assert_eq!(s.supers_per_row(100), 1);
        assert_eq!((s.rows_cols(5, 0), s.rows_cols(0, 7)), ((0, 0), (0, 0)));
    }
}
