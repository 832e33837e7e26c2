//! Calibration statistics: per layer and denoising timestep, the range of the layer's input activations, an
//! optional per-input-channel magnitude, and how many activations were seen.
//!
//! The table (Arrow record batches, a Parquet or Arrow IPC file, or in Python a dict of numpy arrays):
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `layer_name` | utf8, large_utf8 or utf8_view | the layer: a weight tensor's name, with or without `.weight` |
//! | `timestep` | any integer type | the denoising timestep, in `[0, num_timesteps)` |
//! | `min`, `max` | float16, float32 or float64 | smallest and largest input activation seen |
//! | `channel_absmax` | list of float (optional column, nullable) | per input channel, the largest `|x|` seen |
//! | `count` | any integer type (optional column; 1 when absent) | activations observed |
//!
//! The schema metadata key [`NUM_TIMESTEPS_KEY`] gives the number of timesteps T of the sampler (without it,
//! T is the largest timestep + 1). Rows with the same layer and timestep are merged: min of the minima, max of
//! the maxima, sum of the counts, elementwise max of `channel_absmax`.

use super::time_groups::TimestepRange;
use crate::error::{QuantError, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use std::collections::BTreeMap;
use std::path::Path;

/// Schema metadata key holding the number of timesteps T.
pub const NUM_TIMESTEPS_KEY: &str = "arrow_quant.num_timesteps";

/// Column names of the calibration table.
pub mod col {
    /// The layer name.
    pub const LAYER_NAME: &str = "layer_name";
    /// The timestep.
    pub const TIMESTEP: &str = "timestep";
    /// The smallest activation.
    pub const MIN: &str = "min";
    /// The largest activation.
    pub const MAX: &str = "max";
    /// Per-input-channel largest magnitude.
    pub const CHANNEL_ABSMAX: &str = "channel_absmax";
    /// Activations observed.
    pub const COUNT: &str = "count";
}

/// One row as given, before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationRow {
    /// Layer name.
    pub layer: String,
    /// Timestep.
    pub timestep: i64,
    /// Smallest activation.
    pub min: f64,
    /// Largest activation.
    pub max: f64,
    /// Activations observed.
    pub count: i64,
    /// Per-input-channel largest magnitude.
    pub channel_absmax: Option<Vec<f32>>,
}

/// The merged statistics of one layer at one timestep.
#[derive(Debug, Clone, PartialEq)]
pub struct TimestepStats {
    /// Timestep.
    pub timestep: u32,
    /// Smallest activation.
    pub min: f32,
    /// Largest activation.
    pub max: f32,
    /// Activations observed.
    pub count: u64,
    /// Per-input-channel largest magnitude.
    pub channel_absmax: Option<Vec<f32>>,
}

/// Everything recorded for one layer, by timestep.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerCalibration {
    /// Layer name as recorded.
    pub layer: String,
    /// Statistics by increasing timestep.
    pub steps: Vec<TimestepStats>,
}

impl LayerCalibration {
    /// The activation range at each recorded timestep.
    pub fn ranges(&self) -> Vec<TimestepRange> {
        self.steps
            .iter()
            .map(|s| TimestepRange {
                timestep: s.timestep,
                min: s.min,
                max: s.max,
            })
            .collect()
    }

    /// Per-input-channel magnitude over every timestep (elementwise max), if any timestep recorded it.
    pub fn channel_absmax(&self) -> Option<Vec<f32>> {
        let mut out: Option<Vec<f32>> = None;
        for a in self.steps.iter().filter_map(|s| s.channel_absmax.as_ref()) {
            match &mut out {
                None => out = Some(a.clone()),
                Some(o) => o.iter_mut().zip(a).for_each(|(o, &v)| *o = o.max(v)),
            }
        }
        out
    }

    /// Number of input channels recorded (`None` without `channel_absmax`).
    pub fn channels(&self) -> Option<usize> {
        self.steps
            .iter()
            .find_map(|s| s.channel_absmax.as_ref().map(Vec::len))
    }
}

