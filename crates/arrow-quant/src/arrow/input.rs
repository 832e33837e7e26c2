//! Layers from Arrow record batches, read in place.
//!
//! Accepted schema (extra columns are ignored): `layer_name` utf8 | large_utf8 | utf8_view; `weights` list |
//! large_list | fixed_size_list of float32 | float16; `shape` list | large_list of int64 | int32, optional (absent
//! or null: 1-D). Weight values are borrowed from the Arrow buffers: no per-element work and no copy.

use crate::error::{QuantError, Result};
use crate::tensor::{TensorData, TensorView};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, OffsetSizeTrait, RecordBatch};
use arrow_schema::DataType;
use std::collections::HashSet;
use std::ops::Range;

/// Input column holding the layer names.
pub const LAYER_NAME: &str = "layer_name";
/// Input column holding the weights.
pub const WEIGHTS: &str = "weights";
/// Optional input column holding the shapes.
pub const SHAPE: &str = "shape";

const NAME_TYPES: &str = "utf8, large_utf8 or utf8_view";
const WEIGHT_TYPES: &str = "list, large_list or fixed_size_list of float32 or float16";
const SHAPE_TYPES: &str = "list or large_list of int64 (or int32)";

/// One layer of an Arrow input: its name and weights borrowed from the batch, its shape owned.
#[derive(Debug, Clone)]
pub struct ArrowLayer<'a> {
    /// Layer name (borrowed from the name column).
    pub name: &'a str,
    /// Shape from the `shape` column, or `[len]`.
    pub shape: Vec<usize>,
    /// The weights (borrowed from the values buffer of the weights column).
    pub data: TensorData<'a>,
}

impl ArrowLayer<'_> {
    /// The tensor view the kernels take.
    pub fn view(&self) -> Result<TensorView<'_>> {
        TensorView::new(self.name, &self.shape, self.data)
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a ArrayRef> {
    batch.schema().index_of(name).ok().map(|i| batch.column(i))
}

/// The name of row `row`, or `None` if null.
fn name_at(array: &dyn Array, row: usize) -> Option<&str> {
    if array.is_null(row) {
        return None;
    }
    Some(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(row),
        DataType::LargeUtf8 => array.as_string::<i64>().value(row),
        _ => array.as_string_view().value(row),
    })
}

fn list_range<O: OffsetSizeTrait>(array: &dyn Array, row: usize) -> Range<usize> {
    let offsets = array.as_list::<O>().value_offsets();
    offsets[row].as_usize()..offsets[row + 1].as_usize()
}

/// The values array of a list-like column and the element range of row `row`.
fn list_values(array: &dyn Array, row: usize) -> (&ArrayRef, Range<usize>) {
    match array.data_type() {
        DataType::List(_) => (
            array.as_list::<i32>().values(),
            list_range::<i32>(array, row),
        ),
        DataType::LargeList(_) => (
            array.as_list::<i64>().values(),
            list_range::<i64>(array, row),
        ),
        _ => {
            let fixed = array.as_fixed_size_list();
            let size = fixed.value_length() as usize;
            let start = fixed.value_offset(row) as usize;
            (fixed.values(), start..start + size)
        }
    }
}

fn list_item_type(t: &DataType) -> Option<&DataType> {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            Some(f.data_type())
        }
        _ => None,
    }
}

fn check_types(batch: &RecordBatch) -> Result<()> {
    let schema = batch.schema();
    let field = |name: &str| schema.field_with_name(name).ok();
    let names = field(LAYER_NAME).ok_or_else(|| {
        QuantError::column(
            LAYER_NAME,
            format!("missing; the input needs a {NAME_TYPES} column '{LAYER_NAME}'"),
        )
    })?;
    if !matches!(
        names.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return Err(QuantError::column(
            LAYER_NAME,
            format!("found {}, expected {NAME_TYPES}", names.data_type()),
        ));
    }
    let weights = field(WEIGHTS).ok_or_else(|| {
        QuantError::column(
            WEIGHTS,
            format!("missing; the input needs a '{WEIGHTS}' column of {WEIGHT_TYPES}"),
        )
    })?;
    if !matches!(
        list_item_type(weights.data_type()),
        Some(DataType::Float32 | DataType::Float16)
    ) {
        return Err(QuantError::column(
            WEIGHTS,
            format!("found {}, expected {WEIGHT_TYPES}", weights.data_type()),
        ));
    }
    if let Some(shape) = field(SHAPE) {
        let ok = matches!(
            shape.data_type(),
            DataType::List(_) | DataType::LargeList(_)
        ) && matches!(
            list_item_type(shape.data_type()),
            Some(DataType::Int64 | DataType::Int32)
        );
        if !ok {
            return Err(QuantError::column(
                SHAPE,
                format!("found {}, expected {SHAPE_TYPES}", shape.data_type()),
            ));
        }
    }
    Ok(())
}

