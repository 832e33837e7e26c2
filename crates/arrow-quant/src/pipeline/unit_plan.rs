//! Mixed precision in a distributed run: the planning pass as units too. Each quantizable tensor is measured in
//! any process ([`estimate_unit`]: its options at every width, into a small JSON file), the driver allocates the
//! widths from those files ([`plan_from_estimates`]: a plan file), and every quantize unit and the assembly read
//! the plan. The measurements and the allocation are those of a local run, so the model file is byte-identical.
//! Floats are stored as their IEEE-754 bits, so a round trip through the files changes nothing.

use super::atomic_file::AtomicFile;
use super::config::PipelineConfig;
use super::plan::{
    allocate_widths, fixed_sizes, layer_options, FixedSizes, Plan, PlannedLayer, WidthOption,
};
use super::policy::Decision;
use super::units::{check_distributable, Units};
use super::MixedPrecision;
use crate::checkpoint::{Checkpoint, TensorEntry};
use crate::config::BitWidth;
use crate::diffusion::allocation::LayerOption;
use crate::error::{QuantError, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Which file a JSON document of this module is.
const KIND_KEY: &str = "arrow_quant";

fn width_json(w: Option<BitWidth>) -> Value {
    w.map_or(Value::Null, |b| json!(b.bits()))
}

fn bad(path: &Path, what: &str) -> QuantError {
    QuantError::format(path, format!("not a readable {what}"))
}

fn parse_width(v: &Value, path: &Path, what: &str) -> Result<Option<BitWidth>> {
    match v {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .and_then(|b| BitWidth::from_bits(b as u32).ok())
            .map(Some)
            .ok_or_else(|| bad(path, what)),
    }
}

fn float_of(v: &Value, path: &Path, what: &str) -> Result<f64> {
    v.as_u64()
        .map(f64::from_bits)
        .ok_or_else(|| bad(path, what))
}

/// Writes `value` to `path` atomically; `durable`: waits for the disk (the plan, read by every unit), else not
/// (an estimate, which `read_json` rejects when torn, so that the driver makes it again).
fn write_json(path: &Path, value: &Value, durable: bool) -> Result<()> {
    use std::io::Write;
    let file = AtomicFile::create(path)?;
    file.handle()?
        .write_all(value.to_string().as_bytes())
        .map_err(|e| QuantError::io(path, &e))?;
    if durable {
        file.commit()
    } else {
        file.commit_unsynced()
    }
}

fn read_json(path: &Path, kind: &str) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| QuantError::io(path, &e))?;
    let value: Value = serde_json::from_str(&text).map_err(|_| bad(path, kind))?;
    if value.get(KIND_KEY).and_then(Value::as_str) != Some(kind) {
        return Err(bad(path, kind));
    }
    Ok(value)
}

/// The checkpoint's units with a plan required: the config must have a mixed-precision budget.
fn open_planned<'c>(
    checkpoint: &'c Checkpoint,
    config: &PipelineConfig,
) -> Result<(Units<'c>, super::config::Budget)> {
    check_distributable(config)?;
    let budget = config.budget().ok_or_else(|| {
        QuantError::config(
            "target_bits_per_weight",
            "None",
            "a budget (or the automatic INT4 plan): this config quantizes every layer at one width, so it has \
             nothing to plan",
        )
    })?;
    Ok((Units::new(checkpoint, config, None)?, budget))
}

/// Measures tensor `index` of the checkpoint at `input` for the plan (its options at every width) and writes
/// them to the JSON file `staged`, atomically. The tensor must be one the policy quantizes.
pub fn estimate_unit(
    input: &Path,
    config: &PipelineConfig,
    index: usize,
    staged: &Path,
) -> Result<()> {
    let checkpoint = Checkpoint::open(input)?;
    let (units, _) = open_planned(&checkpoint, config)?;
    let Some(&(file, entry)) = units.tensors.get(index) else {
        return Err(QuantError::format(
            input,
            format!(
                "unit {index} asked of a checkpoint of {} tensors",
                units.tensors.len()
            ),
        ));
    };
    if units.decisions[index] != Decision::Quantize {
        return Err(QuantError::format(
            input,
            format!(
                "tensor '{}' is not quantized, so it has nothing to estimate",
                entry.name
            ),
        ));
    }
    let options = layer_options(file, entry, None, config)?;
    let options: Vec<Value> = options
        .iter()
        .map(|(w, o)| json!([width_json(*w), o.bits.to_bits(), o.error.to_bits()]))
        .collect();
    write_json(
        staged,
        &json!({KIND_KEY: "estimate", "index": index, "name": entry.name, "options": options}),
        false,
    )
}