/// A validated calibration table.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// Where it came from (file path, `table` or `dict`), for messages.
    pub source: String,
    /// Timesteps of the sampler, T.
    pub num_timesteps: u32,
    layers: BTreeMap<String, LayerCalibration>,
}

impl Calibration {
    /// Validates and merges rows. `num_timesteps` is T (the largest timestep + 1 when `None`).
    pub fn from_rows(
        source: &str,
        rows: impl IntoIterator<Item = CalibrationRow>,
        num_timesteps: Option<i64>,
    ) -> Result<Self> {
        let rows: Vec<CalibrationRow> = rows.into_iter().collect();
        let bad = |problem: String| QuantError::calibration(source, problem);
        if rows.is_empty() {
            return Err(bad(
                "the table has no rows; record at least one layer at one timestep".into(),
            ));
        }
        let t = match num_timesteps {
            Some(t) if (1..=i64::from(u32::MAX)).contains(&t) => t,
            Some(t) => {
                return Err(bad(format!(
                    "num_timesteps = {t}; expected a positive number of sampler timesteps"
                )))
            }
            None => rows.iter().map(|r| r.timestep).max().unwrap_or(0) + 1,
        };
        let mut layers: BTreeMap<String, BTreeMap<u32, TimestepStats>> = BTreeMap::new();
        let mut channels: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for (i, r) in rows.iter().enumerate() {
            let at = format!("row {i} (layer '{}', timestep {})", r.layer, r.timestep);
            if r.layer.is_empty() {
                return Err(bad(format!("row {i}: empty layer_name")));
            }
            if !(0..t).contains(&r.timestep) {
                return Err(bad(format!(
                    "{at}: timestep out of range [0, {t}); record timesteps of the sampler (0 .. num_timesteps-1)"
                )));
            }
            if !r.min.is_finite() || !r.max.is_finite() || r.min > r.max {
                return Err(bad(format!(
                    "{at}: min = {}, max = {}; expected finite values with min <= max",
                    r.min, r.max
                )));
            }
            if r.count < 1 {
                return Err(bad(format!(
                    "{at}: count = {}; expected at least 1 observed activation",
                    r.count
                )));
            }
            if let Some(a) = &r.channel_absmax {
                if let Some(j) = a.iter().position(|v| !v.is_finite() || *v < 0.0) {
                    return Err(bad(format!(
                        "{at}: channel_absmax[{j}] = {}; expected finite, non-negative magnitudes",
                        a[j]
                    )));
                }
                match channels.get(r.layer.as_str()) {
                    Some(&(n, first)) if n != a.len() => {
                        return Err(bad(format!(
                            "{at}: channel_absmax has {} channels but row {first} of the same layer has {n}",
                            a.len()
                        )))
                    }
                    Some(_) => {}
                    None => {
                        channels.insert(&r.layer, (a.len(), i));
                    }
                }
            }
            let steps = layers.entry(r.layer.clone()).or_default();
            let timestep = r.timestep as u32;
            let (min, max) = (r.min as f32, r.max as f32);
            let count = r.count as u64;
            match steps.get_mut(&timestep) {
                None => {
                    steps.insert(
                        timestep,
                        TimestepStats {
                            timestep,
                            min,
                            max,
                            count,
                            channel_absmax: r.channel_absmax.clone(),
                        },
                    );
                }
                Some(s) => {
                    s.min = s.min.min(min);
                    s.max = s.max.max(max);
                    s.count = s.count.saturating_add(count);
                    match (&mut s.channel_absmax, &r.channel_absmax) {
                        (Some(o), Some(a)) => o.iter_mut().zip(a).for_each(|(o, &v)| *o = o.max(v)),
                        (o @ None, Some(a)) => *o = Some(a.clone()),
                        _ => {}
                    }
                }
            }
        }
        let layers = layers
            .into_iter()
            .map(|(layer, steps)| {
                let steps = steps.into_values().collect();
                (layer.clone(), LayerCalibration { layer, steps })
            })
            .collect();
        Ok(Self {
            source: source.to_string(),
            num_timesteps: t as u32,
            layers,
        })
    }

