"""Public API of arrow_quant_v2 (re-exported from the compiled module)."""

from ._core import (
    ArrowQuantV2 as ArrowQuantV2,
)
from ._core import (
    BatchResult as BatchResult,
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
    QuantizedTensor as QuantizedTensor,
)
from ._core import (
    SchemaError as SchemaError,
)
from ._core import (
    __version__ as __version__,
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
