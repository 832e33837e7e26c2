"""The model pipeline: safetensors checkpoints in, Parquet / Arrow IPC model files out; policy and fallback,
validation, lazy loading, export, corrupt inputs, atomic output, configuration errors, async front."""

import asyncio
import json
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from cli_runner import run_cli
from safetensors.numpy import load_file, save_file

import arrow_quant_v2 as aq


def dit_like(rng, dtype=np.float32):
    return {
        "x_embedder.proj.weight": rng.standard_normal((64, 4, 2, 2)).astype(dtype),
        "t_embedder.mlp.0.weight": rng.standard_normal((64, 32)).astype(dtype),
        "blocks.0.attn.qkv.weight": rng.standard_normal((192, 64)).astype(dtype),
        "blocks.0.attn.qkv.bias": rng.standard_normal(192).astype(dtype),
        "blocks.0.norm1.weight": np.ones(64, dtype),
        "blocks.0.mlp.fc1.weight": rng.standard_normal((256, 64)).astype(dtype),
        "blocks.0.mlp.fc2.weight": rng.standard_normal((64, 256)).astype(dtype),
        "pos_ids": np.arange(16, dtype=np.int64).reshape(1, 16),
        "final_layer.linear.weight": rng.standard_normal((16, 64)).astype(dtype),
    }


@pytest.fixture()
def checkpoint(tmp_path, rng):
    tensors = dit_like(rng)
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    return path, tensors


def no_leftovers(folder, keep):
    assert sorted(p.name for p in folder.iterdir()) == sorted(keep)


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_quantize_validate_load_export(quantizer, checkpoint, tmp_path, fmt):
    path, tensors = checkpoint
    out = tmp_path / f"model.{fmt}"
    calls = []
    # Uniform INT4 (the automatic plan is tested in test_default_int4_plans_at_its_uniform_size).
    config = aq.DiffusionQuantConfig(format=fmt, auto_mixed_precision=False)
    report = quantizer.quantize_diffusion_model(path, out, config, progress_callback=lambda n, f: calls.append(f))
    assert calls == sorted(calls) and calls[-1] == pytest.approx(1.0) and len(calls) == len(tensors)
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert layers["blocks.0.attn.qkv.weight"]["encoding"] == "int4_2l"  # method "auto": the two-level encoding
    assert layers["blocks.0.norm1.weight"]["kept"] == "1-D tensor"
    assert layers["x_embedder.proj.weight"]["kept"].startswith("first or last layer")
    assert layers["final_layer.linear.weight"]["kept"].startswith("first or last layer")
    assert "t_embedder" in layers["t_embedder.mlp.0.weight"]["kept"]
    assert layers["pos_ids"]["encoding"] == "raw"
    totals = report["totals"]
    assert totals["bytes_in"] == sum(t.nbytes for t in tensors.values())
    assert totals["compression_ratio"] > 1.5 and totals["quantized"] == 3

    validation = quantizer.validate_quality(path, out)
    assert validation["passed"] and validation["floor"] == 0.85

    model = aq.load_quantized(out)
    assert isinstance(model, aq.QuantizedModel) and len(model) == len(tensors) and "pos_ids" in model
    assert set(model) == set(tensors)
    assert np.array_equal(model["pos_ids"], tensors["pos_ids"])
    w = model["blocks.0.attn.qkv.weight"]
    assert w.shape == (192, 64) and w.dtype == np.float32
    q = model.quantized("blocks.0.attn.qkv.weight")
    assert np.array_equal(q.dequantize(), w) and q.bits == 4
    with pytest.raises(KeyError):
        model["missing"]
    with pytest.raises(aq.SchemaError, match="stored as f16"):
        model.quantized("blocks.0.norm1.weight")
    meta = model.metadata
    assert meta["arrow_quant.format"] == "arrow-quant" and json.loads(meta["arrow_quant.config"])["format"] == fmt

    exported = tmp_path / "restored.safetensors"
    aq.export_safetensors(out, exported, dtype="f16")
    restored = load_file(str(exported))
    assert set(restored) == set(tensors)
    assert restored["blocks.0.attn.qkv.weight"].dtype == np.float16
    assert np.array_equal(restored["pos_ids"], tensors["pos_ids"])
    assert np.allclose(restored["blocks.0.attn.qkv.weight"], w, atol=1e-2)


