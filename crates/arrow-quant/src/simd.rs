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

/// Converts float16 values to float32 (`out` as long as `x`): eight at a time by F16C when the CPU has it (the
/// `half` crate's slice conversion calls a function per eight values outside an F16C build), else by `half`.
pub(crate) fn f16_to_f32(x: &[half::f16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU reports AVX2, FMA and F16C, the features `f16_to_f32_f16c` is compiled for.
        unsafe { f16_to_f32_f16c(x, out) };
        return;
    }
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(x, out);
}

/// [`f16_to_f32`] by F16C. Safety: the CPU must have AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_to_f32_f16c(x: &[half::f16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let out = &mut out[..x.len()];
    let mut src = x.chunks_exact(8);
    let mut dst = out.chunks_exact_mut(8);
    for (h, o) in (&mut src).zip(&mut dst) {
        // SAFETY: `h` is 8 float16 (16 bytes) and `o` 8 f32.
        unsafe {
            let v = _mm_loadu_si128(h.as_ptr().cast());
            _mm256_storeu_ps(o.as_mut_ptr(), _mm256_cvtph_ps(v));
        }
    }
    for (h, o) in src.remainder().iter().zip(dst.into_remainder()) {
        *o = h.to_f32();
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    #[test]
    fn f16_conversion_is_exact_for_every_value() {
        let x: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        let mut out = vec![0f32; x.len()];
        super::f16_to_f32(&x[..x.len() - 3], &mut out[..x.len() - 3]);
        super::f16_to_f32(&x[x.len() - 3..], &mut out[x.len() - 3..]);
        for (h, o) in x.iter().zip(&out) {
            let want = h.to_f32();
            assert!(
                o.to_bits() == want.to_bits() || (o.is_nan() && want.is_nan()),
                "{h:?}"
            );
        }
    }
}
