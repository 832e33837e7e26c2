//! `QuantizedTensor`: one quantized layer whose packed codes, scales and zero points are numpy arrays that own
//! the Rust buffers (handed over without copying).

use crate::errors::{Error, Result};
use crate::options::group_size_to_py;
use arrow_quant::arrow::output::RowMeta;
use arrow_quant::{
    Encoding, Family, GroupSize, Method, ParamBuffer, ParamSlice, Payload, PayloadRef, Quality,
    QuantizedView, ScaleDtype, SourceDtype,
};
use half::f16;
use numpy::{IntoPyArray, PyArray1, PyArrayDyn, PyArrayMethods, PyUntypedArray};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// A quantized layer. Python sees read-only attributes and `dequantize()`.
#[pyclass(module = "arrow_quant_v2._core", name = "QuantizedTensor", frozen)]
pub struct PyQuantizedTensor {
    name: String,
    shape: Vec<usize>,
    source_dtype: SourceDtype,
    encoding: Encoding,
    /// The flat search used; `None` for block encodings and tensors read from a file.
    method: Option<Method>,
    /// A flat tensor's group size, or a block encoding's sub-block length (the stored `group_size` column).
    group_size: GroupSize,
    /// Storage type of the scales (float16 for block encodings).
    scale_dtype: ScaleDtype,
    data: Py<PyArray1<u8>>,
    scales: Py<PyUntypedArray>,
    zero_points: Option<Py<PyUntypedArray>>,
    params: Option<Py<PyArray1<u8>>>,
    channel_scales: Option<Py<PyArray1<f32>>>,
    quality: Quality,
    nbytes: usize,
}

fn params_to_numpy(py: Python<'_>, p: ParamBuffer) -> Py<PyUntypedArray> {
    match p {
        ParamBuffer::F16(v) => v.into_pyarray(py).into_any().cast_into::<PyUntypedArray>(),
        ParamBuffer::F32(v) => v.into_pyarray(py).into_any().cast_into::<PyUntypedArray>(),
    }
    .map(Bound::unbind)
    .expect("a numpy array is a numpy array")
}

/// Read-only borrows of a tensor's numpy buffers, alive while core views of them are in use.
pub struct TensorBorrow<'py> {
    data: numpy::PyReadonlyArray1<'py, u8>,
    scales: ParamBorrow<'py>,
    zeros: Option<ParamBorrow<'py>>,
    params: Option<numpy::PyReadonlyArray1<'py, u8>>,
    channel_scales: Option<numpy::PyReadonlyArray1<'py, f32>>,
}

/// Read-only access to a numpy parameter buffer.
enum ParamBorrow<'py> {
    F16(numpy::PyReadonlyArray1<'py, f16>),
    F32(numpy::PyReadonlyArray1<'py, f32>),
}

impl<'py> ParamBorrow<'py> {
    fn new(name: &str, array: &Bound<'py, PyUntypedArray>) -> Result<Self> {
        if let Ok(a) = array.cast::<PyArray1<f16>>() {
            Ok(Self::F16(a.readonly()))
        } else if let Ok(a) = array.cast::<PyArray1<f32>>() {
            Ok(Self::F32(a.readonly()))
        } else {
            Err(arrow_quant::QuantError::corrupt(
                name,
                "scales must be a 1-D float16 or float32 array",
            )
            .into())
        }
    }

    fn slice(&self, name: &str) -> Result<ParamSlice<'_>> {
        let not_contiguous = |_| {
            Error::Core(arrow_quant::QuantError::corrupt(
                name,
                "parameters not contiguous",
            ))
        };
        Ok(match self {
            Self::F16(a) => ParamSlice::F16(a.as_slice().map_err(not_contiguous)?),
            Self::F32(a) => ParamSlice::F32(a.as_slice().map_err(not_contiguous)?),
        })
    }
}

impl PyQuantizedTensor {
    /// Moves a core result into Python: its buffers become numpy arrays without a copy.
    pub fn from_core(py: Python<'_>, q: arrow_quant::QuantizedTensor) -> Self {
        let nbytes = q.nbytes();
        let view = q.view();
        let group_size = view
            .group_size()
            .unwrap_or(GroupSize::Elements(q.encoding.info().block_len));
        let scale_dtype = view.scale_dtype();
        let (scales, zero_points, params) = match q.payload {
            Payload::Flat(f) => (f.scales, f.zero_points, None),
            Payload::Blocks(records) => (ParamBuffer::F16(Vec::new()), None, Some(records)),
        };
        Self {
            name: q.name,
            shape: q.shape,
            source_dtype: q.source_dtype,
            encoding: q.encoding,
            method: q.method,
            group_size,
            scale_dtype,
            data: q.data.into_pyarray(py).unbind(),
            scales: params_to_numpy(py, scales),
            zero_points: zero_points.map(|z| params_to_numpy(py, z)),
            params: params.map(|p| p.into_pyarray(py).unbind()),
            channel_scales: q.channel_scales.map(|c| c.into_pyarray(py).unbind()),
            quality: q.quality,
            nbytes,
        }
    }

