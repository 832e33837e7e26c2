"""Data safety (issue 12, items 1-5 and 11): no run can destroy its input, a failed write leaves nothing and names the
user's path, export keeps the source dtype and refuses overflow, damaged model files are refused (checksum per row,
value checks, `inspect --verify`), a sharded index must agree with its shards, and the output format follows the
extension. Each error is one line (CLI, exit 2) or a QuantizationError subclass (Python); every test checks that
the folder holds what it held before."""

import json
import os
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file, save_file

import arrow_quant_v2 as aq

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "target" / "release" / "arrow-quant"


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def cli(*args, cwd=None):
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, cwd=cwd)


def assert_cli_error(done, *needles):
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "partial" not in lines[0]


def tensors(rng):
    return {
        "blocks.0.attn.qkv.weight": rng.standard_normal((96, 64)).astype(np.float32),
        "blocks.0.mlp.fc1.weight": rng.standard_normal((128, 64)).astype(np.float32),
        "blocks.0.mlp.fc2.weight": rng.standard_normal((64, 128)).astype(np.float32),
        "blocks.0.norm.weight": np.ones(64, np.float32),
        "pos_ids": np.arange(8, dtype=np.int64),
    }


@pytest.fixture()
def ckpt(tmp_path, rng):
    path = tmp_path / "m.safetensors"
    save_file(tensors(rng), str(path))
    return path


SMALL = {"keep_first_last": False, "min_elements": 16}


# --- 1. Output = input is refused up front, by any name ------------------------------------------------------


def test_every_name_of_the_input_is_refused_as_output(quantizer, ckpt, tmp_path):
    os.link(ckpt, tmp_path / "hard.parquet")
    os.symlink(ckpt, tmp_path / "link.parquet")
    (tmp_path / "sub").mkdir()
    before, source = listing(tmp_path), ckpt.read_bytes()
    for name in ["hard.parquet", "link.parquet", "sub/../m.safetensors"]:
        with pytest.raises(aq.ConfigurationError, match="same file as the checkpoint"):
            quantizer.quantize_diffusion_model(tmp_path / name, tmp_path / "m.safetensors")
        with pytest.raises(aq.ConfigurationError, match="same file"):
            quantizer.quantize_from_safetensors(ckpt, tmp_path / name)
    done = cli("quantize", "./m.safetensors", "hard.parquet", cwd=tmp_path)
    assert_cli_error(done, "hard.parquet", "same file as the checkpoint")
    assert listing(tmp_path) == before and ckpt.read_bytes() == source


def test_a_shard_or_the_calibration_file_is_refused_as_output(quantizer, tmp_path, rng):
    folder = sharded(tmp_path, rng)
    recorder = aq.CalibrationRecorder(num_timesteps=10)
    recorder.observe("blocks.0.mlp.fc1.weight", 0, rng.standard_normal((4, 64)).astype(np.float32))
    cal = tmp_path / "cal.parquet"
    aq.write_calibration(recorder.table(), cal)
    before = listing(tmp_path)
    with pytest.raises(aq.ConfigurationError, match="checkpoint shard"):
        quantizer.quantize_diffusion_model(folder, folder / "model-00001-of-00002.safetensors")
    with pytest.raises(aq.ConfigurationError, match="same file as the checkpoint"):
        quantizer.quantize_diffusion_model(
            folder / "model.safetensors.index.json", folder / "model.safetensors.index.json"
        )
    config = aq.DiffusionQuantConfig(calibration_path=str(cal), **SMALL)
    with pytest.raises(aq.ConfigurationError, match="calibration file"):
        quantizer.quantize_diffusion_model(folder, cal, config)
    assert_cli_error(cli("quantize", folder, cal, "--calibration", cal), "calibration file")
    assert listing(tmp_path) == before


def test_export_onto_its_model_file_is_refused(quantizer, ckpt, tmp_path):
    model = tmp_path / "q.parquet"
    quantizer.quantize_diffusion_model(ckpt, model)
    os.symlink(model, tmp_path / "alias.safetensors")
    before, stored = listing(tmp_path), model.read_bytes()
    with pytest.raises(aq.ConfigurationError, match="same file as the model file"):
        aq.export_safetensors(model, tmp_path / "alias.safetensors")
    assert_cli_error(cli("export", model, tmp_path / "alias.safetensors"), "same file as the model file")
    # A safetensors export named like a model file is refused too (it would not be one).
    assert_cli_error(cli("export", model, tmp_path / "other.arrow"), "export writes .safetensors")
    assert listing(tmp_path) == before and model.read_bytes() == stored


