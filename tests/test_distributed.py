"""Scale-out on Ray Data (arrow_quant_v2.distributed) on one local cluster shared by the module, and the pieces it
stands on: units planned from headers, one unit quantized to a staging file, staged units assembled with the local
writer; deterministic files (two local runs give the same bytes)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import arrow_quant_v2 as aq
from arrow_quant_v2 import _core
from arrow_quant_v2.distributed import STAGING, output_name, quantize_many

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "target" / "release" / "arrow-quant"


def make_checkpoint(path: Path, seed: int, blocks: int = 4, nan: bool = False) -> Path:
    """A small DiT-like checkpoint (~1-2 MB): quantized, kept (first layer, norms, biases) and raw tensors."""
    rng = np.random.default_rng(seed)
    t: dict[str, np.ndarray] = {
        "x_embedder.proj.weight": rng.standard_normal((64, 4, 2, 2)).astype(np.float32),
        "position_ids": np.arange(256, dtype=np.int64).reshape(1, 256),
    }
    for b in range(blocks):
        t[f"blocks.{b}.attn.qkv.weight"] = rng.standard_normal((192, 64)).astype(np.float16)
        t[f"blocks.{b}.attn.proj.weight"] = (rng.standard_normal((64, 64)) * 0.02).astype(np.float32)
        t[f"blocks.{b}.mlp.fc1.weight"] = rng.standard_normal((256, 64)).astype(np.float16)
        t[f"blocks.{b}.mlp.fc2.weight"] = rng.standard_normal((64, 256)).astype(np.float32)
        t[f"blocks.{b}.norm1.weight"] = np.ones(64, dtype=np.float32)
        t[f"blocks.{b}.mlp.fc1.bias"] = rng.standard_normal(256).astype(np.float32)
    if nan:
        t["blocks.1.mlp.fc2.weight"][3, 5] = np.nan
    save_file(t, str(path))
    return path


def local_bytes(source: Path, out: Path, config=None) -> bytes:
    aq.ArrowQuantV2().quantize_diffusion_model(str(source), str(out), config)
    return out.read_bytes()


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    import logging

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return [make_checkpoint(d / f"model-{i}.safetensors", seed=i, blocks=3 + i) for i in range(4)]


@pytest.fixture(scope="module")
def expected(checkpoints, tmp_path_factory):
    """The local run's bytes of every checkpoint with the default config."""
    d = tmp_path_factory.mktemp("local")
    return {c: local_bytes(c, d / output_name(c)) for c in checkpoints}


# ---------------------------------------------------------------- deterministic files and the core pieces (no Ray)


def test_output_names():
    for source in ("d/model.safetensors", "d/model.safetensors.index.json", "d/model.gguf", "d/model"):
        assert output_name(source) == "model.parquet", source
    assert output_name("model-F16.gguf", "arrow") == "model-F16.arrow"


def test_two_local_runs_give_identical_files(checkpoints, tmp_path):
    a = local_bytes(checkpoints[0], tmp_path / "a.parquet")
    b = local_bytes(checkpoints[0], tmp_path / "b.parquet")
    assert a == b
    report = json.loads(aq.load_quantized(tmp_path / "a.parquet").metadata["arrow_quant.report"])
    assert "seconds" not in report and "gb_per_s" not in report
    assert report["tensors"] == len(aq.load_quantized(tmp_path / "a.parquet"))
    # The returned report keeps the timings.
    totals = aq.ArrowQuantV2().quantize_diffusion_model(str(checkpoints[0]), str(tmp_path / "c.parquet"))["totals"]
    assert totals["seconds"] > 0 and totals["gb_per_s"] > 0


