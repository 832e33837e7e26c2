//! Output buffers of dequantization: large zeroed vectors whose pages the kernel may back with transparent huge
//! pages.
//!
//! A fresh `vec![0f32; n]` comes from `calloc`, whose pages are mapped lazily: the dequantization kernels then
//! take one page fault per 4 KiB they write, which costs more than the kernels themselves (a 64 MiB output is
//! 16K faults). On Linux the buffer is marked `MADV_HUGEPAGE`, so the faults come in 2 MiB pages (512 times
//! fewer); elsewhere, or when the system disables huge pages, this is a plain zeroed vector.

/// Buffers smaller than this are left alone (huge pages only help large outputs).
const MIN_HUGE_BYTES: usize = 4 << 20;

/// A zeroed f32 vector of `n` elements, its pages not yet touched (see the module docs).
pub fn zeroed_f32(n: usize) -> Vec<f32> {
    let v = vec![0f32; n];
    advise_huge_pages(v.as_ptr().cast(), std::mem::size_of_val(v.as_slice()));
    v
}

/// Asks the kernel to back the page-aligned interior of `[ptr, ptr + bytes)` with huge pages.
#[cfg(target_os = "linux")]
fn advise_huge_pages(ptr: *const u8, bytes: usize) {
    const PAGE: usize = 4096;
    if bytes < MIN_HUGE_BYTES {
        return;
    }
    let start = (ptr as usize).next_multiple_of(PAGE);
    let end = (ptr as usize + bytes) / PAGE * PAGE;
    if end > start {
        // SAFETY: the range lies inside one live allocation; MADV_HUGEPAGE only changes how the kernel backs
        // pages not yet touched, never their contents. A failure (huge pages disabled) is harmless.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_ptr: *const u8, _bytes: usize) {
    let _ = MIN_HUGE_BYTES;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_small_buffers_are_zeroed() {
        for n in [0, 7, (MIN_HUGE_BYTES / 4) * 3 + 5] {
            let v = zeroed_f32(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 0.0));
        }
    }
}
