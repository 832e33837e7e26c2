//! Sixteen consecutive sub-blocks of `S` elements turned into SIMD lanes (`dst[i][lane]`), the layout of the
//! tile searches: AVX-512 gathers (one per element index) when the CPU has them, a plain loop otherwise (which
//! compilers turn into scatters, several times slower).

use crate::codec::flat::group::LANES;

/// `dst[i][l] = src[l * S + i]` for `i < S`, `l < 16` (`src` holds at least `16 * S` elements).
#[inline(always)]
pub(super) fn to_lanes<const S: usize>(src: &[f32], dst: &mut [[f32; LANES]; S]) {
    let src = &src[..LANES * S];
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512() {
        // SAFETY: the CPU reports AVX-512 F (checked just above); every gathered index `l * S + i` is below
        // `16 * S`, the length of `src`.
        unsafe { gather::<S>(src, dst) };
        return;
    }
    for i in 0..S {
        for l in 0..LANES {
            dst[i][l] = src[l * S + i];
        }
    }
}

/// [`to_lanes`] by gathers. Safety: the CPU must have AVX-512 F and `src` at least `16 * S` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather<const S: usize>(src: &[f32], dst: &mut [[f32; LANES]; S]) {
    use std::arch::x86_64::*;
    let stride = S as i32;
    let rows = _mm512_setr_epi32(
        0,
        stride,
        2 * stride,
        3 * stride,
        4 * stride,
        5 * stride,
        6 * stride,
        7 * stride,
        8 * stride,
        9 * stride,
        10 * stride,
        11 * stride,
        12 * stride,
        13 * stride,
        14 * stride,
        15 * stride,
    );
    for (i, row) in dst.iter_mut().enumerate() {
        let at = _mm512_add_epi32(rows, _mm512_set1_epi32(i as i32));
        // SAFETY: the indices are below 16 * S (the caller's promise on src's length).
        let v = unsafe { _mm512_i32gather_ps::<4>(at, src.as_ptr()) };
        // SAFETY: `row` is 16 f32.
        unsafe { _mm512_storeu_ps(row.as_mut_ptr(), v) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_hold_the_sub_blocks_elements_in_order() {
        let src: Vec<f32> = (0..LANES * 32).map(|v| v as f32).collect();
        let mut dst = [[0f32; LANES]; 32];
        to_lanes::<32>(&src, &mut dst);
        for (i, row) in dst.iter().enumerate() {
            for (l, &v) in row.iter().enumerate() {
                assert_eq!(v, (l * 32 + i) as f32, "element {i} of lane {l}");
            }
        }
        let mut dst16 = [[0f32; LANES]; 16];
        to_lanes::<16>(&src[7..], &mut dst16);
        assert_eq!(
            (dst16[3][5], dst16[15][15]),
            ((7 + 5 * 16 + 3) as f32, (7 + 255) as f32)
        );
    }
}