def stage_plan(source, units, config, tmp_path):
    """Estimate units in reverse order (one twice, as a retry would), then the plan: its path, or None for a
    uniform config (no unit needs an estimate)."""
    estimated = [u for u in units if u["estimate"]]
    if not estimated:
        return None
    files = [str(tmp_path / f"{u['index']:06d}.estimate.json") for u in estimated]
    for u, f in reversed(list(zip(estimated, files, strict=True))):
        _core.estimate_unit(source, u["index"], f, config)
    first = Path(files[0]).read_bytes()
    _core.estimate_unit(source, estimated[0]["index"], files[0], config)
    assert Path(files[0]).read_bytes() == first
    plan = str(tmp_path / "plan.json")
    summary = _core.plan_from_estimates(source, files, plan, config)
    assert summary is not None and summary["layers_per_width"]
    return plan


@pytest.mark.parametrize(
    "profile,fmt,target",
    [("local", "parquet", None), ("edge", "arrow", None), ("cloud", "parquet", None), ("local", "arrow", 3.0)],
)
def test_units_assembled_equal_a_local_run(checkpoints, tmp_path, profile, fmt, target):
    config = aq.DiffusionQuantConfig.from_profile(profile, format=fmt, target_bits_per_weight=target)
    source = str(checkpoints[1])
    units = _core.plan_units(source, config)
    assert [u["index"] for u in units] == list(range(len(units)))
    assert {u["decision"] for u in units} == {"quantize", "keep", "raw"}
    # INT4 with layout and method auto plans its widths (automatically at 4.5 bits/weight); so does a target.
    planned = profile == "local"
    assert [u["estimate"] for u in units] == [planned and u["decision"] == "quantize" for u in units]
    plan = stage_plan(source, units, config, tmp_path)
    # Units in any order, one staged twice (a retry): the same file.
    staged = [str(tmp_path / f"{u['index']:06d}.arrow") for u in units]
    for i in reversed(range(len(units))):
        layer = _core.quantize_unit(source, i, staged[i], config, plan)
        assert layer["name"] == units[i]["name"]
    first = Path(staged[0]).read_bytes()
    _core.quantize_unit(source, 0, staged[0], config, plan)
    assert Path(staged[0]).read_bytes() == first
    out = tmp_path / f"assembled.{fmt}"
    report = _core.assemble_units(source, staged, str(out), config, plan)
    assert report["totals"]["tensors"] == len(units)
    assert (report["totals"].get("mixed_precision") is not None) == planned
    assert out.read_bytes() == local_bytes(checkpoints[1], tmp_path / f"local.{fmt}", config)


def test_distributed_refuses_calibration_and_missing_plans(checkpoints, tmp_path):
    config = aq.DiffusionQuantConfig(calibration_path=str(tmp_path / "cal.parquet"))
    with pytest.raises(aq.ConfigurationError, match="distributed"):
        _core.plan_units(str(checkpoints[0]), config)
    with pytest.raises(aq.ConfigurationError, match="distributed"):
        quantize_many([checkpoints[0]], tmp_path / "out", config, progress=False)
    with pytest.raises(ValueError, match="units must be one of auto, checkpoint, tensor, not 'layer'"):
        quantize_many([checkpoints[0]], tmp_path / "out", progress=False, units="layer")
    with pytest.raises(aq.CorruptDataError, match="staged units"):
        _core.assemble_units(str(checkpoints[0]), [], str(tmp_path / "x.parquet"))
    assert not (tmp_path / "x.parquet").exists()
    source = str(checkpoints[0])
    units = _core.plan_units(source)
    q = next(u["index"] for u in units if u["estimate"])
    kept = next(u["index"] for u in units if u["decision"] != "quantize")
    # The default config plans: a quantize unit or an assembly without the plan is refused, and so is a plan
    # given to a uniform config.
    with pytest.raises(aq.ConfigurationError, match="plan_from_estimates"):
        _core.quantize_unit(source, q, str(tmp_path / "u.arrow"))
    uniform = aq.DiffusionQuantConfig(auto_mixed_precision=False)
    assert not any(u["estimate"] for u in _core.plan_units(source, uniform))
    plan = stage_plan(source, units, None, tmp_path)
    with pytest.raises(aq.CorruptDataError, match="one width"):
        _core.quantize_unit(source, q, str(tmp_path / "u.arrow"), uniform, plan)
    with pytest.raises(aq.ConfigurationError, match="nothing to plan"):
        _core.estimate_unit(source, q, str(tmp_path / "e.json"), uniform)
    with pytest.raises(aq.CorruptDataError, match="nothing to estimate"):
        _core.estimate_unit(source, kept, str(tmp_path / "e.json"))
    # Estimates of the wrong tensor, or too few, are refused by name.
    files = sorted(str(p) for p in tmp_path.glob("*.estimate.json"))
    with pytest.raises(aq.CorruptDataError, match="estimates for a checkpoint"):
        _core.plan_from_estimates(source, files[1:], str(tmp_path / "p.json"))
    with pytest.raises(aq.CorruptDataError, match="is not of tensor"):
        _core.plan_from_estimates(source, files[1:] + files[:1], str(tmp_path / "p.json"))
    Path(plan).write_text("{}")
    with pytest.raises(aq.CorruptDataError, match="not a readable plan"):
        _core.quantize_unit(source, q, str(tmp_path / "u.arrow"), None, plan)
    assert not (tmp_path / "u.arrow").exists() and not (tmp_path / "p.json").exists()


