//! Per-input-channel importance weights of the error objective (for example mean squared activations).
//!
//! The objective of `mse`, `hqq` and `two_level` becomes `sum_i w[col(i)] * (x_i - y_i)^2`, where `col(i)` is the
//! column of element `i` in the tensor's 2-D view. The weights are normalised to mean 1 and floored at
//! [`FLOOR`], so that a channel with no recorded activation is still reconstructed rather than zeroed.

use crate::error::{QuantError, Result};

/// Smallest normalised weight of a channel.
pub const FLOOR: f32 = 1e-3;

/// Normalised weights, or unit weights when no importance was given.
#[derive(Debug, Clone)]
pub(crate) struct ChannelWeights {
    normalised: Option<Vec<f32>>,
}

impl ChannelWeights {
    /// Checks `importance` (length `cols`, finite, non-negative, not all zero) and normalises it.
    pub(crate) fn new(tensor: &str, importance: Option<&[f32]>, cols: usize) -> Result<Self> {
        let normalised = match importance {
            None => None,
            Some(imp) => Some(normalise(tensor, imp, cols)?),
        };
        Ok(Self { normalised })
    }

    /// The weights of columns `start..start + len` (`None` for unit weights).
    #[inline(always)]
    pub(crate) fn slice(&self, start: usize, len: usize) -> Option<&[f32]> {
        self.normalised.as_ref().map(|w| &w[start..start + len])
    }
}

fn normalise(tensor: &str, imp: &[f32], cols: usize) -> Result<Vec<f32>> {
    if imp.len() != cols {
        return Err(QuantError::config(
            "importance",
            format!("a vector of {} values for tensor '{tensor}'", imp.len()),
            format!(
                "one value per column of the 2-D view ({cols}: the product of all axes but the first)"
            ),
        ));
    }
    if let Some(i) = imp.iter().position(|v| !v.is_finite() || *v < 0.0) {
        return Err(QuantError::config(
            "importance",
            format!("{} at index {i} for tensor '{tensor}'", imp[i]),
            "finite, non-negative values (e.g. mean squared activations)",
        ));
    }
    let mean = imp.iter().map(|&v| f64::from(v)).sum::<f64>() / cols.max(1) as f64;
    if mean <= 0.0 {
        return Err(QuantError::config(
            "importance",
            format!("all zeros for tensor '{tensor}'"),
            "at least one positive value (or importance=None)",
        ));
    }
    Ok(imp
        .iter()
        .map(|&v| ((f64::from(v) / mean) as f32).max(FLOOR))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_to_mean_one_with_a_floor() {
        let w = ChannelWeights::new("t", Some(&[0.0, 2.0, 2.0, 4.0]), 4).unwrap();
        assert_eq!(w.slice(0, 4), Some(&[FLOOR, 1.0, 1.0, 2.0][..]));
        assert_eq!(ChannelWeights::new("t", None, 4).unwrap().slice(1, 2), None);
    }

    #[test]
    fn rejects_bad_vectors() {
        for bad in [
            &[1.0f32, 2.0][..],
            &[1.0, f32::NAN, 1.0],
            &[0.0, 0.0, 0.0],
            &[1.0, -1.0, 1.0],
        ] {
            assert!(matches!(
                ChannelWeights::new("t", Some(bad), 3),
                Err(QuantError::InvalidConfig {
                    field: "importance",
                    ..
                })
            ));
        }
    }
}
