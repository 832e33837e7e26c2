//! GGUF metadata values: the thirteen value types of `gguf.h` (twelve scalars and strings, plus typed arrays of
//! them), their little-endian encoding and a decoder that checks every length against the bytes left before it
//! allocates anything.

use crate::gguf::layout::{put_string, Cursor};

/// Value type ids of `gguf.h` (`enum gguf_type`).
mod type_id {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// The value of `key` among metadata pairs (a file's, or ones being written).
pub fn meta_get<'m>(metadata: &'m [(String, MetaValue)], key: &str) -> Option<&'m MetaValue> {
    metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// One GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float32`.
    F32(f32),
    /// `float64`.
    F64(f64),
    /// `bool` (one byte, 0 or 1).
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// A typed array.
    Array(MetaArray),
}

/// A GGUF metadata array: all elements of one type. Arrays of arrays are not supported (llama.cpp's reader
/// rejects them too).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    /// `uint8` elements.
    U8(Vec<u8>),
    /// `int8` elements.
    I8(Vec<i8>),
    /// `uint16` elements.
    U16(Vec<u16>),
    /// `int16` elements.
    I16(Vec<i16>),
    /// `uint32` elements.
    U32(Vec<u32>),
    /// `int32` elements.
    I32(Vec<i32>),
    /// `uint64` elements.
    U64(Vec<u64>),
    /// `int64` elements.
    I64(Vec<i64>),
    /// `float32` elements.
    F32(Vec<f32>),
    /// `float64` elements.
    F64(Vec<f64>),
    /// `bool` elements.
    Bool(Vec<bool>),
    /// Strings.
    String(Vec<String>),
}

/// Applies `$body` to the vector inside any [`MetaArray`].
macro_rules! each_array {
    ($array:expr, $v:ident => $body:expr) => {
        match $array {
            MetaArray::U8($v) => $body,
            MetaArray::I8($v) => $body,
            MetaArray::U16($v) => $body,
            MetaArray::I16($v) => $body,
            MetaArray::U32($v) => $body,
            MetaArray::I32($v) => $body,
            MetaArray::U64($v) => $body,
            MetaArray::I64($v) => $body,
            MetaArray::F32($v) => $body,
            MetaArray::F64($v) => $body,
            MetaArray::Bool($v) => $body,
            MetaArray::String($v) => $body,
        }
    };
}

/// Name of a value type id, as gguf-py spells it.
fn type_name(id: u32) -> &'static str {
    match id {
        type_id::U8 => "UINT8",
        type_id::I8 => "INT8",
        type_id::U16 => "UINT16",
        type_id::I16 => "INT16",
        type_id::U32 => "UINT32",
        type_id::I32 => "INT32",
        type_id::F32 => "FLOAT32",
        type_id::BOOL => "BOOL",
        type_id::STRING => "STRING",
        type_id::ARRAY => "ARRAY",
        type_id::U64 => "UINT64",
        type_id::I64 => "INT64",
        type_id::F64 => "FLOAT64",
        _ => "unknown",
    }
}

