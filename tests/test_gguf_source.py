"""A GGUF file as the source of a run: an F16 / F32 GGUF (llama.cpp's converter, ComfyUI-GGUF) re-quantized to
GGUF with its metadata copied, quantized to Parquet, validated against; a quantized GGUF source dequantized first;
llama-quantize's --pure, --leave-output-tensor and --imatrix."""

import json

import gguf
import numpy as np
import pytest
from cli_runner import run_cli
from gguf import GGUFReader
from gguf_fields import field
from safetensors.numpy import save_file

# Keys a re-quantization writes afresh rather than copies.
REWRITTEN = {"general.file_type", "general.quantization_version", "general.alignment"}


def _write(w, tensors):
    """Adds `tensors` (name -> array) to gguf-py writer `w` and writes the file."""
    for name, t in tensors.items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture()
def llm_f16(tmp_path, rng):
    """A llama-architecture F16 GGUF as llama.cpp's converter writes one (names, hyper-parameters, tokenizer)."""
    path = tmp_path / "model-F16.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_embedding_length(256)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>", *(f"t{i}" for i in range(61))])
    w.add_token_scores([float(-i) for i in range(64)])
    w.add_uint32("llama.custom_key", 7)
    w.add_file_type(1)  # MOSTLY_F16
    tensors = {
        "token_embd.weight": (rng.standard_normal((64, 256)) * 0.02).astype(np.float16),
        "blk.0.attn_norm.weight": np.ones(256, dtype=np.float32),
        "blk.0.attn_q.weight": (rng.standard_normal((256, 256)) * 0.02).astype(np.float16),
        "blk.0.attn_v.weight": (rng.standard_normal((256, 256)) * 0.02).astype(np.float16),
        "blk.0.ffn_down.weight": (rng.standard_normal((256, 512)) * 0.02).astype(np.float16),
        "output_norm.weight": np.ones(256, dtype=np.float32),
        "output.weight": (rng.standard_normal((64, 256)) * 0.02).astype(np.float16),
    }
    _write(w, tensors)
    return path, tensors


