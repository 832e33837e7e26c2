//! `--tensor-type REGEX=TYPE` overrides: a list of regular expressions over tensor names, each with the ggml type
//! its tensors get; the first that matches wins (llama-quantize's `--tensor-type`, which searches the name with
//! the regex, case-sensitively: `(?i)` makes one case-insensitive).

use crate::error::{QuantError, Result};
use crate::gguf::GgmlType;
use regex::Regex;
use std::str::FromStr;

/// One `REGEX=TYPE` argument.
#[derive(Debug, Clone)]
pub struct TypeOverride {
    /// The expression, searched anywhere in the tensor name.
    pub pattern: Regex,
    /// The type of the tensors it matches.
    pub ty: GgmlType,
    /// The argument as given, for reports.
    pub arg: String,
}

impl FromStr for TypeOverride {
    type Err = QuantError;
    /// Parses `REGEX=TYPE`, split at the last `=` (a type name has none; an expression may). The type is
    /// case-insensitive. An empty expression, a bad expression or an unknown type is an error naming the argument.
    fn from_str(arg: &str) -> Result<Self> {
        let bad = |why: String| QuantError::config("tensor_type", format!("{arg:?}"), why);
        let (pattern, ty) = arg
            .rsplit_once('=')
            .ok_or_else(|| bad("REGEX=TYPE, for example 'attn.*qkv=Q6_K' (no '=' found)".into()))?;
        if pattern.is_empty() {
            return Err(bad(
                "REGEX=TYPE with a non-empty REGEX (write '.*=TYPE' to mean every tensor)".into(),
            ));
        }
        let ty = ty.trim().parse::<GgmlType>().map_err(|_| {
            let names: Vec<&str> = crate::gguf::GGML_TYPES.iter().map(|r| r.name).collect();
            bad(format!("REGEX=TYPE with TYPE one of {}", names.join(", ")))
        })?;
        let pattern = Regex::new(pattern).map_err(|e| {
            let first = e
                .to_string()
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_string();
            bad(format!(
                "REGEX=TYPE with a valid regular expression ({first})"
            ))
        })?;
        Ok(Self {
            pattern,
            ty,
            arg: arg.to_string(),
        })
    }
}

/// The parsed overrides of a run, in the order given.
#[derive(Debug, Clone, Default)]
pub struct TypeOverrides {
    list: Vec<TypeOverride>,
}

impl TypeOverrides {
    /// Parses every argument; the first bad one is the error.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Self> {
        let list = args
            .iter()
            .map(|a| a.as_ref().parse())
            .collect::<Result<Vec<TypeOverride>>>()?;
        Ok(Self { list })
    }

    /// The first override whose expression matches `name`.
    pub fn find(&self, name: &str) -> Option<&TypeOverride> {
        self.list.iter().find(|o| o.pattern.is_match(name))
    }

    /// The overrides, in order.
    pub fn iter(&self) -> impl Iterator<Item = &TypeOverride> {
        self.list.iter()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_match_wins_and_types_are_case_insensitive() {
        let o = TypeOverrides::parse(&[
            r"double_blocks\.[0-2]\..*qkv=q8_0",
            "qkv=Q6_K",
            "(?i)IMG_IN=f16",
            "a=b=Q4_0",
        ])
        .unwrap();
        let ty = |name: &str| o.find(name).map(|x| x.ty);
        assert_eq!(
            ty("double_blocks.1.img_attn.qkv.weight"),
            Some(GgmlType::Q8_0)
        );
        assert_eq!(
            ty("double_blocks.12.img_attn.qkv.weight"),
            Some(GgmlType::Q6_K)
        );
        assert_eq!(ty("img_in.weight"), Some(GgmlType::F16));
        assert_eq!(ty("x.a=b.weight"), Some(GgmlType::Q4_0));
        assert_eq!(ty("double_blocks.1.img_mlp.0.weight"), None);
        // matching is a search, case-sensitive unless (?i)
        assert_eq!(ty("prefix.QKV.weight"), None);
        assert_eq!(
            o.find("double_blocks.0.txt_attn.qkv.weight").unwrap().arg,
            r"double_blocks\.[0-2]\..*qkv=q8_0"
        );
        assert!(TypeOverrides::parse::<&str>(&[]).unwrap().is_empty());
    }

    #[test]
    fn bad_arguments_are_errors_naming_them() {
        for (arg, says) in [
            ("img_in", "no '=' found"),
            ("=Q4_0", "non-empty REGEX"),
            ("img_in=Q4_K_M", "TYPE one of"),
            ("img_[in=Q8_0", "valid regular expression"),
        ] {
            let e = TypeOverrides::parse(&["qkv=Q6_K", arg])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("{arg:?}")) && e.contains(says) && e.contains("tensor_type"),
                "{e}"
            );
        }
    }
}
