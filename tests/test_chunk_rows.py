"""Chunk rows (issue 13, docs/FORMAT.md "Chunk rows"): a tensor larger than the part size is quantized, kept or
carried through in parts of whole rows and stored as consecutive chunk rows, and every reader (load_quantized,
export, validate, inspect, the FORMAT.md reference reader, the distributed units) puts it back together.

The part size is 64 MiB; the test-only variable ARROW_QUANT_TEST_PART_BYTES lowers it, so small tensors span many
parts. The variable is read once per process, so runs that use it are subprocesses (the CLI, or `python -c`)."""

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest
from cli_runner import CLI, run_cli
from safetensors.numpy import load_file, save_file
from test_quality import read_two_level

import arrow_quant_v2 as aq

PART = 16 << 10  # 16 KiB parts
ENV = {**os.environ, "ARROW_QUANT_TEST_PART_BYTES": str(PART)}
# name: (shape, dtype). Large enough for several parts each, except the 1-D norm and the small last layer.
TENSORS = {
    "conv_in.weight": ((128, 8, 3, 3), np.float32),  # first layer: kept, float32 rounded to float16, in parts
    "blocks.0.attn.qkv.weight": ((384, 256), np.float16),  # linear: two-level, rows of 256
    "blocks.0.mlp.fc1.weight": ((2304, 96), "bfloat16"),  # linear, bf16 source: two-level over the flat order
    "blocks.0.conv.weight": ((512, 16, 4, 4), np.float16),  # conv kernel: plain rounding in flat groups
    "blocks.0.norm.weight": ((256,), np.float32),  # 1-D: always one row
    "position_ids": ((64, 512), np.int64),  # carried through raw, in parts
    "final_layer.linear.weight": ((32, 256), np.float16),  # last layer: kept, small
}
CHUNKED = {"conv_in.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "blocks.0.conv.weight",
           "position_ids"}


def write_checkpoint(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(13)
    arrays = {}
    for name, (shape, dtype) in TENSORS.items():
        if dtype == np.int64:
            arrays[name] = np.arange(np.prod(shape), dtype=np.int64).reshape(shape)
        elif dtype == "bfloat16":
            f = (rng.standard_normal(shape) * 0.02).astype(np.float32)
            arrays[name] = (f.view(np.uint32) >> 16).astype(np.uint16)  # written as BF16 below
        else:
            arrays[name] = (rng.standard_normal(shape) * 0.02).astype(dtype)
    save_file(arrays, str(path))
    # safetensors.numpy has no bfloat16: relabel the uint16 tensor's header entry (same size).
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["blocks.0.mlp.fc1.weight"]["dtype"] = "BF16"
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))
    assert len(text) == n
    raw[8 : 8 + n] = text
    path.write_bytes(bytes(raw))
    return arrays


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("chunks") / "model.safetensors"
    write_checkpoint(path)
    return path


