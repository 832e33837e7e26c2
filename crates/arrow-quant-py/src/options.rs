//! Python keyword arguments to a core `QuantConfig`, with `ConfigurationError`s that name the bad field.

use crate::errors::Result;
use arrow_quant::{BitWidth, GroupSize, Method, QuantConfig, QuantError, ScaleDtype};
use pyo3::prelude::*;

/// Keyword overrides of a call; `None` keeps the quantizer's default.
#[derive(Default)]
pub struct Overrides<'a, 'py> {
    pub bit_width: Option<i64>,
    pub group_size: Option<&'a Bound<'py, PyAny>>,
    pub symmetric: Option<bool>,
    pub method: Option<&'a str>,
    pub scale_dtype: Option<&'a str>,
}

impl<'a, 'py> Overrides<'a, 'py> {
    /// The overrides of one call, in the order of the keyword arguments.
    pub fn new(
        bit_width: Option<i64>,
        group_size: Option<&'a Bound<'py, PyAny>>,
        symmetric: Option<bool>,
        method: Option<&'a str>,
        scale_dtype: Option<&'a str>,
    ) -> Self {
        Self {
            bit_width,
            group_size,
            symmetric,
            method,
            scale_dtype,
        }
    }

    /// Applies the overrides to `base`, validating each.
    pub fn apply(&self, base: QuantConfig) -> Result<QuantConfig> {
        let mut cfg = base;
        if let Some(bits) = self.bit_width {
            cfg.bits = u32::try_from(bits)
                .map_err(|_| QuantError::config("bit_width", bits, "2, 4 or 8"))
                .and_then(BitWidth::from_bits)?;
        }
        if let Some(g) = self.group_size {
            cfg.group_size = parse_group_size(g)?;
        }
        if let Some(s) = self.symmetric {
            cfg.symmetric = s;
        }
        if let Some(m) = self.method {
            cfg.method = m.parse::<Method>()?;
        }
        if let Some(d) = self.scale_dtype {
            cfg.scale_dtype = d.parse::<ScaleDtype>()?;
        }
        if self.group_size.is_some() {
            if cfg.method == Method::TwoLevel {
                return Err(QuantError::config(
                    "group_size",
                    "a value with method=\"two_level\"",
                    "None: two_level uses fixed sub-blocks (32 elements at 8 and 4 bits, 16 at 2 bits)",
                )
                .into());
            }
            // An explicit group size asks for the flat encoding: "auto" picks the best flat method.
            cfg.method = cfg.method.resolve(true);
        }
        Ok(cfg)
    }
}

/// `group_size`: 32, 64, 128, 256, or `"per_channel"` (also `0` / `-1`).
fn parse_group_size(value: &Bound<'_, PyAny>) -> Result<GroupSize> {
    if let Ok(text) = value.extract::<String>() {
        return match text.as_str() {
            "per_channel" => Ok(GroupSize::PerChannel),
            other => Err(QuantError::config(
                "group_size",
                format!("{other:?}"),
                "32, 64, 128, 256 or \"per_channel\"",
            )
            .into()),
        };
    }
    match value.extract::<i64>() {
        Ok(0 | -1) => Ok(GroupSize::PerChannel),
        Ok(n) => Ok(usize::try_from(n)
            .map_err(|_| QuantError::config("group_size", n, "32, 64, 128, 256 or \"per_channel\""))
            .and_then(GroupSize::elements)?),
        Err(_) => Err(QuantError::config(
            "group_size",
            value
                .repr()
                .map_or_else(|_| "?".to_string(), |r| r.to_string()),
            "32, 64, 128, 256 or \"per_channel\"",
        )
        .into()),
    }
}

/// The Python value of a group size: the element count, or `"per_channel"`.
pub fn group_size_to_py<'py>(py: Python<'py>, g: GroupSize) -> PyResult<Bound<'py, PyAny>> {
    match g {
        GroupSize::Elements(n) => Ok(n.into_pyobject(py)?.into_any()),
        GroupSize::PerChannel => Ok("per_channel".into_pyobject(py)?.into_any()),
    }
}
