//! Bit-exact decoding against gguf-py: `tests/fixtures/gguf/TYPE.blocks` holds random but valid blocks (edge-case
//! scales, all-zero and all-maximum codes) and `TYPE.f32` gguf-py's dequantized values; `make_fixtures.py` beside
//! them says how they were made.

use super::block_codec;
use crate::gguf::{dequantize_rows, GgmlType};

macro_rules! fixture {
    ($ty:ident) => {
        (
            GgmlType::$ty,
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/gguf/",
                stringify!($ty),
                ".blocks"
            ))
            .as_slice(),
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/gguf/",
                stringify!($ty),
                ".f32"
            ))
            .as_slice(),
        )
    };
}

#[test]
fn blocks_decode_bit_for_bit_as_gguf_py_does() {
    let fixtures = [
        fixture!(Q8_0),
        fixture!(Q4_0),
        fixture!(Q4_1),
        fixture!(Q5_0),
        fixture!(Q5_1),
        fixture!(IQ4_NL),
        fixture!(IQ4_XS),
    ];
    for (ty, blocks, want) in fixtures {
        assert!(block_codec(ty).is_some(), "{ty} has no codec");
        let n = blocks.len() / ty.block_bytes() * ty.block_len();
        let cols = 4 * ty.block_len();
        let got = dequantize_rows(ty, blocks, &[n / cols, cols], "fixture").unwrap();
        assert_eq!(got.len() * 4, want.len(), "{ty}");
        for (i, (g, w)) in got.iter().zip(want.chunks_exact(4)).enumerate() {
            let w = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            assert_eq!(
                g.to_bits(),
                w,
                "{ty} element {i}: {g} vs {}",
                f32::from_bits(w)
            );
        }
    }
}
