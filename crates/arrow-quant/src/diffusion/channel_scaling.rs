//! Activation-aware ("spatial", AWQ-style) channel scaling: protect the input channels that see large
//! activations by scaling their weight columns up before quantization and dividing them back out on
//! dequantization.
//!
//! Given per-input-channel activation magnitudes `a_j` (input channels = `shape[1]`; for a conv kernel
//! `[out, in, kh, kw]` column `c` of the 2-D view belongs to channel `c / (kh * kw)`), the columns are scaled by
//! `s_j = a_j^alpha`, normalised to geometric mean 1 (`a_j` floored at `1e-6 * max(a)` so silent channels stay
//! finite). `W * s` is quantized with importance `a_j^2 / s_j^2` per column, so the importance-aware objectives
//! (`mse`, `hqq`, `two_level` below 8 bits) minimise the activation-weighted error
//! `E = sum a_j^2 (W_ij - What_ij)^2 / sum a_j^2 W_ij^2` of the dequantized tensor (scales undone), up to the
//! importance floor of [`crate::importance`]; `rtn` and `int8_2l` ignore importance. `alpha` is
//! searched on `0, 0.1, ..., 1.0` over a quarter of the rows, evenly spaced, at least [`MIN_SEARCH_ROWS`] and at
//! most [`SEARCH_ROWS`] of them (groups never cross rows, so a
//! row quantizes the same as in the full tensor, except that two-level super-blocks span rows when `cols` is a
//! multiple of the sub-block length but not of 256); `alpha = 0` (no scaling) is on the grid.

use crate::config::QuantConfig;
use crate::error::{QuantError, Result};
use crate::quantize::quantize_tensor_with;
use crate::quantized::{Quality, QuantizedTensor};
use crate::tensor::{TensorData, TensorView};
use rayon::prelude::*;
use std::borrow::Cow;

/// Most rows the alpha search quantizes (evenly spaced over the tensor).
pub const SEARCH_ROWS: usize = 256;

/// Tensors with more rows than this search on a quarter of their rows (at least this many, at most
/// [`SEARCH_ROWS`]), so that the eleven search quantizations of a small layer cost under three of the layer.
pub const MIN_SEARCH_ROWS: usize = 64;

/// Exponents searched: `0, 0.1, ..., 1.0`.
const ALPHA_STEPS: usize = 10;

/// Relative floor of the activation magnitudes used for the scales (of the largest).
const ABSMAX_FLOOR: f32 = 1e-6;

/// What the channel-scaling search found.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelScalingReport {
    /// The exponent chosen (`s = a^alpha`, normalised).
    pub alpha: f32,
    /// Activation-weighted relative error `E` of the returned tensor over the full tensor.
    pub weighted_rel_error: f64,
    /// `(alpha, E on the search rows)` for every exponent tried, in grid order.
    pub search: Vec<(f32, f64)>,
}

/// Input channels (`shape[1]`) and 2-D view columns per channel of a tensor with at least 2 axes.
fn channel_geometry(view: &TensorView<'_>) -> Result<(usize, usize)> {
    crate::quantized::channel_geometry(view.shape).ok_or_else(|| {
        QuantError::schema(
            view.name,
            format!(
                "channel scaling needs a weight with at least 2 axes (input channels = shape[1]), got shape \
                 {:?}; quantize 1-D tensors without channel_absmax",
                view.shape
            ),
        )
    })
}

