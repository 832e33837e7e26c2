"""Type stubs of the compiled module `arrow_quant_v2._core` (checked against the build by mypy.stubtest)."""

from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from os import PathLike
from pathlib import Path
from typing import Any, Literal, TypeAlias, final

import numpy as np
import numpy.typing as npt
import pyarrow as pa  # type: ignore[import-untyped]

__version__: str
__all__ = [
    "ArrowQuantV2",
    "BatchResult",
    "CancelledError",
    "ConfigurationError",
    "CorruptDataError",
    "FileAccessError",
    "InvalidWeightsError",
    "ModelNotFoundError",
    "QualityError",
    "CalibrationError",
    "QuantizationError",
    "QuantizedTensor",
    "SchemaError",
    "__version__",
    "_kernel_seconds",
    "DiffusionQuantConfig",
    "QuantizedModel",
    "load_quantized",
    "export_safetensors",
    "read_calibration",
    "write_calibration",
    "check_distributable_config",
    "plan_units",
    "quantize_unit",
    "assemble_units",
    "estimate_unit",
    "plan_from_estimates",
]

_GroupSize: TypeAlias = int | Literal["per_channel"]
_Method: TypeAlias = Literal["auto", "rtn", "mse", "hqq"]
_Layout: TypeAlias = Literal["auto", "flat", "two_level"]
_GgmlBlockType: TypeAlias = Literal[
    "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"
]
_Encoding: TypeAlias = Literal["int8", "int4", "int2", "int8_2l", "int4_2l", "int2_2l"] | _GgmlBlockType
_ScaleDtype: TypeAlias = Literal["float16", "float32"]
# Any Arrow producer: an object with __arrow_c_stream__ or __arrow_c_array__ (pyarrow, polars, arro3, nanoarrow).
_ArrowInput: TypeAlias = Any
# Calibration statistics: a Parquet / Arrow IPC file path, an Arrow table or record batch, or a dict of arrays.
_CalibrationSource: TypeAlias = str | PathLike[str] | dict[str, Any] | _ArrowInput

class QuantizationError(Exception): ...
class ConfigurationError(QuantizationError): ...
class SchemaError(QuantizationError): ...
class InvalidWeightsError(QuantizationError): ...
class CorruptDataError(QuantizationError): ...
class CancelledError(QuantizationError): ...
class ModelNotFoundError(QuantizationError): ...
class QualityError(QuantizationError): ...
class CalibrationError(QuantizationError): ...
class FileAccessError(QuantizationError): ...

@final
class QuantizedTensor:
    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> Literal["f32", "f16", "bf16", "f64"]: ...
    @property
    def encoding(self) -> _Encoding: ...
    @property
    def bits(self) -> int: ...
    @property
    def group_size(self) -> _GroupSize: ...
    @property
    def symmetric(self) -> bool: ...
    @property
    def method(self) -> Literal["rtn", "mse", "hqq"] | None: ...
    @property
    def scale_dtype(self) -> _ScaleDtype: ...
    @property
    def data(self) -> npt.NDArray[np.uint8]: ...
    @property
    def scales(self) -> npt.NDArray[np.floating[Any]]: ...
    @property
    def zero_points(self) -> npt.NDArray[np.floating[Any]] | None: ...
    @property
    def params(self) -> npt.NDArray[np.uint8] | None: ...
    @property
    def channel_scales(self) -> npt.NDArray[np.float32] | None: ...
    @property
    def cosine(self) -> float: ...
    @property
    def rel_mse(self) -> float: ...
    @property
    def bits_per_weight(self) -> float: ...
    @property
    def nbytes(self) -> int: ...
    def dequantize(self, dtype: Literal["float32", "float16"] = "float32") -> npt.NDArray[np.floating[Any]]: ...

@final
class BatchResult(dict[str, QuantizedTensor]):
    def __new__(cls, *_args: Any, **_kwargs: Any) -> BatchResult: ...
    @property
    def errors(self) -> dict[str, QuantizationError]: ...