fn read_estimate(path: &Path, entry: &TensorEntry, index: usize) -> Result<Vec<WidthOption>> {
    const WHAT: &str = "estimate";
    let v = read_json(path, WHAT)?;
    if v.get("index").and_then(Value::as_u64) != Some(index as u64)
        || v.get("name").and_then(Value::as_str) != Some(entry.name.as_str())
    {
        return Err(QuantError::format(
            path,
            format!("estimate is not of tensor {index} ('{}')", entry.name),
        ));
    }
    let options = v
        .get("options")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(path, WHAT))?;
    options
        .iter()
        .map(|o| match o.as_array().map(Vec::as_slice) {
            Some([w, bits, error]) => Ok((
                parse_width(w, path, WHAT)?,
                LayerOption {
                    bits: float_of(bits, path, WHAT)?,
                    error: float_of(error, path, WHAT)?,
                },
            )),
            _ => Err(bad(path, WHAT)),
        })
        .collect()
}

/// Allocates the widths of the checkpoint at `input` from its estimates (`estimates[k]`: the file
/// [`estimate_unit`] wrote for the k-th quantized tensor, in tensor order) and writes the plan to the JSON file
/// `plan`, atomically. Returns the plan's summary (`None` when the automatic plan is out of reach and the run
/// stays uniform; the plan file says so too).
pub fn plan_from_estimates(
    input: &Path,
    config: &PipelineConfig,
    estimates: &[PathBuf],
    plan: &Path,
) -> Result<Option<MixedPrecision>> {
    let checkpoint = Checkpoint::open(input)?;
    let (units, budget) = open_planned(&checkpoint, config)?;
    let entries: Vec<&TensorEntry> = units.tensors.iter().map(|(_, e)| *e).collect();
    let quantized: Vec<usize> = (0..entries.len())
        .filter(|&i| units.decisions[i] == Decision::Quantize)
        .collect();
    if quantized.len() != estimates.len() {
        return Err(QuantError::format(
            input,
            format!(
                "{} estimates for a checkpoint of {} quantized tensors",
                estimates.len(),
                quantized.len()
            ),
        ));
    }
    let layers = quantized
        .iter()
        .zip(estimates)
        .map(|(&i, path)| {
            Ok(PlannedLayer {
                index: i,
                elements: entries[i].len(),
                options: read_estimate(path, entries[i], i)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let fixed: FixedSizes = fixed_sizes(&entries, &units.decisions);
    let allocated = allocate_widths(&layers, entries.len(), &fixed, budget)?;
    let value = plan_json(entries.len(), allocated.as_ref());
    write_json(plan, &value, true)?;
    Ok(allocated.map(|p| p.summary))
}

/// The plan file's JSON of a checkpoint of `tensors` tensors (`None`: the run stays uniform).
fn plan_json(tensors: usize, plan: Option<&Plan>) -> Value {
    match plan {
        None => json!({KIND_KEY: "plan", "tensors": tensors, "widths": Value::Null}),
        Some(p) => json!({
            KIND_KEY: "plan",
            "tensors": tensors,
            "widths": p.widths.iter().map(|w| width_json(*w)).collect::<Vec<_>>(),
            "target_bits_per_weight": p.summary.target_bits_per_weight.to_bits(),
            "automatic": p.summary.automatic,
            "planned_bits_per_weight": p.summary.planned_bits_per_weight.to_bits(),
            "total_error": p.summary.total_error.to_bits(),
            "layers_per_width": p.summary.layers_per_width,
        }),
    }
}

/// Reads a plan file of a checkpoint of `tensors` tensors (`None`: the run stays uniform).
pub(crate) fn read_plan(path: &Path, tensors: usize) -> Result<Option<Plan>> {
    const WHAT: &str = "plan";
    let v = read_json(path, WHAT)?;
    if v.get("tensors").and_then(Value::as_u64) != Some(tensors as u64) {
        return Err(QuantError::format(
            path,
            format!("plan is not of this checkpoint of {tensors} tensors"),
        ));
    }
    let Some(widths) = v.get("widths").and_then(Value::as_array) else {
        return Ok(None);
    };
    let widths = widths
        .iter()
        .map(|w| parse_width(w, path, WHAT))
        .collect::<Result<Vec<_>>>()?;
    let float = |key: &str| float_of(v.get(key).unwrap_or(&Value::Null), path, WHAT);
    let counts: Vec<usize> = v
        .get("layers_per_width")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_u64().map(|n| n as usize))
                .collect()
        })
        .unwrap_or_default();
    let layers_per_width: [usize; 4] = counts.try_into().map_err(|_| bad(path, WHAT))?;
    if widths.len() != tensors {
        return Err(bad(path, WHAT));
    }
    Ok(Some(Plan {
        widths,
        summary: MixedPrecision {
            target_bits_per_weight: float("target_bits_per_weight")?,
            automatic: v
                .get("automatic")
                .and_then(Value::as_bool)
                .ok_or_else(|| bad(path, WHAT))?,
            planned_bits_per_weight: float("planned_bits_per_weight")?,
            total_error: float("total_error")?,
            layers_per_width,
        },
    }))
}

/// The plan a distributed unit or assembly of `config` uses: read from `plan` when the config has a budget (an
/// error without the file), none for a uniform config (an error if a plan is given anyway).
pub(crate) fn plan_for(
    config: &PipelineConfig,
    plan: Option<&Path>,
    tensors: usize,
) -> Result<Option<Plan>> {
    match (config.budget(), plan) {
        (None, None) => Ok(None),
        (Some(_), Some(path)) => read_plan(path, tensors),
        (None, Some(path)) => Err(QuantError::format(
            path,
            "a plan was given for a config that quantizes every layer at one width",
        )),
        (Some(_), None) => Err(QuantError::config(
            "plan",
            "None",
            "the plan file of `plan_from_estimates`: this config plans mixed precision (a \
             target_bits_per_weight, or the automatic INT4 plan)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_round_trip_exactly_and_damaged_ones_are_errors() {
        let dir = std::env::temp_dir().join(format!("aq-unit-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("plan.json");
        let plan = Plan {
            widths: vec![
                Some(BitWidth::Int4),
                None,
                Some(BitWidth::Int8),
                Some(BitWidth::Int2),
            ],
            summary: MixedPrecision {
                target_bits_per_weight: 4.5,
                automatic: true,
                planned_bits_per_weight: 4.0 + 1.0 / 3.0,
                total_error: 0.1 + 0.2,
                layers_per_width: [1, 1, 1, 0],
            },
        };
        write_json(&path, &plan_json(4, Some(&plan)), true).unwrap();
        assert_eq!(read_plan(&path, 4).unwrap(), Some(plan));
        assert!(read_plan(&path, 5)
            .unwrap_err()
            .to_string()
            .contains("5 tensors"));
        write_json(&path, &plan_json(4, None), true).unwrap();
        assert_eq!(read_plan(&path, 4).unwrap(), None);
        for damaged in [
            "",
            "{}",
            r#"{"arrow_quant": "estimate"}"#,
            r#"{"arrow_quant": "plan", "tensors": 1, "widths": [3]}"#,
        ] {
            std::fs::write(&path, damaged).unwrap();
            let e = read_plan(&path, 1).unwrap_err().to_string();
            assert!(e.contains("not a readable plan"), "{damaged}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