/// Checks `channel_absmax` against the tensor: one finite, non-negative value per input channel, not all zero.
fn check_absmax(view: &TensorView<'_>, channel_absmax: &[f32]) -> Result<()> {
    let (channels, _) = channel_geometry(view)?;
    if channel_absmax.len() != channels {
        return Err(QuantError::config(
            "channel_absmax",
            format!("{} values for tensor '{}'", channel_absmax.len(), view.name),
            format!(
                "one value per input channel: shape[1] = {channels} of shape {:?}",
                view.shape
            ),
        ));
    }
    if let Some(i) = channel_absmax
        .iter()
        .position(|v| !v.is_finite() || *v < 0.0)
    {
        return Err(QuantError::config(
            "channel_absmax",
            format!(
                "{} at index {i} for tensor '{}'",
                channel_absmax[i], view.name
            ),
            "finite, non-negative activation magnitudes (the calibration table's channel_absmax)",
        ));
    }
    if channels > 0 && channel_absmax.iter().all(|&v| v == 0.0) {
        return Err(QuantError::config(
            "channel_absmax",
            format!("all zeros for tensor '{}'", view.name),
            "at least one positive value (or quantize without channel_absmax)",
        ));
    }
    Ok(())
}

/// The activation-weighted relative error `E = sum a_j^2 (W_ij - What_ij)^2 / sum a_j^2 W_ij^2` of
/// `dequantized` (the tensor's values after dequantization, channel scales undone) against `view`, with
/// `a = channel_absmax` (one per input channel, `shape[1]`). 0 when both sums are 0, infinity when only the
/// denominator is.
///
/// Errors: `channel_absmax` of the wrong length, negative, non-finite or all zero ([`QuantError::InvalidConfig`]),
/// a tensor with fewer than 2 axes or `dequantized` of the wrong length ([`QuantError::Schema`]).
pub fn activation_weighted_error(
    view: &TensorView<'_>,
    dequantized: &[f32],
    channel_absmax: &[f32],
) -> Result<f64> {
    check_absmax(view, channel_absmax)?;
    if dequantized.len() != view.data.len() {
        return Err(QuantError::schema(
            view.name,
            format!(
                "{} dequantized values for a tensor of {} elements; pass the whole dequantized tensor",
                dequantized.len(),
                view.data.len()
            ),
        ));
    }
    let weights = column_weights(view, channel_absmax, |a| f64::from(a) * f64::from(a));
    let original = to_f32(view);
    Ok(weighted_error(&original, dequantized, &weights))
}

/// One value per column of the 2-D view: `f(a_j)` of the column's channel.
pub(crate) fn column_weights<T: Copy>(
    view: &TensorView<'_>,
    per_channel: &[f32],
    f: impl Fn(f32) -> T,
) -> Vec<T> {
    let per = view.shape[2..].iter().product::<usize>();
    per_channel
        .iter()
        .flat_map(|&a| std::iter::repeat_n(f(a), per))
        .collect()
}

/// The tensor's values as f32: borrowed for f32 input, converted otherwise.
fn to_f32<'a>(view: &TensorView<'a>) -> Cow<'a, [f32]> {
    match view.data {
        TensorData::F32(x) => Cow::Borrowed(x),
        _ => {
            let mut out = vec![0f32; view.data.len()];
            out.par_chunks_mut(64 * 1024)
                .enumerate()
                .for_each(|(i, o)| view.data.copy_to_f32(i * 64 * 1024, o));
            Cow::Owned(out)
        }
    }
}

