//! Large tensors in parts, so a run needs a bounded amount of memory whatever the tensor size: a tensor of more
//! than [`part_bytes`] of source with at least 2 rows is read, converted, quantized (or kept) and written as runs
//! of whole rows, each part written as its own chunk row (docs/FORMAT.md, "Chunk rows") before the next is read,
//! and its source pages dropped once consumed.
//!
//! A quantized tensor goes through the same fallback chain as a whole one (`layer_quant`), with two passes per
//! accepted width: the first quantizes every part and adds up the quality sums and stored bytes (nothing kept),
//! the second, once the whole tensor's figures have met the floor, quantizes the parts again and writes them.
//! Parts are whole parallel chunks of the codec ([`Parts::granule`]), so codes, parameters and quality are those
//! of the whole tensor exactly. Channel-scaled layers and float64 tensors stay whole (their searches and
//! conversions take the whole tensor).

use super::config::PipelineConfig;
use super::entry::PLAIN_FLOOR;
use super::layer_quant::{walk_fallback_chain, Attempt};
use super::report::LayerReport;
use crate::arrow::output::{plain_batch, tensor_batch, with_chunk, RowEncoding, RowMeta};
use crate::checkpoint::{Dtype, SafetensorsFile, TensorEntry};
use crate::codec::driver::QualitySums;
use crate::codec::part_shape;
use crate::config::{BitWidth, QuantConfig};
use crate::error::{QuantError, Result};
use crate::quantize::Parts;
use crate::quantized::Quality;
use crate::tensor::{rows_cols, TensorView};
use arrow_array::RecordBatch;
use half::{bf16, f16};
use std::ops::Range;
use std::sync::OnceLock;

/// Source bytes of one part: 64 MiB.
pub const PART_BYTES: usize = 64 << 20;

/// Environment variable that sets the part size in bytes instead of [`PART_BYTES`], for tests only (so small
/// tensors go through the chunked path). Read once per process.
pub const TEST_PART_BYTES_VAR: &str = "ARROW_QUANT_TEST_PART_BYTES";

/// Where the finished row batches of a tensor go, in order.
pub(crate) type Emit<'e> = dyn FnMut(RecordBatch) -> Result<()> + 'e;

/// The source bytes of one part: [`PART_BYTES`], or the test override.
pub(crate) fn part_bytes() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var(TEST_PART_BYTES_VAR)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&v| v > 0)
            .unwrap_or(PART_BYTES)
    })
}

/// The row ranges of a tensor of `rows` rows of `row_bytes` each, cut into parts of at most `limit` bytes, every
/// part but the last a multiple of `granule` rows (a part is one granule when a granule alone is larger).
pub(crate) fn part_ranges(
    rows: usize,
    row_bytes: usize,
    granule: usize,
    limit: usize,
) -> Vec<Range<usize>> {
    let granule = granule.max(1);
    let per = (limit / row_bytes.max(1) / granule).max(1) * granule;
    (0..rows)
        .step_by(per)
        .map(|s| s..(s + per).min(rows))
        .collect()
}

/// True when `entry` is processed in parts: more than [`part_bytes`] of source, at least 2 axes and 2 rows, and
/// not float64 (converted whole).
pub(crate) fn in_parts(entry: &TensorEntry) -> bool {
    let rows = rows_cols(&entry.shape).0;
    entry.end - entry.begin > part_bytes()
        && entry.shape.len() >= 2
        && rows >= 2
        && entry.dtype != Dtype::F64
}

/// Bytes of one row of the 2-D view of `entry`.
fn row_bytes(entry: &TensorEntry) -> usize {
    rows_cols(&entry.shape).1 * entry.dtype.size()
}

/// The byte range of the rows `rows` inside `entry`'s data.
fn byte_range(entry: &TensorEntry, rows: &Range<usize>) -> Range<usize> {
    let per = row_bytes(entry);
    rows.start * per..rows.end * per
}

/// The parts of `entry` when stored plainly (no codec granule).
fn plain_ranges(entry: &TensorEntry) -> Vec<Range<usize>> {
    part_ranges(rows_cols(&entry.shape).0, row_bytes(entry), 1, part_bytes())
}

