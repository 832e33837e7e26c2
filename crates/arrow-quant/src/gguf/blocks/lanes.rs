//! Sixteen f32 lanes holding four 32-element blocks side by side (the "quad layout"), with one implementation on
//! AVX-512 intrinsics and one in plain Rust that the compiler vectorises where it can.
//!
//! In the quad layout vector `j` (0..8) of four consecutive blocks holds, in lane `4k + l`, element `4j + l` of
//! block `k`: each block owns one 128-bit lane group, so a block's sums, minima and maxima are per-group
//! reductions and every per-block decision is an ordinary lane-wise select. Vectors `j` and `j + 4` hold elements
//! `i` and `i + 16`, the pairs ggml packs into one byte.
//!
//! Code running on these lanes must not call closures or generic helpers that take closures (`array::from_fn`,
//! `Iterator::map`): a closure does not inherit the caller's target features, so the intrinsics inside it would
//! become function calls. Plain loops over arrays are fine.
//!
//! Both implementations perform the same IEEE operations in the same order (fused multiply-adds are fused in
//! both, group reductions follow the same tree, `max(a, b)` is `a > b ? a : b` in both), so a codec produces the
//! same bytes on every CPU. [`lanes_entry!`] defines a function that runs a generic kernel on the best
//! implementation the CPU has.

/// Four blocks of 32 elements in the quad layout.
pub(super) type Quad<V> = [V; 8];

/// Elements of a quad.
pub(super) const QUAD: usize = 128;

/// The operations the block searches use. Masks are `u16`, one bit per lane.
pub(super) trait Lanes: Copy {
    /// Sixteen f32.
    type V: Copy;
    /// A 32-entry lookup table.
    type Table: Copy;
    /// Sixteen table indices.
    type Idx: Copy;

    fn splat(self, v: f32) -> Self::V;
    fn to_array(self, v: Self::V) -> [f32; 16];
    /// Four consecutive blocks (`src[..128]`) in the quad layout.
    fn load_quad(self, src: &[f32]) -> Quad<Self::V>;
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, rounded once.
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a < b ? a : b`.
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a > b ? a : b`.
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    fn abs(self, a: Self::V) -> Self::V;
    /// Round to the nearest integer, ties to even.
    fn round(self, a: Self::V) -> Self::V;
    /// Lanes where `a > b`.
    fn gt(self, a: Self::V, b: Self::V) -> u16;
    /// `a` in the lanes of `m`, `b` elsewhere.
    fn select(self, m: u16, a: Self::V, b: Self::V) -> Self::V;
    /// Sum over each block's lane group, in every lane of the group.
    fn group_sum(self, v: Self::V) -> Self::V;
    /// Maximum over each block's lane group, in every lane of the group.
    fn group_max(self, v: Self::V) -> Self::V;
    /// Minimum over each block's lane group, in every lane of the group.
    fn group_min(self, v: Self::V) -> Self::V;
    /// Rounded to float16 (nearest, ties to even; beyond 65504 infinite) and back.
    fn to_f16(self, v: Self::V) -> Self::V;
    /// The float16 bit patterns of `v` (nearest, ties to even, as [`Lanes::to_f16`]).
    fn f16_words(self, v: Self::V) -> [u16; 16];
    fn table(self, t: &[f32; 32]) -> Self::Table;
    /// Table indices: `v` (values in `[0, 32)`) truncated.
    fn index(self, v: Self::V) -> Self::Idx;
    /// `t[i]` per lane.
    fn lookup(self, t: Self::Table, i: Self::Idx) -> Self::V;
    /// Per block, the 16 bytes `c[0..4]` hold for it (lane values are integers in `-128..256`, stored as their low
    /// byte): byte `4j + l` of block `k` is lane `4k + l` of `c[j]`.
    fn bytes_by_block(self, c: [Self::V; 4]) -> [[u8; 16]; 4];
}

