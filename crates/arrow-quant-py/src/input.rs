//! numpy arrays in: float32 / float16 / bfloat16-as-uint16, borrowed in place when C-contiguous, else copied once.

use crate::errors::{schema, Result};
use arrow_quant::{TensorData, TensorView};
use half::{bf16, f16};
use numpy::{
    PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

/// The elements of one input array: a read-only borrow of numpy's buffer, or a one-time copy of a strided view.
enum Storage<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F16(PyReadonlyArrayDyn<'py, f16>),
    BF16(PyReadonlyArrayDyn<'py, u16>),
    OwnedF32(Vec<f32>),
    OwnedF16(Vec<f16>),
    OwnedBF16(Vec<bf16>),
}

/// One named input layer, holding its numpy array alive while the kernels read it without the GIL.
pub struct LayerInput<'py> {
    pub name: String,
    pub shape: Vec<usize>,
    storage: Storage<'py>,
}

const HOW_TO_FIX: &str =
    "pass a float32 or float16 numpy array (or bfloat16 bits as uint16), e.g. weights.astype(numpy.float32)";

impl<'py> LayerInput<'py> {
    /// Reads `obj` (a numpy array). C-contiguous arrays are borrowed without copying; other layouts are copied
    /// once into row-major order.
    pub fn from_py(name: String, obj: &Bound<'py, PyAny>) -> Result<Self> {
        let Ok(array) = obj.cast::<PyUntypedArray>() else {
            let type_name = obj
                .get_type()
                .name()
                .map_or_else(|_| "?".to_string(), |n| n.to_string());
            return Err(schema(
                &name,
                format!("expected a numpy array, got {type_name}; {HOW_TO_FIX}"),
            ));
        };
        let shape = array.shape().to_vec();
        // as_slice() also accepts Fortran order, which would read the elements transposed: require C order.
        let c_order = array.is_c_contiguous();
        let dtype = array.dtype();
        let py = obj.py();
        let storage = if dtype.is_equiv_to(&numpy::dtype::<f32>(py)) {
            let a = array
                .cast::<PyArrayDyn<f32>>()
                .map_err(PyErr::from)?
                .readonly();
            if c_order {
                Storage::F32(a)
            } else {
                Storage::OwnedF32(a.as_array().iter().copied().collect())
            }
        } else if dtype.is_equiv_to(&numpy::dtype::<f16>(py)) {
            let a = array
                .cast::<PyArrayDyn<f16>>()
                .map_err(PyErr::from)?
                .readonly();
            if c_order {
                Storage::F16(a)
            } else {
                Storage::OwnedF16(a.as_array().iter().copied().collect())
            }
        } else if dtype.is_equiv_to(&numpy::dtype::<u16>(py)) {
            let a = array
                .cast::<PyArrayDyn<u16>>()
                .map_err(PyErr::from)?
                .readonly();
            if c_order {
                Storage::BF16(a)
            } else {
                Storage::OwnedBF16(a.as_array().iter().map(|&b| bf16::from_bits(b)).collect())
            }
        } else {
            let found = dtype
                .str()
                .map_or_else(|_| "?".to_string(), |s| s.to_string());
            return Err(schema(
                &name,
                format!("dtype {found} is not supported; {HOW_TO_FIX}"),
            ));
        };
        Ok(Self {
            name,
            shape,
            storage,
        })
    }

    /// A view of the elements for the core (valid while `self` lives).
    pub fn view(&self) -> Result<TensorView<'_>> {
        let data = match &self.storage {
            Storage::F32(a) => TensorData::F32(a.as_slice().map_err(|e| schema(&self.name, e))?),
            Storage::F16(a) => TensorData::F16(a.as_slice().map_err(|e| schema(&self.name, e))?),
            Storage::BF16(a) => {
                let bits = a.as_slice().map_err(|e| schema(&self.name, e))?;
                // bf16 is a transparent wrapper of its u16 bits.
                TensorData::BF16(bytemuck_bf16(bits))
            }
            Storage::OwnedF32(v) => TensorData::F32(v),
            Storage::OwnedF16(v) => TensorData::F16(v),
            Storage::OwnedBF16(v) => TensorData::BF16(v),
        };
        Ok(TensorView::new(&self.name, &self.shape, data)?)
    }
}

/// Reinterprets bfloat16 bit patterns as `bf16` without copying.
fn bytemuck_bf16(bits: &[u16]) -> &[bf16] {
    half::slice::HalfBitsSliceExt::reinterpret_cast(bits)
}
