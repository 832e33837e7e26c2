"""arrow-quant: weight quantization for diffusion models.

Packed INT8 / INT4 / INT2 groupwise quantization with a Rust core, zero-copy numpy and Arrow input, per-layer
quality figures (cosine similarity, relative MSE), and a whole-checkpoint pipeline with a quality floor.
See README.md for the API and examples.
"""

from ._async import AsyncArrowQuantV2
from ._core import (
    ArrowQuantV2,
    BatchResult,
    CalibrationError,
    CancelledError,
    ConfigurationError,
    CorruptDataError,
    DiffusionQuantConfig,
    FileAccessError,
    InvalidWeightsError,
    ModelNotFoundError,
    QualityError,
    QuantizationError,
    QuantizedModel,
    QuantizedTensor,
    SchemaError,
    __version__,
    export_safetensors,
    load_quantized,
    read_calibration,
    write_calibration,
)
from .calibration import CalibrationRecorder

__all__ = [
    "ArrowQuantV2",
    "AsyncArrowQuantV2",
    "BatchResult",
    "CalibrationRecorder",
    "CancelledError",
    "ConfigurationError",
    "CorruptDataError",
    "FileAccessError",
    "DiffusionQuantConfig",
    "InvalidWeightsError",
    "ModelNotFoundError",
    "QualityError",
    "CalibrationError",
    "QuantizationError",
    "QuantizedModel",
    "QuantizedTensor",
    "SchemaError",
    "__version__",
    "export_safetensors",
    "load_quantized",
    "read_calibration",
    "write_calibration",
]
