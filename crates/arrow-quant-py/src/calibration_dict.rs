//! The dict form of a calibration table: numpy arrays or sequences, one entry per row, read into
//! [`CalibrationRow`]s. Wrong keys, types or lengths are `CalibrationError`s naming the key, what was found and
//! what was expected; the statistics themselves are validated by the core.

use crate::errors::Result;
use arrow_quant::diffusion::calibration::{col, CalibrationRow};
use arrow_quant::QuantError;
use numpy::{
    Element, PyArray1, PyArray2, PyArrayDescrMethods, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

/// Source name of a calibration given as a dict (used in error messages).
pub const SOURCE: &str = "dict";

/// The optional scalar key giving the number of sampler timesteps T.
const NUM_TIMESTEPS: &str = "num_timesteps";

/// Every key the dict may have.
const KEYS: [&str; 7] = [
    col::LAYER_NAME,
    col::TIMESTEP,
    col::MIN,
    col::MAX,
    col::COUNT,
    col::CHANNEL_ABSMAX,
    NUM_TIMESTEPS,
];

/// numpy dtype kinds accepted for integer columns.
const INTEGER: &[u8] = b"iu";
/// numpy dtype kinds accepted for float columns (integers convert exactly enough for ranges).
const REAL: &[u8] = b"fiu";

fn bad(problem: String) -> crate::errors::Error {
    QuantError::calibration(SOURCE, problem).into()
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_string(), |n| n.to_string())
}

fn wrong_length(key: &str, found: usize, expected: usize) -> crate::errors::Error {
    bad(format!(
        "key '{key}' has {found} values; expected {expected} (one per entry of '{}')",
        col::LAYER_NAME
    ))
}

/// Reads `{layer_name, timestep, min, max[, count][, channel_absmax][, num_timesteps]}` into rows and T.
pub fn rows_from_dict(dict: &Bound<'_, PyDict>) -> Result<(Vec<CalibrationRow>, Option<i64>)> {
    let py = dict.py();
    let np = py.import("numpy")?;
    for key in dict.keys() {
        let name = key.extract::<String>().ok();
        if !name.as_deref().is_some_and(|k| KEYS.contains(&k)) {
            return Err(bad(format!(
                "unknown key {}; expected layer_name, timestep, min, max and optionally count, channel_absmax, \
                 num_timesteps",
                key.repr().map_or_else(|_| "?".to_string(), |r| r.to_string())
            )));
        }
    }
    let get = |key: &str| -> Result<Option<Bound<'_, PyAny>>> {
        Ok(dict.get_item(key)?.filter(|v| !v.is_none()))
    };
    let required = |key: &str| -> Result<Bound<'_, PyAny>> {
        get(key)?.ok_or_else(|| {
            let found: Vec<String> = dict.keys().iter().map(|k| k.to_string()).collect();
            bad(format!(
                "missing key '{key}' (found {found:?}); the dict needs layer_name, timestep, min and max"
            ))
        })
    };
    let names = layer_names(&required(col::LAYER_NAME)?)?;
    let n = names.len();
    let timesteps: Vec<i64> = numeric(
        &np,
        &required(col::TIMESTEP)?,
        col::TIMESTEP,
        n,
        INTEGER,
        "integers",
    )?;
    let mins: Vec<f64> = numeric(&np, &required(col::MIN)?, col::MIN, n, REAL, "floats")?;
    let maxs: Vec<f64> = numeric(&np, &required(col::MAX)?, col::MAX, n, REAL, "floats")?;
    let counts: Option<Vec<i64>> = get(col::COUNT)?
        .map(|c| numeric(&np, &c, col::COUNT, n, INTEGER, "integers"))
        .transpose()?;
    let absmax = match get(col::CHANNEL_ABSMAX)? {
        Some(a) => channel_absmax(&np, &a, n)?,
        None => vec![None; n],
    };
    let num_timesteps = get(NUM_TIMESTEPS)?
        .map(|t| {
            t.extract::<i64>().map_err(|_| {
                bad(format!(
                    "key '{NUM_TIMESTEPS}' is a {}; expected an integer (the sampler's number of timesteps)",
                    type_name(&t)
                ))
            })
        })
        .transpose()?;
    let rows = names
        .into_iter()
        .zip(absmax)
        .enumerate()
        .map(|(i, (layer, channel_absmax))| CalibrationRow {
            layer,
            timestep: timesteps[i],
            min: mins[i],
            max: maxs[i],
            count: counts.as_ref().map_or(1, |c| c[i]),
            channel_absmax,
        })
        .collect();
    Ok((rows, num_timesteps))
}

/// `layer_name`: a sequence (list, tuple, numpy string or object array) of str.
fn layer_names(value: &Bound<'_, PyAny>) -> Result<Vec<String>> {
    let key = col::LAYER_NAME;
    let not_a_sequence = || {
        bad(format!(
            "key '{key}' is a {}; expected a sequence of str, one per row",
            type_name(value)
        ))
    };
    if value.is_instance_of::<PyString>() {
        return Err(not_a_sequence());
    }
    let items = value.try_iter().map_err(|_| not_a_sequence())?;
    items
        .enumerate()
        .map(|(i, item)| {
            let item = item?;
            item.extract::<String>().map_err(|_| {
                bad(format!(
                    "key '{key}' has a {} at row {i}; expected str",
                    type_name(&item)
                ))
            })
        })
        .collect()
}