/// Lane-wise helpers built on [`Lanes`].
pub(super) trait LanesExt: Lanes {
    /// `v` clamped to `[lo, hi]`.
    #[inline(always)]
    fn clamp(self, v: Self::V, lo: Self::V, hi: Self::V) -> Self::V {
        self.min(self.max(v, lo), hi)
    }

    /// `1 / v`, or 0 where that is not finite.
    #[inline(always)]
    fn recip_or_zero(self, v: Self::V) -> Self::V {
        let r = self.div(self.splat(1.0), v);
        let finite = self.gt(self.splat(f32::MAX), self.abs(r));
        self.select(finite, r, self.splat(0.0))
    }

    /// Per-block sum of `a[j] * b[j]` over the eight vectors of a quad: pairs fused (`a1 b1 + a0 b0`), then a
    /// tree of adds (a short dependency chain: the block-32 searches are latency-bound), reduced per group.
    #[inline(always)]
    fn block_dot(self, a: &Quad<Self::V>, b: &Quad<Self::V>) -> Self::V {
        self.group_sum(self.quad_dot(a, b))
    }

    /// Lane-wise sum of `a[j] * b[j]` over the eight vectors of a quad, in [`block_dot`](Self::block_dot)'s
    /// order.
    #[inline(always)]
    fn quad_dot(self, a: &Quad<Self::V>, b: &Quad<Self::V>) -> Self::V {
        let mut p = [a[0]; 4];
        for (k, v) in p.iter_mut().enumerate() {
            *v = self.fma(a[2 * k + 1], b[2 * k + 1], self.mul(a[2 * k], b[2 * k]));
        }
        self.add(self.add(p[0], p[1]), self.add(p[2], p[3]))
    }

    /// The eight vectors of a quad added lane-wise as a tree (`((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7))`).
    #[inline(always)]
    fn quad_sum(self, v: &Quad<Self::V>) -> Self::V {
        let (a, b) = (self.add(v[0], v[1]), self.add(v[2], v[3]));
        let (c, d) = (self.add(v[4], v[5]), self.add(v[6], v[7]));
        self.add(self.add(a, b), self.add(c, d))
    }

    /// Lane-wise minimum and maximum of the eight vectors of a quad, as trees.
    #[inline(always)]
    fn quad_min_max(self, v: &Quad<Self::V>) -> (Self::V, Self::V) {
        let mut lo = [v[0]; 4];
        let mut hi = [v[0]; 4];
        for k in 0..4 {
            lo[k] = self.min(v[2 * k], v[2 * k + 1]);
            hi[k] = self.max(v[2 * k], v[2 * k + 1]);
        }
        (
            self.min(self.min(lo[0], lo[1]), self.min(lo[2], lo[3])),
            self.max(self.max(hi[0], hi[1]), self.max(hi[2], hi[3])),
        )
    }
}

impl<L: Lanes> LanesExt for L {}

/// Plain Rust lanes: the fallback, and the AVX2 build (compiled with AVX2 + FMA, where the loops vectorise).
#[derive(Clone, Copy)]
pub(super) struct Portable;

#[inline(always)]
fn map2(a: [f32; 16], b: [f32; 16], f: impl Fn(f32, f32) -> f32) -> [f32; 16] {
    std::array::from_fn(|i| f(a[i], b[i]))
}

#[inline(always)]
fn mask(f: impl Fn(usize) -> bool) -> u16 {
    (0..16).fold(0u16, |m, i| m | (u16::from(f(i)) << i))
}

/// The AVX-512 permute tree of the group reductions: lane `i` combines with lane `i ^ 1`, then with `i ^ 2`.
#[inline(always)]
fn group_tree(v: [f32; 16], f: impl Fn(f32, f32) -> f32) -> [f32; 16] {
    let t: [f32; 16] = std::array::from_fn(|i| f(v[i], v[i ^ 1]));
    std::array::from_fn(|i| f(t[i], t[i ^ 2]))
}