# --- 2. The target is checked before the work, errors name the user's path --------------------------------------


def test_an_impossible_target_fails_before_any_work_and_names_it(quantizer, ckpt, tmp_path):
    (tmp_path / "plain").write_bytes(b"x")
    (tmp_path / "folder").mkdir()
    os.symlink(tmp_path / "folder", tmp_path / "folder-link")
    before = listing(tmp_path)
    calls = []
    with pytest.raises(NotADirectoryError, match="plain/q.parquet"):
        quantizer.quantize_diffusion_model(
            ckpt, tmp_path / "plain" / "q.parquet", progress_callback=lambda *a: calls.append(a)
        )
    with pytest.raises(IsADirectoryError, match="folder-link"):
        quantizer.quantize_diffusion_model(ckpt, tmp_path / "folder-link", progress_callback=lambda *a: calls.append(a))
    assert calls == []  # refused before the first tensor
    assert_cli_error(cli("quantize", ckpt, tmp_path / "folder-link"), "folder-link", "Is a directory")
    assert_cli_error(cli("quantize", ckpt, tmp_path / "plain" / "q.parquet"), "plain/q.parquet")
    assert listing(tmp_path) == before


# --- 3. export: the source dtype by default, overflow of an explicit dtype is an error ----------------------------


def test_export_keeps_the_source_dtype_and_refuses_overflow(quantizer, tmp_path, rng):
    big = (rng.standard_normal((64, 64)) * 3e4).astype(np.float32)
    big[0, 0] = 9e4  # beyond float16's 65504
    save_file(
        {"blocks.0.mlp.fc1.weight": big, "blocks.0.norm.weight": np.full(64, 7e4, np.float32)},
        str(tmp_path / "m.safetensors"),
    )
    model = tmp_path / "q.arrow"
    quantizer.quantize_diffusion_model(tmp_path / "m.safetensors", model, aq.DiffusionQuantConfig(**SMALL))
    restored = tmp_path / "r.safetensors"
    aq.export_safetensors(model, restored)
    back = load_file(str(restored))
    assert {k: v.dtype for k, v in back.items()} == {
        "blocks.0.mlp.fc1.weight": np.float32,
        "blocks.0.norm.weight": np.float32,
    }
    assert all(np.isfinite(v).all() for v in back.values())
    restored.unlink()
    before = listing(tmp_path)
    with pytest.raises(aq.SchemaError, match=r"tensor 'blocks.0.*overflows f16"):
        aq.export_safetensors(model, restored, dtype="f16")
    assert_cli_error(cli("export", model, restored, "--dtype", "f16"), "overflows f16", "tensor 'blocks.0.")
    assert listing(tmp_path) == before
    # bf16 has the range: an explicit bf16 export goes through (read by hand: numpy has no bfloat16).
    aq.export_safetensors(model, restored, dtype="bf16")
    raw = restored.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    entry = json.loads(raw[8 : 8 + n])["blocks.0.mlp.fc1.weight"]
    begin, end = entry["data_offsets"]
    bits = np.frombuffer(raw[8 + n + begin : 8 + n + end], "<u2").astype(np.uint32) << 16
    assert entry["dtype"] == "BF16" and np.isfinite(bits.view(np.float32)).all()


# --- 4. Damaged model files: checksum per row, value checks, inspect --verify --------------------------------


def row_crc(r, scale_dtype="<f2"):
    """The checksum of docs/FORMAT.md "Checksum", written from the spec (zlib's CRC-32)."""
    parts = [
        np.asarray(r["shape"], "<i8").tobytes(),
        r["data"],
        np.asarray(r["scales"], scale_dtype).tobytes(),
        np.asarray(r["zero_points"] or [], scale_dtype).tobytes(),
        r["params"] or b"",
        np.asarray(r["channel_scales"] or [], "<f4").tobytes(),
    ]
    for g in r["time_groups"] or []:
        parts.append(np.array([g["t_start"], g["t_end"]], "<i4").tobytes())
        parts.append(np.array([g["scale"], g["zero_point"]], "<f4").tobytes())
    crc = 0
    for p in parts:
        crc = zlib.crc32(p, crc)
    return crc