def test_an_f16_gguf_is_requantized_with_its_metadata_names_and_order(llm_f16, tmp_path):
    src, tensors = llm_f16
    out = tmp_path / "model-Q4_K_M.gguf"
    r = run_cli("quantize", src, out, "--type", "Q4_K_M", "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    before, after = GGUFReader(str(src)), GGUFReader(str(out))
    copied = [k for k in before.fields if k not in REWRITTEN and not k.startswith("GGUF.")]
    assert "tokenizer.ggml.tokens" in copied and "llama.custom_key" in copied
    for key in copied:
        assert field(after, key) == field(before, key), key
    # in the source's order, then what the run adds
    assert [k for k in after.fields if k in copied] == copied
    assert field(after, "general.architecture") == "llama"
    assert field(after, "general.file_type") == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert field(after, "general.quantization_version") == 2
    assert [t.name for t in after.tensors] == list(tensors)
    # llama-quantize's Q4_K_M mix (one layer: it is in the last eighth, so value and ffn-down get Q6_K), not the
    # diffusion policy (which would keep the small embedding and the first / last layers in 16-bit)
    assert {t.name: t.tensor_type.name for t in after.tensors} == {
        "token_embd.weight": "Q4_K",
        "blk.0.attn_norm.weight": "F32",
        "blk.0.attn_q.weight": "Q4_K",
        "blk.0.attn_v.weight": "Q6_K",
        "blk.0.ffn_down.weight": "Q6_K",
        "output_norm.weight": "F32",
        "output.weight": "Q6_K",
    }
    for t in after.tensors:
        assert tuple(int(v) for v in reversed(t.shape)) == tensors[t.name].shape, t.name
    r = run_cli("validate", src, out, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["passed"]


def test_an_f16_gguf_quantizes_to_parquet_and_validates(llm_f16, tmp_path):
    import arrow_quant_v2 as aq

    src, tensors = llm_f16
    out = tmp_path / "model.parquet"
    report = aq.ArrowQuantV2().quantize_diffusion_model(str(src), str(out))
    assert [layer["name"] for layer in report["layers"]] == list(tensors)
    r = run_cli("validate", src, out, "--json")
    assert r.returncode == 0, r.stderr
    model = aq.load_quantized(out)
    np.testing.assert_array_equal(model["blk.0.attn_norm.weight"], tensors["blk.0.attn_norm.weight"])


def test_a_quantized_gguf_source_is_dequantized_and_requantized(tmp_path, rng):
    import arrow_quant_v2 as aq

    st = tmp_path / "m.safetensors"
    w = (rng.standard_normal((512, 256)) * 0.02).astype(np.float16)
    save_file({"blocks.0.attn.qkv.weight": w, "blocks.0.norm.weight": np.ones(256, np.float16)}, str(st))
    q8 = tmp_path / "m-Q8_0.gguf"
    r = run_cli("quantize", st, q8, "--type", "Q8_0", "--quiet")
    assert r.returncode == 0, r.stderr
    q8_values = aq.load_quantized(q8)["blocks.0.attn.qkv.weight"]
    again = tmp_path / "again.gguf"
    r = run_cli("quantize", q8, again, "--type", "Q4_K_M", "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    layers = {entry["name"]: entry for entry in json.loads(r.stdout)["layers"]}
    # the source of the second run is the Q8_0 file's decoded values, as float32
    assert layers["blocks.0.attn.qkv.weight"]["dtype"] == "f32"
    reader = GGUFReader(str(again))
    t = next(t for t in reader.tensors if t.name == "blocks.0.attn.qkv.weight")
    assert t.tensor_type.name == "Q5_K"  # the Q4_K_M mix's fused-qkv bump
    back = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(w.shape)
    rel = np.sum((back - q8_values) ** 2) / np.sum(q8_values.astype(np.float64) ** 2)
    assert rel < 5e-3, rel
    r = run_cli("validate", q8, again, "--json")
    assert r.returncode == 0, r.stderr
    # and from Python, to a model file
    out = tmp_path / "again.parquet"
    aq.ArrowQuantV2().quantize_diffusion_model(str(q8), str(out))
    int4 = aq.load_quantized(out)["blocks.0.attn.qkv.weight"]
    assert np.sum((int4 - q8_values) ** 2) / np.sum(q8_values.astype(np.float64) ** 2) < 2e-2


def test_pure_and_leave_output_tensor_work_as_in_llama_quantize(llm_f16, tmp_path):
    import arrow_quant_v2 as aq

    src, tensors = llm_f16

    def types(*flags):
        out = tmp_path / f"m{len(list(tmp_path.glob('m*.gguf')))}.gguf"
        r = run_cli("quantize", src, out, "--type", "Q4_K_M", *flags, "--quiet")
        assert r.returncode == 0, r.stderr
        return {t.name: t.tensor_type.name for t in GGUFReader(str(out)).tensors}

    norms = {"blk.0.attn_norm.weight", "output_norm.weight"}
    # --pure: no Q6_K bumps of output / value / ffn-down; norms stay as they are
    assert types("--pure") == {n: ("F32" if n in norms else "Q4_K") for n in tensors}
    # --leave-output-tensor: output.weight in the source's F16, the rest the Q4_K_M mix
    left = types("--leave-output-tensor")
    assert left["output.weight"] == "F16" and left["blk.0.attn_v.weight"] == "Q6_K"
    # an override still wins
    assert types("--leave-output-tensor", "--tensor-type", "^output=Q8_0")["output.weight"] == "Q8_0"
    # from Python
    cfg = aq.DiffusionQuantConfig(gguf_type="Q4_K_M", gguf_pure=True, gguf_leave_output_tensor=True)
    assert (cfg.gguf_pure, cfg.gguf_leave_output_tensor) == (True, True)
    assert aq.DiffusionQuantConfig().gguf_pure is False
    out = tmp_path / "py.gguf"
    aq.ArrowQuantV2().quantize_diffusion_model(str(src), str(out), cfg)
    reader = GGUFReader(str(out))
    stored = json.loads(field(reader, "arrow_quant.config"))
    assert (stored["gguf_pure"], stored["gguf_leave_output_tensor"]) == (True, True)
    py = {t.name: t.tensor_type.name for t in reader.tensors}
    assert py["output.weight"] == "F16" and py["blk.0.attn_v.weight"] == "Q4_K"


def test_pure_and_leave_output_tensor_need_a_gguf_output(llm_f16, tmp_path):
    import arrow_quant_v2 as aq

    src, _ = llm_f16
    for flag in ("--pure", "--leave-output-tensor"):
        out = tmp_path / "m.parquet"
        r = run_cli("quantize", src, out, flag, "--quiet")
        assert r.returncode == 2 and flag in r.stderr and ".gguf" in r.stderr, r.stderr
        assert not out.exists()
    cfg = aq.DiffusionQuantConfig(gguf_pure=True)
    with pytest.raises(aq.ConfigurationError, match="gguf_pure"):
        aq.ArrowQuantV2().quantize_diffusion_model(str(src), str(tmp_path / "m.parquet"), cfg)
    assert not (tmp_path / "m.parquet").exists()


def _imatrix_gguf(path, entries):
    """An imatrix in llama.cpp's GGUF format: per weight `W.in_sum2` [n_mat, ne0] and `W.counts` [n_mat, 1]."""
    w = gguf.GGUFWriter(str(path), "imatrix")
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["test.txt"])
    w.add_uint32("imatrix.chunk_count", 10)
    w.add_uint32("imatrix.chunk_size", 512)
    tensors = {}
    for name, (sums, count) in entries.items():
        tensors[f"{name}.in_sum2"] = np.asarray(sums, dtype=np.float32).reshape(1, -1)
        tensors[f"{name}.counts"] = np.full((1, 1), count, dtype=np.float32)
    _write(w, tensors)


def _imatrix_dat(path, entries):
    """The legacy .dat: count, then per entry name, ncall, values (scaled to ncall calls), then chunks, dataset."""
    out = bytearray(np.int32(len(entries)).tobytes())
    for name, (values, ncall) in entries.items():
        out += np.int32(len(name)).tobytes() + name.encode()
        out += np.int32(ncall).tobytes() + np.int32(len(values)).tobytes()
        out += np.asarray(values, dtype=np.float32).tobytes()
    out += np.int32(10).tobytes() + np.int32(4).tobytes() + b"test"
    path.write_bytes(bytes(out))


def _weighted_error(reader, name, w, importance):
    t = next(t for t in reader.tensors if t.name == name)
    back = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float64).reshape(w.shape)
    return float((((back - w.astype(np.float64)) ** 2) * importance[None, :]).sum())


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_an_imatrix_is_searched_with_and_a_missing_entry_is_a_warning(llm_f16, tmp_path, rng, fmt):
    src, tensors = llm_f16
    # a few columns carry most of the activation energy, as in a trained model
    importance = {n: np.where(rng.random(t.shape[1]) < 0.05, 100.0, 0.1).astype(np.float32)
                  for n, t in tensors.items() if n in ("blk.0.attn_q.weight", "blk.0.ffn_down.weight")}
    im = tmp_path / f"imatrix.{fmt}"
    if fmt == "gguf":
        _imatrix_gguf(im, {n: (v * 7, 7) for n, v in importance.items()})
    else:
        _imatrix_dat(im, {n: (v * 7, 7) for n, v in importance.items()})
    plain, with_im = tmp_path / "plain.gguf", tmp_path / "im.gguf"
    r = run_cli("quantize", src, plain, "--type", "Q4_K_M", "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_cli("quantize", src, with_im, "--type", "Q4_K_M", "--imatrix", im, "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    # the tensors without an entry (attn_v, the embeddings, the output) are named in one warning
    assert "warning: the imatrix" in r.stderr and "no entry for 3 of the 5 quantized tensors" in r.stderr, r.stderr
    assert "(the first: 'token_embd.weight'); they were searched without importance" in r.stderr, r.stderr
    report = json.loads(r.stdout)
    assert len(report["warnings"]) == 1
    layers = {entry["name"]: entry for entry in report["layers"]}
    assert "no imatrix entry" in layers["blk.0.attn_v.weight"]["note"]
    assert layers["blk.0.attn_q.weight"]["note"] is None
    a, b = GGUFReader(str(plain)), GGUFReader(str(with_im))
    for name, imp in importance.items():
        w = tensors[name].astype(np.float32)
        assert _weighted_error(b, name, w, imp) < 0.9 * _weighted_error(a, name, w, imp), name
    # the tensors without an entry are quantized as without the imatrix
    ta = {t.name: bytes(t.data) for t in a.tensors}
    assert all(bytes(t.data) == ta[t.name] for t in b.tensors if t.name not in importance)


def test_an_imatrix_of_another_model_or_a_corrupt_one_is_refused(llm_f16, tmp_path):
    import arrow_quant_v2 as aq

    src, _ = llm_f16
    out = tmp_path / "m.gguf"
    other = tmp_path / "other.gguf"
    _imatrix_gguf(other, {"blk.0.attn_q.weight": (np.ones(128), 1)})
    r = run_cli("quantize", src, out, "--imatrix", other, "--quiet")
    assert r.returncode == 2 and "blk.0.attn_q.weight" in r.stderr and "another model" in r.stderr, r.stderr
    bad = tmp_path / "bad.dat"
    bad.write_bytes(np.int32(1).tobytes() + np.int32(1000).tobytes() + b"abc")
    r = run_cli("quantize", src, out, "--imatrix", bad, "--quiet")
    assert r.returncode == 2 and "name length" in r.stderr and "offset 4" in r.stderr, r.stderr
    r = run_cli("quantize", src, tmp_path / "m.parquet", "--imatrix", other, "--quiet")
    assert r.returncode == 2 and "--imatrix" in r.stderr, r.stderr
    assert not out.exists() and not (tmp_path / "m.parquet").exists()
    cfg = aq.DiffusionQuantConfig(imatrix_path=str(other))
    assert str(cfg.imatrix_path) == str(other)
    with pytest.raises(aq.ConfigurationError, match="another model"):
        aq.ArrowQuantV2().quantize_diffusion_model(str(src), str(out), cfg)
    assert not out.exists()


def test_a_language_model_falls_back_as_llama_quantize_on_rows_no_k_block_fits(tmp_path, rng):
    # a width of 896 (Qwen2-0.5B): no 256-element block fits its rows
    path = tmp_path / "qwen-F16.gguf"
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_block_count(1)
    w.add_embedding_length(896)
    tensors = {
        "token_embd.weight": (rng.standard_normal((64, 896)) * 0.02).astype(np.float16),
        "blk.0.attn_q.weight": (rng.standard_normal((896, 896)) * 0.02).astype(np.float16),
        "blk.0.ffn_down.weight": (rng.standard_normal((896, 256)) * 0.02).astype(np.float16),
        "output.weight": (rng.standard_normal((64, 896)) * 0.02).astype(np.float16),
    }
    _write(w, tensors)

    def types(*flags):
        out = tmp_path / "out.gguf"
        r = run_cli("quantize", path, out, "--type", "Q4_K_M", *flags, "--quiet")
        assert r.returncode == 0, r.stderr
        reader = GGUFReader(str(out))
        return {t.name: t.tensor_type.name for t in reader.tensors}, json.loads(field(reader, "arrow_quant.config"))

    got, settings = types()
    # llama-quantize: Q4_K -> Q5_0; the output (Q6_K wanted, rows unfit) Q8_0; ffn_down's rows of 256 fit Q6_K
    assert got == {"token_embd.weight": "Q5_0", "blk.0.attn_q.weight": "Q5_0", "blk.0.ffn_down.weight": "Q6_K",
                   "output.weight": "Q8_0"}
    assert settings["gguf_fallback"] == "llama"
    got, settings = types("--fallback", "quality")
    assert got["blk.0.attn_q.weight"] == "Q8_0" and settings["gguf_fallback"] == "quality"
