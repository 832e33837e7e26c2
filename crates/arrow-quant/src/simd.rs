//! Run-time selection of the SIMD build of a hot function.
//!
//! The kernels are written as plain loops over lane arrays. `multiversion!` compiles one such function twice,
//! for the baseline target, for AVX2 + FMA + F16C and for AVX-512, and picks the widest build the CPU has, so the
//! rounding, min/max and conversions become single vector instructions without requiring `-C target-cpu`.

/// Defines `fn $name(args) -> ret` that dispatches to an AVX2 build of `$body` when the CPU supports it.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn portable($($arg: $ty),*) -> $ret $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
                fn avx512($($arg: $ty),*) -> $ret {
                    portable($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,f16c")]
                fn avx2($($arg: $ty),*) -> $ret {
                    portable($($arg),*)
                }
                if $crate::simd::has_avx512() {
                    // SAFETY: the CPU reports every feature `avx512` was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::simd::has_avx2() {
                    // SAFETY: the CPU reports AVX2, FMA and F16C, the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// True when the CPU has AVX2, FMA and F16C (checked once, then cached by the standard library).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

/// True when the CPU has the AVX-512 subsets the kernels use (F, BW, VL, DQ) besides AVX2.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx512() -> bool {
    has_avx2()
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512dq")
}
