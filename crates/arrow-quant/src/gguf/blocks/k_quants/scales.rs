//! The packed sub-block fields of the K-quants: the 12 bytes of eight 6-bit scales and eight 6-bit minima of
//! Q4_K / Q5_K (ggml's `get_scale_min_k4`), the 12 bytes of sixteen 6-bit signed scales of Q3_K, and the
//! float16 super-block scales.

use half::f16;

/// Packs eight scales and eight minima (each `< 64`) as ggml's Q4_K / Q5_K do: fields 0..3 in the low six bits
/// of bytes 0..3 (scales) and 4..7 (minima); fields 4..7 with their low nibbles in bytes 8..11 (scale low,
/// minimum high) and their top two bits in the top bits of bytes 0..3 (scales) and 4..7 (minima).
pub(super) fn pack_scale_min_k4(sc: &[u8; 8], mn: &[u8; 8], out: &mut [u8]) {
    for j in 0..4 {
        out[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        out[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        out[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
    }
}

/// The scales and minima of a 12-byte Q4_K / Q5_K field block (ggml's `get_scale_min_k4` for `j = 0..7`).
#[inline(always)]
pub(super) fn unpack_scale_min_k4(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = q[j] & 63;
        mn[j] = q[j + 4] & 63;
        sc[j + 4] = (q[j + 8] & 0xF) | ((q[j] >> 6) << 4);
        mn[j + 4] = (q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

/// Packs sixteen Q3_K scale fields (each `< 64`, the signed scale plus 32): low nibbles of fields 0..7 in the
/// low nibbles of bytes 0..7, of fields 8..15 in their high nibbles; the top two bits of field `j` in bits
/// `2 * (j / 4)` of byte `8 + j % 4`.
pub(super) fn pack_q3_scales(fields: &[u8; 16], out: &mut [u8]) {
    out[..12].fill(0);
    for (j, &l) in fields.iter().enumerate() {
        if j < 8 {
            out[j] = l & 0xF;
        } else {
            out[j - 8] |= (l & 0xF) << 4;
        }
        out[8 + j % 4] |= (l >> 4) << (2 * (j / 4));
    }
}

/// The sixteen signed scales of a 12-byte Q3_K field block (each field minus 32, as ggml decodes them).
#[inline(always)]
pub(super) fn unpack_q3_scales(q: &[u8]) -> [i8; 16] {
    let mut s = [0i8; 16];
    for (j, v) in s.iter_mut().enumerate() {
        let low = if j < 8 { q[j] & 0xF } else { q[j - 8] >> 4 };
        let high = (q[8 + j % 4] >> (2 * (j / 4))) & 3;
        *v = (low | (high << 4)) as i8 - 32;
    }
    s
}

/// A little-endian float16 as f32.
#[inline(always)]
pub(super) fn read_f16(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Writes `v` (already a float16 value) as little-endian float16.
#[inline(always)]
pub(super) fn write_f16(v: f32, out: &mut [u8]) {
    out[..2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k4_fields_round_trip_through_ggml_packing() {
        let sc = [0, 63, 17, 32, 63, 1, 48, 15];
        let mn = [63, 0, 5, 40, 16, 62, 31, 33];
        let mut b = [0u8; 12];
        pack_scale_min_k4(&sc, &mn, &mut b);
        assert_eq!(unpack_scale_min_k4(&b), (sc, mn));
        // field 4's low nibble is byte 8's low nibble, its top bits byte 0's top bits
        assert_eq!(b[8] & 0xF, 63 & 0xF);
        assert_eq!(b[0] >> 6, 63 >> 4);
    }

    #[test]
    fn q3_fields_round_trip_as_signed_scales() {
        let mut f = [0u8; 16];
        for (j, v) in f.iter_mut().enumerate() {
            *v = (j as u8 * 13 + 7) % 64;
        }
        f[3] = 0;
        f[12] = 63;
        let mut b = [0u8; 12];
        pack_q3_scales(&f, &mut b);
        let s = unpack_q3_scales(&b);
        for j in 0..16 {
            assert_eq!(i32::from(s[j]), i32::from(f[j]) - 32, "field {j}");
        }
        assert_eq!((s[3], s[12]), (-32, 31));
    }
}