def quantize(ckpt: Path, out: Path, *args, chunked: bool = True) -> dict:
    if not CLI.exists():
        pytest.skip(f"{CLI} not built (make build)")
    cmd = [str(CLI), "quantize", str(ckpt), str(out), *args, "--json", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV if chunked else None, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".arrow":
        return pa.ipc.open_file(str(path)).read_all().to_pylist()
    return pq.read_table(path).to_pylist()


def row_crc(r, scale_dtype="<f2"):
    """docs/FORMAT.md "Checksum", written from the spec, with the chunk index last."""
    parts = [np.asarray(r["shape"], "<i8").tobytes(), r["data"],
             np.asarray(r["scales"], scale_dtype).tobytes(),
             np.asarray(r["zero_points"] or [], scale_dtype).tobytes(), r["params"] or b"",
             np.asarray(r["channel_scales"] or [], "<f4").tobytes()]
    for g in r["time_groups"] or []:
        parts.append(np.array([g["t_start"], g["t_end"]], "<i4").tobytes()
                     + np.array([g["scale"], g["zero_point"]], "<f4").tobytes())
    if r.get("chunk") is not None:
        parts.append(np.array([r["chunk"]], "<u4").tobytes())
    crc = 0
    for p in parts:
        crc = zlib.crc32(p, crc)
    return crc


@pytest.mark.parametrize("profile,ext", [("edge", "parquet"), ("local", "arrow"), ("cloud", "parquet")])
def test_a_chunked_run_stores_exactly_the_whole_run_in_chunk_rows(ckpt, tmp_path, profile, ext):
    chunked, whole = tmp_path / f"chunked.{ext}", tmp_path / f"whole.{ext}"
    rep_c = quantize(ckpt, chunked, "--profile", profile)
    rep_w = quantize(ckpt, whole, "--profile", profile, chunked=False)
    # The same decisions, encodings, sizes and quality, to the last bit.
    assert rep_c["layers"] == rep_w["layers"]
    rows, whole_rows = read_rows(chunked), read_rows(whole)
    assert len(whole_rows) == len(TENSORS) and all(r["chunk"] is None for r in whole_rows)
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r)
    order = [layer["name"] for layer in rep_w["layers"]]  # the checkpoint's order
    assert sorted(order) == sorted(TENSORS)
    assert list(by_name) == order  # each tensor's rows are consecutive, in checkpoint order
    for name, (shape, _) in TENSORS.items():
        mine = by_name[name]
        if name in CHUNKED:
            assert len(mine) > 1, name
            assert [r["chunk"] for r in mine] == list(range(len(mine)))
            assert sum(r["shape"][0] for r in mine) == shape[0]
            assert all(tuple(r["shape"][1:]) == shape[1:] for r in mine)
            assert len({(r["encoding"], r["cosine"], r["rel_mse"]) for r in mine}) == 1
        else:
            assert len(mine) == 1 and mine[0]["chunk"] is None
    # Every reader gives the whole run's values.
    a, b = aq.load_quantized(chunked), aq.load_quantized(whole)
    assert list(a) == order
    assert a == b
    for name in TENSORS:
        assert a[name].shape == b[name].shape == TENSORS[name][0]
    restored_c, restored_w = tmp_path / "c.safetensors", tmp_path / "w.safetensors"
    assert run_cli("export", chunked, restored_c, "--dtype", "f32").returncode == 0
    assert run_cli("export", whole, restored_w, "--dtype", "f32").returncode == 0
    ec, ew = load_file(str(restored_c)), load_file(str(restored_w))
    assert ec.keys() == ew.keys() and all(np.array_equal(ec[k], ew[k]) for k in ec)
    v = run_cli("validate", ckpt, chunked, "--json")
    assert v.returncode == 0, v.stderr
    assert json.loads(v.stdout)["passed"]


def test_the_reference_reader_decodes_chunk_rows(ckpt, tmp_path):
    out = tmp_path / "m.parquet"
    # One width, so that the layers are int4_2l (the automatic plan may give them 8 bits).
    quantize(ckpt, out, "--profile", "local", "--no-auto-mixed-precision")
    rows = read_rows(out)
    assert all(r["checksum"] is not None and row_crc(r) == r["checksum"] for r in rows)
    model = aq.load_quantized(out)
    for name in ("blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight"):
        mine = [r for r in rows if r["name"] == name]
        assert len(mine) > 1 and mine[0]["encoding"] == "int4_2l"

        class Row:  # the attributes read_two_level (the FORMAT.md reader of tests/test_quality.py) takes
            def __init__(self, r):
                self.bits, self.shape = r["bits"], tuple(r["shape"])
                self.data = np.frombuffer(r["data"], np.uint8)
                self.params = np.frombuffer(r["params"], np.uint8)

        joined = np.concatenate([read_two_level(Row(r)) for r in mine])
        assert np.array_equal(joined.view(np.uint32), model[name].view(np.uint32))
        # The joined QuantizedTensor is the whole tensor of its encoding.
        q = model.quantized(name)
        assert q.shape == TENSORS[name][0] and np.array_equal(q.dequantize(), model[name])


def test_inspect_shows_each_tensor_once_with_its_whole_shape(ckpt, tmp_path):
    out = tmp_path / "m.arrow"
    quantize(ckpt, out, "--profile", "edge")
    r = run_cli("inspect", out, "--json")
    assert r.returncode == 0, r.stderr
    tensors = json.loads(r.stdout)["tensors"]
    assert sorted(t["name"] for t in tensors) == sorted(TENSORS)
    for t in tensors:
        assert tuple(t["shape"]) == TENSORS[t["name"]][0]
        assert (t["rows"] > 1) == (t["name"] in CHUNKED)
    v = run_cli("inspect", out, "--verify", "--json")
    assert v.returncode == 0 and json.loads(v.stdout)["passed"], v.stdout