/// `value` as a numpy array (`numpy.asarray`), or a `CalibrationError` naming `key`.
fn as_array<'py>(
    np: &Bound<'py, PyModule>,
    value: &Bound<'py, PyAny>,
    key: &str,
) -> Result<Bound<'py, PyUntypedArray>> {
    let array = np.call_method1("asarray", (value,)).map_err(|e| {
        bad(format!(
            "key '{key}' cannot be read as an array ({e}); pass a numpy array or a list of numbers"
        ))
    })?;
    Ok(array.cast_into::<PyUntypedArray>().map_err(PyErr::from)?)
}

/// The dtype of `array` (e.g. `float64`) and whether its kind is one of `kinds`.
fn dtype_of(array: &Bound<'_, PyUntypedArray>, kinds: &[u8]) -> (String, bool) {
    let dtype = array.dtype();
    (dtype.to_string(), kinds.contains(&dtype.kind()))
}

/// `array` converted to element type `T` (no copy when it already has that type), as a 1-D or 2-D array.
fn converted<'py>(
    np: &Bound<'py, PyModule>,
    array: &Bound<'py, PyUntypedArray>,
    dtype: &str,
) -> Result<Bound<'py, PyAny>> {
    let kwargs = PyDict::new(np.py());
    kwargs.set_item("dtype", dtype)?;
    Ok(np.call_method("asarray", (array,), Some(&kwargs))?)
}

/// A 1-D numeric column of `len` values with a dtype kind in `kinds`, converted to `T`.
fn numeric<T: Element + Copy + NumpyName>(
    np: &Bound<'_, PyModule>,
    value: &Bound<'_, PyAny>,
    key: &str,
    len: usize,
    kinds: &[u8],
    expected: &str,
) -> Result<Vec<T>> {
    let array = as_array(np, value, key)?;
    if array.ndim() != 1 {
        return Err(bad(format!(
            "key '{key}' has shape {:?}; expected a 1-D sequence of {len} {expected}",
            array.shape()
        )));
    }
    if array.len() != len {
        return Err(wrong_length(key, array.len(), len));
    }
    let (dtype, ok) = dtype_of(&array, kinds);
    // An empty list becomes float64 in numpy; with no rows there is nothing to mistype.
    if !ok && len > 0 {
        return Err(bad(format!(
            "key '{key}' has dtype {dtype}; expected {expected}"
        )));
    }
    let typed = converted(np, &array, T::NAME)?;
    let typed = typed.cast::<PyArray1<T>>().map_err(PyErr::from)?;
    let values = typed.readonly().as_array().iter().copied().collect();
    Ok(values)
}

/// The numpy name of an element type.
trait NumpyName {
    const NAME: &'static str;
}

impl NumpyName for i64 {
    const NAME: &'static str = "int64";
}

impl NumpyName for f64 {
    const NAME: &'static str = "float64";
}

impl NumpyName for f32 {
    const NAME: &'static str = "float32";
}

/// `channel_absmax`: a 2-D float array `[rows, channels]`, or a sequence with one 1-D float array (or None) per
/// row.
fn channel_absmax(
    np: &Bound<'_, PyModule>,
    value: &Bound<'_, PyAny>,
    len: usize,
) -> Result<Vec<Option<Vec<f32>>>> {
    let key = col::CHANNEL_ABSMAX;
    let how = "expected a 2-D float array [rows, channels] or a sequence with one 1-D float array (or None) \
               per row";
    if let Ok(array) = value.cast::<PyUntypedArray>() {
        let is_object = array.dtype().kind() == b'O';
        if array.ndim() == 2 && !is_object {
            if array.shape()[0] != len {
                return Err(wrong_length(key, array.shape()[0], len));
            }
            let (dtype, ok) = dtype_of(array, REAL);
            if !ok {
                return Err(bad(format!("key '{key}' has dtype {dtype}; {how}")));
            }
            let typed = converted(np, array, f32::NAME)?;
            let typed = typed.cast::<PyArray2<f32>>().map_err(PyErr::from)?;
            let view = typed.readonly();
            return Ok(view
                .as_array()
                .rows()
                .into_iter()
                .map(|r| Some(r.iter().copied().collect()))
                .collect());
        }
        if !(array.ndim() == 1 && is_object) {
            return Err(bad(format!(
                "key '{key}' is an array of shape {:?} and dtype {}; {how}",
                array.shape(),
                array.dtype()
            )));
        }
    }
    if value.is_instance_of::<PyString>() {
        return Err(bad(format!("key '{key}' is a str; {how}")));
    }
    let items = value
        .try_iter()
        .map_err(|_| bad(format!("key '{key}' is a {}; {how}", type_name(value))))?
        .collect::<PyResult<Vec<_>>>()?;
    if items.len() != len {
        return Err(wrong_length(key, items.len(), len));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            if item.is_none() {
                return Ok(None);
            }
            let array = as_array(np, item, key)?;
            let (dtype, ok) = dtype_of(&array, REAL);
            if array.ndim() != 1 || !ok {
                return Err(bad(format!(
                    "key '{key}' has shape {:?} and dtype {dtype} at row {i}; expected a 1-D float array of \
                     per-channel magnitudes, or None",
                    array.shape()
                )));
            }
            let typed = converted(np, &array, f32::NAME)?;
            let typed = typed.cast::<PyArray1<f32>>().map_err(PyErr::from)?;
            let values = typed.readonly().as_array().iter().copied().collect();
            Ok(Some(values))
        })
        .collect()
}
