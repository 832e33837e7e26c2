"""GGUF (issue 14): every ggml block type through `quantize(w, encoding=T)` decodes bit for bit like gguf-py's
dequantizers, and `arrow-quant quantize ... x.gguf --type T` writes files gguf-py's GGUFReader opens, with the
architecture, the tensor names and the types the CLI reports."""

import json

import gguf
import numpy as np
import pytest
from cli_runner import run_cli
from gguf import GGMLQuantizationType, GGUFReader
from safetensors.numpy import save_file

import arrow_quant_v2 as aq

BLOCK_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]
# Loose bounds on rel-MSE of normal weights per type (the figures are in benchmarks/bench_gguf.py).
MAX_REL_MSE = {"Q8_0": 1e-4, "Q6_K": 1e-3, "Q5_K": 3e-3, "Q5_0": 4e-3, "Q5_1": 4e-3, "Q4_K": 1e-2, "Q4_0": 1.2e-2,
               "Q4_1": 1e-2, "IQ4_NL": 1e-2, "IQ4_XS": 1e-2, "Q3_K": 4e-2, "Q2_K": 1.5e-1}


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _gguf_py_decode(data: np.ndarray, ty: str, shape) -> np.ndarray:
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    return gguf.quants.dequantize(data.reshape(rows, -1), GGMLQuantizationType[ty]).reshape(shape)


@pytest.mark.parametrize("ty", BLOCK_TYPES)
@pytest.mark.parametrize("shape", [(3, 512), (2, 5, 256), (1, 2048)])
def test_each_type_decodes_bit_exactly_like_gguf_py(quantizer, rng, ty, shape):
    w = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    w.flat[7] = 0.3  # an outlier in the first block
    w[..., 40:72] = 0.0  # an all-zero block
    q = quantizer.quantize(w, encoding=ty)
    assert q.encoding == ty
    block, size = gguf.GGML_QUANT_SIZES[GGMLQuantizationType[ty]]
    assert q.data.size == w.size // block * size
    assert q.nbytes == q.data.size
    ref = _gguf_py_decode(q.data, ty, shape)
    np.testing.assert_array_equal(_bits(q.dequantize()), _bits(ref))
    assert q.rel_mse < MAX_REL_MSE[ty]
    err = ((w - ref) ** 2).sum() / (w**2).sum()
    assert q.rel_mse == pytest.approx(err, rel=1e-4)


@pytest.mark.parametrize("ty", ["Q4_K", "Q8_0", "IQ4_NL"])
def test_half_precision_inputs_and_importance(quantizer, rng, ty):
    w = (rng.standard_normal((4, 256)) * 0.05).astype(np.float16)
    q = quantizer.quantize(w, encoding=ty.lower())
    np.testing.assert_array_equal(_bits(q.dequantize()), _bits(_gguf_py_decode(q.data, ty, w.shape)))
    imp = np.ones(256, dtype=np.float32)
    imp[:32] = 100.0
    qi = quantizer.quantize(w.astype(np.float32), encoding=ty, importance=imp)
    w32 = w.astype(np.float32)
    def weighted(x):
        return float((((w32 - x) ** 2) * imp).sum())
    assert weighted(qi.dequantize()) <= weighted(q.dequantize()) * 1.0001


def test_encoding_errors_name_what_is_wrong(quantizer):
    w = np.zeros((2, 256), dtype=np.float32)
    with pytest.raises(aq.ConfigurationError, match="bit_width"):
        quantizer.quantize(w, encoding="Q4_K", bit_width=8)
    with pytest.raises(aq.ConfigurationError, match="group_size"):
        quantizer.quantize(w, encoding="Q4_0", group_size=64)
    with pytest.raises(aq.ConfigurationError, match="not quantized"):
        quantizer.quantize(w, encoding="F16")
    with pytest.raises(aq.ConfigurationError, match="Q4_K"):
        quantizer.quantize(w, encoding="Q9_K")
    with pytest.raises(aq.SchemaError, match="256-element blocks"):
        quantizer.quantize(np.zeros((2, 320), dtype=np.float32), encoding="Q4_K")
    bad = w.copy()
    bad[1, 3] = np.nan
    with pytest.raises(aq.InvalidWeightsError, match="non-finite"):
        quantizer.quantize(bad, encoding="Q8_0")