def unit_row(source, staging, plan, estimates, kind, index, target):
    """A plan row of one unit, as the driver gives it to a `_UnitWorker`."""
    return {"checkpoint": 0, "kind": kind, "source": source, "index": index, "staging": str(staging),
            "target": str(target), "bytes": 0, "plan": str(plan), "estimates": json.dumps(estimates)}


def test_a_unit_makes_the_staged_files_it_finds_missing(checkpoints, expected, tmp_path):
    """The one-pass run never waits: a quantize unit whose plan is missing estimates and plans itself, and an
    assembly whose units are missing quantizes them itself; the output is still the local run's, byte for byte,
    and every unit made that way is recorded as an attempt."""
    from arrow_quant_v2.distributed import _UnitWorker

    source = str(checkpoints[1])
    units = _core.plan_units(source)
    estimates = [u["index"] for u in units if u["estimate"]]
    assert estimates  # the default config plans
    staging = tmp_path / "staging"
    staging.mkdir()
    worker = _UnitWorker(None, 1, str(tmp_path / "workers"))
    plan = staging / "plan.json"
    out = tmp_path / output_name(source)

    def row(kind, index, target):
        return unit_row(source, staging, plan, estimates, kind, index, target)

    q = estimates[-1]
    assert worker._run(row("quantize", q, staging / f"{q:06d}.arrow")) == ""
    assert plan.exists() and len(list(staging.glob("*.estimate.json"))) == len(estimates)
    totals = json.loads(worker._run(row("assemble", len(units), out)))
    assert out.read_bytes() == expected[checkpoints[1]]
    assert totals["tensors"] == len(units)
    assert len(list(staging.glob("*.arrow"))) == len(units)
    assert len(list(staging.glob("*.attempt-*"))) == len(units) + len(estimates)


def test_a_torn_staged_file_is_made_again(checkpoints, expected, tmp_path):
    """Staged files are linked without waiting for the disk, so an operating-system crash before a resume can
    leave one torn: a truncated unit and a garbled estimate found by the plan and the assembly are made again
    (one more attempt each), and the output is still the local run's, byte for byte."""
    from arrow_quant_v2.distributed import _UnitWorker

    source = str(checkpoints[2])
    units = _core.plan_units(source)
    estimates = [u["index"] for u in units if u["estimate"]]
    staging = tmp_path / "staging"
    staging.mkdir()
    for i in estimates:
        _core.estimate_unit(source, i, str(staging / f"{i:06d}.estimate.json"))
    (staging / f"{estimates[1]:06d}.estimate.json").write_bytes(b"\xff\x00 torn")
    worker = _UnitWorker(None, 1, str(tmp_path / "workers"))
    plan = staging / "plan.json"

    def row(kind, index, target):
        return unit_row(source, staging, plan, estimates, kind, index, target)

    for u in units:
        assert worker._run(row("quantize", u["index"], staging / f"{u['index']:06d}.arrow")) == ""
    torn = staging / f"{units[-1]['index']:06d}.arrow"
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    out = tmp_path / output_name(source)
    json.loads(worker._run(row("assemble", len(units), out)))
    assert out.read_bytes() == expected[checkpoints[2]]
    assert len(list(staging.glob(f"{estimates[1]:06d}.estimate.json.attempt-*"))) == 1
    assert len(list(staging.glob(f"{torn.name}.attempt-*"))) == 2