impl MetaArray {
    /// Elements in the array.
    pub fn len(&self) -> usize {
        each_array!(self, v => v.len())
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value type id of the elements.
    pub fn element_type_id(&self) -> u32 {
        match self {
            Self::U8(_) => type_id::U8,
            Self::I8(_) => type_id::I8,
            Self::U16(_) => type_id::U16,
            Self::I16(_) => type_id::I16,
            Self::U32(_) => type_id::U32,
            Self::I32(_) => type_id::I32,
            Self::U64(_) => type_id::U64,
            Self::I64(_) => type_id::I64,
            Self::F32(_) => type_id::F32,
            Self::F64(_) => type_id::F64,
            Self::Bool(_) => type_id::BOOL,
            Self::String(_) => type_id::STRING,
        }
    }

    fn encode_elements(&self, out: &mut Vec<u8>) {
        match self {
            Self::U8(v) => out.extend_from_slice(v),
            Self::I8(v) => out.extend(v.iter().map(|x| *x as u8)),
            Self::U16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Self::I16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Self::U32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Self::I32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Self::U64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Self::I64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Self::F32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Self::F64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Self::Bool(v) => out.extend(v.iter().map(|x| u8::from(*x))),
            Self::String(v) => v.iter().for_each(|s| put_string(out, s)),
        }
    }
}

impl MetaValue {
    /// The value type id (`gguf_type`) this value is stored with.
    pub fn type_id(&self) -> u32 {
        match self {
            Self::U8(_) => type_id::U8,
            Self::I8(_) => type_id::I8,
            Self::U16(_) => type_id::U16,
            Self::I16(_) => type_id::I16,
            Self::U32(_) => type_id::U32,
            Self::I32(_) => type_id::I32,
            Self::U64(_) => type_id::U64,
            Self::I64(_) => type_id::I64,
            Self::F32(_) => type_id::F32,
            Self::F64(_) => type_id::F64,
            Self::Bool(_) => type_id::BOOL,
            Self::String(_) => type_id::STRING,
            Self::Array(_) => type_id::ARRAY,
        }
    }

    /// The type for messages: `UINT32`, `STRING`, `ARRAY of 12 FLOAT32`.
    pub fn describe_type(&self) -> String {
        match self {
            Self::Array(a) => format!("ARRAY of {} {}", a.len(), type_name(a.element_type_id())),
            other => type_name(other.type_id()).to_string(),
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number, if this is a non-negative integer of any width that fits a `usize`.
    pub fn as_usize(&self) -> Option<usize> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => usize::try_from(v).ok(),
            Self::U64(v) => usize::try_from(v).ok(),
            Self::I8(v) => usize::try_from(v).ok(),
            Self::I16(v) => usize::try_from(v).ok(),
            Self::I32(v) => usize::try_from(v).ok(),
            Self::I64(v) => usize::try_from(v).ok(),
            _ => None,
        }
    }

    /// The number, if this is a `UINT32`.
    pub fn as_u32(&self) -> Option<u32> {
        match self {
            Self::U32(v) => Some(*v),
            _ => None,
        }
    }

    /// The array, if this is one.
    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Appends the value's encoding (type id, then the value) to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.type_id().to_le_bytes());
        match self {
            Self::U8(v) => out.push(*v),
            Self::I8(v) => out.push(*v as u8),
            Self::U16(v) => out.extend(v.to_le_bytes()),
            Self::I16(v) => out.extend(v.to_le_bytes()),
            Self::U32(v) => out.extend(v.to_le_bytes()),
            Self::I32(v) => out.extend(v.to_le_bytes()),
            Self::U64(v) => out.extend(v.to_le_bytes()),
            Self::I64(v) => out.extend(v.to_le_bytes()),
            Self::F32(v) => out.extend(v.to_le_bytes()),
            Self::F64(v) => out.extend(v.to_le_bytes()),
            Self::Bool(v) => out.push(u8::from(*v)),
            Self::String(s) => put_string(out, s),
            Self::Array(a) => {
                out.extend(a.element_type_id().to_le_bytes());
                out.extend((a.len() as u64).to_le_bytes());
                a.encode_elements(out);
            }
        }
    }

