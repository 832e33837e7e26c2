//! Bit-exact decoding: the blocks of `tests/fixtures/gguf/<type>.blocks` (random but valid bytes, edge codes and
//! scales; see `make_kquant_fixtures.py` there) decode to exactly the float32 values gguf-py's dequantizers gave
//! for them (`<type>.f32`).

use crate::gguf::{dequantize_rows, GgmlType};

/// The fixtures' shape: 2 rows of 3 super-blocks.
const SHAPE: [usize; 2] = [2, 3 * 256];

macro_rules! fixture {
    ($name:literal) => {
        (
            &include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/gguf/",
                $name,
                ".blocks"
            ))[..],
            &include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/gguf/",
                $name,
                ".f32"
            ))[..],
        )
    };
}

fn decodes_like_gguf_py(ty: GgmlType, (blocks, values): (&[u8], &[u8])) {
    let want: Vec<u32> = values
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let got = dequantize_rows(ty, blocks, &SHAPE, "fixture").unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g.to_bits(),
            *w,
            "{ty} element {i}: {g} against gguf-py's {}",
            f32::from_bits(*w)
        );
    }
}

#[test]
fn q4_k_decodes_bit_exactly_like_gguf_py() {
    decodes_like_gguf_py(GgmlType::Q4_K, fixture!("q4_k"));
}

#[test]
fn q5_k_decodes_bit_exactly_like_gguf_py() {
    decodes_like_gguf_py(GgmlType::Q5_K, fixture!("q5_k"));
}

#[test]
fn q2_k_decodes_bit_exactly_like_gguf_py() {
    decodes_like_gguf_py(GgmlType::Q2_K, fixture!("q2_k"));
}

#[test]
fn q6_k_decodes_bit_exactly_like_gguf_py() {
    decodes_like_gguf_py(GgmlType::Q6_K, fixture!("q6_k"));
}

#[test]
fn q3_k_decodes_bit_exactly_like_gguf_py() {
    decodes_like_gguf_py(GgmlType::Q3_K, fixture!("q3_k"));
}
