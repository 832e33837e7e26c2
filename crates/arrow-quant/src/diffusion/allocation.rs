//! Mixed precision: per-layer encodings chosen to minimise the total error under a size budget.
//!
//! Each layer offers options (an encoding with its stored size in bits and its error; options whose cosine
//! misses the quality floor are left out by the caller, and keeping the layer in 16-bit is always one). The
//! total error is `sum over layers of error(option)`, where a layer's error is its relative MSE (the
//! activation-weighted relative error when calibration exists), not weighted by its parameter count: in a network
//! of normalised, residual blocks a layer's relative weight error becomes about the same relative error of its
//! output whatever the layer's size, and that is what travels on. Weighting by parameters (the total squared
//! error) spends the budget on the largest layers. On the terrain UNet of `benchmarks/bench_e2e.py`, one layer
//! quantized at a time, three layers of 20 K weights (0.2% of the model) carry two thirds of the summed output
//! error, and the output error per unit of relative weight error spans ten orders of magnitude with no relation to
//! the layer's size; at 4.5 bits per weight the unweighted sum planned 0.33 x the output error of llama.cpp's Q4_0.
//! Choosing one option per layer to minimise it under `sum of stored bits <= budget` is a multiple-choice
//! knapsack, solved by dynamic programming over the budget cut into at least 10,000 equal steps (each option's
//! size rounded up to whole steps, so the budget is never exceeded), then a greedy pass that spends what the
//! rounding left over on the upgrade with the largest error reduction per added bit that still fits. The result
//! is at least as good as the exact optimum under a budget smaller by one step per layer (at most 1% of it).

use crate::error::{QuantError, Result};

/// One way to store a layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerOption {
    /// Stored size in bits (codes, scales, parameters).
    pub bits: f64,
    /// Error contribution to the total (the layer's relative MSE, or its activation-weighted relative error).
    pub error: f64,
}

/// The chosen option of every layer and the totals.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    /// Index into each layer's options.
    pub choice: Vec<usize>,
    /// Sum of the chosen options' bits.
    pub bits: f64,
    /// Sum of the chosen options' errors.
    pub error: f64,
}

/// Most cells (layers x budget steps) of the dynamic-programming table.
const MAX_CELLS: usize = 64 << 20;

/// Chooses one option per layer minimising the total error with total bits at most `budget_bits`. Every layer
/// needs at least one option; an error names the smallest reachable size when the budget is below it.
pub fn allocate(layers: &[Vec<LayerOption>], budget_bits: f64) -> Result<Allocation> {
    if let Some(i) = layers.iter().position(Vec::is_empty) {
        return Err(QuantError::config(
            "target_bits_per_weight",
            format!("layer {i} with no storage option"),
            "at least one option per layer",
        ));
    }
    let smallest = smallest_bits(layers);
    if budget_bits < smallest {
        return Err(QuantError::config(
            "target_bits_per_weight",
            format!("a budget of {budget_bits:.0} bits"),
            format!(
                "at least {smallest:.0} bits, the size with every layer at its smallest encoding"
            ),
        ));
    }
    let n = layers.len();
    if n == 0 {
        return Ok(Allocation {
            choice: Vec::new(),
            bits: 0.0,
            error: 0.0,
        });
    }
    let units = (100 * n).clamp(10_000, (MAX_CELLS / n).max(1_000));
    let step = budget_bits / units as f64;
    let cost = |o: &LayerOption| {
        if step > 0.0 {
            ((o.bits / step).ceil() as usize).min(units + 1)
        } else {
            usize::from(o.bits > 0.0) * (units + 1)
        }
    };
    // best[c]: least error of the layers so far within c steps; pick[l][c]: the option layer l takes there.
    let mut best = vec![0.0f64; units + 1];
    let mut pick = vec![0u8; n * (units + 1)];
    for (l, options) in layers.iter().enumerate() {
        let mut next = vec![f64::INFINITY; units + 1];
        let row = &mut pick[l * (units + 1)..(l + 1) * (units + 1)];
        for (k, o) in options.iter().enumerate().take(u8::MAX as usize) {
            let c = cost(o);
            for budget in c..=units {
                let e = best[budget - c] + o.error;
                if e < next[budget] {
                    next[budget] = e;
                    row[budget] = k as u8;
                }
            }
        }
        best = next;
    }
    let mut choice = vec![0usize; n];
    if best[units].is_finite() {
        let mut c = units;
        for l in (0..n).rev() {
            let k = pick[l * (units + 1) + c] as usize;
            choice[l] = k;
            c -= cost(&layers[l][k]);
        }
    } else {
        // Rounding up made even the smallest options miss the budget: start from them.
        for (l, options) in layers.iter().enumerate() {
            choice[l] = smallest_option(options);
        }
    }
    fill_greedily(layers, budget_bits, &mut choice);
    let bits = choice.iter().zip(layers).map(|(&k, o)| o[k].bits).sum();
    let error = choice.iter().zip(layers).map(|(&k, o)| o[k].error).sum();
    Ok(Allocation {
        choice,
        bits,
        error,
    })
}