/// Runs `f` on each part of `entry` with its pages read ahead, dropping them afterwards.
fn each_part(
    file: &SafetensorsFile,
    entry: &TensorEntry,
    ranges: &[Range<usize>],
    mut f: impl FnMut(usize, &Range<usize>) -> Result<()>,
) -> Result<()> {
    for (k, rows) in ranges.iter().enumerate() {
        let bytes = byte_range(entry, rows);
        file.prefetch_range(entry, bytes.clone());
        let done = f(k, rows);
        file.release_range(entry, bytes);
        done?;
    }
    Ok(())
}

/// `batch` as part `k` of `parts`: chunk row `k`, or a plain row when the tensor is one part after all.
fn mark(entry: &TensorEntry, batch: RecordBatch, k: usize, parts: usize) -> Result<RecordBatch> {
    if parts < 2 {
        return Ok(batch);
    }
    let k = u32::try_from(k)
        .map_err(|_| QuantError::schema(&entry.name, "more than 2^32 chunk rows"))?;
    with_chunk(batch, k)
}

/// [`crate::diffusion::entropy::weight_entropy`] of a tensor read in parts: the same samples, each part's pages
/// dropped once sampled (the sample touches every page of a large tensor).
pub(crate) fn entropy_in_parts(
    file: &SafetensorsFile,
    entry: &TensorEntry,
    data: &crate::tensor::TensorData<'_>,
) -> f64 {
    use crate::diffusion::entropy::{entropy_of_samples, sample_range, sample_stride};
    let stride = sample_stride(data.len());
    let cols = rows_cols(&entry.shape).1;
    let mut samples = Vec::new();
    for rows in plain_ranges(entry) {
        sample_range(
            data,
            stride,
            rows.start * cols..rows.end * cols,
            &mut samples,
        );
        file.release_range(entry, byte_range(entry, &rows));
    }
    entropy_of_samples(samples)
}

/// Quantizes a tensor in parts at the first width of the fallback chain that meets the floor (the rules of
/// `layer_quant::quantize_with_fallback`), writing its chunk rows through `emit` and filling `layer`. Returns
/// false when no width is used: the caller keeps the tensor (`layer.fallback` / `layer.kept` say why).
#[allow(clippy::too_many_arguments)] // the pieces of one pipeline step
pub(crate) fn quantize_in_parts(
    file: &SafetensorsFile,
    entry: &TensorEntry,
    view: &TensorView<'_>,
    config: &PipelineConfig,
    quant: &QuantConfig,
    first: BitWidth,
    layer: &mut LayerReport,
    emit: &mut Emit<'_>,
) -> Result<bool> {
    let (rows, n) = (rows_cols(&entry.shape).0, view.data.len());
    let walk = walk_fallback_chain(view.name, n, config, first, |bits| {
        let parts = Parts::new(view, &QuantConfig { bits, ..*quant }, None)?;
        let ranges = part_ranges(rows, row_bytes(entry), parts.granule(), part_bytes());
        let m = measure(file, entry, &parts, &ranges)?;
        Ok(Attempt {
            cosine: m.quality.cosine,
            stored: m.stored,
            encoding: m.encoding.to_string(),
            value: (m, parts, ranges),
        })
    })?;
    layer.fallback = walk.fallback;
    if walk.kept.is_some() {
        layer.kept = walk.kept;
    }
    let Some((
        bits,
        Attempt {
            value: (m, parts, ranges),
            ..
        },
    )) = walk.accepted
    else {
        return Ok(false);
    };
    each_part(file, entry, &ranges, |k, rows| {
        let (mut q, _) = parts.quantize(rows.clone())?;
        q.quality = m.quality;
        emit(mark(entry, tensor_batch(q)?, k, ranges.len())?)
    })?;
    layer.encoding = m.encoding.to_string();
    layer.bits = bits.bits() as u8;
    layer.bits_per_weight = if n == 0 {
        0.0
    } else {
        m.stored as f64 * 8.0 / n as f64
    };
    layer.quality = m.quality;
    layer.bytes_out = m.stored;
    Ok(true)
}

/// What the measuring pass found: the whole tensor's quality, its stored bytes and encoding.
struct Measured {
    quality: Quality,
    stored: usize,
    encoding: &'static str,
}