fn weights_at<'a>(array: &'a dyn Array, row: usize, name: &str) -> Result<TensorData<'a>> {
    let (values, range) = list_values(array, row);
    if values.null_count() > 0 {
        let nulls = values.logical_nulls();
        if let Some(i) = range
            .clone()
            .find(|&i| nulls.as_ref().is_some_and(|n| n.is_null(i)))
        {
            return Err(QuantError::column(
                WEIGHTS,
                format!(
                    "layer '{name}' has a null weight at element {}; fill or drop nulls",
                    i - range.start
                ),
            ));
        }
    }
    Ok(match values.data_type() {
        DataType::Float32 => TensorData::F32(&values.as_primitive::<Float32Type>().values()[range]),
        _ => TensorData::F16(&values.as_primitive::<Float16Type>().values()[range]),
    })
}

fn shape_at(array: &dyn Array, row: usize, name: &str, len: usize) -> Result<Vec<usize>> {
    if array.is_null(row) {
        return Ok(vec![len]);
    }
    let (values, range) = list_values(array, row);
    let dims: Vec<i64> = match values.data_type() {
        DataType::Int64 => values.as_primitive::<Int64Type>().values()[range].to_vec(),
        _ => values.as_primitive::<Int32Type>().values()[range]
            .iter()
            .map(|&d| i64::from(d))
            .collect(),
    };
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| {
            QuantError::column(
                SHAPE,
                format!("layer '{name}' has a negative dimension in {dims:?}"),
            )
        })?;
    let product: usize = shape.iter().product();
    if product != len {
        return Err(QuantError::column(
            SHAPE,
            format!("layer '{name}': shape {dims:?} holds {product} elements but the row has {len} weights"),
        ));
    }
    Ok(shape)
}

/// Reads every row of every batch as a layer. Errors name the column, the row (counted over all batches) or the
/// layer, and what was expected; a duplicate layer name is an error.
pub fn read_layers(batches: &[RecordBatch]) -> Result<Vec<ArrowLayer<'_>>> {
    let mut layers = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    let mut seen = HashSet::new();
    let mut row_base = 0;
    for batch in batches {
        check_types(batch)?;
        let names = column(batch, LAYER_NAME).map(|c| c.as_ref());
        let weights = column(batch, WEIGHTS).map(|c| c.as_ref());
        let (Some(names), Some(weights)) = (names, weights) else {
            continue; // unreachable: check_types found both
        };
        let shapes = column(batch, SHAPE);
        for row in 0..batch.num_rows() {
            let at = row_base + row;
            let name = name_at(names, row).ok_or_else(|| {
                QuantError::column(LAYER_NAME, format!("row {at} has a null layer name"))
            })?;
            if weights.is_null(row) {
                return Err(QuantError::column(
                    WEIGHTS,
                    format!("row {at} (layer '{name}') has null weights"),
                ));
            }
            let data = weights_at(weights, row, name)?;
            let shape = match shapes {
                Some(s) => shape_at(s.as_ref(), row, name, data.len())?,
                None => vec![data.len()],
            };
            if !seen.insert(name) {
                return Err(QuantError::column(
                    LAYER_NAME,
                    format!("layer name '{name}' appears twice (again at row {at}); layer names must be unique"),
                ));
            }
            layers.push(ArrowLayer { name, shape, data });
        }
        row_base += batch.num_rows();
    }
    Ok(layers)
}
