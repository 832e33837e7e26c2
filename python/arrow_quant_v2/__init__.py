"""arrow-quant: weight quantization for diffusion models.

Packed INT8 / INT4 / INT2 groupwise quantization with a Rust core, zero-copy numpy input, and per-layer quality
figures (cosine similarity, relative MSE). See README.md for the API and examples.
"""

from ._core import (
    ArrowQuantV2,
    BatchResult,
    CancelledError,
    ConfigurationError,
    CorruptDataError,
    InvalidWeightsError,
    ModelNotFoundError,
    QualityError,
    QuantizationError,
    QuantizedTensor,
    SchemaError,
    __version__,
)

__all__ = [
    "ArrowQuantV2",
    "BatchResult",
    "CancelledError",
    "ConfigurationError",
    "CorruptDataError",
    "InvalidWeightsError",
    "ModelNotFoundError",
    "QualityError",
    "QuantizationError",
    "QuantizedTensor",
    "SchemaError",
    "__version__",
]