/// Quantizes every part, keeping only the sums and sizes.
fn measure(
    file: &SafetensorsFile,
    entry: &TensorEntry,
    parts: &Parts<'_, '_>,
    ranges: &[Range<usize>],
) -> Result<Measured> {
    let mut sums = QualitySums::default();
    let mut stored = 0;
    let mut encoding = "";
    each_part(file, entry, ranges, |_, rows| {
        let (q, s) = parts.quantize(rows.clone())?;
        sums.add(s);
        stored += q.nbytes();
        encoding = q.encoding_name();
        Ok(())
    })?;
    Ok(Measured {
        quality: parts.finish(sums).quality(),
        stored,
        encoding,
    })
}

/// Keeps a tensor in parts, as `entry::keep_bytes` would keep it whole: f16 and bf16 sources unchanged, f32
/// rounded to f16 when that reaches the floor (and [`PLAIN_FLOOR`]) without overflowing, else stored as f32
/// (a first pass over the parts decides). A NaN or infinity is an error naming the element.
pub(crate) fn keep_in_parts(
    file: &SafetensorsFile,
    entry: &TensorEntry,
    floor: f64,
    layer: &mut LayerReport,
    emit: &mut Emit<'_>,
) -> Result<()> {
    let exact = Quality {
        cosine: 1.0,
        rel_mse: 0.0,
    };
    let ranges = plain_ranges(entry);
    let cols = rows_cols(&entry.shape).1;
    let (encoding, bits, quality) = match entry.dtype {
        Dtype::F16 | Dtype::BF16 => {
            let name = if entry.dtype == Dtype::F16 {
                "f16"
            } else {
                "bf16"
            };
            each_part(file, entry, &ranges, |k, rows| {
                let bytes = &file.bytes(entry)[byte_range(entry, rows)];
                check_finite_half(entry, bytes, rows.start * cols)?;
                emit_plain(
                    entry,
                    (k, ranges.len()),
                    rows,
                    (name, 16),
                    bytes.to_vec(),
                    exact,
                    emit,
                )
            })?;
            (name, 16, exact)
        }
        Dtype::F32 => {
            let floor = floor.max(PLAIN_FLOOR);
            let (overflow, half_quality) = f32_as_f16(file, entry, &ranges, cols)?;
            if !overflow && half_quality.cosine >= floor {
                each_part(file, entry, &ranges, |k, rows| {
                    let bytes = &file.bytes(entry)[byte_range(entry, rows)];
                    let halves: Vec<u8> = f32_values(bytes)
                        .flat_map(|v| f16::from_f32(v).to_le_bytes())
                        .collect();
                    emit_plain(
                        entry,
                        (k, ranges.len()),
                        rows,
                        ("f16", 16),
                        halves,
                        half_quality,
                        emit,
                    )
                })?;
                ("f16", 16, half_quality)
            } else {
                let why = if overflow {
                    "float16 would overflow".to_string()
                } else {
                    format!(
                        "float16 would reach cosine {:.4} only (< {floor:.4})",
                        half_quality.cosine
                    )
                };
                let note = format!("{why}: stored as f32");
                layer.kept = Some(match layer.kept.take() {
                    Some(reason) => format!("{reason}; {note}"),
                    None => note,
                });
                each_part(file, entry, &ranges, |k, rows| {
                    let bytes = file.bytes(entry)[byte_range(entry, rows)].to_vec();
                    emit_plain(
                        entry,
                        (k, ranges.len()),
                        rows,
                        ("f32", 32),
                        bytes,
                        exact,
                        emit,
                    )
                })?;
                ("f32", 32, exact)
            }
        }
        _ => return Err(QuantError::schema(&entry.name, "not a float tensor")),
    };
    let n: usize = entry.shape.iter().product();
    layer.set_plain(encoding, bits, n * usize::from(bits) / 8, quality);
    Ok(())
}

