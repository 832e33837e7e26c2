//! Reading model files from Python: `QuantizedModel` (a lazy, read-only mapping from tensor names to dequantized
//! numpy arrays, over one of our model files or a GGUF file), `load_quantized` that opens one, and
//! `export_safetensors`.

use crate::detach::without_gil;
use crate::errors::Result;
use crate::quantized::PyQuantizedTensor;
use arrow_quant::arrow::output::RowEncoding;
use arrow_quant::arrow::time_groups::read_time_groups;
use arrow_quant::pipeline::{export_safetensors, is_gguf, ExportDtype, GgufModel, ModelFile};
use arrow_quant::QuantError;
use numpy::{IntoPyArray, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::PathBuf;

/// The file behind a [`QuantizedModel`].
enum Source {
    /// One of our model files (Parquet / Arrow IPC).
    Model(ModelFile),
    /// A GGUF file.
    Gguf(GgufModel),
}

/// A quantized model file opened lazily: a read-only mapping from tensor names to dequantized numpy arrays.
#[pyclass(module = "arrow_quant_v2._core", name = "QuantizedModel", frozen)]
pub struct QuantizedModel {
    source: Source,
}

impl QuantizedModel {
    fn names(&self) -> &[String] {
        match &self.source {
            Source::Model(f) => &f.names,
            Source::Gguf(g) => &g.names,
        }
    }

    fn path(&self) -> &std::path::Path {
        match &self.source {
            Source::Model(f) => f.path(),
            Source::Gguf(g) => g.path(),
        }
    }

    fn index(&self, name: &str) -> PyResult<usize> {
        self.names()
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(name.to_string()))
    }
}

/// A view class of `collections.abc` (`KeysView`, `ValuesView`, `ItemsView`) over `model`: what a `Mapping`'s
/// `keys()`, `values()` and `items()` return (values are dequantized lazily, one tensor at a time).
fn abc_view<'py>(model: &Bound<'py, QuantizedModel>, class: &str) -> PyResult<Bound<'py, PyAny>> {
    model
        .py()
        .import("collections.abc")?
        .getattr(class)?
        .call1((model,))
}

/// Registers `QuantizedModel` as a virtual subclass of `collections.abc.Mapping` (it implements the protocol:
/// `__getitem__`, `__len__`, `__iter__`, `keys`, `items`, `values`, `get`, `__contains__`, `__eq__`).
pub fn register_mapping(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let mapping = m.py().import("collections.abc")?.getattr("Mapping")?;
    mapping.call_method1("register", (m.getattr("QuantizedModel")?,))?;
    Ok(())
}

