"""Activation-aware channel scaling: `quantize(..., channel_absmax=...)`, `channel_scales`, and their round trips."""

import numpy as np
import pytest

import arrow_quant_v2 as aq


def per_column(t, values):
    """`values` (one per input channel) repeated over the columns of the 2-D view of tensor `t`."""
    per = int(np.prod(t.shape[2:], dtype=np.int64))
    return np.repeat(values, per)


def weighted_error(w, w_hat, a):
    """E = sum a_j^2 (W - What)^2 / sum a_j^2 W^2 over the 2-D view, a_j repeated per channel."""
    w2, h2 = w.reshape(w.shape[0], -1).astype(np.float64), w_hat.reshape(w.shape[0], -1).astype(np.float64)
    weight = np.repeat(np.asarray(a, np.float64) ** 2, w2.shape[1] // len(a))
    return float((weight * (w2 - h2) ** 2).sum() / (weight * w2**2).sum())


def unscaled_dequantize(quantizer, t):
    """Dequantizes the codes of `t` without its channel scales (through a result table with them nulled)."""
    import pyarrow as pa

    table = quantizer.to_arrow([t])
    i = table.schema.get_field_index("channel_scales")
    table = table.set_column(i, table.schema.field(i), pa.nulls(1, table.schema.field(i).type))
    return quantizer.from_arrow(table)[t.name].dequantize()


@pytest.fixture(scope="module")
def log_normal_case():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((256, 512)).astype(np.float32)
    a = np.exp(rng.standard_normal(512)).astype(np.float32)
    return w, a


@pytest.mark.parametrize("method", ["rtn", "mse", "hqq", "two_level"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_dequantize_divides_the_codes_by_the_channel_scales(quantizer, log_normal_case, method, bits):
    w, a = log_normal_case
    layout = "two_level" if method == "two_level" else None
    t = quantizer.quantize(w[:64], bit_width=bits, method="auto" if layout else method, layout=layout, channel_absmax=a)
    s = t.channel_scales
    assert s is not None and s.dtype == np.float32 and s.shape == (512,)
    assert np.all(s > 0) and np.all(np.isfinite(s))
    raw = unscaled_dequantize(quantizer, t)
    expected = (raw / per_column(t, s)[None, :]).astype(np.float32)
    np.testing.assert_array_equal(t.dequantize(), expected)
    np.testing.assert_array_equal(t.dequantize("float16"), expected.astype(np.float16))
    np.testing.assert_array_equal(quantizer.dequantize(t), expected)
    ours = t.dequantize()
    assert t.rel_mse == pytest.approx(float(((w[:64] - ours) ** 2).sum() / (w[:64] ** 2).sum()), rel=1e-6)


def test_plain_tensors_have_no_channel_scales(quantizer, log_normal_case):
    w, _ = log_normal_case
    assert quantizer.quantize(w).channel_scales is None


@pytest.mark.parametrize("bits", [2, 4])
def test_scaling_lowers_the_activation_weighted_error(quantizer, log_normal_case, bits):
    w, a = log_normal_case
    plain = quantizer.quantize(w, bit_width=bits)
    scaled = quantizer.quantize(w, bit_width=bits, channel_absmax=a)
    e_plain = weighted_error(w, plain.dequantize(), a)
    e_scaled = weighted_error(w, scaled.dequantize(), a)
    assert e_scaled < 0.8 * e_plain, (e_scaled, e_plain)
    assert scaled.nbytes == plain.nbytes + 4 * 512


def test_round_trip_through_arrow(quantizer, log_normal_case):
    w, a = log_normal_case
    scaled = quantizer.quantize(w, name="scaled", channel_absmax=a, method="mse")
    plain = quantizer.quantize(w, name="plain", method="mse")
    table = quantizer.to_arrow({"scaled": scaled, "plain": plain})
    column = table.column("channel_scales").to_pylist()
    assert column[1] is None
    np.testing.assert_array_equal(np.asarray(column[0], np.float32), scaled.channel_scales)
    back = quantizer.from_arrow(table)
    np.testing.assert_array_equal(back["scaled"].channel_scales, scaled.channel_scales)
    assert back["plain"].channel_scales is None
    np.testing.assert_array_equal(back["scaled"].dequantize(), scaled.dequantize())
    deq = quantizer.dequantize_arrow(table).to_pylist()
    by_name = {row["layer_name"]: np.asarray(row["weights"], np.float32) for row in deq}
    np.testing.assert_array_equal(by_name["scaled"], scaled.dequantize().reshape(-1))
    np.testing.assert_array_equal(by_name["plain"], plain.dequantize().reshape(-1))


def test_conv_weights_scale_whole_kernels(quantizer):
    rng = np.random.default_rng(11)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    a = np.exp(rng.standard_normal(16)).astype(np.float32)
    t = quantizer.quantize(w, bit_width=4, method="mse", channel_absmax=a)
    assert t.channel_scales.shape == (16,)
    raw = unscaled_dequantize(quantizer, t)
    expected = raw / t.channel_scales[None, :, None, None]
    np.testing.assert_array_equal(t.dequantize(), expected.astype(np.float32))
    table = quantizer.to_arrow([t])
    (row,) = quantizer.dequantize_arrow(table).to_pylist()
    np.testing.assert_array_equal(np.asarray(row["weights"], np.float32), t.dequantize().reshape(-1))


def test_channel_absmax_accepts_float32_convertible_input(quantizer):
    w = np.random.default_rng(3).standard_normal((8, 64)).astype(np.float32)
    t = quantizer.quantize(w, channel_absmax=[1.0] * 32 + [4.0] * 32)
    assert t.channel_scales.shape == (64,)
    t64 = quantizer.quantize(w, channel_absmax=np.linspace(0.1, 2, 64))
    assert t64.channel_scales.dtype == np.float32


def test_channel_absmax_errors(quantizer):
    w = np.random.default_rng(5).standard_normal((8, 64)).astype(np.float32)
    with pytest.raises(aq.ConfigurationError, match=r"channel_absmax = 63 values for tensor 'layer'.*shape\[1\] = 64"):
        quantizer.quantize(w, name="layer", channel_absmax=np.ones(63, np.float32))
    bad = np.ones(64, np.float32)
    bad[5] = -2.0
    with pytest.raises(aq.ConfigurationError, match="-2 at index 5"):
        quantizer.quantize(w, channel_absmax=bad)
    bad[5] = np.nan
    with pytest.raises(aq.ConfigurationError, match="NaN at index 5"):
        quantizer.quantize(w, channel_absmax=bad)
    with pytest.raises(aq.ConfigurationError, match="all zeros"):
        quantizer.quantize(w, channel_absmax=np.zeros(64, np.float32))
    with pytest.raises(aq.SchemaError, match="at least 2 axes"):
        quantizer.quantize(w[0], name="bias", channel_absmax=np.ones(64, np.float32))
    with pytest.raises(aq.ConfigurationError, match="2-D array"):
        quantizer.quantize(w, channel_absmax=np.ones((2, 32), np.float32))
    with pytest.raises(aq.ConfigurationError, match="cannot convert"):
        quantizer.quantize(w, channel_absmax="abc")
    with pytest.raises(aq.ConfigurationError, match="together with channel_absmax"):
        quantizer.quantize(w, channel_absmax=np.ones(64, np.float32), importance=np.ones(64, np.float32))


def test_corrupt_channel_scales_are_rejected_on_read(quantizer, log_normal_case):
    import pyarrow as pa

    w, a = log_normal_case
    t = quantizer.quantize(w[:8], channel_absmax=a)
    table = quantizer.to_arrow([t])
    i = table.schema.get_field_index("channel_scales")
    short = pa.array([list(t.channel_scales[:-1])], table.schema.field(i).type)
    with pytest.raises(aq.CorruptDataError, match="511 channel scales"):
        quantizer.dequantize_arrow(table.set_column(i, table.schema.field(i), short))


@pytest.mark.parametrize("bits", [4, 2])
def test_acceptance_on_the_standard_tensor(quantizer, bench_weights, bits):
    """Issue 6: with log-normal channel magnitudes (sigma 1), scaling at most 0.7 x the plain weighted error."""
    w = bench_weights.standard_tensor(1024, 1024)
    a = np.exp(np.random.default_rng(20261126).normal(0.0, 1.0, 1024)).astype(np.float32)
    plain = weighted_error(w, quantizer.quantize(w, bit_width=bits).dequantize(), a)
    scaled_t = quantizer.quantize(w, bit_width=bits, channel_absmax=a)
    scaled = weighted_error(w, scaled_t.dequantize(), a)
    assert scaled <= 0.7 * plain, (scaled, plain)
    # The same encoding; the channel scales add 32 bits per input channel.
    assert scaled_t.bits_per_weight == pytest.approx(quantizer.quantize(w, bit_width=bits).bits_per_weight + 32 / 1024)
