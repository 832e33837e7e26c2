"""Public API of arrow_quant_v2 (re-exported from the compiled module and the async front)."""

from ._async import AsyncArrowQuantV2 as AsyncArrowQuantV2
from ._core import (
    ArrowQuantV2 as ArrowQuantV2,
)
from ._core import (
    BatchResult as BatchResult,
)
from ._core import (
    CalibrationError as CalibrationError,
)
from ._core import (
    CancelledError as CancelledError,
)
from ._core import (
    ConfigurationError as ConfigurationError,
)
from ._core import (
    CorruptDataError as CorruptDataError,
)
from ._core import (
    DiffusionQuantConfig as DiffusionQuantConfig,
)
from ._core import (
    FileAccessError as FileAccessError,
)
from ._core import (
    InvalidWeightsError as InvalidWeightsError,
)
from ._core import (
    ModelNotFoundError as ModelNotFoundError,
)
from ._core import (
    QualityError as QualityError,
)
from ._core import (
    QuantizationError as QuantizationError,
)
from ._core import (
    QuantizedModel as QuantizedModel,
)
from ._core import (
    QuantizedTensor as QuantizedTensor,
)
from ._core import (
    SchemaError as SchemaError,
)
from ._core import (
    __version__ as __version__,
)
from ._core import (
    export_safetensors as export_safetensors,
)
from ._core import (
    load_quantized as load_quantized,
)
from ._core import (
    read_calibration as read_calibration,
)
from ._core import (
    write_calibration as write_calibration,
)
from .calibration import CalibrationRecorder as CalibrationRecorder

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