    /// Reads the table from record batches (every batch must have the same schema; T comes from the first
    /// batch's schema metadata, [`NUM_TIMESTEPS_KEY`]).
    pub fn from_batches(source: &str, batches: &[RecordBatch]) -> Result<Self> {
        let num_timesteps = match batches
            .first()
            .and_then(|b| b.schema().metadata().get(NUM_TIMESTEPS_KEY).cloned())
        {
            None => None,
            Some(v) => Some(v.trim().parse::<i64>().map_err(|_| {
                QuantError::calibration(
                    source,
                    format!("metadata {NUM_TIMESTEPS_KEY} = {v:?}; expected an integer"),
                )
            })?),
        };
        let mut rows = Vec::new();
        for batch in batches {
            rows.extend(batch_rows(source, batch, rows.len())?);
        }
        Self::from_rows(source, rows, num_timesteps)
    }

    /// Reads a Parquet or Arrow IPC calibration file.
    pub fn read(path: &Path) -> Result<Self> {
        let batches = super::calibration_file::read_batches(path)?;
        Self::from_batches(&path.display().to_string(), &batches)
    }

    /// The layers, by name.
    pub fn layers(&self) -> impl Iterator<Item = &LayerCalibration> {
        self.layers.values()
    }

    /// The statistics recorded for a weight tensor: under its own name, or under the name without `.weight`.
    pub fn for_tensor(&self, tensor: &str) -> Option<&LayerCalibration> {
        self.layers.get(tensor).or_else(|| {
            tensor
                .strip_suffix(".weight")
                .and_then(|layer| self.layers.get(layer))
        })
    }

    /// Checks the table against a model's tensors (name, shape): every layer must name a tensor, and a layer's
    /// `channel_absmax` must have one value per input channel (axis 1) of its weight.
    pub fn check_against<'a>(
        &self,
        tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>,
    ) -> Result<()> {
        let shapes: BTreeMap<&str, &[usize]> = tensors.into_iter().collect();
        for l in self.layers.values() {
            let bad = |problem: String| {
                QuantError::calibration(format!("{} (layer '{}')", self.source, l.layer), problem)
            };
            let weight = format!("{}.weight", l.layer);
            let Some(shape) = shapes
                .get(l.layer.as_str())
                .or_else(|| shapes.get(weight.as_str()))
            else {
                return Err(bad(format!(
                    "unknown layer: the model has no tensor '{}' or '{weight}'; record statistics under the \
                     weight tensor's name",
                    l.layer
                )));
            };
            if let Some(n) = l.channels() {
                if shape.len() < 2 {
                    return Err(bad(format!(
                        "channel_absmax has {n} channels but the tensor has shape {shape:?}, which has no input \
                         channel axis; drop channel_absmax for this layer"
                    )));
                }
                if shape[1] != n {
                    return Err(bad(format!(
                        "channel_absmax has {n} channels but the weight {shape:?} has {} input channels (axis \
                         1); record one magnitude per input channel",
                        shape[1]
                    )));
                }
            }
        }
        Ok(())
    }

    /// The table as one record batch (one row per layer and timestep), with T in the schema metadata.
    pub fn to_batch(&self) -> Result<RecordBatch> {
        super::calibration_file::to_batch(self)
    }

    /// Writes the table as a Parquet file (zstd), atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        super::calibration_file::write(self, path)
    }
}

fn required<'b>(source: &str, batch: &'b RecordBatch, name: &str) -> Result<&'b ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| {
        let found: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        QuantError::calibration(
            source,
            format!(
                "missing column '{name}' (found {found:?}); the table needs layer_name, timestep, min, max and \
                 optionally channel_absmax and count"
            ),
        )
    })
}

fn cast(
    source: &str,
    array: &ArrayRef,
    name: &str,
    to: &DataType,
    expected: &str,
) -> Result<ArrayRef> {
    let ok = match (array.data_type(), to) {
        (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, DataType::Utf8) => true,
        (t, DataType::Int64) => t.is_integer(),
        (t, DataType::Float64) => t.is_floating(),
        (
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _),
            DataType::List(_),
        ) => f.data_type().is_floating(),
        _ => false,
    };
    if !ok {
        return Err(QuantError::calibration(
            source,
            format!(
                "column '{name}' has type {}; expected {expected}",
                array.data_type()
            ),
        ));
    }
    arrow_cast::cast(array, to)
        .map_err(|e| QuantError::calibration(source, format!("column '{name}': {e}")))
}

