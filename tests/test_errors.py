"""Every documented error path raises its own exception class with a message naming the layer and the fix."""

import numpy as np
import pytest

import arrow_quant_v2 as aq


@pytest.mark.parametrize(
    "dtype", [np.float64, np.int32, np.int8, np.complex64, np.bool_], ids=lambda d: np.dtype(d).name
)
def test_wrong_dtype_is_a_schema_error(quantizer, dtype):
    with pytest.raises(aq.SchemaError, match=r"'layer\.7'.*dtype.*astype\(numpy\.float32\)"):
        quantizer.quantize(np.zeros((4, 64), dtype=dtype), name="layer.7")


def test_not_an_array_is_a_schema_error(quantizer):
    with pytest.raises(aq.SchemaError, match="expected a numpy array, got list"):
        quantizer.quantize([[1.0, 2.0]])


@pytest.mark.parametrize("bits", [0, 1, 3, 16, -4])
def test_wrong_bit_width_is_a_configuration_error(quantizer, bits):
    with pytest.raises(aq.ConfigurationError, match=r"bit_width = .*expected 2, 4 or 8"):
        quantizer.quantize(np.zeros((4, 64), np.float32), bit_width=bits)


@pytest.mark.parametrize("group", [0.5, 16, 100, 512, "rows", -7])
def test_bad_group_size_is_a_configuration_error(quantizer, group):
    with pytest.raises(aq.ConfigurationError, match="group_size"):
        quantizer.quantize(np.zeros((4, 64), np.float32), group_size=group)


def test_bad_method_mode_and_scale_dtype(quantizer):
    w = np.zeros((4, 64), np.float32)
    with pytest.raises(aq.ConfigurationError, match="method"):
        quantizer.quantize(w, method="gptq")
    with pytest.raises(aq.ConfigurationError, match="scale_dtype"):
        quantizer.quantize(w, scale_dtype="int8")
    with pytest.raises(aq.ConfigurationError, match="mode"):
        aq.ArrowQuantV2(mode="llm")
    with pytest.raises(aq.ConfigurationError, match="dtype"):
        quantizer.quantize(w).dequantize("int8")


@pytest.mark.parametrize(
    "bad,text", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "-inf")], ids=["nan", "inf", "-inf"]
)
def test_non_finite_weights_name_layer_and_index(quantizer, bad, text):
    w = np.ones((8, 64), np.float32)
    w[3, 5] = bad
    with pytest.raises(aq.InvalidWeightsError, match=rf"'unet.down.1'.*{text} at element {3 * 64 + 5}"):
        quantizer.quantize(w, name="unet.down.1")
    with pytest.raises(aq.InvalidWeightsError, match=rf"'half'.*element {3 * 64 + 5}"):
        quantizer.quantize(w.astype(np.float16), name="half")


def test_float16_scale_overflow_says_to_use_float32(quantizer):
    w = np.array([[-3e9, 3e9] * 32], np.float32)
    with pytest.raises(aq.SchemaError, match="float32"):
        quantizer.quantize(w)
    assert quantizer.quantize(w, scale_dtype="float32").cosine > 0.99


def test_batch_key_and_value_errors(quantizer):
    with pytest.raises(aq.SchemaError, match="must be str"):
        quantizer.quantize_batch({3: np.zeros(64, np.float32)})
    with pytest.raises(aq.SchemaError, match="'b'.*dtype"):
        quantizer.quantize_batch({"a": np.zeros(64, np.float32), "b": np.zeros(64, np.int64)})
    with pytest.raises(TypeError):
        quantizer.quantize_batch([np.zeros(64, np.float32)])
    with pytest.raises(aq.ConfigurationError, match="progress_callback"):
        quantizer.quantize_batch_with_progress({"a": np.zeros(64, np.float32)}, progress_callback=3)


def test_errors_are_quantization_errors(quantizer):
    with pytest.raises(aq.QuantizationError):
        quantizer.quantize(np.zeros(4, np.float64))