@final
class ArrowQuantV2:
    def __new__(cls, mode: Literal["diffusion"] = "diffusion") -> ArrowQuantV2: ...
    @property
    def mode(self) -> str: ...
    def quantize(
        self,
        weights: npt.NDArray[Any],
        bit_width: int = 4,
        group_size: _GroupSize | None = None,
        symmetric: bool | None = None,
        method: _Method | Literal["plain"] = "auto",
        scale_dtype: _ScaleDtype | None = None,
        name: str = "weights",
        importance: npt.NDArray[np.float32] | None = None,
        channel_absmax: npt.ArrayLike | None = None,
        layout: _Layout | None = None,
        encoding: str | None = None,
    ) -> QuantizedTensor: ...
    def quantize_batch(
        self,
        weights: Mapping[str, npt.NDArray[Any]],
        bit_width: int | None = None,
        group_size: _GroupSize | None = None,
        symmetric: bool | None = None,
        method: _Method | None = None,
        scale_dtype: _ScaleDtype | None = None,
        continue_on_error: bool = False,
        layout: _Layout | None = None,
    ) -> BatchResult: ...
    def quantize_batch_with_progress(
        self,
        weights: Mapping[str, npt.NDArray[Any]],
        bit_width: int | None = None,
        progress_callback: Callable[[str, float], object] | None = None,
        continue_on_error: bool = False,
        group_size: _GroupSize | None = None,
        symmetric: bool | None = None,
        method: _Method | None = None,
        scale_dtype: _ScaleDtype | None = None,
        layout: _Layout | None = None,
    ) -> BatchResult: ...
    def quantize_arrow(
        self,
        table: _ArrowInput,
        bit_width: int | None = None,
        group_size: _GroupSize | None = None,
        symmetric: bool | None = None,
        method: _Method | None = None,
        scale_dtype: _ScaleDtype | None = None,
        layout: _Layout | None = None,
    ) -> pa.Table: ...
    def quantize_arrow_batch(
        self,
        record_batch: _ArrowInput,
        bit_width: int | None = None,
        group_size: _GroupSize | None = None,
        symmetric: bool | None = None,
        method: _Method | None = None,
        scale_dtype: _ScaleDtype | None = None,
        layout: _Layout | None = None,
    ) -> pa.RecordBatch: ...
    def dequantize_arrow(self, result: _ArrowInput) -> pa.Table: ...
    def to_arrow(self, tensors: Mapping[str, QuantizedTensor] | Iterable[QuantizedTensor]) -> pa.Table: ...
    def from_arrow(self, result: _ArrowInput) -> BatchResult: ...
    def quantize_diffusion_model(
        self,
        model_path: str | PathLike[str],
        output_path: str | PathLike[str],
        config: DiffusionQuantConfig | None = None,
        progress_callback: Callable[[str, float], object] | None = None,
        calibration: _CalibrationSource | None = None,
    ) -> dict[str, Any]: ...
    def quantize_from_safetensors(
        self,
        safetensors_path: str | PathLike[str],
        output_path: str | PathLike[str],
        config: DiffusionQuantConfig | None = None,
        progress_callback: Callable[[str, float], object] | None = None,
        calibration: _CalibrationSource | None = None,
    ) -> dict[str, Any]: ...
    def validate_quality(
        self, original_path: str | PathLike[str], quantized_path: str | PathLike[str]
    ) -> dict[str, Any]: ...
    def get_markov_metrics(self, threshold: float = 0.1) -> dict[str, Any] | None: ...
    def dequantize(
        self, quantized: QuantizedTensor, dtype: Literal["float32", "float16"] = "float32"
    ) -> npt.NDArray[np.floating[Any]]: ...