    /// The value's encoding (type id, then the value).
    pub(crate) fn encoded(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// A value of the same type and encoded length with every number zero, every bool false and every string
    /// made of NUL bytes: the placeholder of a value patched later.
    pub(crate) fn zeroed(&self) -> Self {
        let nul = |s: &String| "\0".repeat(s.len());
        match self {
            Self::U8(_) => Self::U8(0),
            Self::I8(_) => Self::I8(0),
            Self::U16(_) => Self::U16(0),
            Self::I16(_) => Self::I16(0),
            Self::U32(_) => Self::U32(0),
            Self::I32(_) => Self::I32(0),
            Self::U64(_) => Self::U64(0),
            Self::I64(_) => Self::I64(0),
            Self::F32(_) => Self::F32(0.0),
            Self::F64(_) => Self::F64(0.0),
            Self::Bool(_) => Self::Bool(false),
            Self::String(s) => Self::String(nul(s)),
            Self::Array(a) => Self::Array(match a {
                MetaArray::U8(v) => MetaArray::U8(vec![0; v.len()]),
                MetaArray::I8(v) => MetaArray::I8(vec![0; v.len()]),
                MetaArray::U16(v) => MetaArray::U16(vec![0; v.len()]),
                MetaArray::I16(v) => MetaArray::I16(vec![0; v.len()]),
                MetaArray::U32(v) => MetaArray::U32(vec![0; v.len()]),
                MetaArray::I32(v) => MetaArray::I32(vec![0; v.len()]),
                MetaArray::U64(v) => MetaArray::U64(vec![0; v.len()]),
                MetaArray::I64(v) => MetaArray::I64(vec![0; v.len()]),
                MetaArray::F32(v) => MetaArray::F32(vec![0.0; v.len()]),
                MetaArray::F64(v) => MetaArray::F64(vec![0.0; v.len()]),
                MetaArray::Bool(v) => MetaArray::Bool(vec![false; v.len()]),
                MetaArray::String(v) => MetaArray::String(v.iter().map(nul).collect()),
            }),
        }
    }

    /// Why `other` cannot replace this value in place (another type, element count or encoded length), or
    /// `None` when it can.
    pub(crate) fn layout_mismatch(&self, other: &Self) -> Option<String> {
        let (mine, theirs) = (self.describe_type(), other.describe_type());
        if mine != theirs {
            return Some(format!("declared as {mine}, given as {theirs}"));
        }
        let (a, b) = (self.encoded().len(), other.encoded().len());
        (a != b).then(|| format!("declared {a} bytes long (with its strings), given {b}"))
    }
}

macro_rules! from_scalar {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for MetaValue {
            fn from(v: $t) -> Self {
                Self::$variant(v)
            }
        }
        impl From<Vec<$t>> for MetaValue {
            fn from(v: Vec<$t>) -> Self {
                Self::Array(MetaArray::$variant(v))
            }
        }
    )*};
}

from_scalar!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, u64 => U64, i64 => I64,
             f32 => F32, f64 => F64, bool => Bool, String => String);

impl From<&str> for MetaValue {
    fn from(v: &str) -> Self {
        Self::String(v.to_string())
    }
}

impl From<MetaArray> for MetaValue {
    fn from(v: MetaArray) -> Self {
        Self::Array(v)
    }
}

/// The fewest bytes one element of value type `id` takes (a string: its 8-byte length), or `None` for an id
/// that is no element type.
fn min_element_bytes(id: u32) -> Option<u64> {
    Some(match id {
        type_id::U8 | type_id::I8 | type_id::BOOL => 1,
        type_id::U16 | type_id::I16 => 2,
        type_id::U32 | type_id::I32 | type_id::F32 => 4,
        type_id::U64 | type_id::I64 | type_id::F64 | type_id::STRING => 8,
        _ => return None,
    })
}

fn bool_at(c: &mut Cursor<'_>) -> Result<bool, String> {
    let at = c.pos();
    match c.u8("bool")? {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(format!("bool at byte {at} is {b}, not 0 or 1")),
    }
}

fn u8_at(c: &mut Cursor<'_>) -> Result<u8, String> {
    c.u8("UINT8")
}
fn i8_at(c: &mut Cursor<'_>) -> Result<i8, String> {
    c.u8("INT8").map(|v| v as i8)
}
fn u16_at(c: &mut Cursor<'_>) -> Result<u16, String> {
    c.u16("UINT16")
}
fn i16_at(c: &mut Cursor<'_>) -> Result<i16, String> {
    c.u16("INT16").map(|v| v as i16)
}
fn u32_at(c: &mut Cursor<'_>) -> Result<u32, String> {
    c.u32("UINT32")
}
fn i32_at(c: &mut Cursor<'_>) -> Result<i32, String> {
    c.u32("INT32").map(|v| v as i32)
}
fn u64_at(c: &mut Cursor<'_>) -> Result<u64, String> {
    c.u64("UINT64")
}
fn i64_at(c: &mut Cursor<'_>) -> Result<i64, String> {
    c.u64("INT64").map(|v| v as i64)
}
fn f32_at(c: &mut Cursor<'_>) -> Result<f32, String> {
    c.u32("FLOAT32").map(f32::from_bits)
}
fn f64_at(c: &mut Cursor<'_>) -> Result<f64, String> {
    c.u64("FLOAT64").map(f64::from_bits)
}
fn string_at(c: &mut Cursor<'_>) -> Result<String, String> {
    c.string("string")
}

