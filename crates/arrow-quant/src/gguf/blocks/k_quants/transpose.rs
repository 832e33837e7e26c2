//! Sixteen consecutive sub-blocks of `S` elements turned into SIMD lanes (`dst[i][lane]`), the layout of the
//! tile searches: 16 x 16 transposes by AVX-512 shuffles (unpacks, in-lane shuffles, then a 4 x 4 transpose of
//! 128-bit lanes; about twice as fast as the sixteen gathers it replaces) when the CPU has them, a plain loop
//! otherwise (which compilers turn into scatters, several times slower).

use crate::codec::flat::group::LANES;

/// `dst[i][l] = src[l * S + i]` for `i < S`, `l < 16` (`src` holds at least `16 * S` elements).
#[inline(always)]
pub(super) fn to_lanes<const S: usize>(src: &[f32], dst: &mut [[f32; LANES]; S]) {
    let src = &src[..LANES * S];
    #[cfg(target_arch = "x86_64")]
    if S.is_multiple_of(LANES) && crate::simd::has_avx512() {
        for c in 0..S / LANES {
            let (rows, _) = dst[c * LANES..].split_at_mut(LANES);
            // SAFETY: the CPU reports AVX-512 F (checked just above); the rows read, `src[l * S + c * 16..][..16]`
            // for `l < 16`, end at `15 * S + S` at most, the length of `src`.
            unsafe { transpose16(&src[c * LANES..], S, rows) };
        }
        return;
    }
    for i in 0..S {
        for l in 0..LANES {
            dst[i][l] = src[l * S + i];
        }
    }
}

/// `dst[i][l] = src[l * stride + i]` for `i, l < 16`. Safety: the CPU must have AVX-512 F, and `src` must hold
/// `15 * stride + 16` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose16(src: &[f32], stride: usize, dst: &mut [[f32; LANES]]) {
    use std::arch::x86_64::*;
    let p = src.as_ptr();
    let mut r = [_mm512_setzero_ps(); 16];
    for (l, v) in r.iter_mut().enumerate() {
        // SAFETY: row l is in bounds (the caller's promise on src's length).
        *v = unsafe { _mm512_loadu_ps(p.add(l * stride)) };
    }
    // Pairs of rows interleaved: t[2p] holds rows 2p, 2p + 1 at columns 4m, 4m + 1 of 128-bit lane m, t[2p + 1]
    // at columns 4m + 2, 4m + 3.
    let mut t = r;
    for p in 0..8 {
        t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
        t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
    }
    // u[4k + j]: lane m holds column 4m + j of rows 4k..4k + 4.
    let mut u = t;
    for k in 0..4 {
        u[4 * k] = _mm512_shuffle_ps::<0x44>(t[4 * k], t[4 * k + 2]);
        u[4 * k + 1] = _mm512_shuffle_ps::<0xEE>(t[4 * k], t[4 * k + 2]);
        u[4 * k + 2] = _mm512_shuffle_ps::<0x44>(t[4 * k + 1], t[4 * k + 3]);
        u[4 * k + 3] = _mm512_shuffle_ps::<0xEE>(t[4 * k + 1], t[4 * k + 3]);
    }
    // Column 4m + j takes lane m of u[j], u[4 + j], u[8 + j], u[12 + j] (a 4 x 4 transpose of 128-bit lanes).
    for j in 0..4 {
        let t0 = _mm512_shuffle_f32x4::<0x44>(u[j], u[4 + j]);
        let t1 = _mm512_shuffle_f32x4::<0xEE>(u[j], u[4 + j]);
        let t2 = _mm512_shuffle_f32x4::<0x44>(u[8 + j], u[12 + j]);
        let t3 = _mm512_shuffle_f32x4::<0xEE>(u[8 + j], u[12 + j]);
        let cols = [
            _mm512_shuffle_f32x4::<0x88>(t0, t2),
            _mm512_shuffle_f32x4::<0xDD>(t0, t2),
            _mm512_shuffle_f32x4::<0x88>(t1, t3),
            _mm512_shuffle_f32x4::<0xDD>(t1, t3),
        ];
        for (m, v) in cols.into_iter().enumerate() {
            // SAFETY: `dst[4m + j]` is 16 f32.
            unsafe { _mm512_storeu_ps(dst[4 * m + j].as_mut_ptr(), v) };
        }
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