@final
class DiffusionQuantConfig:
    def __new__(
        cls,
        *,
        profile: Literal["edge", "local", "cloud"] | None = None,
        bit_width: int | None = None,
        layout: _Layout | None = None,
        group_size: _GroupSize | None = None,
        symmetric: bool | None = None,
        method: _Method | None = None,
        scale_dtype: _ScaleDtype | None = None,
        quality_floor: float | None = None,
        fail_fast: bool | None = None,
        min_elements: int | None = None,
        keep_patterns: list[str] | None = None,
        unclipped_patterns: list[str] | None = None,
        keep_first_last: bool | None = None,
        format: Literal["parquet", "arrow", "gguf"] | None = None,
        calibration_path: str | PathLike[str] | None = None,
        enable_time_aware: bool | None = None,
        num_time_groups: int | None = None,
        time_grouping: Literal["adaptive", "uniform"] | None = None,
        activation_bits: int | None = None,
        boundary_smoothing: Literal["none", "linear", "cubic", "sigmoid"] | None = None,
        smoothing_window: int | None = None,
        enable_spatial: bool | None = None,
        target_bits_per_weight: float | None = None,
        auto_mixed_precision: bool | None = None,
        gguf_type: str | None = None,
        tensor_types: list[str] | None = None,
        gguf_arch: str | None = None,
        gguf_fallback: Literal["quality", "size", "llama"] | None = None,
        gguf_pure: bool | None = None,
        gguf_leave_output_tensor: bool | None = None,
        imatrix_path: str | PathLike[str] | None = None,
    ) -> DiffusionQuantConfig: ...
    @staticmethod
    def from_profile(name: Literal["edge", "local", "cloud"], **overrides: Any) -> DiffusionQuantConfig: ...
    @property
    def profile(self) -> str | None: ...
    @property
    def bit_width(self) -> int: ...
    @property
    def layout(self) -> _Layout: ...
    @property
    def group_size(self) -> _GroupSize | None: ...
    @property
    def symmetric(self) -> bool: ...
    @property
    def method(self) -> _Method: ...
    @property
    def scale_dtype(self) -> _ScaleDtype: ...
    @property
    def quality_floor(self) -> float: ...
    @property
    def fail_fast(self) -> bool: ...
    @property
    def min_elements(self) -> int: ...
    @property
    def unclipped_patterns(self) -> list[str]: ...
    @property
    def keep_patterns(self) -> list[str]: ...
    @property
    def keep_first_last(self) -> bool: ...
    @property
    def format(self) -> Literal["parquet", "arrow", "gguf"] | None: ...
    @property
    def calibration_path(self) -> Path | None: ...
    @property
    def enable_time_aware(self) -> bool: ...
    @property
    def num_time_groups(self) -> int: ...
    @property
    def time_grouping(self) -> Literal["adaptive", "uniform"]: ...
    @property
    def activation_bits(self) -> int: ...
    @property
    def boundary_smoothing(self) -> Literal["none", "linear", "cubic", "sigmoid"]: ...
    @property
    def smoothing_window(self) -> int: ...
    @property
    def enable_spatial(self) -> bool: ...
    @property
    def target_bits_per_weight(self) -> float | None: ...
    @property
    def auto_mixed_precision(self) -> bool: ...
    @property
    def gguf_type(self) -> str | None: ...
    @property
    def tensor_types(self) -> list[str]: ...
    @property
    def gguf_arch(self) -> str | None: ...
    @property
    def gguf_fallback(self) -> str | None: ...
    @property
    def gguf_pure(self) -> bool: ...
    @property
    def gguf_leave_output_tensor(self) -> bool: ...
    @property
    def imatrix_path(self) -> Path | None: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class QuantizedModel:
    """A read-only mapping (registered as a `collections.abc.Mapping`) from tensor names to dequantized arrays."""

    def keys(self) -> KeysView[str]: ...
    def values(self) -> ValuesView[npt.NDArray[Any]]: ...
    def items(self) -> ItemsView[str, npt.NDArray[Any]]: ...
    def get(self, name: object, default: Any = None) -> Any: ...
    def __len__(self) -> int: ...
    def __contains__(self, name: object, /) -> bool: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __iter__(self) -> Iterator[str]: ...
    def __getitem__(self, key: str, /) -> npt.NDArray[Any]: ...
    def quantized(self, name: str) -> QuantizedTensor: ...
    def time_groups(self, name: str) -> list[dict[str, Any]] | None: ...
    @property
    def metadata(self) -> dict[str, str]: ...

def load_quantized(path: str | PathLike[str]) -> QuantizedModel: ...
def export_safetensors(
    quantized_path: str | PathLike[str],
    output_path: str | PathLike[str],
    dtype: Literal["f16", "bf16", "f32", "f64"] | None = None,
) -> None: ...
def read_calibration(source: _CalibrationSource) -> pa.Table: ...
def write_calibration(source: _CalibrationSource, path: str | PathLike[str]) -> None: ...
def _kernel_seconds(
    weights: Mapping[str, npt.NDArray[Any]],
    bit_width: int = 4,
    group_size: _GroupSize | None = None,
    method: _Method = "mse",
    repeats: int = 5,
) -> float: ...

# Units of a distributed run (arrow_quant_v2.distributed): plan from headers, one unit to a staging file, assemble.
def check_distributable_config(config: DiffusionQuantConfig | None = None) -> None: ...
def plan_units(source: str | PathLike[str], config: DiffusionQuantConfig | None = None) -> list[dict[str, Any]]: ...
def quantize_unit(
    source: str | PathLike[str],
    index: int,
    staged: str | PathLike[str],
    config: DiffusionQuantConfig | None = None,
    plan: str | PathLike[str] | None = None,
) -> dict[str, Any]: ...
def assemble_units(
    source: str | PathLike[str],
    staged: Iterable[str | PathLike[str]],
    output: str | PathLike[str],
    config: DiffusionQuantConfig | None = None,
    plan: str | PathLike[str] | None = None,
) -> dict[str, Any]: ...
def estimate_unit(
    source: str | PathLike[str], index: int, staged: str | PathLike[str], config: DiffusionQuantConfig | None = None
) -> None: ...
def plan_from_estimates(
    source: str | PathLike[str],
    estimates: Iterable[str | PathLike[str]],
    plan: str | PathLike[str],
    config: DiffusionQuantConfig | None = None,
) -> dict[str, Any] | None: ...
