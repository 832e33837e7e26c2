//! The fixed parts of a GGUF file's byte layout that the writer and the reader share: magic, version, alignment,
//! the limits tensor infos are held to, a tensor's byte size from its shape and type, and a bounds-checked
//! little-endian cursor over a file's bytes.

use crate::gguf::GgmlType;

/// The four bytes a GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The version we write (version 2 has the same little-endian layout and is read too).
pub const GGUF_VERSION: u32 = 3;
/// The metadata key holding the data alignment (a `u32` power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// The data alignment we write, and the one a file without [`ALIGNMENT_KEY`] has.
pub const GGUF_ALIGNMENT: u32 = 32;
/// Dimensions a tensor may have: ggml's `GGML_MAX_DIMS` is 4, but ComfyUI-GGUF stores 5-D video kernels (Wan's
/// `patch_embedding.weight`) with 5 dims, which its loader, gguf-py and stable-diffusion.cpp read
/// (docs/GGUF_TYPES.md, "Stored shapes"); only llama.cpp's own reader refuses them.
pub const GGUF_MAX_DIMS: usize = 5;
/// Bytes a tensor name may have: stable-diffusion.cpp builds ggml with `GGML_MAX_NAME=128` and its reader rejects
/// names of 128 bytes or more (llama.cpp's default of 64 does not bind diffusion runtimes; gguf-py, and so
/// ComfyUI-GGUF and diffusers, set no limit).
pub const GGUF_MAX_NAME_BYTES: usize = 127;

/// `n` rounded up to a multiple of `align` (a power of two), or `None` on overflow.
pub(crate) fn pad_to(n: u64, align: u64) -> Option<u64> {
    n.checked_add(align - 1).map(|m| m & !(align - 1))
}

/// Bytes of a tensor of `shape` (row-major) stored as `ty`: its ggml rows (the last axis) times the bytes of one
/// row. `None` when the rows are not a whole number of `ty`'s blocks or the size overflows.
pub fn gguf_tensor_nbytes(shape: &[usize], ty: GgmlType) -> Option<usize> {
    let cols = shape.last().copied().unwrap_or(1);
    if !ty.fits_row(cols) {
        return None;
    }
    let row_bytes = (cols / ty.block_len()).checked_mul(ty.block_bytes())?;
    let outer = shape.len().saturating_sub(1);
    shape[..outer]
        .iter()
        .try_fold(row_bytes, |acc, &d| acc.checked_mul(d))
}

/// A position in a file's bytes that reads little-endian values, never past the end: each read says what it was
/// reading and where when the bytes run out.
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// The byte offset of the next read.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left after the position.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The next `n` bytes (`what` names them for the error).
    pub(crate) fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], String> {
        let at = self.pos;
        match usize::try_from(n) {
            Ok(n) if n <= self.remaining() => {
                self.pos += n;
                Ok(&self.bytes[at..at + n])
            }
            _ => Err(format!(
                "{what} at byte {at} needs {n} bytes but the file has {} left",
                self.remaining()
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    /// One byte.
    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.array::<1>(what)?[0])
    }

    /// A little-endian `u16`.
    pub(crate) fn u16(&mut self, what: &str) -> Result<u16, String> {
        self.array(what).map(u16::from_le_bytes)
    }

    /// A little-endian `u32`.
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    /// A little-endian `u64`.
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string: a `u64` byte length, then that many bytes of UTF-8.
    pub(crate) fn string(&mut self, what: &str) -> Result<String, String> {
        let at = self.pos;
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} at byte {at} is not UTF-8"))
    }
}

/// Appends a GGUF string (`u64` length, bytes) to `out`.
pub(crate) fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_rows_of_whole_blocks_and_never_overflow() {
        assert_eq!(
            gguf_tensor_nbytes(&[3, 512], GgmlType::Q4_K),
            Some(3 * 2 * 144)
        );
        assert_eq!(gguf_tensor_nbytes(&[], GgmlType::F32), Some(4));
        assert_eq!(gguf_tensor_nbytes(&[7], GgmlType::BF16), Some(14));
        assert_eq!(gguf_tensor_nbytes(&[2, 48], GgmlType::Q8_0), None);
        assert_eq!(
            gguf_tensor_nbytes(&[usize::MAX, usize::MAX], GgmlType::F32),
            None
        );
        assert_eq!(gguf_tensor_nbytes(&[usize::MAX], GgmlType::F16), None);
        assert_eq!(pad_to(33, 32), Some(64));
        assert_eq!(pad_to(64, 32), Some(64));
        assert_eq!(pad_to(u64::MAX, 32), None);
    }

    #[test]
    fn the_cursor_says_what_ran_out_and_where() {
        let bytes = [1u8, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, b'a'];
        let mut c = Cursor::new(&bytes);
        assert_eq!(c.u32("count").unwrap(), 1);
        let e = c.string("key").unwrap_err();
        assert!(
            e.contains("key at byte 12 needs 9 bytes") && e.contains("1 left"),
            "{e}"
        );
        let mut c = Cursor::new(&bytes);
        assert!(c.take(u64::MAX, "blob").is_err());
        assert_eq!(c.pos(), 0);
    }
}