    /// Read-only borrows of the numpy buffers, to build core views from.
    pub fn borrow<'py>(&self, py: Python<'py>) -> Result<TensorBorrow<'py>> {
        Ok(TensorBorrow {
            data: self.data.bind(py).readonly(),
            scales: ParamBorrow::new(&self.name, self.scales.bind(py))?,
            zeros: match &self.zero_points {
                Some(z) => Some(ParamBorrow::new(&self.name, z.bind(py))?),
                None => None,
            },
            params: self.params.as_ref().map(|p| p.bind(py).readonly()),
            channel_scales: self.channel_scales.as_ref().map(|c| c.bind(py).readonly()),
        })
    }

    /// The core view of this tensor over borrowed buffers.
    pub fn view<'a>(&'a self, b: &'a TensorBorrow<'_>) -> Result<QuantizedView<'a>> {
        let slice = |a: &'a numpy::PyReadonlyArray1<'_, u8>| {
            a.as_slice()
                .map_err(|e| crate::errors::schema(&self.name, e))
        };
        let payload = match self.encoding.family() {
            Family::Blocks => PayloadRef::Blocks(match &b.params {
                Some(p) => slice(p)?,
                None => {
                    return Err(arrow_quant::QuantError::corrupt(
                        &self.name,
                        format!("{} has no params", self.encoding),
                    )
                    .into())
                }
            }),
            Family::Flat => PayloadRef::Flat {
                group_size: self.group_size,
                scales: b.scales.slice(&self.name)?,
                zero_points: b.zeros.as_ref().map(|z| z.slice(&self.name)).transpose()?,
            },
        };
        Ok(QuantizedView {
            name: &self.name,
            shape: &self.shape,
            encoding: self.encoding,
            data: slice(&b.data)?,
            payload,
            channel_scales: b
                .channel_scales
                .as_ref()
                .map(|c| {
                    c.as_slice()
                        .map_err(|e| crate::errors::schema(&self.name, e))
                })
                .transpose()?,
        })
    }

    /// The metadata of this tensor as a result row.
    pub fn row_meta<'a>(&self, view: &QuantizedView<'a>) -> RowMeta<'a> {
        RowMeta::quantized(view, self.source_dtype, self.quality)
    }

    /// Dequantizes to a new array of the source shape, f32 or f16 (the GIL is released while the kernels run).
    pub fn dequantize_to<'py, T: DequantTarget>(
        &self,
        py: Python<'py>,
    ) -> Result<Bound<'py, PyArrayDyn<T>>> {
        let borrowed = self.borrow(py)?;
        let view = self.view(&borrowed)?;
        let values = crate::detach::without_gil(py, || T::dequantize(&view))?;
        Ok(values.into_pyarray(py).reshape(self.shape.as_slice())?)
    }

    /// The layer name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[pymethods]
impl PyQuantizedTensor {
    /// Layer name.
    #[getter(name)]
    fn get_name(&self) -> &str {
        &self.name
    }

