"""`ArrowQuantV2.quantize` and `QuantizedTensor`: packing, accuracy, dtypes, zero-copy buffers."""

import numpy as np
import pytest

import arrow_quant_v2 as aq


def step_bound(t, w):
    """Per-element half-step bound of an asymmetric tensor grouped along the last axis (2-D view)."""
    rows = w.shape[0] if w.ndim > 1 else 1
    cols = w.size // rows
    g = t.group_size if t.group_size != "per_channel" else cols
    scales = t.scales.astype(np.float64)
    if cols % g == 0:
        per_element = np.repeat(scales, g)
    else:
        per_row = -(-cols // g)
        per_element = np.repeat(scales.reshape(rows, per_row), g, axis=1)[:, :cols].reshape(-1)
    return 0.5 * per_element.reshape(w.shape)


def test_standard_tensor_rtn_int4_matches_the_reference(quantizer, bench_weights):
    w = bench_weights.standard_tensor(1024, 1024)
    t = quantizer.quantize(w, bit_width=4, group_size=64, method="rtn")
    ours = bench_weights.metrics(w, t.dequantize())["rel_mse"]
    reference = bench_weights.metrics(w, bench_weights.rtn_reference(w, 4, 64))["rel_mse"]
    assert abs(ours / reference - 1) < 0.03, (ours, reference)
    assert t.data.nbytes == w.size // 2
    assert t.bits_per_weight == pytest.approx(4.5)
    assert t.rel_mse == pytest.approx(ours, rel=1e-3)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_mse_beats_rtn_on_the_standard_tensor(quantizer, bench_weights, bits):
    w = bench_weights.standard_tensor(512, 1024)
    rtn = quantizer.quantize(w, bit_width=bits, group_size=64, method="rtn")
    mse = quantizer.quantize(w, bit_width=bits, group_size=64, method="mse")
    assert mse.rel_mse < rtn.rel_mse
    assert mse.cosine >= rtn.cosine


@pytest.mark.parametrize("bits,per_byte", [(8, 1), (4, 2), (2, 4)])
@pytest.mark.parametrize("shape", [(7, 33), (5, 200), (3, 3, 3, 3), (1000,), (4, 256)])
def test_packing_size_and_half_step_error(quantizer, rng, bits, per_byte, shape):
    w = rng.standard_normal(shape).astype(np.float32)
    t = quantizer.quantize(w, bit_width=bits, group_size=32, method="rtn")
    assert t.data.dtype == np.uint8
    assert t.data.size == -(-w.size // per_byte)
    assert t.shape == shape
    back = t.dequantize()
    assert back.shape == shape and back.dtype == np.float32
    assert np.all(np.abs(back - w) <= step_bound(t, w) * (1 + 1e-5) + 1e-7)


def test_per_channel_and_group_sizes(quantizer, rng):
    w = rng.standard_normal((16, 96)).astype(np.float32)
    for g, groups in [("per_channel", 16), (32, 48), (64, 32), (128, 16), (256, 16)]:
        t = quantizer.quantize(w, group_size=g)
        assert t.group_size == g
        assert t.scales.size == groups
        assert t.zero_points.size == groups


def test_symmetric_has_no_zero_points_and_float32_scales(quantizer, rng):
    w = rng.standard_normal((8, 128)).astype(np.float32)
    t = quantizer.quantize(w, symmetric=True, scale_dtype="float32")
    assert t.zero_points is None
    assert t.scales.dtype == np.float32
    assert t.symmetric and t.scale_dtype == "float32"
    assert t.bits_per_weight == pytest.approx(4 + 32 / 128)
    assert t.cosine > 0.99


def test_float16_and_bfloat16_inputs(quantizer, rng):
    w = rng.standard_normal((32, 128)).astype(np.float32)
    h = w.astype(np.float16)
    th = quantizer.quantize(h)
    assert th.dtype == "f16"
    assert np.array_equal(th.data, quantizer.quantize(h.astype(np.float32)).data)
    bf16_bits = (w.view(np.uint32) >> 16).astype(np.uint16)
    tb = quantizer.quantize(bf16_bits)
    assert tb.dtype == "bf16"
    as_f32 = (bf16_bits.astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(tb.data, quantizer.quantize(as_f32).data)


def test_non_contiguous_input_is_copied_once_and_gives_the_same_result(quantizer, rng):
    w = rng.standard_normal((64, 256)).astype(np.float32)
    strided = w.T
    assert not strided.flags.c_contiguous
    t = quantizer.quantize(strided, group_size=64)
    expected = quantizer.quantize(np.ascontiguousarray(strided), group_size=64)
    assert np.array_equal(t.data, expected.data)
    assert t.shape == (256, 64)


def test_output_buffers_are_handed_over_not_copied(quantizer, rng):
    t = quantizer.quantize(rng.standard_normal((64, 128)).astype(np.float32))
    # The arrays own no memory of their own: they wrap the Rust vectors, and every access returns the same array.
    assert not t.data.flags.owndata and t.data.base is not None
    assert t.data is t.data and t.scales is t.scales
    assert np.shares_memory(t.data, t.data)


def test_dequantize_float16(quantizer, rng):
    w = rng.standard_normal((16, 64)).astype(np.float32)
    t = quantizer.quantize(w, bit_width=8)
    h = t.dequantize("float16")
    assert h.dtype == np.float16
    assert np.array_equal(h, t.dequantize().astype(np.float16))
    assert np.array_equal(quantizer.dequantize(t), t.dequantize())


def test_constant_and_zero_layers_are_exact(quantizer):
    for value in (0.0, 1.5, -0.25):
        w = np.full((4, 64), value, dtype=np.float32)
        for symmetric in (False, True):
            t = quantizer.quantize(w, symmetric=symmetric, bit_width=2)
            assert np.isfinite(t.scales).all()
            assert np.array_equal(t.dequantize(), w)


def test_repr_names_the_essentials(quantizer):
    t = quantizer.quantize(np.ones((2, 64), np.float32), name="blocks.0.mlp")
    text = repr(t)
    assert "blocks.0.mlp" in text and "int4" in text and "(2, 64)" in text
    assert repr(quantizer) == "ArrowQuantV2(mode='diffusion')" or "diffusion" in repr(quantizer)


def test_empty_tensor(quantizer):
    t = quantizer.quantize(np.zeros((0, 64), np.float32))
    assert t.data.size == 0 and t.dequantize().shape == (0, 64)


def test_quantized_tensor_is_not_constructible_from_python():
    with pytest.raises(TypeError):
        aq.QuantizedTensor()