/// `n` elements read by `one`; `n` was checked against the bytes left, so the allocation is bounded by the file.
fn elements<T>(
    c: &mut Cursor<'_>,
    n: usize,
    one: fn(&mut Cursor<'_>) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(one(c)?);
    }
    Ok(out)
}

/// Reads a value of type `id` at the cursor (for an array: element type, count, elements).
pub(crate) fn decode_value(c: &mut Cursor<'_>, id: u32) -> Result<MetaValue, String> {
    Ok(match id {
        type_id::U8 => MetaValue::U8(u8_at(c)?),
        type_id::I8 => MetaValue::I8(i8_at(c)?),
        type_id::U16 => MetaValue::U16(u16_at(c)?),
        type_id::I16 => MetaValue::I16(i16_at(c)?),
        type_id::U32 => MetaValue::U32(u32_at(c)?),
        type_id::I32 => MetaValue::I32(i32_at(c)?),
        type_id::U64 => MetaValue::U64(u64_at(c)?),
        type_id::I64 => MetaValue::I64(i64_at(c)?),
        type_id::F32 => MetaValue::F32(f32_at(c)?),
        type_id::F64 => MetaValue::F64(f64_at(c)?),
        type_id::BOOL => MetaValue::Bool(bool_at(c)?),
        type_id::STRING => MetaValue::String(string_at(c)?),
        type_id::ARRAY => MetaValue::Array(decode_array(c)?),
        other => return Err(format!("unknown value type {other}")),
    })
}

