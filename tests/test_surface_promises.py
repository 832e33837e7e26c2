"""What the surface promises, kept (issue 12, items 10 and 12-15): every per-layer failure of a batch in
`.errors`, `QuantizedModel` a real `Mapping`, a cancelled async run stops and leaves nothing, the CLI and Python
agree on calibration-only settings and ranges, float64 checkpoints are quantized, misaligned arrays are copied,
progress counts each pass once, and IPC metadata is where FORMAT.md says."""

import asyncio
import collections.abc
import json
import threading
from pathlib import Path

import numpy as np
import pyarrow.ipc as ipc
import pytest
from cli_runner import run_cli
from safetensors.numpy import save_file

import arrow_quant_v2 as aq

REPO = Path(__file__).resolve().parents[1]


def small_checkpoint(tmp_path, rng, count=3, shape=(64, 256), dtype=np.float32):
    tensors = {f"blocks.{i}.fc.weight": rng.standard_normal(shape).astype(dtype) for i in range(count)}
    tensors["blocks.0.norm.weight"] = np.ones(64, dtype)
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    return path, tensors


# --- item 10: quantize_batch(continue_on_error=True) ----------------------------------------------------------


def test_every_per_layer_input_failure_lands_in_errors(quantizer, rng):
    good = rng.standard_normal((32, 128)).astype(np.float32)
    weights = {
        "good": good,
        "ints": np.arange(4096, dtype=np.int32).reshape(32, 128),
        "text": "not an array",
        "nested": [[1.0, 2.0], [3.0, 4.0]],
        "complex": np.ones((8, 8), np.complex64),
        "fortran": np.asfortranarray(good),
        "nan": np.full((8, 64), np.nan, np.float32),
    }
    weights[7] = good  # a key that is not a str
    result = quantizer.quantize_batch(weights, continue_on_error=True)
    assert set(result) == {"good", "fortran"}
    assert set(result.errors) == {"ints", "text", "nested", "complex", "nan", "7"}
    for name, error in result.errors.items():
        assert isinstance(error, aq.QuantizationError), (name, error)
        assert "\n" not in str(error)
    assert isinstance(result.errors["ints"], aq.SchemaError) and "dtype int32" in str(result.errors["ints"])
    assert isinstance(result.errors["nan"], aq.InvalidWeightsError)
    assert np.array_equal(result["fortran"].data, result["good"].data)
    with pytest.raises(aq.SchemaError, match="ints"):
        quantizer.quantize_batch(weights)


# --- item 12: QuantizedModel is a Mapping ---------------------------------------------------------------------


def test_quantized_model_is_a_real_read_only_mapping(quantizer, tmp_path, rng):
    path, tensors = small_checkpoint(tmp_path, rng)
    out = tmp_path / "m.parquet"
    quantizer.quantize_diffusion_model(path, out)
    model = aq.load_quantized(out)
    assert isinstance(model, collections.abc.Mapping)
    assert issubclass(aq.QuantizedModel, collections.abc.Mapping)
    names = json.loads(model.metadata["arrow_quant.tensors"])  # file order
    assert sorted(names) == sorted(tensors)
    assert list(model.keys()) == names and isinstance(model.keys(), collections.abc.KeysView)
    assert [name for name, _ in model.items()] == names
    values = list(model.values())
    assert len(values) == len(names) and all(isinstance(v, np.ndarray) for v in values)
    assert np.array_equal(model.get("blocks.0.norm.weight"), model["blocks.0.norm.weight"])
    assert model.get("missing") is None and model.get("missing", 5) == 5 and model.get(3) is None
    assert "blocks.0.fc.weight" in model and "missing" not in model and 3 not in model
    again = aq.load_quantized(out)
    assert model == again and not (model != again)
    assert model == {name: again[name] for name in again}
    assert model != {} and model != {**{n: again[n] for n in again}, "extra": np.zeros(1)}
    assert (model == 42) is False
    # Mapping must not leak into the package's namespace.
    assert "Mapping" not in dir(aq) and "Mapping" not in aq.__all__


# --- item 13: cancelling an async run -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["quantize_from_safetensors", "quantize_diffusion_model"])
def test_cancelling_an_async_run_stops_it_and_leaves_nothing(tmp_path, rng, method):
    path, _ = small_checkpoint(tmp_path, rng, count=24, shape=(256, 512))
    out = tmp_path / "out.arrow"
    started = threading.Event()
    seen = []

    def progress(name, fraction):
        seen.append(fraction)
        started.set()

    async def main():
        q = aq.AsyncArrowQuantV2()
        config = aq.DiffusionQuantConfig(format="arrow")
        task = asyncio.ensure_future(getattr(q, method)(path, out, config, progress))
        while not started.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert seen and seen[-1] < 1.0  # it stopped before the end