fn no_nulls(source: &str, array: &ArrayRef, name: &str, first_row: usize) -> Result<()> {
    match array
        .nulls()
        .and_then(|n| (0..n.len()).find(|&i| n.is_null(i)))
    {
        Some(i) => Err(QuantError::calibration(
            source,
            format!(
                "column '{name}' is null at row {}; every row needs a value",
                first_row + i
            ),
        )),
        None => Ok(()),
    }
}

fn batch_rows(source: &str, batch: &RecordBatch, first_row: usize) -> Result<Vec<CalibrationRow>> {
    let item = std::sync::Arc::new(arrow_schema::Field::new("item", DataType::Float32, true));
    let names = cast(
        source,
        required(source, batch, col::LAYER_NAME)?,
        col::LAYER_NAME,
        &DataType::Utf8,
        "utf8, large_utf8 or utf8_view",
    )?;
    let steps = cast(
        source,
        required(source, batch, col::TIMESTEP)?,
        col::TIMESTEP,
        &DataType::Int64,
        "an integer type",
    )?;
    let mins = cast(
        source,
        required(source, batch, col::MIN)?,
        col::MIN,
        &DataType::Float64,
        "float16, float32 or float64",
    )?;
    let maxs = cast(
        source,
        required(source, batch, col::MAX)?,
        col::MAX,
        &DataType::Float64,
        "float16, float32 or float64",
    )?;
    let counts = batch
        .column_by_name(col::COUNT)
        .map(|c| cast(source, c, col::COUNT, &DataType::Int64, "an integer type"))
        .transpose()?;
    let absmax = batch
        .column_by_name(col::CHANNEL_ABSMAX)
        .map(|c| {
            cast(
                source,
                c,
                col::CHANNEL_ABSMAX,
                &DataType::List(item.clone()),
                "a list of float16, float32 or float64",
            )
        })
        .transpose()?;
    for (a, name) in [
        (&names, col::LAYER_NAME),
        (&steps, col::TIMESTEP),
        (&mins, col::MIN),
        (&maxs, col::MAX),
    ] {
        no_nulls(source, a, name, first_row)?;
    }
    if let Some(c) = &counts {
        no_nulls(source, c, col::COUNT, first_row)?;
    }
    let names = names.as_string::<i32>();
    let steps = steps.as_primitive::<Int64Type>();
    let mins = mins.as_primitive::<Float64Type>();
    let maxs = maxs.as_primitive::<Float64Type>();
    let counts = counts.as_ref().map(|c| c.as_primitive::<Int64Type>());
    let absmax = absmax.as_ref().map(|a| a.as_list::<i32>());
    let mut rows = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let channel_absmax = match absmax {
            Some(a) if a.is_valid(i) => {
                let values = a.value(i);
                let values = values.as_primitive::<Float32Type>();
                if values.null_count() > 0 {
                    return Err(QuantError::calibration(
                        source,
                        format!(
                            "column 'channel_absmax' has a null element at row {}; record every channel",
                            first_row + i
                        ),
                    ));
                }
                Some(values.values().to_vec())
            }
            _ => None,
        };
        rows.push(CalibrationRow {
            layer: names.value(i).to_string(),
            timestep: steps.value(i),
            min: mins.value(i),
            max: maxs.value(i),
            count: counts.map_or(1, |c| c.value(i)),
            channel_absmax,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn row(
        layer: &str,
        t: i64,
        min: f64,
        max: f64,
        absmax: Option<Vec<f32>>,
    ) -> CalibrationRow {
        CalibrationRow {
            layer: layer.into(),
            timestep: t,
            min,
            max,
            count: 10,
            channel_absmax: absmax,
        }
    }

    #[test]
    fn merges_rows_of_the_same_layer_and_timestep() {
        let c = Calibration::from_rows(
            "test",
            vec![
                row("a", 3, -1.0, 2.0, Some(vec![1.0, 5.0])),
                row("a", 0, -0.5, 0.5, None),
                row("a", 3, -2.0, 1.0, Some(vec![3.0, 2.0])),
            ],
            Some(10),
        )
        .unwrap();
        assert_eq!(c.num_timesteps, 10);
        let a = c.for_tensor("a.weight").unwrap();
        assert_eq!(a.steps.len(), 2);
        assert_eq!(a.steps[0].timestep, 0);
        let s = &a.steps[1];
        assert_eq!((s.min, s.max, s.count), (-2.0, 2.0, 20));
        assert_eq!(s.channel_absmax, Some(vec![3.0, 5.0]));
        assert_eq!(a.channel_absmax(), Some(vec![3.0, 5.0]));
        assert_eq!(a.ranges().len(), 2);
    }

    #[test]
    fn timesteps_default_to_the_largest_plus_one() {
        let c = Calibration::from_rows("t", vec![row("a", 41, 0.0, 1.0, None)], None).unwrap();
        assert_eq!(c.num_timesteps, 42);
    }

    fn err(rows: Vec<CalibrationRow>, t: Option<i64>) -> String {
        Calibration::from_rows("cal.parquet", rows, t)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_rows_are_named() {
        let e = err(vec![row("a", 10, 0.0, 1.0, None)], Some(10));
        assert!(
            e.contains("cal.parquet")
                && e.contains("layer 'a', timestep 10")
                && e.contains("out of range [0, 10)"),
            "{e}"
        );
        let e = err(vec![row("a", -1, 0.0, 1.0, None)], None);
        assert!(e.contains("timestep -1"), "{e}");
        let e = err(vec![row("a", 0, 2.0, 1.0, None)], None);
        assert!(e.contains("min <= max"), "{e}");
        let e = err(vec![row("a", 0, f64::NAN, 1.0, None)], None);
        assert!(e.contains("finite"), "{e}");
        let e = err(vec![row("a", 0, 0.0, 1.0, Some(vec![1.0, -1.0]))], None);
        assert!(e.contains("channel_absmax[1] = -1"), "{e}");
        let e = err(
            vec![
                row("a", 0, 0.0, 1.0, Some(vec![1.0, 1.0])),
                row("a", 1, 0.0, 1.0, Some(vec![1.0])),
            ],
            None,
        );
        assert!(
            e.contains("row 1") && e.contains("has 1 channels but row 0"),
            "{e}"
        );
        let mut r = row("a", 0, 0.0, 1.0, None);
        r.count = 0;
        assert!(err(vec![r], None).contains("count = 0"));
        assert!(err(vec![], None).contains("no rows"));
        assert!(err(vec![row("a", 0, 0.0, 1.0, None)], Some(0)).contains("num_timesteps = 0"));
    }

    #[test]
    fn checks_layers_and_channels_against_the_model() {
        let c = Calibration::from_rows(
            "cal",
            vec![
                row("blocks.0.attn", 0, 0.0, 1.0, Some(vec![1.0; 4])),
                row("blocks.0.mlp.weight", 0, 0.0, 1.0, None),
            ],
            None,
        )
        .unwrap();
        let (s1, s2, s3) = ([8usize, 4], [16usize, 8], [8usize, 3]);
        c.check_against([
            ("blocks.0.attn.weight", &s1[..]),
            ("blocks.0.mlp.weight", &s2[..]),
        ])
        .unwrap();
        let e = c
            .check_against([
                ("blocks.0.attn.weight", &s3[..]),
                ("blocks.0.mlp.weight", &s2[..]),
            ])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("blocks.0.attn")
                && e.contains("4 channels")
                && e.contains("3 input channels"),
            "{e}"
        );
        let e = c
            .check_against([("blocks.0.attn.weight", &s1[..])])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown layer") && e.contains("blocks.0.mlp.weight"),
            "{e}"
        );
        let flat = [4usize];
        let e = c
            .check_against([
                ("blocks.0.attn", &flat[..]),
                ("blocks.0.mlp.weight", &s2[..]),
            ])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no input channel axis"), "{e}");
    }
}
