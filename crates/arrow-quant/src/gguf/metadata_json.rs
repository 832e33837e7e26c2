//! GGUF metadata values as JSON (for `inspect --json` and reports): numbers, strings, booleans and arrays of them.

use crate::gguf::{MetaArray, MetaValue};
use serde_json::Value;

fn array<T: Clone + Into<Value>>(v: &[T]) -> Value {
    Value::Array(v.iter().cloned().map(Into::into).collect())
}

impl MetaValue {
    /// The value as JSON (a non-finite float becomes `null`).
    pub fn to_json(&self) -> Value {
        match self {
            Self::U8(v) => (*v).into(),
            Self::I8(v) => (*v).into(),
            Self::U16(v) => (*v).into(),
            Self::I16(v) => (*v).into(),
            Self::U32(v) => (*v).into(),
            Self::I32(v) => (*v).into(),
            Self::U64(v) => (*v).into(),
            Self::I64(v) => (*v).into(),
            Self::F32(v) => (*v).into(),
            Self::F64(v) => (*v).into(),
            Self::Bool(v) => (*v).into(),
            Self::String(v) => v.clone().into(),
            Self::Array(a) => match a {
                MetaArray::U8(v) => array(v),
                MetaArray::I8(v) => array(v),
                MetaArray::U16(v) => array(v),
                MetaArray::I16(v) => array(v),
                MetaArray::U32(v) => array(v),
                MetaArray::I32(v) => array(v),
                MetaArray::U64(v) => array(v),
                MetaArray::I64(v) => array(v),
                MetaArray::F32(v) => array(v),
                MetaArray::F64(v) => array(v),
                MetaArray::Bool(v) => array(v),
                MetaArray::String(v) => array(v),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_json() {
        assert_eq!(MetaValue::U32(2).to_json(), serde_json::json!(2));
        assert_eq!(MetaValue::from("flux").to_json(), serde_json::json!("flux"));
        let dims = MetaValue::Array(MetaArray::I32(vec![64, 32, 3, 3]));
        assert_eq!(dims.to_json(), serde_json::json!([64, 32, 3, 3]));
        assert_eq!(MetaValue::F32(f32::NAN).to_json(), Value::Null);
    }
}