# --- item 14: CLI flags and Python keywords agree --------------------------------------------------------------


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--floor", "-0.25"], "quality_floor"),
        (["--floor", "1.5"], "quality_floor"),
        (["--target-bpw", "-3"], "target_bits_per_weight"),
        (["--time-grouping", "uniform"], "time_grouping"),
        (["--smoothing", "cubic", "--smoothing-window", "2"], "boundary_smoothing"),
        (["--smoothing", "sigmoid"], "boundary_smoothing"),
        (["--activation-bits", "4"], "activation_bits"),
        (["--no-spatial"], "enable_spatial"),
    ],
)
def test_cli_rejects_out_of_range_and_calibration_only_options_in_one_line(tmp_path, rng, args, needle):
    path, _ = small_checkpoint(tmp_path, rng)
    out = tmp_path / "out.parquet"
    result = run_cli("quantize", path, out, "-q", *args)
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"time_grouping": "uniform"}, "time_grouping"),
        ({"boundary_smoothing": "linear", "smoothing_window": 3}, "boundary_smoothing"),
        ({"num_time_groups": 4}, "num_time_groups"),
        ({"enable_time_aware": False}, "enable_time_aware"),
    ],
)
def test_python_refuses_the_same_calibration_only_settings_without_calibration(quantizer, tmp_path, rng, kwargs,
                                                                                needle):
    path, _ = small_checkpoint(tmp_path, rng)
    config = aq.DiffusionQuantConfig(**kwargs)
    with pytest.raises(aq.ConfigurationError, match=needle):
        quantizer.quantize_diffusion_model(path, tmp_path / "out.parquet", config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    with pytest.raises(aq.ConfigurationError, match="quality_floor"):
        aq.DiffusionQuantConfig(quality_floor=-0.25)


def test_cli_help_states_the_defaults():
    result = run_cli("quantize", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for flag, default in [
        ("--bits", "[default: the profile's: edge 2, local 4, cloud 8]"),
        ("--floor", "[default: the profile's: edge 0.65, local 0.85, cloud 0.95]"),
        ("--method", "[default: auto]"),
        ("--time-groups", "[default: 10]"),
        ("--smoothing", "[default: none]"),
        ("--smoothing-window", "[default: 0]"),
        ("--profile", "[default: local]"),
    ]:
        assert flag in text and default in text, (flag, default)


# --- item 15: what the docs say -------------------------------------------------------------------------------


def test_float64_checkpoints_are_quantized_like_other_floats(quantizer, tmp_path, rng):
    tensors = {
        "blocks.0.fc.weight": rng.standard_normal((64, 256)),
        "blocks.0.fc.bias": rng.standard_normal(64) * 1e-9,
        "blocks.1.wide.weight": rng.standard_normal((32, 128)) * 1e300,
        "blocks.2.fc.weight": rng.standard_normal((64, 256)).astype(np.float32),
    }
    assert tensors["blocks.0.fc.weight"].dtype == np.float64
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    out = tmp_path / "m.parquet"
    report = quantizer.quantize_diffusion_model(path, out, aq.DiffusionQuantConfig(keep_first_last=False))
    layers = {layer["name"]: layer for layer in report["layers"]}
    fc = layers["blocks.0.fc.weight"]
    assert fc["encoding"] == "int4_2l" and fc["dtype"] == "f64" and fc["cosine"] > 0.99
    assert fc["bytes_in"] == 64 * 256 * 8
    assert layers["blocks.0.fc.bias"]["encoding"] == "f32"  # kept: float16 would flush 1e-9 to zero
    wide = layers["blocks.1.wide.weight"]
    assert wide["encoding"] == "raw" and "float32" in wide["kept"]  # 1e300 fits neither float16 nor float32
    model = aq.load_quantized(out)
    assert model.quantized("blocks.0.fc.weight").dtype == "f64"
    assert np.array_equal(model["blocks.1.wide.weight"], tensors["blocks.1.wide.weight"])
    assert quantizer.validate_quality(path, out)["passed"]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_misaligned_arrays_are_copied_not_refused(quantizer, rng, dtype):
    w = rng.standard_normal((64, 128)).astype(dtype)
    raw = bytearray(w.nbytes + 1)
    misaligned = np.frombuffer(raw, dtype=dtype, count=w.size, offset=1).reshape(w.shape)
    misaligned[...] = w
    assert not misaligned.flags.aligned and misaligned.flags.c_contiguous
    t = quantizer.quantize(misaligned, bit_width=4)
    assert np.array_equal(t.data, quantizer.quantize(w, bit_width=4).data)
    batch = quantizer.quantize_batch({"m": misaligned})
    assert np.array_equal(batch["m"].data, t.data)


def test_planning_progress_counts_each_pass_once(quantizer, tmp_path, rng):
    path, tensors = small_checkpoint(tmp_path, rng, count=4)
    source_mb = sum(t.nbytes for t in tensors.values()) / 1e6
    result = run_cli("quantize", path, tmp_path / "m.parquet", "--target-bpw", "5")
    assert result.returncode == 0, result.stderr
    totals = {}
    for line in result.stderr.splitlines():
        parts = line.split()
        totals.setdefault(parts[1], set()).add(float(parts[-2]))
    assert set(totals) == {"planning", "quantizing"}
    assert max(totals["planning"]) <= source_mb + 0.05 and max(totals["quantizing"]) == pytest.approx(source_mb,
                                                                                                       abs=0.05)
    fractions = []
    config = aq.DiffusionQuantConfig(target_bits_per_weight=5.0)
    quantizer.quantize_diffusion_model(path, tmp_path / "p.parquet", config, lambda _, f: fractions.append(f))
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0) and max(fractions) <= 1.0


def test_ipc_metadata_is_in_the_file_footer_as_format_md_says(quantizer, tmp_path, rng):
    path, _ = small_checkpoint(tmp_path, rng)
    out = tmp_path / "m.arrow"
    quantizer.quantize_diffusion_model(path, out, aq.DiffusionQuantConfig(format="arrow"))
    reader = ipc.open_file(out)
    footer = {k.decode(): v.decode() for k, v in reader.metadata.items()}
    assert footer["arrow_quant.format"] == "arrow-quant"
    assert json.loads(footer["arrow_quant.tensors"]) == list(aq.load_quantized(out).keys())
    assert footer == aq.load_quantized(out).metadata
    format_md = (REPO / "docs" / "FORMAT.md").read_text()
    assert "pyarrow.ipc.open_file(path).metadata" in format_md