#[inline(always)]
fn max1(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

#[inline(always)]
fn min1(a: f32, b: f32) -> f32 {
    if a < b {
        a
    } else {
        b
    }
}

impl Lanes for Portable {
    type V = [f32; 16];
    type Table = [f32; 32];
    type Idx = [u8; 16];

    #[inline(always)]
    fn splat(self, v: f32) -> Self::V {
        [v; 16]
    }
    #[inline(always)]
    fn to_array(self, v: Self::V) -> [f32; 16] {
        v
    }
    #[inline(always)]
    fn load_quad(self, src: &[f32]) -> Quad<Self::V> {
        let src = &src[..QUAD];
        std::array::from_fn(|j| std::array::from_fn(|i| src[(i / 4) * 32 + 4 * j + i % 4]))
    }
    #[inline(always)]
    fn add(self, a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, |a, b| a + b)
    }
    #[inline(always)]
    fn sub(self, a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, |a, b| a - b)
    }
    #[inline(always)]
    fn mul(self, a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, |a, b| a * b)
    }
    #[inline(always)]
    fn div(self, a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, |a, b| a / b)
    }
    #[inline(always)]
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i].mul_add(b[i], c[i]))
    }
    #[inline(always)]
    fn min(self, a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, min1)
    }
    #[inline(always)]
    fn max(self, a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, max1)
    }
    #[inline(always)]
    fn abs(self, a: Self::V) -> Self::V {
        a.map(f32::abs)
    }
    #[inline(always)]
    fn round(self, a: Self::V) -> Self::V {
        a.map(f32::round_ties_even)
    }
    #[inline(always)]
    fn gt(self, a: Self::V, b: Self::V) -> u16 {
        mask(|i| a[i] > b[i])
    }
    #[inline(always)]
    fn select(self, m: u16, a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| if m >> i & 1 == 1 { a[i] } else { b[i] })
    }
    #[inline(always)]
    fn group_sum(self, v: Self::V) -> Self::V {
        group_tree(v, |a, b| a + b)
    }
    #[inline(always)]
    fn group_max(self, v: Self::V) -> Self::V {
        group_tree(v, max1)
    }
    #[inline(always)]
    fn group_min(self, v: Self::V) -> Self::V {
        group_tree(v, min1)
    }
    #[inline(always)]
    fn to_f16(self, v: Self::V) -> Self::V {
        v.map(|x| half::f16::from_f32(x).to_f32())
    }
    #[inline(always)]
    fn f16_words(self, v: Self::V) -> [u16; 16] {
        v.map(|x| half::f16::from_f32(x).to_bits())
    }
    #[inline(always)]
    fn table(self, t: &[f32; 32]) -> Self::Table {
        *t
    }
    #[inline(always)]
    fn index(self, v: Self::V) -> Self::Idx {
        v.map(|i| (i as u8) & 31)
    }
    #[inline(always)]
    fn lookup(self, t: Self::Table, i: Self::Idx) -> Self::V {
        i.map(|i| t[usize::from(i)])
    }
    #[inline(always)]
    fn bytes_by_block(self, c: [Self::V; 4]) -> [[u8; 16]; 4] {
        std::array::from_fn(|k| std::array::from_fn(|b| c[b / 4][4 * k + b % 4] as i32 as u8))
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use avx512::Avx512;

// The AVX-512 intrinsics are stable since Rust 1.89, the workspace's rust-version.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Lanes, Quad, QUAD};
    use std::arch::x86_64::*;

    /// AVX-512 lanes (F, BW, VL, DQ). Only [`Avx512::detect`] makes one, so holding one proves the CPU has them;
    /// its methods must run inside a function compiled with those features (see `lanes_entry!`).
    #[derive(Clone, Copy)]
    pub(in crate::gguf::blocks) struct Avx512(());

    impl Avx512 {
        /// The lanes, when the CPU has the features.
        #[inline]
        pub(in crate::gguf::blocks) fn detect() -> Option<Self> {
            crate::simd::has_avx512().then_some(Self(()))
        }
    }

    // SAFETY (every block below): an `Avx512` exists only when the CPU reports AVX-512 F/BW/VL/DQ, and the
    // methods are inlined into functions compiled with those features; loads read in-bounds slices.
    impl Lanes for Avx512 {
        type V = __m512;
        type Table = (__m512, __m512);
        type Idx = __m512i;

        #[inline(always)]
        fn splat(self, v: f32) -> Self::V {
            unsafe { _mm512_set1_ps(v) }
        }
        #[inline(always)]
        fn to_array(self, v: Self::V) -> [f32; 16] {
            let mut out = [0f32; 16];
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), v) };
            out
        }
        #[inline(always)]
        fn load_quad(self, src: &[f32]) -> Quad<Self::V> {
            let src = &src[..QUAD];
            unsafe {
                let p = src.as_ptr();
                // a[k]: elements 16h..16h+16 of block k; a 4x4 transpose of 128-bit lanes sends lane j of block k
                // to vector 4h + j, lane group k (no closures here: they would not inherit the target features)
                let mut out = [_mm512_setzero_ps(); 8];
                for h in 0..2 {
                    let a0 = _mm512_loadu_ps(p.add(16 * h));
                    let a1 = _mm512_loadu_ps(p.add(32 + 16 * h));
                    let a2 = _mm512_loadu_ps(p.add(64 + 16 * h));
                    let a3 = _mm512_loadu_ps(p.add(96 + 16 * h));
                    let t0 = _mm512_shuffle_f32x4::<0x44>(a0, a1);
                    let t1 = _mm512_shuffle_f32x4::<0xEE>(a0, a1);
                    let t2 = _mm512_shuffle_f32x4::<0x44>(a2, a3);
                    let t3 = _mm512_shuffle_f32x4::<0xEE>(a2, a3);
                    out[4 * h] = _mm512_shuffle_f32x4::<0x88>(t0, t2);
                    out[4 * h + 1] = _mm512_shuffle_f32x4::<0xDD>(t0, t2);
                    out[4 * h + 2] = _mm512_shuffle_f32x4::<0x88>(t1, t3);
                    out[4 * h + 3] = _mm512_shuffle_f32x4::<0xDD>(t1, t3);
                }
                out
            }
        }
        #[inline(always)]
        fn add(self, a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        fn sub(self, a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm512_sub_ps(a, b) }
        }
        #[inline(always)]
        fn mul(self, a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        fn div(self, a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm512_div_ps(a, b) }
        }
        #[inline(always)]
        fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn min(self, a: Self::V, b: Self::V) -> Self::V {
            // vminps returns its second operand unless the first is smaller: `a < b ? a : b`
            unsafe { _mm512_min_ps(a, b) }
        }
        #[inline(always)]
        fn max(self, a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm512_max_ps(a, b) }
        }
        #[inline(always)]
        fn abs(self, a: Self::V) -> Self::V {
            unsafe { _mm512_abs_ps(a) }
        }
        #[inline(always)]
        fn round(self, a: Self::V) -> Self::V {
            unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
        }
        #[inline(always)]
        fn gt(self, a: Self::V, b: Self::V) -> u16 {
            unsafe { _mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, b) }
        }
        #[inline(always)]
        fn select(self, m: u16, a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm512_mask_blend_ps(m, b, a) }
        }
        #[inline(always)]
        fn group_sum(self, v: Self::V) -> Self::V {
            unsafe {
                let t = _mm512_add_ps(v, _mm512_permute_ps::<0b10_11_00_01>(v));
                _mm512_add_ps(t, _mm512_permute_ps::<0b01_00_11_10>(t))
            }
        }
        #[inline(always)]
        fn group_max(self, v: Self::V) -> Self::V {
            unsafe {
                let t = _mm512_max_ps(v, _mm512_permute_ps::<0b10_11_00_01>(v));
                _mm512_max_ps(t, _mm512_permute_ps::<0b01_00_11_10>(t))
            }
        }
        #[inline(always)]
        fn group_min(self, v: Self::V) -> Self::V {
            unsafe {
                let t = _mm512_min_ps(v, _mm512_permute_ps::<0b10_11_00_01>(v));
                _mm512_min_ps(t, _mm512_permute_ps::<0b01_00_11_10>(t))
            }
        }
        #[inline(always)]
        fn to_f16(self, v: Self::V) -> Self::V {
            unsafe {
                _mm512_cvtph_ps(_mm512_cvtps_ph::<
                    { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
                >(v))
            }
        }
        #[inline(always)]
        fn f16_words(self, v: Self::V) -> [u16; 16] {
            let mut out = [0u16; 16];
            unsafe {
                let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                _mm256_storeu_si256(out.as_mut_ptr().cast(), h);
            }
            out
        }
        #[inline(always)]
        fn table(self, t: &[f32; 32]) -> Self::Table {
            unsafe {
                (
                    _mm512_loadu_ps(t.as_ptr()),
                    _mm512_loadu_ps(t.as_ptr().add(16)),
                )
            }
        }
        #[inline(always)]
        fn index(self, v: Self::V) -> Self::Idx {
            unsafe { _mm512_cvttps_epi32(v) }
        }
        #[inline(always)]
        fn lookup(self, t: Self::Table, i: Self::Idx) -> Self::V {
            // the permute reads the low five bits of each index
            unsafe { _mm512_permutex2var_ps(t.0, i, t.1) }
        }
        #[inline(always)]
        fn bytes_by_block(self, c: [Self::V; 4]) -> [[u8; 16]; 4] {
            unsafe {
                // row j: the 4 bytes of each block from c[j]; then a 4x4 transpose of 32-bit words
                let r0 = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(c[0]));
                let r1 = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(c[1]));
                let r2 = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(c[2]));
                let r3 = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(c[3]));
                let a = _mm_unpacklo_epi32(r0, r1);
                let b = _mm_unpackhi_epi32(r0, r1);
                let c2 = _mm_unpacklo_epi32(r2, r3);
                let d = _mm_unpackhi_epi32(r2, r3);
                let mut out = [[0u8; 16]; 4];
                _mm_storeu_si128(out[0].as_mut_ptr().cast(), _mm_unpacklo_epi64(a, c2));
                _mm_storeu_si128(out[1].as_mut_ptr().cast(), _mm_unpackhi_epi64(a, c2));
                _mm_storeu_si128(out[2].as_mut_ptr().cast(), _mm_unpacklo_epi64(b, d));
                _mm_storeu_si128(out[3].as_mut_ptr().cast(), _mm_unpackhi_epi64(b, d));
                out
            }
        }
    }
}