def test_default_int4_plans_at_its_uniform_size(quantizer, checkpoint, tmp_path):
    path, tensors = checkpoint
    calls = []
    report = quantizer.quantize_diffusion_model(
        path, tmp_path / "m.parquet", progress_callback=lambda n, f: calls.append(f)
    )
    mp = report["totals"]["mixed_precision"]
    assert mp["automatic"] and mp["target_bits_per_weight"] == 4.5
    quantized = [layer for layer in report["layers"] if layer["bits"] in (2, 4, 8)]
    planned = sum(mp["layers_per_width"].values())
    assert planned == len(quantized) == report["totals"]["quantized"]
    # The budget covers the quantized layers only: at most the uniform layout's 4.5 bits per weight there.
    params = sum(int(np.prod(layer["shape"])) for layer in quantized)
    assert sum(layer["bytes_out"] for layer in quantized) * 8 / params <= 4.5 + 1e-9
    assert mp["planned_bits_per_weight"] <= 4.5 + 1e-9
    # Progress covers the planning pass (one call per planned layer) and then every tensor.
    assert calls == sorted(calls) and calls[-1] == pytest.approx(1.0) and len(calls) == len(tensors) + planned
    # The plan's total error is at most the uniform run's (which is one of the plan's options).
    uniform = quantizer.quantize_diffusion_model(
        path, tmp_path / "u.parquet", aq.DiffusionQuantConfig(auto_mixed_precision=False)
    )
    assert uniform["totals"]["mixed_precision"] is None
    by_name = {layer["name"]: layer for layer in uniform["layers"]}
    assert mp["total_error"] <= sum(by_name[layer["name"]]["rel_mse"] for layer in quantized) * (1 + 1e-6)
    # The CLI: the same plan by default, one width with --no-auto-mixed-precision.
    for flags, planned_run in (([], True), (["--no-auto-mixed-precision"], False)):
        out = tmp_path / "cli.parquet"
        proc = run_cli("quantize", path, out, "--json", "--quiet", *flags)
        assert proc.returncode == 0, proc.stderr
        cli_mp = json.loads(proc.stdout)["totals"]["mixed_precision"]
        assert (cli_mp == mp) if planned_run else cli_mp is None
        out.unlink()
    # An explicit layout or method, or another width, is uniform too.
    for config in (aq.DiffusionQuantConfig(layout="two_level"), aq.DiffusionQuantConfig(method="mse"),
                   aq.DiffusionQuantConfig(bit_width=8)):
        r = quantizer.quantize_diffusion_model(path, tmp_path / "x.parquet", config)
        assert r["totals"]["mixed_precision"] is None
        (tmp_path / "x.parquet").unlink()


def test_output_opens_in_pyarrow_and_polars(quantizer, checkpoint, tmp_path):
    path, tensors = checkpoint
    out = tmp_path / "m.parquet"
    quantizer.quantize_from_safetensors(path, out)
    table = pq.read_table(out)
    assert table.num_rows == len(tensors)
    assert pq.ParquetFile(out).metadata.num_row_groups == len(tensors)
    pl = pytest.importorskip("polars")
    df = pl.read_parquet(out)
    assert df.height == len(tensors) and "rel_mse" in df.columns
    # The result table dequantizes through the Arrow API too.
    quantized_rows = table.filter(pc.starts_with(table["encoding"], "int"))
    back = quantizer.dequantize_arrow(quantized_rows)
    assert back.num_rows == 3


@pytest.mark.parametrize("dtype", [np.float16, "bf16"])
def test_half_precision_checkpoints(quantizer, tmp_path, rng, dtype):
    tensors = dit_like(rng, np.float32)
    if dtype == "bf16":
        # safetensors.numpy has no bfloat16: write the bits with a hand-built header.
        path = tmp_path / "bf16.safetensors"
        write_bf16(path, {k: v for k, v in tensors.items() if v.dtype == np.float32})
        expected = {k: v for k, v in tensors.items() if v.dtype == np.float32}
    else:
        expected = {k: v.astype(dtype) if v.dtype == np.float32 else v for k, v in tensors.items()}
        path = tmp_path / "f16.safetensors"
        save_file(expected, str(path))
    out = tmp_path / "m.parquet"
    report = quantizer.quantize_diffusion_model(path, out)
    layer = next(x for x in report["layers"] if x["name"] == "blocks.0.mlp.fc1.weight")
    assert layer["encoding"] == "int4_2l" and layer["dtype"] == ("bf16" if dtype == "bf16" else "f16")
    assert quantizer.validate_quality(path, out)["passed"]