def rewrite_parquet(src: Path, dst: Path, order: list[int], change=None) -> None:
    """The model file with its rows in `order` (one row group each, footer metadata kept)."""
    table = pq.read_table(src)
    rows = [table.slice(i, 1) for i in order]
    if change:
        rows = [change(i, r) for i, r in zip(order, rows, strict=True)]
    meta = pq.read_metadata(src).metadata
    table = pa.concat_tables(rows).replace_schema_metadata(
        {k: v for k, v in meta.items() if not k.startswith(b"ARROW:")})
    pq.write_table(table, dst, row_group_size=1, compression="zstd")


def test_chunk_rows_out_of_order_or_relabelled_are_refused(ckpt, tmp_path):
    out = tmp_path / "m.parquet"
    quantize(ckpt, out, "--profile", "local")
    names = pq.read_table(out, columns=["name"]).column("name").to_pylist()
    first = names.index("blocks.0.conv.weight")
    order = list(range(len(names)))
    order[first], order[first + 1] = order[first + 1], order[first]
    swapped = tmp_path / "swapped.parquet"
    rewrite_parquet(out, swapped, order)
    with pytest.raises(aq.QuantizationError, match="chunk index 1 where 0 was expected"):
        aq.load_quantized(swapped)["blocks.0.conv.weight"]
    r = run_cli("export", swapped, tmp_path / "x.safetensors")
    assert r.returncode == 2 and "chunk" in r.stderr
    assert not (tmp_path / "x.safetensors").exists()

    # A changed chunk index is damage the checksum covers.
    def relabel(i, row):
        if i != first:
            return row
        return row.set_column(row.schema.get_field_index("chunk"), "chunk", pa.array([7], pa.uint32()))

    relabelled = tmp_path / "relabelled.parquet"
    rewrite_parquet(out, relabelled, list(range(len(names))), relabel)
    with pytest.raises(aq.QuantizationError, match="checksum mismatch"):
        aq.load_quantized(relabelled)["blocks.0.conv.weight"]


SCRIPT = """
import sys
from pathlib import Path
import arrow_quant_v2 as aq
from arrow_quant_v2 import _core
source, work = sys.argv[1], Path(sys.argv[2])
config = aq.DiffusionQuantConfig.from_profile("local")
local = work / "local.parquet"
aq.ArrowQuantV2().quantize_diffusion_model(source, str(local), config)
units = _core.plan_units(source, config)
# The local profile plans its INT4 widths: estimate units, then the plan, which every unit reads.
estimates = [str(work / f"est{u['index']}.json") for u in units if u["estimate"]]
for u, f in zip([u for u in units if u["estimate"]], estimates):
    _core.estimate_unit(source, u["index"], f, config)
plan = str(work / "plan.json")
_core.plan_from_estimates(source, estimates, plan, config)
staged = [str(work / f"unit{i}.arrow") for i in range(len(units))]
for i in range(len(units)):
    _core.quantize_unit(source, i, staged[i], config, plan)
_core.assemble_units(source, staged, str(work / "assembled.parquet"), config, plan)
"""


def test_the_python_api_and_distributed_units_write_the_same_chunk_rows(ckpt, tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(ckpt), str(tmp_path)], env=ENV, capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stderr
    local, assembled = tmp_path / "local.parquet", tmp_path / "assembled.parquet"
    assert assembled.read_bytes() == local.read_bytes()
    rows = read_rows(local)
    assert len(rows) > len(TENSORS)
    assert {r["name"] for r in rows if r["chunk"] is not None} == CHUNKED
    # The staged unit of a chunked tensor holds its chunk rows, one batch each.
    batches = [pa.ipc.open_file(str(p)).num_record_batches for p in sorted(tmp_path.glob("unit*.arrow"))]
    assert len(batches) == len(TENSORS)
    assert sum(b > 1 for b in batches) == len(CHUNKED)
    assert sum(batches) == len(rows)
    assert aq.ArrowQuantV2().validate_quality(str(ckpt), str(assembled))["passed"]