#[pymethods]
impl QuantizedModel {
    /// Tensor names in file order (a `KeysView`).
    fn keys<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        abc_view(slf, "KeysView")
    }

    /// The dequantized tensors in file order (a `ValuesView`, read lazily).
    fn values<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        abc_view(slf, "ValuesView")
    }

    /// `(name, dequantized tensor)` pairs in file order (an `ItemsView`, read lazily).
    fn items<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        abc_view(slf, "ItemsView")
    }

    /// The tensor `name` (as `model[name]`), or `default` when the file has no such tensor.
    #[pyo3(signature = (name, default = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        name: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> Result<Bound<'py, PyAny>> {
        match name.extract::<String>() {
            Ok(n) if self.__contains__(name) => self.__getitem__(py, &n),
            _ => Ok(default.unwrap_or_else(|| py.None().into_bound(py))),
        }
    }

    fn __len__(&self) -> usize {
        self.names().len()
    }

    fn __contains__(&self, name: &Bound<'_, PyAny>) -> bool {
        name.extract::<String>()
            .is_ok_and(|name| self.names().contains(&name))
    }

    /// Mapping equality: `other` is a mapping with the same names whose arrays are equal (`numpy.array_equal`,
    /// same shape and values) to this model's dequantized tensors.
    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let mapping = py.import("collections.abc")?.getattr("Mapping")?;
        if !other.is_instance(&mapping)? {
            return Ok(py.NotImplemented());
        }
        if other.len()? != self.names().len() {
            return Ok(false.into_pyobject(py)?.to_owned().into_any().unbind());
        }
        let array_equal = py.import("numpy")?.getattr("array_equal")?;
        for name in self.names() {
            let theirs = match other.get_item(name) {
                Ok(v) => v,
                Err(e) if e.is_instance_of::<pyo3::exceptions::PyKeyError>(py) => {
                    return Ok(false.into_pyobject(py)?.to_owned().into_any().unbind())
                }
                Err(e) => return Err(e),
            };
            let ours = self.__getitem__(py, name)?;
            if !array_equal.call1((ours, theirs))?.is_truthy()? {
                return Ok(false.into_pyobject(py)?.to_owned().into_any().unbind());
            }
        }
        Ok(true.into_pyobject(py)?.to_owned().into_any().unbind())
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        PyList::new(py, self.names())?
            .try_iter()
            .map(Bound::into_any)
    }

    /// The tensor's values in its source shape: float tensors dequantized to float32, raw tensors as stored (a
    /// chunked tensor's chunk rows joined).
    fn __getitem__<'py>(&self, py: Python<'py>, name: &str) -> Result<Bound<'py, PyAny>> {
        let i = self.index(name)?;
        let file = match &self.source {
            Source::Model(f) => f,
            Source::Gguf(g) => {
                let (shape, values) = without_gil(py, || g.read(i))?;
                return Ok(values
                    .into_pyarray(py)
                    .reshape(shape.as_slice())?
                    .into_any());
            }
        };
        let (mut values, mut raw) = (Vec::<f32>::new(), Vec::<u8>::new());
        let mut raw_dtype = None;
        let stored = without_gil(py, || {
            file.for_each_row(i, |row, _| {
                if let RowEncoding::Plain {
                    encoding: "raw", ..
                } = row.encoding
                {
                    raw_dtype = Some(row.dtype.to_string());
                    raw.extend_from_slice(row.data);
                    return Ok(());
                }
                let at = values.len();
                values.resize(at + row.shape.iter().product::<usize>(), 0.0);
                row.dequantize_into(&mut values[at..])
            })
        })?;
        if let Some(dtype) = raw_dtype {
            let bytes = numpy::PyArray1::from_vec(py, raw);
            let dtype = match dtype.as_str() {
                "i64" => "<i8",
                "i32" => "<i4",
                "i16" => "<i2",
                "i8" => "i1",
                "u8" => "u1",
                "u16" => "<u2",
                "u32" => "<u4",
                "u64" => "<u8",
                "f64" => "<f8",
                "bool" => "?",
                other => {
                    return Err(QuantError::format(
                        file.path(),
                        format!("tensor '{name}' has dtype {other} with no numpy equivalent"),
                    )
                    .into())
                }
            };
            return Ok(bytes
                .call_method1("view", (dtype,))?
                .call_method1("reshape", (stored.shape.clone(),))?);
        }
        Ok(values
            .into_pyarray(py)
            .reshape(stored.shape.as_slice())?
            .into_any())
    }

    /// The stored `QuantizedTensor` of a quantized layer, a chunked one's chunk rows joined; of a GGUF file, the
    /// tensor's blocks with its ggml type as the encoding, in the stored shape (KeyError for unknown names;
    /// SchemaError for a layer kept in 16-bit or float32).
    fn quantized(&self, py: Python<'_>, name: &str) -> Result<PyQuantizedTensor> {
        let i = self.index(name)?;
        let tensor = without_gil(py, || match &self.source {
            Source::Model(f) => f.read_quantized(i),
            Source::Gguf(g) => g.quantized(i),
        })?;
        Ok(PyQuantizedTensor::from_core(py, tensor))
    }

    /// The time-aware activation parameters stored with a layer, `[{t_start, t_end, scale, zero_point}]` (`t_end`
    /// exclusive), or None for a layer without calibration statistics and for every tensor of a GGUF file
    /// (KeyError for unknown names).
    fn time_groups<'py>(
        &self,
        py: Python<'py>,
        name: &str,
    ) -> Result<Option<Vec<Bound<'py, PyDict>>>> {
        let i = self.index(name)?;
        let Source::Model(file) = &self.source else {
            return Ok(None);
        };
        // Every chunk row of a tensor carries its time groups: the first row has them.
        let batch = without_gil(py, || file.read_row(file.rows_of(i).start))?;
        let Some(groups) = read_time_groups(&batch)?.pop().flatten() else {
            return Ok(None);
        };
        let entries = groups
            .iter()
            .map(|g| {
                let d = PyDict::new(py);
                d.set_item("t_start", g.t_start)?;
                d.set_item("t_end", g.t_end)?;
                d.set_item("scale", g.scale)?;
                d.set_item("zero_point", g.zero_point)?;
                Ok(d)
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Some(entries))
    }

    /// Footer metadata: format, source, config and report (JSON strings), tensor list; of a GGUF file, every
    /// metadata key (string values as they are, others as JSON).
    #[getter]
    fn metadata(&self) -> std::collections::HashMap<String, String> {
        match &self.source {
            Source::Model(f) => f.metadata.clone(),
            Source::Gguf(g) => g.metadata(),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "QuantizedModel({:?}, {} tensors)",
            self.path().display().to_string(),
            self.names().len()
        )
    }
}

/// `load_quantized(path)`: opens a model file (Parquet, Arrow IPC or GGUF, recognised by its magic) for lazy
/// reading.
#[pyfunction]
pub fn load_quantized(path: PathBuf) -> Result<QuantizedModel> {
    let source = if is_gguf(&path) {
        Source::Gguf(GgufModel::open(&path)?)
    } else {
        Source::Model(ModelFile::open(&path)?)
    };
    Ok(QuantizedModel { source })
}

/// `export_safetensors(quantized_path, output_path, dtype=None)`: writes a dequantized `.safetensors`, each
/// float tensor in its source dtype unless `dtype` says otherwise.
#[pyfunction(name = "export_safetensors")]
#[pyo3(signature = (quantized_path, output_path, dtype = None))]
pub fn export(
    py: Python<'_>,
    quantized_path: PathBuf,
    output_path: PathBuf,
    dtype: Option<&str>,
) -> Result<()> {
    let dtype = dtype.map(ExportDtype::parse).transpose()?;
    without_gil(py, || {
        export_safetensors(&quantized_path, &output_path, dtype)
    })
}
