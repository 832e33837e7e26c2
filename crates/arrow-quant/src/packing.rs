//! Dense bit packing of integer codes: INT8 one a byte, INT4 two a byte (element `2i` in the low nibble),
//! INT2 four a byte (element `4i+k` in bits `2k..2k+1`). A trailing partial byte has its unused bits zero.

use crate::config::BitWidth;

/// Packs `codes` (each `< 2^bits`) into `out`, which must be exactly `bits.packed_len(codes.len())` long.
///
/// # Panics
/// If `out` has the wrong length (a programming error inside the crate, never caused by user data).
#[inline]
pub fn pack_codes(codes: &[u8], bits: BitWidth, out: &mut [u8]) {
    assert_eq!(
        out.len(),
        bits.packed_len(codes.len()),
        "packed buffer length"
    );
    match bits {
        BitWidth::Int8 => out.copy_from_slice(codes),
        BitWidth::Int4 => {
            let pairs = codes.chunks_exact(2);
            let tail = pairs.remainder();
            for (byte, pair) in out.iter_mut().zip(pairs) {
                *byte = (pair[0] & 0x0f) | (pair[1] << 4);
            }
            if let [last] = tail {
                out[codes.len() / 2] = last & 0x0f;
            }
        }
        BitWidth::Int2 => {
            let quads = codes.chunks_exact(4);
            let tail = quads.remainder();
            for (byte, q) in out.iter_mut().zip(quads) {
                *byte = (q[0] & 3) | ((q[1] & 3) << 2) | ((q[2] & 3) << 4) | (q[3] << 6);
            }
            if !tail.is_empty() {
                let mut byte = 0u8;
                for (k, &c) in tail.iter().enumerate() {
                    byte |= (c & 3) << (2 * k);
                }
                out[codes.len() / 4] = byte;
            }
        }
    }
}

/// Unpacks the first `out.len()` codes from `packed` into `out` (one code per byte).
///
/// # Panics
/// If `packed` is shorter than `bits.packed_len(out.len())`.
#[inline]
pub fn unpack_codes(packed: &[u8], bits: BitWidth, out: &mut [u8]) {
    let n = out.len();
    assert!(
        packed.len() >= bits.packed_len(n),
        "packed buffer too short"
    );
    match bits {
        BitWidth::Int8 => out.copy_from_slice(&packed[..n]),
        BitWidth::Int4 => {
            let mut pairs = out.chunks_exact_mut(2);
            for (pair, &byte) in (&mut pairs).zip(packed) {
                pair[0] = byte & 0x0f;
                pair[1] = byte >> 4;
            }
            if let [last] = pairs.into_remainder() {
                *last = packed[n / 2] & 0x0f;
            }
        }
        BitWidth::Int2 => {
            let mut quads = out.chunks_exact_mut(4);
            for (q, &byte) in (&mut quads).zip(packed) {
                q[0] = byte & 3;
                q[1] = (byte >> 2) & 3;
                q[2] = (byte >> 4) & 3;
                q[3] = byte >> 6;
            }
            let tail = quads.into_remainder();
            if !tail.is_empty() {
                let byte = packed[n / 4];
                for (k, c) in tail.iter_mut().enumerate() {
                    *c = (byte >> (2 * k)) & 3;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn width() -> impl Strategy<Value = BitWidth> {
        prop_oneof![
            Just(BitWidth::Int2),
            Just(BitWidth::Int4),
            Just(BitWidth::Int8)
        ]
    }

    proptest! {
        #[test]
        fn round_trip_any_length(bits in width(), raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let codes: Vec<u8> = raw.iter().map(|c| (*c as u32 & bits.max_code()) as u8).collect();
            let mut packed = vec![0xAAu8; bits.packed_len(codes.len())];
            pack_codes(&codes, bits, &mut packed);
            let mut back = vec![0u8; codes.len()];
            unpack_codes(&packed, bits, &mut back);
            prop_assert_eq!(back, codes);
        }
    }

    #[test]
    fn layout_matches_the_spec() {
        let mut out = [0u8; 1];
        pack_codes(&[0x3, 0xC], BitWidth::Int4, &mut out);
        assert_eq!(out, [0xC3], "element 0 in the low nibble");
        pack_codes(&[1, 2, 3, 0], BitWidth::Int2, &mut out);
        assert_eq!(out, [0b00_11_10_01], "element k in bits 2k..2k+1");
        let mut tail = [0xFFu8; 2];
        pack_codes(&[1, 2, 3, 1, 2], BitWidth::Int2, &mut tail);
        assert_eq!(tail[1], 0b10, "unused bits of a partial byte are zero");
    }

    #[test]
    fn packed_sizes() {
        assert_eq!(BitWidth::Int4.packed_len(7), 4);
        assert_eq!(BitWidth::Int2.packed_len(9), 3);
        assert_eq!(BitWidth::Int8.packed_len(5), 5);
        assert_eq!(BitWidth::Int4.packed_len(4096 * 4096), 8 << 20);
    }
}
