"""Layout and method options: one rule for Python and the CLI, each profile's encoding, and an error for every
option the chosen layout would ignore."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from cli_runner import run_cli
from safetensors.numpy import save_file

import arrow_quant_v2 as aq


def test_a_group_size_gives_flat_groups_of_that_size_whatever_it_is(quantizer, rng):
    w = rng.standard_normal((64, 512)).astype(np.float32)
    assert quantizer.quantize(w).encoding == "int4_2l"
    for g in (64, 128):
        t = quantizer.quantize(w, group_size=g)
        assert (t.encoding, t.group_size, t.method, t.scales.size) == ("int4", g, "mse", w.size // g)
    t = quantizer.quantize(w, method="rtn")  # a flat method selects the flat layout with its defaults
    assert (t.encoding, t.group_size, t.method, t.symmetric, t.scale_dtype) == ("int4", 128, "rtn", False, "float16")
    t = quantizer.quantize(w, layout="flat")
    assert (t.encoding, t.group_size, t.method) == ("int4", 128, "mse")
    t = quantizer.quantize(w, layout="two_level", bit_width=2)
    assert (t.encoding, t.method, t.params is not None) == ("int2_2l", None, True)
    t = quantizer.quantize(w, symmetric=True)
    assert (t.encoding, t.symmetric, t.zero_points) == ("int4", True, None)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"layout": "two_level", "group_size": 64}, "group_size"),
        ({"layout": "two_level", "symmetric": True}, "symmetric"),
        ({"layout": "two_level", "scale_dtype": "float32"}, "scale_dtype"),
        ({"layout": "auto", "group_size": 64}, "group_size"),
        ({"layout": "auto", "symmetric": False}, "symmetric"),
        ({"layout": "two_level", "method": "hqq"}, "method"),
        ({"method": "two_level"}, "method"),
        ({"layout": "blocks"}, "layout"),
    ],
)
def test_an_option_the_layout_ignores_is_an_error(quantizer, kwargs, field):
    w = np.ones((4, 256), np.float32)
    with pytest.raises(aq.ConfigurationError, match=field):
        quantizer.quantize(w, **kwargs)
    with pytest.raises(aq.ConfigurationError, match=field):
        quantizer.quantize_batch({"w": w}, **kwargs)
    with pytest.raises(aq.ConfigurationError, match=field):
        aq.DiffusionQuantConfig(**kwargs)


def test_profiles_state_their_layout():
    edge, local, cloud = (aq.DiffusionQuantConfig.from_profile(p) for p in ("edge", "local", "cloud"))
    assert (edge.bit_width, edge.layout, edge.group_size, edge.method) == (2, "flat", 256, "auto")
    assert (local.bit_width, local.layout, local.group_size, local.method) == (4, "auto", None, "auto")
    assert (cloud.bit_width, cloud.layout, cloud.group_size, cloud.method) == (8, "flat", 64, "auto")
    assert (aq.DiffusionQuantConfig(group_size=128).layout, aq.DiffusionQuantConfig(group_size=128).group_size) == (
        "flat",
        128,
    )
    # An explicit layout replaces the profile's; the profile's flat settings are not "given" by the user.
    assert aq.DiffusionQuantConfig.from_profile("edge", layout="two_level").group_size is None
    assert aq.DiffusionQuantConfig.from_profile("cloud", symmetric=True).group_size == 64


def write_checkpoint(path: Path, rng) -> Path:
    tensors = {
        "blocks.0.attn.qkv.weight": rng.standard_normal((96, 384)).astype(np.float32) * 0.02,
        "blocks.0.mlp.fc1.weight": rng.standard_normal((384, 96)).astype(np.float16),
        "blocks.0.norm1.weight": np.ones(384, np.float32),
        "blocks.1.conv.weight": rng.standard_normal((64, 32, 3, 3)).astype(np.float32),
    }
    save_file(tensors, str(path))
    return path


def quantized_encodings(path: Path) -> dict[str, str]:
    rows = pq.read_table(path, columns=["name", "encoding"]).to_pylist()
    return {r["name"]: r["encoding"] for r in rows if r["encoding"].startswith("int")}


def stored_config(path: Path) -> dict:
    return json.loads(pq.read_metadata(path).metadata[b"arrow_quant.config"])


@pytest.mark.parametrize(
    "profile,encodings,layout",
    [
        ("edge", {"int2"}, {"layout": "flat", "group_size": "256"}),
        ("local", {"int4_2l", "int4"}, {"layout": "auto"}),  # the conv kernel: plain rounding (policy)
        ("cloud", {"int8"}, {"layout": "flat", "group_size": "64"}),
    ],
)
def test_each_profile_writes_its_encoding_and_records_its_layout(quantizer, tmp_path, rng, profile, encodings, layout):
    ckpt = write_checkpoint(tmp_path / "m.safetensors", rng)
    out = tmp_path / "m.parquet"
    quantizer.quantize_diffusion_model(ckpt, out, aq.DiffusionQuantConfig.from_profile(profile, quality_floor=0.0))
    found = quantized_encodings(out)
    assert len(found) == 3 and set(found.values()) == encodings
    config = stored_config(out)
    assert {k: config.get(k) for k in layout} == layout
    if layout["layout"] == "auto":
        assert "group_size" not in config and "symmetric" not in config  # what auto did is in each row



@pytest.mark.parametrize(
    "cli_args,kwargs",
    [
        (["--group-size", "128"], {"group_size": 128}),
        (["--layout", "two_level", "--bits", "2"], {"layout": "two_level", "bit_width": 2}),
        (["--method", "hqq", "--symmetric"], {"method": "hqq", "symmetric": True}),
        (
            ["--scale-dtype", "float32", "--group-size", "per_channel"],
            {"scale_dtype": "float32", "group_size": "per_channel"},
        ),
        (["--profile", "cloud", "--group-size", "32"], {"profile": "cloud", "group_size": 32}),
    ],
)
def test_the_cli_and_python_write_the_same_model_for_the_same_options(quantizer, tmp_path, rng, cli_args, kwargs):
    ckpt = write_checkpoint(tmp_path / "m.safetensors", rng)
    by_cli, by_python = tmp_path / "cli.parquet", tmp_path / "py.parquet"
    done = run_cli("quantize", str(ckpt), str(by_cli), "--quiet", "--json", *cli_args)
    assert done.returncode == 0, done.stderr
    quantizer.quantize_diffusion_model(ckpt, by_python, aq.DiffusionQuantConfig(**kwargs))
    assert pq.read_table(by_cli).equals(pq.read_table(by_python))
    assert stored_config(by_cli) == stored_config(by_python)
    if "group_size" in kwargs:
        assert set(quantized_encodings(by_cli).values()) <= {"int2", "int4", "int8"}


@pytest.mark.parametrize(
    "cli_args,field",
    [
        (["--layout", "two_level", "--group-size", "64"], "group_size"),
        (["--layout", "two_level", "--symmetric"], "symmetric"),
        (["--layout", "auto", "--scale-dtype", "float32"], "scale_dtype"),
        (["--layout", "two_level", "--method", "rtn"], "method"),
        (["--method", "two_level"], "method"),
    ],
)
def test_the_cli_refuses_options_the_layout_ignores(tmp_path, rng, cli_args, field):
    ckpt = write_checkpoint(tmp_path / "m.safetensors", rng)
    out = tmp_path / "m.parquet"
    done = run_cli("quantize", str(ckpt), str(out), "--quiet", *cli_args)
    assert done.returncode == 2 and field in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()
