"""The per-layer quality guarantee of a model run (issue 12, items 6-8): every layer, quantized, fallen back or
kept, meets the floor (kept ones stored in float32 when float16 would not), non-finite inputs are errors naming
the tensor and element, extreme magnitudes fall back instead of aborting, degenerate shapes are kept in 16-bit,
and a file `quantize` writes always passes its own `validate`."""

import json

import numpy as np
import pytest
from cli_runner import run_cli
from safetensors.numpy import save_file

import arrow_quant_v2 as aq


def gaussian(rng, shape, scale=1.0, dtype=np.float32):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def layers_of(report):
    return {layer["name"]: layer for layer in report["layers"]}


def assert_validates(quantizer, source, out):
    result = quantizer.validate_quality(source, out)
    failed = [layer for layer in result["layers"] if not layer["passed"]]
    assert result["passed"], failed


def test_kept_layers_that_float16_would_flush_or_blur_are_stored_in_float32(quantizer, tmp_path, rng):
    # Not the example (an int4 fallback near 1e-8): layers the policy keeps, near 1e-9 (float16 flushes
    # them to zero) and near 3e-7 (float16 subnormals: a handful of levels), and one near 2e5 (overflow).
    tensors = {
        "conv_in.weight": gaussian(rng, (32, 4, 3, 3), 3e-7),
        "blocks.0.attn.bias": gaussian(rng, (256,), 1e-9),
        "blocks.0.fc.weight": gaussian(rng, (64, 256)),
        "blocks.0.norm.weight": gaussian(rng, (256,), 2e5),
        "proj_out.weight": gaussian(rng, (16, 64)),
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    out = tmp_path / "m.parquet"
    report = quantizer.quantize_diffusion_model(path, out)
    layers = layers_of(report)
    for name in ("conv_in.weight", "blocks.0.attn.bias", "blocks.0.norm.weight"):
        assert layers[name]["encoding"] == "f32", layers[name]
        assert "stored as f32" in layers[name]["kept"], layers[name]
        assert layers[name]["cosine"] == 1.0
    # An ordinary kept layer is still rounded to float16.
    assert layers["proj_out.weight"]["encoding"] == "f16" and layers["proj_out.weight"]["cosine"] > 0.999
    assert report["totals"]["worst_cosine"] == min(layer["cosine"] for layer in report["layers"])
    assert_validates(quantizer, path, out)


def test_a_fallen_back_layer_keeps_the_floor_whatever_the_width_it_lands_on(quantizer, tmp_path, rng):
    # A quantizable layer of tiny weights (1e-10) with float16 scales: every integer width misses the floor, and
    # keeping it in float16 would flush it to zero, so it is stored in float32 and the report says so.
    tensors = {"blocks.0.tiny.weight": gaussian(rng, (64, 256), 1e-10), "blocks.1.fc.weight": gaussian(rng, (64, 256))}
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    out = tmp_path / "m.parquet"
    # The automatic plan has no width that meets the floor for it either: kept, and stored as f32 all the same.
    report = quantizer.quantize_diffusion_model(path, out, aq.DiffusionQuantConfig(keep_first_last=False))
    tiny = layers_of(report)["blocks.0.tiny.weight"]
    assert tiny["encoding"] == "f32" and tiny["cosine"] >= 0.85 and "stored as f32" in tiny["kept"], tiny
    out.unlink()
    # One width for every layer: the fallback ladder walks every width first.
    config = aq.DiffusionQuantConfig(keep_first_last=False, auto_mixed_precision=False)
    report = quantizer.quantize_diffusion_model(path, out, config)
    tiny = layers_of(report)["blocks.0.tiny.weight"]
    assert tiny["encoding"] == "f32" and tiny["cosine"] >= 0.85, tiny
    assert tiny["fallback"].endswith("kept unquantized") and "stored as f32" in tiny["kept"]
    assert report["totals"]["worst_cosine"] >= 0.85
    assert_validates(quantizer, path, out)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_non_finite_values_in_a_kept_layer_are_an_error_naming_tensor_and_element(quantizer, tmp_path, rng, dtype):
    # The example is a NaN in a kept layer; here an infinity, in float16 and float32 norms.
    norm = np.ones(128, dtype)
    norm[77] = -np.inf
    tensors = {"blocks.0.norm.weight": norm, "blocks.0.fc.weight": gaussian(rng, (64, 256))}
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(aq.InvalidWeightsError, match=r"blocks\.0\.norm\.weight.*-inf at element 77"):
        quantizer.quantize_diffusion_model(path, tmp_path / "m.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    cli = run_cli("quantize", path, tmp_path / "c.parquet", "-q")
    assert cli.returncode == 2 and cli.stdout == ""
    assert cli.stderr.count("\n") == 1 and "element 77" in cli.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_extreme_magnitudes_fall_back_instead_of_aborting_the_run(quantizer, tmp_path, rng):
    # Not the 1e6 / 1e20: 3e7 (beyond the float16 steps of int4_2l) and 1e30 (beyond every float16 scale
    # and beyond float16 itself: stored as float32).
    tensors = {
        "blocks.0.large.weight": gaussian(rng, (64, 256), 3e7),
        "blocks.1.huge.weight": gaussian(rng, (64, 256), 1e30),
        "blocks.2.fc.weight": gaussian(rng, (64, 256)),
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    # One width for every layer, so that the fallback ladder (not the plan) moves the layers.
    config = aq.DiffusionQuantConfig(keep_first_last=False, auto_mixed_precision=False)
    out = tmp_path / "m.parquet"
    report = quantizer.quantize_diffusion_model(path, out, config)
    layers = layers_of(report)
    large, huge = layers["blocks.0.large.weight"], layers["blocks.1.huge.weight"]
    assert "float16" in large["fallback"] and large["cosine"] >= 0.85, large
    assert huge["encoding"] == "f32" and huge["cosine"] == 1.0 and huge["fallback"].endswith("kept unquantized")
    assert layers["blocks.2.fc.weight"]["encoding"] == "int4_2l"
    assert all(np.isfinite(layer["cosine"]) for layer in report["layers"])
    assert_validates(quantizer, path, out)
    loaded = aq.load_quantized(out)
    assert np.array_equal(loaded["blocks.1.huge.weight"], tensors["blocks.1.huge.weight"])
    # The automatic plan measures such widths as unusable (no floor accepts them) instead of aborting.
    out.unlink()
    report = quantizer.quantize_diffusion_model(path, out, aq.DiffusionQuantConfig(keep_first_last=False))
    assert report["totals"]["mixed_precision"]["automatic"]
    assert all(layer["cosine"] >= 0.85 for layer in report["layers"])
    assert_validates(quantizer, path, out)


def test_float32_scales_report_the_true_cosine_at_magnitudes_whose_squares_overflow(quantizer, rng):
    # Squares of 1e22 overflow float32: the reported quality must still be the true one (not NaN).
    w = gaussian(rng, (32, 512), 1e22)
    t = quantizer.quantize(w, bit_width=4, group_size=128, scale_dtype="float32", method="rtn")
    restored = t.dequantize().astype(np.float64)
    assert np.isfinite(restored).all()
    x = w.astype(np.float64)
    cosine = float((x * restored).sum() / np.sqrt((x * x).sum() * (restored * restored).sum()))
    assert t.cosine == pytest.approx(cosine, abs=1e-6) and cosine > 0.98
    with pytest.raises(aq.SchemaError, match="float16 scales"):
        quantizer.quantize(w, bit_width=4, group_size=128, method="rtn")


@pytest.mark.parametrize("shape", [(3000, 2), (2000, 1, 1, 1), (1024, 3)])
def test_degenerate_shapes_are_kept_in_16_bit_with_the_reason(quantizer, tmp_path, rng, shape):
    # Not the issue's [100000, 1] / [2048, 3]: two and three columns, a 1x1 conv kernel of one input channel. (A
    # [1024, 3, 1, 1] kernel is plain-rounded in symmetric groups at 9.3 bits/weight, under the 12-bit line.)
    tensors = {"blocks.0.narrow.weight": gaussian(rng, shape), "blocks.1.fc.weight": gaussian(rng, (64, 256))}
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    out = tmp_path / "m.parquet"
    # One width for every layer: the fallback ladder keeps the layer and says why.
    config = aq.DiffusionQuantConfig(keep_first_last=False, auto_mixed_precision=False)
    report = quantizer.quantize_diffusion_model(path, out, config)
    layers = layers_of(report)
    narrow = layers["blocks.0.narrow.weight"]
    assert narrow["encoding"] == "f16" and narrow["bits_per_weight"] == 16.0, narrow
    assert "too close to" in narrow["kept"] and "bits per weight" in narrow["kept"]
    assert layers["blocks.1.fc.weight"]["bits_per_weight"] < 5
    assert_validates(quantizer, path, out)
    # The automatic plan has no quantized option for the layer either: 16-bit is all it can choose.
    out.unlink()
    report = quantizer.quantize_diffusion_model(path, out, aq.DiffusionQuantConfig(keep_first_last=False))
    narrow = layers_of(report)["blocks.0.narrow.weight"]
    assert narrow["encoding"] == "f16" and narrow["kept"] == "mixed precision: 16-bit", narrow
    assert_validates(quantizer, path, out)


def test_cli_quantize_never_exits_0_on_a_file_its_validate_rejects(tmp_path, rng):
    tensors = {
        "conv_in.weight": gaussian(rng, (32, 4, 3, 3), 2e-8),
        "blocks.0.tiny.weight": gaussian(rng, (64, 256), 3e-9),
        "blocks.0.large.weight": gaussian(rng, (64, 256), 5e8),
        "blocks.0.narrow.weight": gaussian(rng, (4000, 2)),
        "blocks.0.attn.bias": gaussian(rng, (256,), 7e-9),
        "blocks.0.fc.weight": gaussian(rng, (64, 256)),
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    for profile in ("edge", "local", "cloud"):
        out = tmp_path / f"{profile}.parquet"
        quantized = run_cli("quantize", path, out, "--profile", profile, "--json")
        assert quantized.returncode == 0, quantized.stderr
        report = json.loads(quantized.stdout)
        assert report["totals"]["worst_cosine"] == min(layer["cosine"] for layer in report["layers"])
        validated = run_cli("validate", path, out, "--json")
        assert validated.returncode == 0, validated.stdout
        assert json.loads(validated.stdout)["passed"]