def read_table(path):
    return ipc.open_file(path).read_all() if path.suffix == ".arrow" else pq.read_table(path)


@pytest.mark.parametrize("suffix,scales", [(".parquet", "<f2"), (".arrow", "<f4")])
def test_an_independent_reader_verifies_every_checksum(quantizer, ckpt, tmp_path, rng, suffix, scales):
    recorder = aq.CalibrationRecorder(num_timesteps=10)
    for t in range(10):
        recorder.observe("blocks.0.mlp.fc1.weight", t, rng.standard_normal((4, 64)).astype(np.float32) * (t + 1))
    config = aq.DiffusionQuantConfig(
        num_time_groups=2,
        layout="flat",
        symmetric=False,
        scale_dtype="float32" if scales == "<f4" else "float16",
        **SMALL,
    )
    out = tmp_path / f"q{suffix}"
    quantizer.quantize_diffusion_model(ckpt, out, config, calibration=recorder.table())
    rows = read_table(out).to_pylist()
    fc1 = next(r for r in rows if r["name"] == "blocks.0.mlp.fc1.weight")
    assert fc1["channel_scales"] and fc1["time_groups"] and fc1["zero_points"]  # every covered part present
    assert all(r["checksum"] is not None and row_crc(r, scales) == r["checksum"] for r in rows)


def flip_in_tensor(path, name, offset, count=1):
    """Flips `count` bytes of tensor `name`'s packed codes where they lie in the file."""
    row = next(r for r in read_table(path).to_pylist() if r["name"] == name)
    raw = bytearray(path.read_bytes())
    at = raw.find(row["data"][16:48])
    assert at > 0
    for k in range(count):
        raw[at + offset + k] ^= 0x5A
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("suffix", [".arrow", ".parquet"])
def test_one_flipped_byte_is_refused_by_every_reader(quantizer, ckpt, tmp_path, suffix):
    out = tmp_path / f"q{suffix}"
    quantizer.quantize_diffusion_model(ckpt, out, aq.DiffusionQuantConfig(**SMALL))
    flip_in_tensor(out, "blocks.0.mlp.fc2.weight", 3)
    before = listing(tmp_path)
    model = aq.load_quantized(out)
    with pytest.raises(aq.CorruptDataError, match="'blocks.0.mlp.fc2.weight'.*checksum mismatch"):
        model["blocks.0.mlp.fc2.weight"]
    assert np.isfinite(model["blocks.0.mlp.fc1.weight"]).all()  # the other tensors still read
    with pytest.raises(aq.CorruptDataError, match="checksum mismatch"):
        aq.export_safetensors(out, tmp_path / "r.safetensors")
    assert_cli_error(cli("inspect", out), "blocks.0.mlp.fc2.weight", "checksum mismatch")
    done = cli("inspect", out, "--verify")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    verdicts = {line.split()[0]: line for line in done.stdout.splitlines()[1:] if line.strip()}
    assert "FAIL" in verdicts["blocks.0.mlp.fc2.weight"] and "FAIL" not in verdicts["blocks.0.mlp.fc1.weight"]
    assert "1 failed" in done.stdout
    assert listing(tmp_path) == before


def rewrite(path, table):
    """Writes `table` back as a model file: one row group per tensor, the footer metadata kept."""
    meta = pq.read_metadata(path).metadata
    table = table.replace_schema_metadata({k: v for k, v in meta.items() if not k.startswith(b"ARROW:")})
    pq.write_table(table, path, row_group_size=1, compression="zstd")


def test_a_bad_field_under_a_valid_checksum_is_refused(quantizer, ckpt, tmp_path):
    out = tmp_path / "q.parquet"
    quantizer.quantize_diffusion_model(ckpt, out, aq.DiffusionQuantConfig(**SMALL))
    table = pq.read_table(out)
    rows = table.to_pylist()
    i = next(k for k, r in enumerate(rows) if r["encoding"] == "int4_2l")
    params = bytearray(rows[i]["params"])
    params[2:4] = np.array([-1.0], "<f2").tobytes()  # dmin of the first super-block: negative
    rows[i]["params"] = bytes(params)
    rows[i]["checksum"] = row_crc(rows[i])  # a consistent checksum: the value check must catch it
    rewrite(out, pa.Table.from_pylist(rows, schema=table.schema))
    with pytest.raises(aq.CorruptDataError, match=r"super-block 0 has dmin = -1.*finite and non-negative"):
        aq.load_quantized(out)[rows[i]["name"]]
    assert_cli_error(cli("inspect", out), "dmin = -1")