/// The total bits with every layer at its smallest option: the least budget [`allocate`] accepts.
pub fn smallest_bits(layers: &[Vec<LayerOption>]) -> f64 {
    layers
        .iter()
        .map(|o| o.iter().map(|x| x.bits).fold(f64::INFINITY, f64::min))
        .sum()
}

fn smallest_option(options: &[LayerOption]) -> usize {
    (0..options.len())
        .min_by(|&a, &b| options[a].bits.total_cmp(&options[b].bits))
        .unwrap_or(0)
}

/// Spends the budget left by rounding: repeatedly takes the switch with the largest error reduction per added
/// bit that still fits.
fn fill_greedily(layers: &[Vec<LayerOption>], budget_bits: f64, choice: &mut [usize]) {
    let mut used: f64 = choice.iter().zip(layers).map(|(&k, o)| o[k].bits).sum();
    loop {
        let mut best: Option<(f64, usize, usize)> = None;
        for (l, options) in layers.iter().enumerate() {
            let now = options[choice[l]];
            for (k, o) in options.iter().enumerate() {
                let (added, gain) = (o.bits - now.bits, now.error - o.error);
                if gain <= 0.0 || used + added > budget_bits {
                    continue;
                }
                let rate = if added <= 0.0 {
                    f64::INFINITY
                } else {
                    gain / added
                };
                if best.is_none_or(|(r, _, _)| rate > r) {
                    best = Some((rate, l, k));
                }
            }
        }
        let Some((_, l, k)) = best else { return };
        used += layers[l][k].bits - layers[l][choice[l]].bits;
        choice[l] = k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opt(bits: f64, error: f64) -> LayerOption {
        LayerOption { bits, error }
    }

    /// The exact optimum by enumeration.
    fn brute_force(layers: &[Vec<LayerOption>], budget: f64) -> f64 {
        let mut best = f64::INFINITY;
        let mut idx = vec![0usize; layers.len()];
        loop {
            let bits: f64 = idx.iter().zip(layers).map(|(&k, o)| o[k].bits).sum();
            if bits <= budget {
                best = best.min(idx.iter().zip(layers).map(|(&k, o)| o[k].error).sum());
            }
            let mut l = 0;
            loop {
                if l == layers.len() {
                    return best;
                }
                idx[l] += 1;
                if idx[l] < layers[l].len() {
                    break;
                }
                idx[l] = 0;
                l += 1;
            }
        }
    }

    #[test]
    fn hand_case_gives_the_bits_to_the_layer_that_gains_most() {
        // Two layers of 100 weights at 2 or 4 bits; the budget affords one upgrade. Upgrading `a` saves 9,
        // upgrading `b` saves 2, so `a` gets 4 bits: total error 1 + 3 = 4.
        let layers = vec![
            vec![opt(200.0, 10.0), opt(400.0, 1.0)],
            vec![opt(200.0, 5.0), opt(400.0, 3.0)],
        ];
        let a = allocate(&layers, 600.0).unwrap();
        assert_eq!(a.choice, vec![1, 0]);
        assert_eq!((a.bits, a.error), (600.0, 6.0));
        let a = allocate(&layers, 800.0).unwrap();
        assert_eq!((a.choice, a.error), (vec![1, 1], 4.0));
    }

    #[test]
    fn a_budget_below_the_smallest_size_is_an_error() {
        let e = allocate(&[vec![opt(200.0, 1.0)]], 100.0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("target_bits_per_weight") && e.contains("at least 200 bits"),
            "{e}"
        );
        assert!(allocate(&[vec![]], 100.0).is_err());
        assert_eq!(allocate(&[], 0.0).unwrap().choice, Vec::<usize>::new());
    }

    proptest! {
        #[test]
        fn matches_the_exact_optimum_and_never_exceeds_the_budget(
            layers in prop::collection::vec(
                prop::collection::vec((1u32..400, 0u32..1000), 1..4), 1..6),
            frac in 0.0f64..1.0,
        ) {
            let layers: Vec<Vec<LayerOption>> = layers.into_iter()
                .map(|o| o.into_iter().map(|(b, e)| opt(f64::from(b), f64::from(e))).collect())
                .collect();
            let lo = smallest_bits(&layers);
            let hi: f64 = layers.iter().map(|o| o.iter().map(|x| x.bits).fold(0.0, f64::max)).sum();
            let budget = lo + frac * (hi - lo);
            let a = allocate(&layers, budget).unwrap();
            prop_assert!(a.bits <= budget + 1e-9);
            // Any assignment within `budget - n * step` fits the rounded table, so the result is at least as good.
            let step = budget / 10_000.0;
            let exact = brute_force(&layers, budget - layers.len() as f64 * step);
            prop_assert!(a.error <= exact + 1e-9, "{} > {}", a.error, exact);
        }
    }
}
