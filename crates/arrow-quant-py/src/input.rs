//! numpy arrays in: float32 / float16 / bfloat16-as-uint16, borrowed in place when C-contiguous and aligned, else
//! copied once.

use crate::errors::{schema, Result};
use arrow_quant::{TensorData, TensorView};
use half::{bf16, f16};
use numpy::{
    PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

/// The elements of one input array: a read-only borrow of numpy's buffer (of the caller's array, or of the one
/// copy made of an array that is not C-contiguous or not aligned).
enum Storage<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F16(PyReadonlyArrayDyn<'py, f16>),
    BF16(PyReadonlyArrayDyn<'py, u16>),
}

/// One named input layer, holding its numpy array alive while the kernels read it without the GIL.
pub struct LayerInput<'py> {
    pub name: String,
    pub shape: Vec<usize>,
    storage: Storage<'py>,
}

const HOW_TO_FIX: &str =
    "pass a float32 or float16 numpy array (or bfloat16 bits as uint16), e.g. weights.astype(numpy.float32)";

/// `array` as a `T` array if it can be borrowed in place: C-contiguous (`as_slice()` also accepts Fortran order,
/// which would read the elements transposed) and aligned for `T` (a view at an odd byte offset is not).
fn borrowable<'py, T: numpy::Element>(
    array: &Bound<'py, PyUntypedArray>,
) -> Result<Option<PyReadonlyArrayDyn<'py, T>>> {
    let typed = array.cast::<PyArrayDyn<T>>().map_err(PyErr::from)?;
    let aligned = (typed.data() as usize).is_multiple_of(std::mem::align_of::<T>());
    Ok((aligned && array.is_c_contiguous()).then(|| typed.readonly()))
}

impl<'py> LayerInput<'py> {
    /// Reads `obj` (a numpy array). C-contiguous, aligned arrays are borrowed without copying; other layouts
    /// (Fortran order, strided or misaligned views) are copied once into an aligned row-major array.
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
        let dtype = array.dtype();
        let py = obj.py();
        let storage = if dtype.is_equiv_to(&numpy::dtype::<f32>(py)) {
            borrowable::<f32>(array)?.map(Storage::F32)
        } else if dtype.is_equiv_to(&numpy::dtype::<f16>(py)) {
            borrowable::<f16>(array)?.map(Storage::F16)
        } else if dtype.is_equiv_to(&numpy::dtype::<u16>(py)) {
            borrowable::<u16>(array)?.map(Storage::BF16)
        } else {
            let found = dtype
                .str()
                .map_or_else(|_| "?".to_string(), |s| s.to_string());
            return Err(schema(
                &name,
                format!("dtype {found} is not supported; {HOW_TO_FIX}"),
            ));
        };
        match storage {
            Some(storage) => Ok(Self {
                name,
                shape,
                storage,
            }),
            // numpy's copy is C-ordered and aligned, so it is borrowed on the second pass.
            None => {
                let copy = obj.call_method1("copy", ("C",))?;
                Self::from_py(name, &copy)
            }
        }
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
        };
        Ok(TensorView::new(&self.name, &self.shape, data)?)
    }
}

/// Reinterprets bfloat16 bit patterns as `bf16` without copying.
fn bytemuck_bf16(bits: &[u16]) -> &[bf16] {
    half::slice::HalfBitsSliceExt::reinterpret_cast(bits)
}