def test_files_without_checksums_still_read_and_verify_says_so(quantizer, ckpt, tmp_path):
    out = tmp_path / "q.parquet"
    quantizer.quantize_diffusion_model(ckpt, out, aq.DiffusionQuantConfig(**SMALL))
    expected = aq.load_quantized(out)["blocks.0.mlp.fc1.weight"]
    table = pq.read_table(out)
    rewrite(out, table.drop_columns(["checksum"]))  # a file written before the column existed
    np.testing.assert_array_equal(aq.load_quantized(out)["blocks.0.mlp.fc1.weight"], expected)
    done = cli("inspect", out, "--verify")
    assert done.returncode == 0, done
    assert f"{table.num_rows} without checksum" in done.stdout and "ok, no checksum" in done.stdout


# --- 5. A sharded index must agree with its shards ------------------------------------------------------------


def sharded(tmp_path, rng, edit=None):
    """A folder of two shards and their index; `edit(weight_map, names)` may change the index before it is written."""
    folder = tmp_path / "sharded"
    folder.mkdir()
    t = tensors(rng)
    names = sorted(t)
    weight_map = {}
    for i, part in enumerate([names[:2], names[2:]]):
        shard = f"model-{i:05d}-of-00002.safetensors"
        save_file({n: t[n] for n in part}, str(folder / shard))
        weight_map.update(dict.fromkeys(part, shard))
    if edit is not None:
        edit(weight_map, names)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda m, n: m.pop(n[-1]), "which the index does not list"),
        (lambda m, n: m.update({n[0]: "model-00001-of-00002.safetensors"}), "the index puts tensor"),
        (lambda m, n: m.update({"extra.weight": "model-00000-of-00002.safetensors"}), "'extra.weight'"),
        (lambda m, n: m.update({n[0]: "/etc/x.safetensors"}), "not a file inside the model folder"),
        (lambda m, n: m.update({n[0]: "sub/../../x.safetensors"}), "not a file inside the model folder"),
    ],
    ids=["shard-tensor-unlisted", "wrong-shard", "listed-but-missing", "absolute", "dotdot-inside"],
)
def test_an_index_that_disagrees_with_its_shards_stops_the_run(quantizer, tmp_path, rng, edit, needle):
    folder = sharded(tmp_path, rng, edit)
    before = listing(tmp_path)
    with pytest.raises(aq.CorruptDataError, match=needle):
        quantizer.quantize_diffusion_model(folder, tmp_path / "q.parquet")
    assert_cli_error(cli("quantize", folder, tmp_path / "q.parquet"), "model.safetensors.index.json", needle)
    assert listing(tmp_path) == before


# --- 11. The output format follows the extension; a contradiction is refused --------------------------------------


def test_the_extension_chooses_the_format(quantizer, ckpt, tmp_path):
    done = cli("quantize", ckpt, tmp_path / "a.ipc", "--quiet")
    assert done.returncode == 0, done
    assert (tmp_path / "a.ipc").read_bytes()[:6] == b"ARROW1"
    quantizer.quantize_diffusion_model(ckpt, tmp_path / "b.arrow")
    assert (tmp_path / "b.arrow").read_bytes()[:6] == b"ARROW1"
    assert json.loads(aq.load_quantized(tmp_path / "b.arrow").metadata["arrow_quant.config"])["format"] == "arrow"
    quantizer.quantize_diffusion_model(ckpt, tmp_path / "c.model")  # no known extension: Parquet
    assert (tmp_path / "c.model").read_bytes()[:4] == b"PAR1"
    before = listing(tmp_path)
    assert_cli_error(
        cli("quantize", ckpt, tmp_path / "d.arrow", "--format", "parquet"), "contradicts the extension .arrow"
    )
    assert_cli_error(cli("quantize", ckpt, tmp_path / "d.arrows"), "Arrow IPC stream")
    assert_cli_error(cli("quantize", ckpt, tmp_path / "d.safetensors"), "not .safetensors")
    with pytest.raises(aq.ConfigurationError, match="contradicts the extension .parquet"):
        quantizer.quantize_diffusion_model(ckpt, tmp_path / "d.parquet", aq.DiffusionQuantConfig(format="arrow"))
    assert listing(tmp_path) == before