def test_package_imports_without_ray(tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import arrow_quant_v2, arrow_quant_v2.distributed as d\n"
        "try:\n"
        f"    d.quantize_many([{str(REPO / 'missing.safetensors')!r}], {str(tmp_path)!r}, progress=False)\n"
        "except Exception as e: print(type(e).__name__)\n"
        "try:\n"
        "    d._require_ray()\n"
        "except ImportError as e: print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # A failed plan needs no Ray; running units does, and says how to get it.
    assert "arrow-quant-v2[ray]" in out


# ---------------------------------------------------------------- on the local Ray cluster


@pytest.mark.parametrize("units", ["auto", "checkpoint", "tensor"])
def test_many_checkpoints_byte_identical(ray_cluster, checkpoints, expected, tmp_path, units):
    report = quantize_many(checkpoints, tmp_path, workers=2, progress=True, units=units)
    t = report["totals"]
    assert (t["quantized"], t["failed"], t["skipped"]) == (len(checkpoints), 0, 0)
    # One unit per whole checkpoint, else estimates, quantize units and an assembly per checkpoint.
    plans = [_core.plan_units(str(c)) for c in checkpoints]
    split = sum(len(u) + sum(x["estimate"] for x in u) + 1 for u in plans)
    assert t["units"] == {"checkpoint": len(checkpoints), "tensor": split}.get(units, t["units"])
    assert len(checkpoints) < t["units"] < split or units != "auto"  # auto: the two small whole, the two big split
    for c, row in zip(checkpoints, report["checkpoints"], strict=True):
        assert row["status"] == "quantized" and row["retries"] == 0
        assert row["tensors"] == len(_core.plan_units(str(c)))
        assert 0.9 < row["worst_cosine"] <= 1.0
        assert Path(row["output"]).read_bytes() == expected[c]
    assert not (tmp_path / STAGING).exists()
    # Re-running finds every output done.
    again = quantize_many(checkpoints, tmp_path, workers=2, progress=False)
    assert again["totals"]["skipped"] == len(checkpoints) and again["totals"]["units"] == 0
    assert again["checkpoints"][0]["tensors"] == report["checkpoints"][0]["tensors"]


@pytest.mark.parametrize("units", ["checkpoint", "tensor"])
def test_worker_killed_mid_run(ray_cluster, checkpoints, expected, tmp_path, units):
    outcome: dict = {}

    def run():
        try:
            outcome["report"] = quantize_many(
                checkpoints[:2], tmp_path, workers=2, progress=False, units=units, _unit_delay=0.15
            )
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    workers = tmp_path / STAGING / "workers"
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline and thread.is_alive():
        # estimates and quantized units alike (the default config plans, so estimate units run first)
        staged = list((tmp_path / STAGING).glob("*/*.arrow")) + list((tmp_path / STAGING).glob("*/*.estimate.json"))
        # a worker in the middle of a unit (its pid file names the unit while it runs), so the kill forces a retry
        busy = [p for p in sorted(workers.glob("*")) if p.read_text()] if workers.exists() else []
        if busy and (len(staged) >= 2 or units == "checkpoint"):
            victim = int(busy[0].name)
        time.sleep(0.01)
    assert victim is not None, f"no worker seen: {outcome}"
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    assert report["totals"]["quantized"] == 2
    assert report["totals"]["retries"] >= 1
    for c in checkpoints[:2]:
        assert (tmp_path / output_name(c)).read_bytes() == expected[c]


@pytest.mark.parametrize("units", ["checkpoint", "tensor"])
def test_bad_checkpoints_are_reported_and_the_others_finish(ray_cluster, checkpoints, expected, tmp_path, units):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(checkpoints[0].read_bytes()[:-1000])
    nan = make_checkpoint(tmp_path / "nan.safetensors", seed=9, nan=True)
    out = tmp_path / "out"
    sources = [checkpoints[0], truncated, nan, checkpoints[2]]
    report = quantize_many(sources, out, workers=2, progress=False, units=units)
    rows = {Path(r["source"]).name: r for r in report["checkpoints"]}
    assert rows["truncated.safetensors"]["status"] == "failed"
    assert "CorruptDataError" in rows["truncated.safetensors"]["error"]
    assert rows["nan.safetensors"]["status"] == "failed"
    assert "InvalidWeightsError" in rows["nan.safetensors"]["error"]
    assert report["totals"]["failed"] == 2 and report["totals"]["quantized"] == 2
    assert not (out / "truncated.parquet").exists() and not (out / "nan.parquet").exists()
    for c in (checkpoints[0], checkpoints[2]):
        assert (out / output_name(c)).read_bytes() == expected[c]


def test_resume_after_the_driver_is_stopped(ray_cluster, checkpoints, expected, tmp_path):
    env = {**os.environ, "ARROW_QUANT_TEST_UNIT_DELAY": "0.1"}
    cmd = [sys.executable, "-m", "arrow_quant_v2.distributed", "--ray", ray_cluster, "--pool", "2", "--quiet"]
    cmd += ["--units", "tensor"]  # staged units to resume from
    driver = subprocess.Popen([*cmd, *map(str, checkpoints), str(tmp_path)], env=env)
    total = sum(len(_core.plan_units(str(c))) for c in checkpoints)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None:
        if len(list((tmp_path / STAGING).glob("*/*.arrow"))) >= total // 3:
            break
        time.sleep(0.05)
    assert driver.poll() is None, "the driver finished before it could be stopped"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    # Nothing partial at an output path: each output there is complete.
    for c in checkpoints:
        out = tmp_path / output_name(c)
        if out.exists():
            assert out.read_bytes() == expected[c]
    assert {p.name for p in tmp_path.iterdir()} <= {STAGING, *(output_name(c) for c in checkpoints)}
    # auto: the checkpoints with staged units stay split (their units are reused)
    report = quantize_many(checkpoints, tmp_path, workers=2, progress=False)
    assert report["totals"]["failed"] == 0
    assert 0 < report["totals"]["units"] < total  # staged units were reused
    for c in checkpoints:
        assert (tmp_path / output_name(c)).read_bytes() == expected[c]
    assert not (tmp_path / STAGING).exists()


def test_cli_quantize_many(ray_cluster, checkpoints, tmp_path):
    if not CLI.exists():
        pytest.skip(f"{CLI} not built (make build)")
    env = {**os.environ, "ARROW_QUANT_PYTHON": sys.executable}
    sources = [str(c) for c in checkpoints[:2]]
    args = ["quantize-many", *sources, str(tmp_path / "many"), "--ray", ray_cluster, "--profile", "edge"]
    done = subprocess.run([str(CLI), *args, "--format", "arrow", "--quiet"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "2 quantized, 0 skipped, 0 failed" in done.stdout
    for s in sources:
        local = tmp_path / output_name(s, "arrow")
        one = subprocess.run(
            [str(CLI), "quantize", s, str(local), "--profile", "edge", "--format", "arrow", "--quiet"],
            capture_output=True,
            text=True,
        )
        assert one.returncode == 0, one.stderr
        assert (tmp_path / "many" / local.name).read_bytes() == local.read_bytes()
    missing = {**os.environ, "ARROW_QUANT_PYTHON": str(tmp_path / "no-python")}
    failed = subprocess.run([str(CLI), *args], env=missing, capture_output=True, text=True)
    assert failed.returncode == 2 and "ARROW_QUANT_PYTHON" in failed.stderr