    /// Shape of the source tensor.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.shape)
    }

    /// Source dtype: "f32", "f16" or "bf16".
    #[getter]
    fn dtype(&self) -> &'static str {
        self.source_dtype.name()
    }

    /// Encoding: "int8", "int4", "int2" (flat) or "int8_2l", "int4_2l", "int2_2l" (two-level).
    #[getter]
    fn encoding(&self) -> &'static str {
        self.encoding.name()
    }

    /// Bits per code (2, 4 or 8).
    #[getter]
    fn bits(&self) -> u32 {
        u32::from(self.encoding.code_bits())
    }

    /// Elements per group, or "per_channel" (a two-level tensor's sub-block length).
    #[getter]
    fn group_size<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        group_size_to_py(py, self.group_size)
    }

    /// True when there is no zero point (codes centred on 2^(bits-1)); False for two-level tensors.
    #[getter]
    fn symmetric(&self) -> bool {
        self.encoding.family() == Family::Flat && self.zero_points.is_none()
    }

    /// The flat parameter search used: "rtn", "mse" or "hqq" (never "auto"); None for the two-level
    /// encodings (they have one search of their own) and for tensors read back from a file (not stored).
    #[getter]
    fn method(&self) -> Option<&'static str> {
        self.method.map(Method::name)
    }

    /// Storage type of scales and zero points: "float16" or "float32" (float16 for two-level records).
    #[getter]
    fn scale_dtype(&self) -> &'static str {
        self.scale_dtype.name()
    }

    /// Packed codes (uint8), ceil(n * bits / 8) bytes.
    #[getter]
    fn data(&self, py: Python<'_>) -> Py<PyArray1<u8>> {
        self.data.clone_ref(py)
    }

    /// One scale per group, row by row (float16 or float32).
    #[getter]
    fn scales(&self, py: Python<'_>) -> Py<PyUntypedArray> {
        self.scales.clone_ref(py)
    }

    /// One zero point per group, or None when symmetric or two-level.
    #[getter]
    fn zero_points(&self, py: Python<'_>) -> Option<Py<PyUntypedArray>> {
        self.zero_points.as_ref().map(|z| z.clone_ref(py))
    }

    /// Packed super-block records of a two-level encoding (uint8, layout in docs/FORMAT.md), or None for the
    /// flat encodings. Two-level tensors have empty `scales` and no `zero_points`.
    #[getter]
    fn params(&self, py: Python<'_>) -> Option<Py<PyArray1<u8>>> {
        self.params.as_ref().map(|p| p.clone_ref(py))
    }

    /// Activation-aware channel scales (float32, one per input channel, shape[1]) of a tensor quantized with
    /// `channel_absmax`, or None. `dequantize()` divides column c of the 2-D view by
    /// `channel_scales[c // (cols // shape[1])]`.
    #[getter]
    fn channel_scales(&self, py: Python<'_>) -> Option<Py<PyArray1<f32>>> {
        self.channel_scales.as_ref().map(|c| c.clone_ref(py))
    }

    /// Cosine similarity between the source and its dequantized form.
    #[getter]
    fn cosine(&self) -> f64 {
        self.quality.cosine
    }

    /// ||w - w_hat||^2 / ||w||^2.
    #[getter]
    fn rel_mse(&self) -> f64 {
        self.quality.rel_mse
    }

    /// Stored bits per weight, counting scales, zero points, two-level params and channel scales.
    #[getter]
    fn bits_per_weight(&self) -> f64 {
        let n: usize = self.shape.iter().product();
        if n == 0 {
            0.0
        } else {
            self.nbytes as f64 * 8.0 / n as f64
        }
    }

    /// Stored bytes: packed codes plus scales plus zero points plus two-level params plus channel scales.
    #[getter]
    fn nbytes(&self) -> usize {
        self.nbytes
    }

    /// Dequantizes to a new array of the source shape: dtype "float32" (default) or "float16".
    #[pyo3(signature = (dtype = "float32"))]
    fn dequantize<'py>(&self, py: Python<'py>, dtype: &str) -> Result<Bound<'py, PyAny>> {
        match dtype {
            "float32" => Ok(self.dequantize_to::<f32>(py)?.into_any()),
            "float16" => Ok(self.dequantize_to::<f16>(py)?.into_any()),
            other => Err(arrow_quant::QuantError::config(
                "dtype",
                format!("{other:?}"),
                "\"float32\" or \"float16\"",
            )
            .into()),
        }
    }

    fn __repr__(&self) -> String {
        let group = match self.group_size {
            GroupSize::Elements(g) => g.to_string(),
            GroupSize::PerChannel => "'per_channel'".to_string(),
        };
        let shape = match self.shape.as_slice() {
            [one] => format!("({one},)"),
            dims => format!(
                "({})",
                dims.iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        format!(
            "QuantizedTensor(name={:?}, shape={shape}, encoding='{}', group_size={}, symmetric={}, \
             bits_per_weight={:.3}, cosine={:.6}, rel_mse={:.3e})",
            self.name,
            self.encoding,
            group,
            if self.symmetric() { "True" } else { "False" },
            self.bits_per_weight(),
            self.quality.cosine,
            self.quality.rel_mse
        )
    }
}

/// Element types `dequantize` can produce.
pub trait DequantTarget: numpy::Element + Send {
    /// Dequantizes the whole view.
    fn dequantize(view: &QuantizedView<'_>) -> arrow_quant::Result<Vec<Self>>;
}

impl DequantTarget for f32 {
    fn dequantize(view: &QuantizedView<'_>) -> arrow_quant::Result<Vec<Self>> {
        view.dequantize()
    }
}

impl DequantTarget for f16 {
    fn dequantize(view: &QuantizedView<'_>) -> arrow_quant::Result<Vec<Self>> {
        let mut out = vec![f16::ZERO; view.len()];
        view.dequantize_into_half(&mut out)?;
        Ok(out)
    }
}
