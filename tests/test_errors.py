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


# --- I/O errors keep their kind: the built-in OSError subclass Python raises for the same cause ----------------


@pytest.fixture()
def small_checkpoint(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    rng = np.random.default_rng(0)
    save_file({"blocks.0.mlp.fc1.weight": rng.standard_normal((64, 64)).astype(np.float32)}, str(path))
    return path


@pytest.fixture()
def model_file(quantizer, small_checkpoint, tmp_path):
    out = tmp_path / "model.parquet"
    quantizer.quantize_diffusion_model(small_checkpoint, out)
    return out


def test_missing_output_folder_is_file_not_found(quantizer, small_checkpoint, model_file, tmp_path):
    missing = tmp_path / "no" / "dir"
    with pytest.raises(FileNotFoundError, match="output folder does not exist") as info:
        quantizer.quantize_diffusion_model(small_checkpoint, missing / "o.parquet")
    assert str(missing / "o.parquet") in str(info.value)
    # Both the built-in OSError subclass and a QuantizationError (like every I/O failure).
    assert isinstance(info.value, aq.FileAccessError) and isinstance(info.value, aq.QuantizationError)
    assert type(info.value).__module__ == "arrow_quant_v2"
    with pytest.raises(FileNotFoundError, match="output folder does not exist"):
        aq.export_safetensors(model_file, missing / "o.safetensors")
    with pytest.raises(FileNotFoundError, match="output folder does not exist"):
        aq.write_calibration(
            {"layer_name": ["a"], "timestep": [0], "min": [-1.0], "max": [1.0], "num_timesteps": 10},
            missing / "cal.parquet",
        )
    assert not (tmp_path / "no").exists()


def test_missing_model_is_still_model_not_found(quantizer, tmp_path):
    # Missing inputs keep their own class (not an OSError): only I/O failures map to the OSError subclasses.
    with pytest.raises(aq.ModelNotFoundError) as info:
        quantizer.quantize_diffusion_model(tmp_path / "nope.safetensors", tmp_path / "o.parquet")
    assert not isinstance(info.value, OSError)
    with pytest.raises(aq.ModelNotFoundError):
        aq.load_quantized(tmp_path / "nope.parquet")


def test_output_onto_a_directory_is_a_directory_error(quantizer, small_checkpoint, model_file, tmp_path):
    # One target per call: the temporary file of a write is named after its target.
    taken = tmp_path / "taken"
    taken.mkdir()
    with pytest.raises(IsADirectoryError, match="taken: Is a directory") as info:
        quantizer.quantize_diffusion_model(small_checkpoint, taken)
    assert isinstance(info.value, OSError)
    exported = tmp_path / "exported"
    exported.mkdir()
    with pytest.raises(IsADirectoryError, match="exported: Is a directory"):
        aq.export_safetensors(model_file, exported)
    assert not any(taken.iterdir()) and not any(exported.iterdir())


def test_reading_a_directory_or_through_a_file(tmp_path):
    folder = tmp_path / "folder.parquet"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="folder.parquet"):
        aq.load_quantized(folder)
    regular = tmp_path / "regular"
    regular.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="regular"):
        aq.load_quantized(regular / "model.parquet")


@pytest.mark.parametrize("make_target,builtin", [
    (lambda d: d, IsADirectoryError),                          # an existing folder as the output
    (lambda d: d / "plain.txt" / "o.parquet", NotADirectoryError),  # a file where a folder should be
])
def test_io_failures_are_quantization_errors_and_their_builtin_class(quantizer, small_checkpoint, tmp_path,
                                                                     make_target, builtin):
    (tmp_path / "plain.txt").write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(builtin) as info:
        quantizer.quantize_diffusion_model(small_checkpoint, make_target(tmp_path))
    assert isinstance(info.value, aq.FileAccessError) and isinstance(info.value, OSError)
    assert "\n" not in str(info.value) and "partial" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
