"""The quality surface: two-level encodings (`params`), `hqq`, `importance`, and `method="auto"`."""

import numpy as np
import pytest

import arrow_quant_v2 as aq


def read_two_level(t):
    """A numpy reader of int4_2l / int8_2l / int2_2l written from docs/FORMAT.md (independent of the crate)."""
    bits = t.bits
    sub, field = (16, 4) if bits == 2 else (32, 6)
    k = 256 // sub
    field_bytes = k * field // 8
    rows = t.shape[0] if len(t.shape) > 1 else 1
    n = int(np.prod(t.shape))
    cols = n // rows
    if cols % sub == 0:
        rows, cols = 1, n
    codes = np.unpackbits(t.data, bitorder="little").reshape(-1, bits)[:n]
    codes = (codes * (1 << np.arange(bits))).sum(axis=1).astype(np.float32)
    records = t.params.reshape(-1, 4 + 2 * field_bytes)
    d = records[:, 0:2].copy().view("<f2").astype(np.float32)[:, 0]
    dmin = records[:, 2:4].copy().view("<f2").astype(np.float32)[:, 0]

    def fields(block):
        stream = np.unpackbits(block, axis=1, bitorder="little")[:, : k * field].reshape(-1, k, field)
        return (stream * (1 << np.arange(field))).sum(axis=2).astype(np.float32)

    sc = fields(records[:, 4 : 4 + field_bytes])
    mn = fields(records[:, 4 + field_bytes :])
    r, c = np.divmod(np.arange(n), cols)
    rec = r * -(-cols // 256) + c // 256
    j = (c % 256) // sub
    step = (d[rec] * sc[rec, j]).astype(np.float32)
    low = (dmin[rec] * mn[rec, j]).astype(np.float32)
    out = (codes * step).astype(np.float32) - low
    return out.reshape(t.shape)


@pytest.mark.parametrize("bits,encoding,bpw", [(8, "int8_2l", 8.5), (4, "int4_2l", 4.5), (2, "int2_2l", 2.625)])
def test_two_level_exposes_params_and_dequantizes_exactly(quantizer, rng, bits, encoding, bpw):
    w = rng.standard_normal((384, 384)).astype(np.float32)
    t = quantizer.quantize(w, bit_width=bits, layout="two_level")
    assert (t.encoding, t.method) == (encoding, None)
    assert t.params.dtype == np.uint8 and t.params.ndim == 1
    assert t.scales.size == 0 and t.zero_points is None
    assert t.bits_per_weight == pytest.approx(bpw)
    assert t.nbytes == t.data.nbytes + t.params.nbytes
    back = t.dequantize()
    small = quantizer.quantize(w[:5, :70], bit_width=bits, layout="two_level")  # partial blocks, row layout
    for tensor in (t, small):
        assert np.array_equal(tensor.dequantize().view(np.uint32), read_two_level(tensor).view(np.uint32))
    err = float(((back.astype(np.float64) - w) ** 2).sum() / (w.astype(np.float64) ** 2).sum())
    assert t.rel_mse == pytest.approx(err, rel=1e-3)


def test_flat_encodings_have_no_params(quantizer, rng):
    w = rng.standard_normal((16, 128)).astype(np.float32)
    for method in ("rtn", "mse", "hqq"):
        t = quantizer.quantize(w, group_size=64, method=method)
        assert t.params is None and t.encoding == "int4" and t.method == method


def test_auto_is_the_default_and_resolves(quantizer, rng):
    w = rng.standard_normal((64, 256)).astype(np.float32)
    t = quantizer.quantize(w)
    assert (t.method, t.encoding) == (None, "int4_2l")
    assert quantizer.quantize(w, bit_width=2).encoding == "int2_2l"
    # a flat setting selects the flat layout, where auto is the best flat method
    assert (quantizer.quantize(w, group_size=64).method, quantizer.quantize(w, symmetric=True).method) == (
        "mse",
        "mse",
    )
    with pytest.raises(aq.ConfigurationError, match="group_size"):
        quantizer.quantize(w, layout="two_level", group_size=64)
    with pytest.raises(aq.ConfigurationError, match="method"):
        quantizer.quantize(w, method="k_quant")


def test_two_level_beats_llama_cpp_q4_k_figure_on_the_standard_tensor(quantizer, bench_weights):
    w = bench_weights.standard_tensor(1024, 1024)
    t = quantizer.quantize(w, bit_width=4)
    assert t.bits_per_weight == 4.5
    assert bench_weights.metrics(w, t.dequantize())["rel_mse"] < 5.15e-3  # Q4_K, PEERS.md
    hqq = quantizer.quantize(w, bit_width=4, group_size=64, method="hqq")
    rtn = quantizer.quantize(w, bit_width=4, group_size=64, method="rtn")
    assert t.rel_mse < hqq.rel_mse < rtn.rel_mse


@pytest.mark.parametrize("method,group", [("auto", None), ("mse", 64), ("hqq", 64)])
def test_importance_lowers_the_weighted_error(quantizer, rng, method, group):
    w = rng.standard_normal((128, 384)).astype(np.float32)
    importance = np.where(np.arange(384) % 5 == 0, 40.0, 0.2).astype(np.float32)

    def errors(t):
        e = (t.dequantize().astype(np.float64) - w) ** 2
        return float((e * importance).sum()), float(e.sum())

    plain = errors(quantizer.quantize(w, method=method, group_size=group))
    weighted = errors(quantizer.quantize(w, method=method, group_size=group, importance=importance))
    assert weighted[0] < plain[0]
    assert weighted[1] >= plain[1] * 0.999


def test_importance_is_checked(quantizer, rng):
    w = rng.standard_normal((8, 64)).astype(np.float32)
    with pytest.raises(aq.ConfigurationError, match="importance"):
        quantizer.quantize(w, importance=np.ones(63, np.float32))
    with pytest.raises(aq.ConfigurationError, match="importance"):
        quantizer.quantize(w, importance=np.ones(64, np.float64))
    with pytest.raises(aq.ConfigurationError, match="importance"):
        quantizer.quantize(w, importance=np.full(64, -1.0, np.float32))
    t = quantizer.quantize(w, importance=np.ones(64, np.float32))
    assert np.array_equal(t.data, quantizer.quantize(w).data)