/// Defines `fn $name(args) -> ret` that runs the generic kernel `$kernel(lanes, args)` on AVX-512 lanes when the
/// CPU has them, else on [`Portable`] lanes compiled for AVX2 + FMA when it has those, else on plain
/// [`Portable`] lanes.
macro_rules! lanes_entry {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty = $kernel:path) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
                fn avx512(l: $crate::gguf::blocks::lanes::Avx512, $($arg: $ty),*) -> $ret {
                    $kernel(l, $($arg),*)
                }
                #[target_feature(enable = "avx2,fma,f16c")]
                fn avx2($($arg: $ty),*) -> $ret {
                    $kernel($crate::gguf::blocks::lanes::Portable, $($arg),*)
                }
                if let Some(l) = $crate::gguf::blocks::lanes::Avx512::detect() {
                    // SAFETY: `detect` checked every feature `avx512` was compiled for.
                    return unsafe { avx512(l, $($arg),*) };
                }
                if $crate::simd::has_avx2() {
                    // SAFETY: the CPU reports AVX2, FMA and F16C, the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $kernel($crate::gguf::blocks::lanes::Portable, $($arg),*)
        }
    };
}
pub(super) use lanes_entry;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<f32> {
        (0..QUAD)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.173)
            .collect()
    }

    #[test]
    fn portable_quad_layout_puts_each_block_in_its_lane_group() {
        let x = sample();
        let q = Portable.load_quad(&x);
        for (j, v) in q.iter().enumerate() {
            for (lane, &e) in v.iter().enumerate() {
                assert_eq!(e, x[(lane / 4) * 32 + 4 * j + lane % 4]);
            }
        }
        let sums = Portable.group_sum(Portable.add(q[0], q[7]));
        for k in 0..4 {
            let want = (0..4)
                .map(|l| x[32 * k + l] + x[32 * k + 28 + l])
                .collect::<Vec<_>>();
            let tree = (want[0] + want[1]) + (want[2] + want[3]);
            assert!(sums[4 * k..4 * k + 4].iter().all(|&s| s == tree));
        }
        let bytes = Portable.bytes_by_block(std::array::from_fn(|j| {
            std::array::from_fn(|lane| (16 * j + lane) as f32)
        }));
        assert_eq!(bytes[1][..5], [4, 5, 6, 7, 20]);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_lanes_match_portable_lanes_bit_for_bit() {
        let Some(a) = Avx512::detect() else {
            return;
        };
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
        fn check(a: Avx512, x: &[f32]) {
            let p = Portable;
            let (qa, qp) = (a.load_quad(x), p.load_quad(x));
            for j in 0..8 {
                assert_eq!(a.to_array(qa[j]), qp[j]);
            }
            let same = |got: [f32; 16], want: [f32; 16]| {
                let bits = |v: [f32; 16]| v.map(f32::to_bits);
                assert_eq!(bits(got), bits(want), "{got:?} {want:?}");
            };
            let (p1, p2) = (qp[1], qp[2]);
            same(a.to_array(a.fma(qa[1], qa[2], qa[3])), p.fma(p1, p2, qp[3]));
            same(a.to_array(a.group_sum(qa[1])), p.group_sum(p1));
            same(a.to_array(a.group_max(qa[1])), p.group_max(p1));
            same(a.to_array(a.group_min(qa[2])), p.group_min(p2));
            same(
                a.to_array(a.round(a.mul(qa[1], a.splat(0.5)))),
                p.round(p.mul(p1, p.splat(0.5))),
            );
            same(
                a.to_array(a.to_f16(a.mul(qa[1], a.splat(1e-6)))),
                p.to_f16(p.mul(p1, p.splat(1e-6))),
            );
            same(a.to_array(a.abs(qa[2])), p.abs(p2));
            let tiny = a.mul(qa[1], a.splat(3e-6));
            assert_eq!(a.f16_words(tiny), p.f16_words(a.to_array(tiny)));
            let huge = a.mul(qa[2], a.splat(3e3));
            assert_eq!(a.f16_words(huge), p.f16_words(a.to_array(huge)));
            let zeros = a.sub(qa[1], qa[1]);
            let neg = a.mul(zeros, a.splat(-1.0));
            same(
                a.to_array(a.group_max(a.select(0x5555, zeros, neg))),
                p.group_max(a.to_array(a.select(0x5555, zeros, neg))),
            );
            assert_eq!(a.gt(qa[1], qa[2]), p.gt(p1, p2));
            let table: [f32; 32] = std::array::from_fn(|i| i as f32 * 1.5 - 7.0);
            let idx = a.splat(0.0);
            let idx = a.add(idx, a.abs(a.mul(qa[1], a.splat(0.7))));
            let idx = a.min(idx, a.splat(31.9));
            same(
                a.to_array(a.lookup(a.table(&table), a.index(idx))),
                p.lookup(p.table(&table), p.index(a.to_array(idx))),
            );
            let codes: [__m512; 4] =
                std::array::from_fn(|j| a.min(a.abs(a.round(qa[j])), a.splat(255.0)));
            let codes_p: [[f32; 16]; 4] = std::array::from_fn(|j| a.to_array(codes[j]));
            assert_eq!(a.bytes_by_block(codes), p.bytes_by_block(codes_p));
        }
        // SAFETY: `detect` found the features `check` is compiled for.
        unsafe { check(a, &sample()) };
    }

    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::__m512;
}
