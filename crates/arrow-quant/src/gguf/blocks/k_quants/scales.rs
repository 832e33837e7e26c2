//! The packed sub-block fields of the K-quants: the 12 bytes of eight 6-bit scales and eight 6-bit minima of
//! Q4_K / Q5_K (ggml's `get_scale_min_k4`) and the float16 super-block scales.

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
}