fn decode_array(c: &mut Cursor<'_>) -> Result<MetaArray, String> {
    let at = c.pos();
    let elem = c.u32("array element type")?;
    let n = c.u64("array length")?;
    let min = match min_element_bytes(elem) {
        Some(min) => min,
        None if elem == type_id::ARRAY => {
            return Err(format!(
                "array at byte {at} holds arrays, which GGUF readers (llama.cpp) do not support"
            ))
        }
        None => {
            return Err(format!(
                "array at byte {at} has unknown element type {elem}"
            ))
        }
    };
    let n = match n.checked_mul(min) {
        Some(bytes) if bytes <= c.remaining() as u64 => n as usize,
        _ => {
            return Err(format!(
                "array at byte {at} claims {n} {} elements but the file has {} bytes left",
                type_name(elem),
                c.remaining()
            ))
        }
    };
    Ok(match elem {
        type_id::U8 => MetaArray::U8(c.take(n as u64, "UINT8 array")?.to_vec()),
        type_id::I8 => MetaArray::I8(elements(c, n, i8_at)?),
        type_id::U16 => MetaArray::U16(elements(c, n, u16_at)?),
        type_id::I16 => MetaArray::I16(elements(c, n, i16_at)?),
        type_id::U32 => MetaArray::U32(elements(c, n, u32_at)?),
        type_id::I32 => MetaArray::I32(elements(c, n, i32_at)?),
        type_id::U64 => MetaArray::U64(elements(c, n, u64_at)?),
        type_id::I64 => MetaArray::I64(elements(c, n, i64_at)?),
        type_id::F32 => MetaArray::F32(elements(c, n, f32_at)?),
        type_id::F64 => MetaArray::F64(elements(c, n, f64_at)?),
        type_id::BOOL => MetaArray::Bool(elements(c, n, bool_at)?),
        _ => MetaArray::String(elements(c, n, string_at)?),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One value of every type, arrays of every element type included (and an empty one).
    pub(crate) fn every_kind() -> Vec<(String, MetaValue)> {
        let values: Vec<MetaValue> = vec![
            MetaValue::U8(200),
            MetaValue::I8(-5),
            MetaValue::U16(60000),
            MetaValue::I16(-30000),
            MetaValue::U32(4_000_000_000),
            MetaValue::I32(-2_000_000_000),
            MetaValue::U64(u64::MAX - 1),
            MetaValue::I64(i64::MIN + 1),
            MetaValue::F32(-1.5e-7),
            MetaValue::F64(std::f64::consts::PI),
            MetaValue::Bool(true),
            MetaValue::Bool(false),
            MetaValue::from("flux ✓ ünïcode"),
            MetaValue::from(String::new()),
            MetaValue::from(vec![1u8, 2, 255]),
            MetaValue::from(vec![-1i8, 127]),
            MetaValue::from(vec![7u16]),
            MetaValue::from(vec![-7i16, 8]),
            MetaValue::from(vec![1u32, 2, 3]),
            MetaValue::from(vec![-1i32, 3072, 16]),
            MetaValue::from(vec![u64::MAX]),
            MetaValue::from(vec![i64::MIN, 0]),
            MetaValue::from(vec![0.25f32, -0.0, f32::MAX]),
            MetaValue::from(vec![1e300f64]),
            MetaValue::from(vec![true, false, true]),
            MetaValue::from(vec!["a".to_string(), String::new(), "ζ".to_string()]),
            MetaValue::Array(MetaArray::F32(Vec::new())),
        ];
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("test.key{i}"), v))
            .collect()
    }

    #[test]
    fn every_value_decodes_to_itself() {
        for (key, value) in every_kind() {
            let bytes = value.encoded();
            let mut c = Cursor::new(&bytes);
            let id = c.u32("type").unwrap();
            assert_eq!(id, value.type_id(), "{key}");
            assert_eq!(decode_value(&mut c, id).unwrap(), value, "{key}");
            assert_eq!(c.remaining(), 0, "{key}");
        }
    }

    #[test]
    fn huge_counts_bad_types_and_bad_bools_are_errors_before_allocating() {
        let mut bytes = Vec::new();
        bytes.extend(type_id::STRING.to_le_bytes());
        bytes.extend((1u64 << 60).to_le_bytes());
        let e = decode_array(&mut Cursor::new(&bytes)).unwrap_err();
        assert!(
            e.contains("claims 1152921504606846976 STRING elements"),
            "{e}"
        );
        let e = decode_value(
            &mut Cursor::new(&(600u64 << 30).to_le_bytes()),
            type_id::STRING,
        )
        .unwrap_err();
        assert!(e.contains("needs 644245094400 bytes"), "{e}");
        let nested = [type_id::ARRAY.to_le_bytes(), [0; 4]].concat();
        let e = decode_array(&mut Cursor::new(&[nested, vec![0; 8]].concat())).unwrap_err();
        assert!(e.contains("holds arrays"), "{e}");
        let e = decode_value(&mut Cursor::new(&[0; 8]), 13).unwrap_err();
        assert!(e.contains("unknown value type 13"), "{e}");
        let e = decode_value(&mut Cursor::new(&[2]), type_id::BOOL).unwrap_err();
        assert!(e.contains("is 2, not 0 or 1"), "{e}");
    }

    #[test]
    fn placeholders_keep_the_layout_and_mismatches_are_named() {
        for (key, value) in every_kind() {
            let zero = value.zeroed();
            assert_eq!(zero.encoded().len(), value.encoded().len(), "{key}");
            assert_eq!(zero.layout_mismatch(&value), None, "{key}");
        }
        let declared = MetaValue::from(vec![0f32; 3]);
        let e = declared
            .layout_mismatch(&MetaValue::from(vec![0f32; 4]))
            .unwrap();
        assert!(
            e.contains("ARRAY of 3 FLOAT32") && e.contains("ARRAY of 4 FLOAT32"),
            "{e}"
        );
        let e = MetaValue::from("ab")
            .layout_mismatch(&MetaValue::from("abc"))
            .unwrap();
        assert!(e.contains("declared 14 bytes"), "{e}");
    }
}