/// Carries a non-float tensor through unchanged, in parts.
pub(crate) fn raw_in_parts(
    file: &SafetensorsFile,
    entry: &TensorEntry,
    layer: &mut LayerReport,
    emit: &mut Emit<'_>,
) -> Result<()> {
    let exact = Quality {
        cosine: 1.0,
        rel_mse: 0.0,
    };
    layer.kept = Some(format!(
        "{} is carried through unchanged",
        entry.dtype.name()
    ));
    let bits = (entry.dtype.size() * 8) as u8;
    let ranges = plain_ranges(entry);
    each_part(file, entry, &ranges, |k, rows| {
        let bytes = file.bytes(entry)[byte_range(entry, rows)].to_vec();
        emit_plain(
            entry,
            (k, ranges.len()),
            rows,
            ("raw", bits),
            bytes,
            exact,
            emit,
        )
    })?;
    layer.set_plain("raw", bits, entry.end - entry.begin, exact);
    Ok(())
}

/// Emits part `k` of `parts` (rows `rows`) of a plainly stored tensor.
fn emit_plain(
    entry: &TensorEntry,
    (k, parts): (usize, usize),
    rows: &Range<usize>,
    (encoding, bits): (&'static str, u8),
    bytes: Vec<u8>,
    quality: Quality,
    emit: &mut Emit<'_>,
) -> Result<()> {
    let dtype = entry.dtype.name().to_lowercase();
    let shape = part_shape(&entry.shape, rows.len());
    let meta = RowMeta {
        name: &entry.name,
        shape: &shape,
        dtype: &dtype,
        encoding: RowEncoding::Plain { encoding, bits },
        quality,
    };
    // Plain rows have no scales: their scale type does not show in the row.
    let batch = plain_batch(&meta, bytes, crate::config::ScaleDtype::F16)?;
    emit(mark(entry, batch, k, parts)?)
}

/// The elements of a little-endian float32 buffer.
fn f32_values(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The error for the first NaN or infinity of a 16-bit part whose first element is `start`.
fn check_finite_half(entry: &TensorEntry, bytes: &[u8], start: usize) -> Result<()> {
    let value = |b: &[u8]| {
        let bits = u16::from_le_bytes([b[0], b[1]]);
        if entry.dtype == Dtype::F16 {
            f16::from_bits(bits).to_f32()
        } else {
            bf16::from_bits(bits).to_f32()
        }
    };
    match bytes
        .chunks_exact(2)
        .map(value)
        .position(|v| !v.is_finite())
    {
        None => Ok(()),
        Some(i) => Err(QuantError::NonFinite {
            tensor: entry.name.clone(),
            index: start + i,
            value: value(&bytes[2 * i..]).to_string(),
        }),
    }
}

/// Whether rounding a float32 tensor to float16 overflows, and the quality of that rounding, over all parts (the
/// sums run element by element in order, as `entry::keep_bytes` computes them); a NaN or infinity is an error.
fn f32_as_f16(
    file: &SafetensorsFile,
    entry: &TensorEntry,
    ranges: &[Range<usize>],
    cols: usize,
) -> Result<(bool, Quality)> {
    let mut sums = QualitySums::default();
    let mut overflow = false;
    each_part(file, entry, ranges, |_, rows| {
        let bytes = &file.bytes(entry)[byte_range(entry, rows)];
        for (i, v) in f32_values(bytes).enumerate() {
            if !v.is_finite() {
                return Err(QuantError::NonFinite {
                    tensor: entry.name.clone(),
                    index: rows.start * cols + i,
                    value: v.to_string(),
                });
            }
            let h = f16::from_f32(v);
            overflow |= h.is_infinite();
            sums.add_pair(v, h.to_f32());
        }
        Ok(())
    })?;
    Ok((overflow, sums.quality()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_whole_granules_within_the_limit() {
        // 10 rows of 100 bytes, limit 350 bytes, granule 2: parts of 2 rows (3 would break the granule).
        let r = part_ranges(10, 100, 2, 350);
        assert_eq!(r, vec![0..2, 2..4, 4..6, 6..8, 8..10]);
        // A granule larger than the limit is one part per granule; the last part takes what is left.
        assert_eq!(part_ranges(10, 100, 4, 150), vec![0..4, 4..8, 8..10]);
        // Small tensors are one part.
        assert_eq!(part_ranges(10, 100, 1, 1 << 20), vec![0..10]);
    }
}