def write_bf16(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, value in tensors.items():
        bits = (value.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(value.shape), "data_offsets": [offset, offset + len(bits)]}
        blobs.append(bits)
        offset += len(bits)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_sharded_checkpoint_with_index(quantizer, tmp_path, rng):
    tensors = dit_like(rng)
    names = list(tensors)
    folder = tmp_path / "sharded"
    folder.mkdir()
    shards = {"model-00001-of-00002.safetensors": names[:4], "model-00002-of-00002.safetensors": names[4:]}
    weight_map = {}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(folder / file))
        weight_map.update({n: file for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    out = tmp_path / "m.parquet"
    for source in (folder, folder / "model.safetensors.index.json"):
        report = quantizer.quantize_diffusion_model(source, out)
        assert {x["name"] for x in report["layers"]} == set(tensors)
    assert quantizer.validate_quality(folder, out)["passed"]


def test_fallback_chain_on_a_layer_built_to_fail_int2(quantizer, tmp_path, rng):
    # Gaussian weights: INT2 reaches a cosine near 0.94, INT4 near 0.996, so a floor of 0.97 forces one fallback.
    hard = rng.standard_normal((128, 256)).astype(np.float32)
    tensors = {"a.small.weight": rng.standard_normal((16, 16)).astype(np.float32), "blocks.0.hard.weight": hard,
               "z.small.weight": rng.standard_normal((16, 16)).astype(np.float32)}
    path = tmp_path / "hard.safetensors"
    save_file(tensors, str(path))
    config = aq.DiffusionQuantConfig.from_profile("edge", quality_floor=0.97, group_size=64)
    report = quantizer.quantize_diffusion_model(path, tmp_path / "m.parquet", config)
    layer = next(x for x in report["layers"] if x["name"] == "blocks.0.hard.weight")
    assert layer["fallback"].startswith("cosine") and "< floor 0.9700 at int2" in layer["fallback"]
    assert layer["encoding"] in ("int4", "int8") and layer["cosine"] >= 0.97
    strict = aq.DiffusionQuantConfig.from_profile("edge", quality_floor=0.97, group_size=64, fail_fast=True)
    with pytest.raises(aq.QualityError, match="blocks.0.hard.weight"):
        quantizer.quantize_diffusion_model(path, tmp_path / "strict.parquet", strict)
    assert not (tmp_path / "strict.parquet").exists()
    impossible = aq.DiffusionQuantConfig.from_profile("edge", quality_floor=1.0)
    report = quantizer.quantize_diffusion_model(path, tmp_path / "kept.parquet", impossible)
    layer = next(x for x in report["layers"] if x["name"] == "blocks.0.hard.weight")
    # A floor of 1.0 is met by float32 only: a kept layer is held to the same floor as a quantized one.
    assert layer["encoding"] == "f32" and layer["fallback"].endswith("kept unquantized")
    assert "stored as f32" in layer["kept"] and layer["cosine"] == 1.0


def corrupt_files(tmp_path, good_bytes):
    header_len = struct.unpack("<Q", good_bytes[:8])[0]
    header = json.loads(good_bytes[8 : 8 + header_len])
    data = good_bytes[8 + header_len :]

    def with_header(h, body=data):
        text = json.dumps(h).encode()
        return struct.pack("<Q", len(text)) + text + body

    first = next(k for k in header if k != "__metadata__")
    second = [k for k in header if k not in ("__metadata__", first)][0]
    overlap = json.loads(json.dumps(header))
    overlap[second]["data_offsets"][0] = overlap[first]["data_offsets"][0]
    past_end = json.loads(json.dumps(header))
    past_end[first]["data_offsets"][1] = len(data) + 100
    unknown = json.loads(json.dumps(header))
    unknown[first]["dtype"] = "Q4_K"
    mismatch = json.loads(json.dumps(header))
    mismatch[first]["shape"] = [3, 3]
    return {
        "truncated data": (good_bytes[: len(good_bytes) - 100], "outside the data area"),
        "header length past the end": (struct.pack("<Q", 10**6) + good_bytes[8:], "runs past the end of the file"),
        "overlapping offsets": (with_header(overlap), "overlap"),
        "offsets past the end": (with_header(past_end), "outside the data area"),
        "malformed JSON": (struct.pack("<Q", 5) + b"{oops" + data, "not valid JSON"),
        "unknown dtype": (with_header(unknown), 'unknown dtype "Q4_K"'),
        "shape/length mismatch": (with_header(mismatch), "shape [3, 3] of"),
    }


def test_corrupt_files_give_their_error_and_leave_nothing(quantizer, checkpoint, tmp_path):
    path, _ = checkpoint
    for case, (blob, message) in corrupt_files(tmp_path, path.read_bytes()).items():
        folder = tmp_path / case.replace(" ", "_").replace("/", "_")
        folder.mkdir()
        bad = folder / "bad.safetensors"
        bad.write_bytes(blob)
        with pytest.raises(aq.CorruptDataError, match=re.escape(message)) as info:
            quantizer.quantize_diffusion_model(bad, folder / "out.parquet")
        assert "bad.safetensors" in str(info.value), case
        no_leftovers(folder, ["bad.safetensors"])


def test_missing_model_and_output_folder(quantizer, tmp_path, checkpoint):
    with pytest.raises(aq.ModelNotFoundError, match="no such file"):
        quantizer.quantize_diffusion_model(tmp_path / "nope.safetensors", tmp_path / "o.parquet")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(aq.ModelNotFoundError, match="no .safetensors"):
        quantizer.quantize_diffusion_model(empty, tmp_path / "o.parquet")
    with pytest.raises(OSError, match="output folder does not exist"):
        quantizer.quantize_diffusion_model(checkpoint[0], tmp_path / "no" / "dir" / "o.parquet")
    with pytest.raises(aq.ConfigurationError, match="safetensors_path"):
        quantizer.quantize_from_safetensors(empty, tmp_path / "o.parquet")
    with pytest.raises(aq.CorruptDataError, match="neither a Parquet nor an Arrow IPC file"):
        aq.load_quantized(checkpoint[0])


def test_config_validation_and_profiles():
    edge = aq.DiffusionQuantConfig.from_profile("edge")
    assert (edge.bit_width, edge.group_size, edge.quality_floor) == (2, 256, 0.65)
    cloud = aq.DiffusionQuantConfig.from_profile("cloud", method="rtn")
    assert (cloud.bit_width, cloud.group_size, cloud.quality_floor, cloud.method) == (8, 64, 0.95, "rtn")
    local = aq.DiffusionQuantConfig()
    assert (local.profile, local.bit_width, local.layout, local.group_size) == ("local", 4, "auto", None)
    assert (local.format, local.keep_first_last) == (None, True)  # None: from the output's extension
    assert local.to_dict()["quality_floor"] == 0.85
    for kwargs, field in [
        ({"profile": "phone"}, "profile"),
        ({"bit_width": 3}, "bit_width"),
        ({"group_size": 100}, "group_size"),
        ({"method": "gptq"}, "method"),
        ({"scale_dtype": "int8"}, "scale_dtype"),
        ({"quality_floor": 1.5}, "quality_floor"),
        ({"min_elements": -1}, "min_elements"),
        ({"keep_patterns": [""]}, "keep_patterns"),
        ({"format": "csv"}, "format"),
    ]:
        with pytest.raises(aq.ConfigurationError, match=field):
            aq.DiffusionQuantConfig(**kwargs)


def test_sigkill_in_the_middle_leaves_no_output(tmp_path, rng):
    path = tmp_path / "big.safetensors"
    save_file({f"blocks.{i}.w": rng.standard_normal((512, 1024)).astype(np.float32) for i in range(24)}, str(path))
    out = tmp_path / "out.parquet"
    script = textwrap.dedent(
        f"""
        import arrow_quant_v2 as aq, sys
        def progress(name, fraction):
            print(fraction, flush=True)
        cfg = aq.DiffusionQuantConfig(method="mse", keep_first_last=False)
        aq.ArrowQuantV2().quantize_diffusion_model({str(path)!r}, {str(out)!r}, cfg, progress_callback=progress)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    first = child.stdout.readline()  # the run is under way: at least one tensor written
    assert first.strip(), "the child reported no progress"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    time.sleep(0.1)
    no_leftovers(tmp_path, ["big.safetensors"])


def test_async_front(checkpoint, tmp_path):
    path, _ = checkpoint
    q = aq.AsyncArrowQuantV2()

    async def main():
        report = await q.quantize_diffusion_model(path, tmp_path / "a.parquet")
        single = await q.quantize_from_safetensors(path, tmp_path / "b.parquet")
        valid = await q.validate_quality(path, tmp_path / "a.parquet")
        return report, single, valid

    report, single, valid = asyncio.run(main())
    assert report["totals"]["quantized"] == single["totals"]["quantized"] == 3 and valid["passed"]


def test_two_level_layers_in_model_files(quantizer, tmp_path, rng):
    tensors = {"blocks.0.mlp.fc1.weight": rng.standard_normal((64, 512)).astype(np.float32)}
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    out = tmp_path / "m.arrow"
    report = quantizer.quantize_diffusion_model(path, out, aq.DiffusionQuantConfig(format="arrow"))
    assert report["layers"][0]["encoding"] == "int4_2l"
    model = aq.load_quantized(out)
    stored = model.quantized("blocks.0.mlp.fc1.weight")
    assert stored.encoding == "int4_2l" and stored.params is not None
    assert np.array_equal(model["blocks.0.mlp.fc1.weight"], stored.dequantize())
    assert quantizer.validate_quality(path, out)["passed"]