/// `E` from the original and dequantized values (whole rows) and the per-column weights `a_j^2`.
fn weighted_error(original: &[f32], dequantized: &[f32], weights: &[f64]) -> f64 {
    let cols = weights.len().max(1);
    let (num, den) = original
        .par_chunks(cols)
        .zip(dequantized.par_chunks(cols))
        .map(|(w, q)| {
            let mut num = 0f64;
            let mut den = 0f64;
            for ((&x, &y), &a2) in w.iter().zip(q).zip(weights) {
                let (x, y) = (f64::from(x), f64::from(y));
                num += a2 * ((x - y) * (x - y));
                den += a2 * x * x;
            }
            (num, den)
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    if den > 0.0 {
        num / den
    } else if num == 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// The channel scales `s_j = a_j^alpha` (floored `a`), normalised to geometric mean 1.
fn scales_for(log_a: &[f64], alpha: f32) -> Vec<f32> {
    if alpha == 0.0 {
        return vec![1.0; log_a.len()];
    }
    let mean = log_a.iter().sum::<f64>() / log_a.len().max(1) as f64;
    log_a
        .iter()
        .map(|&l| (f64::from(alpha) * (l - mean)).exp() as f32)
        .collect()
}

/// One quantization of `original` (whole rows of `shape`) with channel scales `s`: the tensor with the scales
/// attached, and the dequantized values (scales undone).
struct Trial {
    tensor: QuantizedTensor,
    dequantized: Vec<f32>,
}

fn quantize_scaled(
    name: &str,
    shape: &[usize],
    original: &[f32],
    config: &QuantConfig,
    absmax: &[f32],
    scales: Vec<f32>,
) -> Result<Trial> {
    let (_, cols) = crate::tensor::rows_cols(shape);
    let per = shape[2..].iter().product::<usize>();
    let col_scale: Vec<f32> = scales
        .iter()
        .flat_map(|&s| std::iter::repeat_n(s, per))
        .collect();
    let mut scaled = crate::output::zeroed_f32(original.len());
    scaled
        .par_chunks_mut(cols.max(1))
        .zip(original.par_chunks(cols.max(1)))
        .for_each(|(out, row)| {
            out.iter_mut()
                .zip(row.iter().zip(&col_scale))
                .for_each(|(o, (&w, &s))| *o = w * s);
        });
    let importance: Vec<f32> = absmax
        .iter()
        .zip(&scales)
        .flat_map(|(&a, &s)| {
            let (a, s) = (f64::from(a), f64::from(s));
            std::iter::repeat_n((a * a / (s * s)) as f32, per)
        })
        .collect();
    let view = TensorView::new(name, shape, TensorData::F32(&scaled))?;
    let mut tensor = quantize_tensor_with(&view, config, Some(&importance))?;
    // Dequantization divides by the channel scales itself, chunk by chunk in parallel.
    tensor.channel_scales = Some(scales);
    let dequantized = tensor.view().dequantize()?;
    Ok(Trial {
        tensor,
        dequantized,
    })
}

/// The rows the alpha search quantizes, evenly spaced: all of them up to [`MIN_SEARCH_ROWS`], else a quarter of
/// them, at least [`MIN_SEARCH_ROWS`] and at most [`SEARCH_ROWS`].
fn search_rows(rows: usize) -> Vec<usize> {
    let count = if rows <= MIN_SEARCH_ROWS {
        rows
    } else {
        (rows / 4).clamp(MIN_SEARCH_ROWS, SEARCH_ROWS)
    };
    (0..count).map(|i| i * rows / count).collect()
}

/// Quality (cosine, rel_mse) of `dequantized` against `original` (whole rows), and `E` with the per-column
/// weights `a_j^2`, in one pass.
fn quality_and_error(original: &[f32], dequantized: &[f32], weights: &[f64]) -> (Quality, f64) {
    let cols = weights.len().max(1);
    let sums = original
        .par_chunks(cols)
        .zip(dequantized.par_chunks(cols))
        .map(|(w, q)| {
            let mut s = [0f64; 6];
            for ((&x, &y), &a2) in w.iter().zip(q).zip(weights) {
                let (x, y) = (f64::from(x), f64::from(y));
                let e = (x - y) * (x - y);
                s[0] += x * x;
                s[1] += e;
                s[2] += x * y;
                s[3] += y * y;
                s[4] += a2 * e;
                s[5] += a2 * x * x;
            }
            s
        })
        .reduce(|| [0f64; 6], |a, b| std::array::from_fn(|i| a[i] + b[i]));
    let e = if sums[5] > 0.0 {
        sums[4] / sums[5]
    } else if sums[4] == 0.0 {
        0.0
    } else {
        f64::INFINITY
    };
    (Quality::from_sums(sums[0], sums[1], sums[2], sums[3]), e)
}

/// Quantizes `view` with activation-aware channel scaling (see the module docs): searches `alpha` on
/// `0, 0.1, ..., 1.0` over evenly spaced rows (see the module docs), then quantizes the whole tensor once with
/// the best. The result carries `channel_scales` (so dequantization undoes them) and its `quality` is measured
/// against the original weights.
///
/// Errors: `channel_absmax` of the wrong length, negative, non-finite or all zero
/// ([`QuantError::InvalidConfig`], field `channel_absmax`); a tensor with fewer than 2 axes
/// ([`QuantError::Schema`]); and every error of [`quantize_tensor_with`].
pub fn quantize_channel_scaled(
    view: &TensorView<'_>,
    config: &QuantConfig,
    channel_absmax: &[f32],
) -> Result<(QuantizedTensor, ChannelScalingReport)> {
    check_absmax(view, channel_absmax)?;
    let (rows, cols) = view.rows_cols();
    let original = to_f32(view);
    const SCAN: usize = 64 * 1024;
    if let Some(chunk) = original
        .par_chunks(SCAN)
        .position_first(|c| !c.iter().all(|v| v.is_finite()))
    {
        let i = chunk * SCAN
            + original[chunk * SCAN..]
                .iter()
                .position(|v| !v.is_finite())
                .unwrap_or(0);
        return Err(QuantError::NonFinite {
            tensor: view.name.to_string(),
            index: i,
            value: original[i].to_string(),
        });
    }
    let max = channel_absmax.iter().fold(0f32, |m, &a| m.max(a));
    let log_a: Vec<f64> = channel_absmax
        .iter()
        .map(|&a| f64::from(a.max(ABSMAX_FLOOR * max)).ln())
        .collect();
    let weights = column_weights(view, channel_absmax, |a| f64::from(a) * f64::from(a));

    let picked = search_rows(rows);
    let mut sample_shape = view.shape.to_vec();
    sample_shape[0] = picked.len();
    let sample: Vec<f32> = picked
        .iter()
        .flat_map(|&r| original[r * cols..(r + 1) * cols].iter().copied())
        .collect();
    let mut search = Vec::with_capacity(ALPHA_STEPS + 1);
    for step in 0..=ALPHA_STEPS {
        let alpha = step as f32 / ALPHA_STEPS as f32;
        let trial = quantize_scaled(
            view.name,
            &sample_shape,
            &sample,
            config,
            channel_absmax,
            scales_for(&log_a, alpha),
        )?;
        search.push((alpha, weighted_error(&sample, &trial.dequantized, &weights)));
    }
    // The first minimum: ties go to the smaller exponent (alpha = 0: no scaling, importance a^2 only).
    let alpha = search
        .iter()
        .fold((0f32, f64::INFINITY), |best, &(a, e)| {
            if e < best.1 {
                (a, e)
            } else {
                best
            }
        })
        .0;
    let Trial {
        mut tensor,
        dequantized,
    } = quantize_scaled(
        view.name,
        view.shape,
        &original,
        config,
        channel_absmax,
        scales_for(&log_a, alpha),
    )?;
    tensor.source_dtype = view.data.dtype();
    let (quality, weighted_rel_error) = quality_and_error(&original, &dequantized, &weights);
    tensor.quality = quality;
    let report = ChannelScalingReport {
        alpha,
        weighted_rel_error,
        search,
    };
    Ok((tensor, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrow::output::RowMeta;
    use crate::arrow::{dequantize_to_batch, read_results, tensor_batch, tensors_to_batch};
    use crate::config::{BitWidth, Layout, Method};
    use crate::quantize::quantize_tensor;
    use half::f16;

    /// Deterministic standard normals (xorshift64* and Box-Muller).
    fn normals(seed: u64, n: usize) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut uniform = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            ((state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (u, v) = (uniform(), uniform());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            })
            .collect()
    }

    fn log_normal(seed: u64, n: usize) -> Vec<f32> {
        normals(seed, n).into_iter().map(f32::exp).collect()
    }

    fn config(bits: BitWidth, method: Method) -> QuantConfig {
        QuantConfig {
            bits,
            method,
            ..QuantConfig::default()
        }
    }

    /// Every (method, width) pair the scaling must work with.
    fn all_configs() -> Vec<QuantConfig> {
        let mut out = Vec::new();
        for bits in [BitWidth::Int2, BitWidth::Int4, BitWidth::Int8] {
            for method in [Method::Rtn, Method::Mse, Method::Hqq] {
                out.push(config(bits, method));
            }
            out.push(QuantConfig {
                bits,
                layout: Layout::TwoLevel,
                method: Method::Auto,
            });
        }
        out
    }

    /// `deq(q)[i, c] / s[c / per]` computed by hand from the tensor without its scales.
    fn manual(q: &QuantizedTensor) -> Vec<f32> {
        let s = q.channel_scales.as_deref().expect("channel scales");
        let mut plain = q.view();
        plain.channel_scales = None;
        let raw = plain.dequantize().expect("dequantize");
        let (_, cols) = crate::tensor::rows_cols(&q.shape);
        let per = cols / s.len();
        raw.iter()
            .enumerate()
            .map(|(i, &v)| v / s[(i % cols) / per])
            .collect()
    }

    #[test]
    fn dequantize_undoes_the_scales_for_every_encoding() {
        for shape in [vec![64usize, 96], vec![16, 8, 3, 3], vec![5, 40, 2]] {
            let n: usize = shape.iter().product();
            let w = normals(1, n);
            let a = log_normal(2, shape[1]);
            let view = TensorView::new("w", &shape, TensorData::F32(&w)).unwrap();
            for cfg in all_configs() {
                let (q, report) = quantize_channel_scaled(&view, &cfg, &a).unwrap();
                let s = q.channel_scales.as_deref().unwrap();
                assert_eq!(s.len(), shape[1]);
                let got = q.view().dequantize().unwrap();
                let want = manual(&q);
                assert_eq!(got, want, "{shape:?} {cfg:?}");
                let mut half = vec![f16::ZERO; n];
                q.view().dequantize_into_half(&mut half).unwrap();
                let want_half: Vec<f16> = want.iter().map(|&v| f16::from_f32(v)).collect();
                assert_eq!(half, want_half, "{shape:?} {cfg:?}");
                let e = activation_weighted_error(&view, &got, &a).unwrap();
                // Equal up to the order of the parallel sums.
                assert!(
                    (e - report.weighted_rel_error).abs() <= 1e-12 * e,
                    "{e} vs {report:?}"
                );
                assert_eq!(report.search.len(), 11);
                let rel = w
                    .iter()
                    .zip(&got)
                    .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
                    .sum::<f64>()
                    / w.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>();
                assert!(
                    (q.quality.rel_mse - rel).abs() <= 1e-9 * rel.max(1.0),
                    "{cfg:?}"
                );
            }
        }
    }

    #[test]
    fn scaling_beats_plain_quantization_on_log_normal_channels() {
        let shape = [256usize, 512];
        let w = normals(3, shape[0] * shape[1]);
        let a = log_normal(4, shape[1]);
        let view = TensorView::new("w", &shape, TensorData::F32(&w)).unwrap();
        for bits in [BitWidth::Int2, BitWidth::Int4] {
            let cfg = config(bits, Method::Auto);
            let plain = quantize_tensor(&view, &cfg).unwrap();
            let e_plain =
                activation_weighted_error(&view, &plain.view().dequantize().unwrap(), &a).unwrap();
            let (_, report) = quantize_channel_scaled(&view, &cfg, &a).unwrap();
            assert!(
                report.weighted_rel_error <= 0.8 * e_plain,
                "{bits:?}: scaled {} vs plain {e_plain} (alpha {})",
                report.weighted_rel_error,
                report.alpha
            );
        }
    }

    #[test]
    fn alpha_zero_is_unscaled_and_silent_channels_stay_finite() {
        let w = normals(5, 8 * 64);
        let mut a = vec![1.0f32; 64];
        a[3] = 0.0;
        let view = TensorView::new("w", &[8, 64], TensorData::F32(&w)).unwrap();
        let (q, report) = quantize_channel_scaled(&view, &QuantConfig::default(), &a).unwrap();
        assert!(q
            .channel_scales
            .unwrap()
            .iter()
            .all(|s| s.is_finite() && *s > 0.0));
        assert_eq!(report.search[0].0, 0.0);
        assert_eq!(scales_for(&[0.5, -0.5, 2.0], 0.0), vec![1.0; 3]);
        let s = scales_for(&[0.0, 1.0, 2.0], 1.0);
        let log_mean = s.iter().map(|&v| f64::from(v).ln()).sum::<f64>() / 3.0;
        assert!(log_mean.abs() < 1e-6);
    }

    #[test]
    fn search_rows_are_evenly_spaced() {
        assert_eq!(search_rows(3), vec![0, 1, 2]);
        assert_eq!(search_rows(64), (0..64).collect::<Vec<_>>());
        let rows = search_rows(100);
        assert_eq!((rows.len(), rows[1], rows[63]), (64, 1, 98));
        let rows = search_rows(384);
        assert_eq!((rows.len(), rows[1], rows[95]), (96, 4, 380));
        let rows = search_rows(4096);
        assert_eq!(rows.len(), SEARCH_ROWS);
        assert_eq!((rows[0], rows[1], rows[255]), (0, 16, 4080));
    }

    #[test]
    fn arrow_rows_carry_and_undo_the_scales() {
        let shape = [16usize, 8, 3, 3];
        let w = normals(6, 16 * 72);
        let a = log_normal(7, 8);
        let view = TensorView::new("conv", &shape, TensorData::F32(&w)).unwrap();
        let cfg = config(BitWidth::Int4, Method::Mse);
        let (q, _) = quantize_channel_scaled(&view, &cfg, &a).unwrap();
        let plain = quantize_tensor(&view, &cfg).unwrap();
        let want = q.view().dequantize().unwrap();
        let one = tensor_batch(q.clone()).unwrap();
        let rows = read_results(std::slice::from_ref(&one)).unwrap();
        assert_eq!(rows[0].channel_scales, q.channel_scales.as_deref());
        assert_eq!(
            rows[0].to_tensor().unwrap().channel_scales,
            q.channel_scales
        );
        let mut out = vec![0f32; want.len()];
        rows[0].dequantize_into(&mut out).unwrap();
        assert_eq!(out, want);

        let views = [q.view(), plain.view()];
        let metas = [(&q, &views[0]), (&plain, &views[1])]
            .map(|(t, v)| RowMeta::quantized(v, t.source_dtype, t.quality));
        let both = tensors_to_batch(&metas, &views).unwrap();
        let rows = read_results(std::slice::from_ref(&both)).unwrap();
        assert_eq!(rows[0].channel_scales, q.channel_scales.as_deref());
        assert_eq!(rows[1].channel_scales, None);
        let table = dequantize_to_batch(&rows).unwrap();
        use arrow_array::cast::AsArray;
        let weights = table.column(1).as_list::<i32>();
        let first = weights.value(0);
        assert_eq!(
            first
                .as_primitive::<arrow_array::types::Float32Type>()
                .values(),
            &want[..]
        );
    }

    #[test]
    fn rejects_bad_inputs() {
        let w = normals(8, 4 * 6);
        let view = TensorView::new("layer.w", &[4, 6], TensorData::F32(&w)).unwrap();
        let cfg = QuantConfig::default();
        let message = |a: &[f32]| {
            quantize_channel_scaled(&view, &cfg, a)
                .unwrap_err()
                .to_string()
        };
        let m = message(&[1.0; 5]);
        assert!(
            m.contains("channel_absmax") && m.contains("5 values") && m.contains("layer.w"),
            "{m}"
        );
        assert!(m.contains("shape[1] = 6"), "{m}");
        let m = message(&[1.0, 1.0, -1.0, 1.0, 1.0, 1.0]);
        assert!(m.contains("-1 at index 2"), "{m}");
        let m = message(&[1.0, f32::NAN, 1.0, 1.0, 1.0, 1.0]);
        assert!(m.contains("NaN at index 1"), "{m}");
        let m = message(&[0.0; 6]);
        assert!(m.contains("all zeros"), "{m}");
        let mut nan = w.clone();
        nan[13] = f32::NAN;
        let bad = TensorView::new("layer.w", &[4, 6], TensorData::F32(&nan)).unwrap();
        let e = quantize_channel_scaled(&bad, &cfg, &[1.0; 6]).unwrap_err();
        assert!(matches!(e, QuantError::NonFinite { index: 13, .. }), "{e}");
        let flat = TensorView::new("bias", &[24], TensorData::F32(&w)).unwrap();
        let e = quantize_channel_scaled(&flat, &cfg, &[1.0; 24]).unwrap_err();
        assert!(matches!(e, QuantError::Schema { .. }), "{e}");
        assert!(e.to_string().contains("at least 2 axes"), "{e}");
        let e = activation_weighted_error(&view, &w[..5], &[1.0; 6]).unwrap_err();
        assert!(e.to_string().contains("5 dequantized values"), "{e}");
    }

    #[test]
    fn validate_rejects_bad_channel_scales() {
        let w = normals(9, 4 * 64);
        let view = TensorView::new("w", &[4, 64], TensorData::F32(&w)).unwrap();
        let mut q = quantize_tensor(&view, &QuantConfig::default()).unwrap();
        for (bad, needle) in [
            (vec![1.0f32; 63], "63 channel scales"),
            (
                {
                    let mut s = vec![1.0f32; 64];
                    s[7] = 0.0;
                    s
                },
                "channel scale 7 is 0",
            ),
            (
                {
                    let mut s = vec![1.0f32; 64];
                    s[2] = f32::INFINITY;
                    s
                },
                "channel scale 2 is inf",
            ),
        ] {
            q.channel_scales = Some(bad);
            let e = q.view().dequantize().unwrap_err();
            assert!(
                matches!(e, QuantError::Corrupt { .. }) && e.to_string().contains(needle),
                "{e}"
            );
        }
        q.channel_scales = None;
        let without = q.nbytes();
        q.channel_scales = Some(vec![2.0; 64]);
        assert_eq!(q.nbytes(), without + 64 * 4);
    }

    #[test]
    fn model_files_keep_and_undo_the_scales() {
        use crate::config::ScaleDtype;
        use crate::pipeline::{
            export_safetensors, ExportDtype, ModelFile, ModelWriter, OutputFormat,
        };
        let shape = [8usize, 4, 3, 3];
        let w = normals(10, 8 * 36);
        let a = log_normal(11, 4);
        let view = TensorView::new("conv", &shape, TensorData::F32(&w)).unwrap();
        let (q, _) =
            quantize_channel_scaled(&view, &config(BitWidth::Int4, Method::Mse), &a).unwrap();
        let want = q.view().dequantize().unwrap();
        let dir = std::env::temp_dir().join(format!("aq-channel-scaling-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (format, file) in [
            (OutputFormat::Parquet, "m.parquet"),
            (OutputFormat::ArrowIpc, "m.arrow"),
        ] {
            let path = dir.join(file);
            let mut writer = ModelWriter::create(&path, Some(format), ScaleDtype::F16).unwrap();
            writer.write(&tensor_batch(q.clone()).unwrap()).unwrap();
            writer.finish(Vec::new()).unwrap();
            let model = ModelFile::open(&path).unwrap();
            let batch = model.read_row(0).unwrap();
            let rows = read_results(std::slice::from_ref(&batch)).unwrap();
            assert_eq!(rows[0].channel_scales, q.channel_scales.as_deref());
            let mut out = vec![0f32; want.len()];
            rows[0].dequantize_into(&mut out).unwrap();
            assert_eq!(out, want, "{file}");
            let exported = dir.join(format!("{file}.safetensors"));
            export_safetensors(&path, &exported, Some(ExportDtype::F32)).unwrap();
            let bytes = std::fs::read(&exported).unwrap();
            let values: Vec<f32> = bytes[bytes.len() - want.len() * 4..]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            assert_eq!(values, want, "{file}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
