//! Python keyword arguments to a core `QuantConfig` (through the core's `QuantOptions`), with
//! `ConfigurationError`s that name the bad field.

use crate::errors::Result;
use arrow_quant::{GroupSize, QuantConfig, QuantError, QuantOptions};
use pyo3::prelude::*;

/// Keyword overrides of a call; `None` keeps the base setting. The rule that turns them into a config is the
/// core's [`QuantOptions`], shared with the CLI.
pub struct Overrides<'a, 'py> {
    pub bit_width: Option<i64>,
    pub layout: Option<&'a str>,
    pub group_size: Option<&'a Bound<'py, PyAny>>,
    pub symmetric: Option<bool>,
    pub method: Option<&'a str>,
    pub scale_dtype: Option<&'a str>,
}

impl<'a, 'py> Overrides<'a, 'py> {
    /// The overrides of one call, in the order of the keyword arguments.
    pub fn new(
        bit_width: Option<i64>,
        layout: Option<&'a str>,
        group_size: Option<&'a Bound<'py, PyAny>>,
        symmetric: Option<bool>,
        method: Option<&'a str>,
        scale_dtype: Option<&'a str>,
    ) -> Self {
        Self {
            bit_width,
            layout,
            group_size,
            symmetric,
            method,
            scale_dtype,
        }
    }

    /// Applies the overrides to `base`, validating each and their combination.
    pub fn apply(&self, base: QuantConfig) -> Result<QuantConfig> {
        let bits = self
            .bit_width
            .map(|b| u32::try_from(b).map_err(|_| QuantError::config("bit_width", b, "2, 4 or 8")))
            .transpose()?;
        let group_size = self.group_size.map(parse_group_size).transpose()?;
        Ok(QuantOptions {
            bits,
            layout: self.layout,
            group_size,
            symmetric: self.symmetric,
            scale_dtype: self.scale_dtype,
            method: self.method,
        }
        .apply(base)?)
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
