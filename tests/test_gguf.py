"""GGUF (issue 14): every ggml block type through `quantize(w, encoding=T)` decodes bit for bit like gguf-py's
dequantizers, and `arrow-quant quantize ... x.gguf --type T` writes files gguf-py's GGUFReader opens, with the
architecture, the tensor names and the types the CLI reports."""

import json

import gguf
import numpy as np
import pytest
from cli_runner import run_cli
from gguf import GGMLQuantizationType, GGUFReader
from gguf_fields import field
from safetensors.numpy import save_file

import arrow_quant_v2 as aq

BLOCK_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]
# Loose bounds on rel-MSE of normal weights per type (the figures are in benchmarks/bench_gguf.py).
MAX_REL_MSE = {"Q8_0": 1e-4, "Q6_K": 1e-3, "Q5_K": 3e-3, "Q5_0": 4e-3, "Q5_1": 4e-3, "Q4_K": 1e-2, "Q4_0": 1.2e-2,
               "Q4_1": 1e-2, "IQ4_NL": 1e-2, "IQ4_XS": 1e-2, "Q3_K": 4e-2, "Q2_K": 1.5e-1}


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _gguf_py_decode(data: np.ndarray, ty: str, shape) -> np.ndarray:
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    return gguf.quants.dequantize(data.reshape(rows, -1), GGMLQuantizationType[ty]).reshape(shape)


@pytest.mark.parametrize("ty", BLOCK_TYPES)
@pytest.mark.parametrize("shape", [(3, 512), (2, 5, 256), (1, 2048)])
def test_each_type_decodes_bit_exactly_like_gguf_py(quantizer, rng, ty, shape):
    w = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    w.flat[7] = 0.3  # an outlier in the first block
    w[..., 40:72] = 0.0  # an all-zero block
    q = quantizer.quantize(w, encoding=ty)
    assert q.encoding == ty
    block, size = gguf.GGML_QUANT_SIZES[GGMLQuantizationType[ty]]
    assert q.data.size == w.size // block * size
    assert q.nbytes == q.data.size
    ref = _gguf_py_decode(q.data, ty, shape)
    np.testing.assert_array_equal(_bits(q.dequantize()), _bits(ref))
    assert q.rel_mse < MAX_REL_MSE[ty]
    err = ((w - ref) ** 2).sum() / (w**2).sum()
    assert q.rel_mse == pytest.approx(err, rel=1e-4)


@pytest.mark.parametrize("ty", ["Q4_K", "Q8_0", "IQ4_NL"])
def test_half_precision_inputs_and_importance(quantizer, ty):
    w = (np.random.default_rng(5).standard_normal((4, 256)) * 0.05).astype(np.float16)
    q = quantizer.quantize(w, encoding=ty.lower())
    np.testing.assert_array_equal(_bits(q.dequantize()), _bits(_gguf_py_decode(q.data, ty, w.shape)))
    # importance that varies inside every block (a weight uniform over a block leaves its best parameters as
    # they are): the weighted search trades the light columns' error for the heavy ones'
    imp = np.ones(256, dtype=np.float32)
    imp[::4] = 100.0
    qi = quantizer.quantize(w.astype(np.float32), encoding=ty, importance=imp)
    w32 = w.astype(np.float32)
    def weighted(x):
        return float((((w32 - x) ** 2) * imp).sum())
    assert weighted(qi.dequantize()) < 0.9 * weighted(q.dequantize())


def test_encoding_errors_name_what_is_wrong(quantizer):
    w = np.zeros((2, 256), dtype=np.float32)
    with pytest.raises(aq.ConfigurationError, match="bit_width"):
        quantizer.quantize(w, encoding="Q4_K", bit_width=8)
    with pytest.raises(aq.ConfigurationError, match="group_size"):
        quantizer.quantize(w, encoding="Q4_0", group_size=64)
    with pytest.raises(aq.ConfigurationError, match="not quantized"):
        quantizer.quantize(w, encoding="F16")
    with pytest.raises(aq.ConfigurationError, match="Q4_K"):
        quantizer.quantize(w, encoding="Q9_K")
    with pytest.raises(aq.SchemaError, match="256-element blocks"):
        quantizer.quantize(np.zeros((2, 320), dtype=np.float32), encoding="Q4_K")
    bad = w.copy()
    bad[1, 3] = np.nan
    with pytest.raises(aq.InvalidWeightsError, match="non-finite"):
        quantizer.quantize(bad, encoding="Q8_0")


# ---------------------------------------------------------------------------------------------------------------
# Whole checkpoints to GGUF files


FLUX_STYLE = {
    "double_blocks.0.img_attn.qkv.weight": (768, 256),
    "double_blocks.0.img_attn.proj.weight": (256, 256),
    "double_blocks.0.img_mlp.0.weight": (1024, 256),
    "double_blocks.0.img_mlp.2.weight": (256, 1024),
    "double_blocks.0.img_attn.norm.query_norm.scale": (128,),
    "double_blocks.0.txt_attn.qkv.weight": (768, 256),
    "single_blocks.0.linear1.weight": (1280, 256),
    "single_blocks.0.linear2.weight": (256, 320),
    "img_in.weight": (256, 64),
    "final_layer.linear.weight": (64, 256),
}


def _checkpoint(path, layout, rng, dtype=np.float16):
    tensors = {n: (rng.standard_normal(s) * 0.02).astype(dtype) for n, s in layout.items()}
    save_file(tensors, str(path))
    return tensors


@pytest.fixture()
def flux_gguf(tmp_path, rng):
    src = tmp_path / "flux.safetensors"
    tensors = _checkpoint(src, FLUX_STYLE, rng)
    out = tmp_path / "flux-Q4_K_M.gguf"
    r = run_cli("quantize", src, out, "--type", "Q4_K_M", "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    return src, tensors, out, json.loads(r.stdout)


def test_cli_writes_a_gguf_that_gguf_py_reads_bit_for_bit(quantizer, flux_gguf):
    src, tensors, out, report = flux_gguf
    reader = GGUFReader(str(out))
    assert field(reader, "general.architecture") == "flux"
    assert field(reader, "general.quantization_version") == 2
    assert field(reader, "general.alignment") == 32
    assert field(reader, "arrow_quant.source") == str(src)
    layers = {entry["name"]: entry for entry in report["layers"]}
    assert {t.name for t in reader.tensors} == set(tensors)
    for t in reader.tensors:
        w = tensors[t.name]
        assert t.tensor_type.name == layers[t.name]["encoding"], t.name
        assert tuple(int(v) for v in reversed(t.shape)) == w.shape, t.name
        decoded = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(w.shape)
        if t.tensor_type.name in ("F16", "F32", "BF16"):
            np.testing.assert_array_equal(decoded, w.astype(np.float32))
            continue
        # the file's blocks are exactly what one array through quantize(encoding=T) gives
        q = quantizer.quantize(w, encoding=t.tensor_type.name)
        assert bytes(np.asarray(t.data).tobytes()) == bytes(q.data.tobytes()), t.name
        np.testing.assert_array_equal(_bits(decoded), _bits(q.dequantize()))
        assert layers[t.name]["cosine"] == pytest.approx(q.cosine, abs=1e-6)
    # rows of 320 are no K-quant: the report says which type it fell back to and why
    linear2 = layers["single_blocks.0.linear2.weight"]
    assert linear2["encoding"] not in ("Q4_K", "F16", "F32") and "320" in linear2["fallback"]
    # the _M mix's bump of the fused qkv is a note, not a fallback: fallbacks count only rows that did not fit
    qkv = layers["double_blocks.0.img_attn.qkv.weight"]
    assert qkv["encoding"] != "Q4_K" and qkv["fallback"] is None and "qkv" in qkv["note"], qkv
    fell_back = [n for n, entry in layers.items() if entry["fallback"]]
    assert report["totals"]["fallbacks"] == len(fell_back) and "double_blocks.0.img_attn.qkv.weight" not in fell_back


def test_validate_and_export_read_a_gguf(flux_gguf, tmp_path):
    src, tensors, out, _ = flux_gguf
    r = run_cli("validate", src, out, "--json")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert v["passed"] and len(v["layers"]) == len(tensors)
    restored = tmp_path / "restored.safetensors"
    r = run_cli("export", out, restored)
    assert r.returncode == 0, r.stderr
    from safetensors.numpy import load_file

    back = load_file(str(restored))
    reader = GGUFReader(str(out))
    for t in reader.tensors:
        w = tensors[t.name]
        assert back[t.name].dtype == w.dtype and back[t.name].shape == w.shape
        decoded = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(w.shape)
        np.testing.assert_array_equal(back[t.name], decoded.astype(w.dtype))


def test_gguf_options_need_a_gguf_output(tmp_path, rng):
    src = tmp_path / "m.safetensors"
    _checkpoint(src, {"a.weight": (64, 256)}, rng)
    r = run_cli("quantize", src, tmp_path / "m.parquet", "--type", "Q4_K")
    assert r.returncode == 2 and ".gguf" in r.stderr
    assert not (tmp_path / "m.parquet").exists()
    r = run_cli("quantize", src, tmp_path / "m.gguf", "--type", "Q9_K")
    assert r.returncode == 2 and "Q9_K" in r.stderr
    r = run_cli("quantize", src, tmp_path / "m.gguf", "--tensor-type", "([=Q4_K")
    assert r.returncode == 2 and "([" in r.stderr
    assert not (tmp_path / "m.gguf").exists()


def test_a_missed_floor_with_fail_fast_leaves_no_file(tmp_path, rng):
    src = tmp_path / "m.safetensors"
    _checkpoint(src, {"blocks.0.attn.weight": (256, 256), "blocks.1.attn.weight": (256, 256),
                      "blocks.2.attn.weight": (256, 256)}, rng)
    out = tmp_path / "m.gguf"
    r = run_cli("quantize", src, out, "--type", "Q2_K", "--floor", "0.9999", "--fail-fast", "--arch", "flux")
    assert r.returncode == 1, r.stderr
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))


def test_python_quantize_from_safetensors_writes_gguf(quantizer, tmp_path, rng):
    src = tmp_path / "m.safetensors"
    tensors = _checkpoint(src, FLUX_STYLE, rng)
    out = tmp_path / "m.gguf"
    report = quantizer.quantize_from_safetensors(str(src), str(out), aq.DiffusionQuantConfig(gguf_type="Q8_0"))
    reader = GGUFReader(str(out))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["double_blocks.0.img_attn.proj.weight"] == "Q8_0"
    assert {entry["name"] for entry in report["layers"]} == set(tensors)
    cfg = aq.DiffusionQuantConfig(gguf_type="Q4_K_M", tensor_types=["img_mlp=Q6_K"], gguf_arch="flux")
    assert (cfg.gguf_type, cfg.tensor_types, cfg.gguf_arch) == ("Q4_K_M", ["img_mlp=Q6_K"], "flux")


def test_load_quantized_reads_a_gguf(quantizer, flux_gguf, tmp_path, rng):
    src, tensors, out, _ = flux_gguf
    model = aq.load_quantized(out)
    reader = GGUFReader(str(out))
    assert set(model) == set(tensors) and len(model) == len(reader.tensors)
    assert model.metadata["general.architecture"] == "flux"
    assert json.loads(model.metadata["general.quantization_version"]) == 2
    kept = None
    for t in reader.tensors:
        w = tensors[t.name]
        decoded = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(w.shape)
        np.testing.assert_array_equal(_bits(model[t.name]), _bits(decoded))
        assert model.time_groups(t.name) is None
        if t.tensor_type.name in ("F16", "F32", "BF16"):
            kept = t.name
            continue
        q = model.quantized(t.name)
        assert q.encoding == t.tensor_type.name and q.shape == w.shape
        assert bytes(q.data.tobytes()) == bytes(np.asarray(t.data).tobytes())
        np.testing.assert_array_equal(_bits(q.dequantize()), _bits(decoded))
    assert kept is not None
    with pytest.raises(aq.SchemaError, match="not quantized"):
        model.quantized(kept)
    with pytest.raises(KeyError):
        model["no.such.tensor"]

    # a tensor stored flattened comes back in its own shape (comfy.gguf.orig_shape)
    conv_src = tmp_path / "conv.safetensors"
    conv = _checkpoint(conv_src, {"down.0.conv.weight": (128, 64, 3, 3), "blocks.0.attn.weight": (256, 256)}, rng)
    conv_out = tmp_path / "conv.gguf"
    r = run_cli("quantize", conv_src, conv_out, "--type", "Q4_K", "--quiet")
    assert r.returncode == 0, r.stderr
    back = aq.load_quantized(conv_out)
    stored = {t.name: tuple(int(v) for v in reversed(t.shape)) for t in GGUFReader(str(conv_out)).tensors}
    assert stored["down.0.conv.weight"] != conv["down.0.conv.weight"].shape
    assert back["down.0.conv.weight"].shape == conv["down.0.conv.weight"].shape
    assert back.quantized("down.0.conv.weight").shape == stored["down.0.conv.weight"]
    cos = float(np.dot(back["down.0.conv.weight"].ravel(), conv["down.0.conv.weight"].ravel().astype(np.float32))
                / np.linalg.norm(back["down.0.conv.weight"]) / np.linalg.norm(conv["down.0.conv.weight"]))
    assert cos > 0.99


def test_rows_no_k_block_fits_get_q8_0_or_with_fallback_size_the_table(tmp_path, rng):
    src = tmp_path / "m.safetensors"
    _checkpoint(src, {"blocks.0.conv.weight": (128, 64, 3, 3), "blocks.0.proj.weight": (257, 320),
                      "blocks.0.attn.weight": (256, 256), "blocks.0.small.weight": (64, 256)}, rng)
    types = {}
    for mode in ("quality", "size"):
        out = tmp_path / f"m-{mode}.gguf"
        r = run_cli("quantize", src, out, "--type", "Q4_K_M", "--fallback", mode, "--json", "--quiet")
        assert r.returncode == 0, r.stderr
        report = {entry["name"]: entry for entry in json.loads(r.stdout)["layers"]}
        types[mode] = {t.name: t.tensor_type.name for t in GGUFReader(str(out)).tensors}
        assert "not fit" in report["blocks.0.proj.weight"]["fallback"]
    assert types["quality"]["blocks.0.conv.weight"] == "Q8_0" and types["quality"]["blocks.0.proj.weight"] == "Q8_0"
    assert types["size"]["blocks.0.conv.weight"] == "Q4_K"  # the shape fix: rows of 256
    assert types["size"]["blocks.0.proj.weight"] == "Q4_1"  # 256 does not divide its size: the fallback table
    for mode in types:
        assert types[mode]["blocks.0.attn.weight"] == "Q4_K"
        assert types[mode]["blocks.0.small.weight"] == "F16"  # fewer than 65536 elements
    r = run_cli("quantize", src, tmp_path / "x.gguf", "--fallback", "smallest")
    assert r.returncode == 2 and "smallest" in r.stderr and not (tmp_path / "x.gguf").exists()
    assert aq.DiffusionQuantConfig(gguf_fallback="size").gguf_fallback == "size"


# ---------------------------------------------------------------------------------------------------------------
# llama.cpp's reference rounding: method="rtn", and the layer policy of GGUF runs

REFERENCE_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def _reference_bytes(w: np.ndarray, ty: str) -> bytes:
    """gguf-py's quantizer (llama.cpp's reference rounding, bit-exact) on ggml rows of 32-element blocks."""
    return gguf.quants.quantize(np.ascontiguousarray(w, dtype=np.float32).reshape(-1, 32),
                                GGMLQuantizationType[ty]).tobytes()


@pytest.mark.parametrize("ty", REFERENCE_TYPES)
@pytest.mark.parametrize("shape", [(3, 96), (2, 5, 64), (7, 32)])
def test_rtn_is_llama_cpps_reference_rounding_byte_for_byte(quantizer, rng, ty, shape):
    w = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    w.flat[5] = -0.4  # a negative extreme
    w[..., :32] = 0.0  # an all-zero block per row (+0.0: gguf-py takes the sign of its first zero, ggml +0.0)
    w.flat[-1] = 0.25
    q = quantizer.quantize(w, encoding=ty, method="rtn")
    assert q.method == "rtn" and quantizer.quantize(w, encoding=ty).method is None
    assert q.data.tobytes() == _reference_bytes(w, ty)
    np.testing.assert_array_equal(_bits(q.dequantize()), _bits(_gguf_py_decode(q.data, ty, shape)))
    searched = quantizer.quantize(w, encoding=ty)
    assert searched.rel_mse <= q.rel_mse  # the search's weight error is never above plain rounding's


def _q6_k_nearest(w: np.ndarray) -> np.ndarray:
    """Q6_K rounded to nearest, written out: each 16-element sub-block's step maps its extreme to -32, the float16
    super-block scale the largest step to -128, fields and codes rounded on their grids."""
    x = w.reshape(-1, 16, 16).astype(np.float32)
    ext = lambda a: np.take_along_axis(a, np.abs(a).argmax(-1)[..., None], -1)  # noqa: E731
    s = ext(x)[..., 0] / np.float32(-32)
    d = (ext(s) / np.float32(-128)).astype(np.float16).astype(np.float32)
    safe = lambda a, b: np.where(b != 0, a / np.where(b != 0, b, 1), 0)  # noqa: E731
    step = d * np.clip(np.round(safe(s, d)), -128, 127)
    return (step[..., None] * np.clip(np.round(safe(x, step[..., None])), -32, 31)).reshape(w.shape)


def test_rtn_at_q6_k_rounds_on_the_extremes_scales(quantizer, rng):
    w = (rng.standard_normal((4, 512)) * 0.02).astype(np.float32)
    w[1, :256] = 0.0
    w[2, 7] = -0.3
    q = quantizer.quantize(w, encoding="Q6_K", method="rtn")
    assert q.method == "rtn"
    y = q.dequantize()
    np.testing.assert_array_equal(_bits(y), _bits(_gguf_py_decode(q.data, "Q6_K", w.shape)))
    np.testing.assert_array_equal(y, _q6_k_nearest(w))
    assert quantizer.quantize(w, encoding="Q6_K").rel_mse < q.rel_mse  # the search clips, rounding does not


@pytest.mark.parametrize("ty", ["Q2_K", "Q3_K"])
def test_plain_at_q2_k_and_q3_k_keeps_each_super_blocks_gain_at_one(quantizer, rng, ty):
    w = (rng.standard_t(5, (8, 1024)) * 0.02).astype(np.float32)
    plain, searched = (quantizer.quantize(w, encoding=ty, method=m) for m in ("plain", "auto"))
    assert plain.method is None and plain.data.tobytes() != searched.data.tobytes()
    np.testing.assert_array_equal(_bits(plain.dequantize()), _bits(_gguf_py_decode(plain.data, ty, w.shape)))
    x = w.reshape(-1, 256).astype(np.float64)

    def gains(q):
        y = q.dequantize().reshape(-1, 256).astype(np.float64)
        return (x * y).sum(1) / (x * x).sum(1)
    # the least-squares search shrinks every block (its gain is about 1 - rel-MSE); the float16 scales leave
    # the unbiased one within their rounding of 1
    assert np.all(gains(searched) < 0.995)
    assert np.all(np.abs(gains(plain) - 1) < 2e-3)
    # Q2_K's plain search fits an absolute error (llama.cpp's objective), which costs weight error for a lower
    # output error (about 1.3x the search's rel-MSE here); Q3_K's fits the magnitude-weighted squared error
    assert plain.rel_mse < (1.4 if ty == "Q2_K" else 1.2) * searched.rel_mse


@pytest.mark.parametrize("ty,block", [("IQ4_NL", 32), ("IQ4_XS", 256)])
def test_plain_at_iq4_weights_by_the_square_and_keeps_each_blocks_gain_at_one(quantizer, rng, ty, block):
    w = (rng.standard_t(5, (8, 1024)) * 0.02).astype(np.float32)
    plain, searched = (quantizer.quantize(w, encoding=ty, method=m) for m in ("plain", "auto"))
    assert plain.method is None and plain.data.tobytes() != searched.data.tobytes()
    np.testing.assert_array_equal(_bits(plain.dequantize()), _bits(_gguf_py_decode(plain.data, ty, w.shape)))
    x = w.reshape(-1, block).astype(np.float64)
    y = plain.dequantize().reshape(-1, block).astype(np.float64)
    wx = x * x * x  # the x^2-weighted gain: sum w x y / sum w x^2
    assert np.all(np.abs((wx * y).sum(1) / (wx * x).sum(1) - 1) < 2e-3)
    # the x^2 weighting trades weight error for the large weights' accuracy
    assert searched.rel_mse < plain.rel_mse < 1.3 * searched.rel_mse


@pytest.mark.parametrize("ty", ["Q4_K", "Q5_K"])
def test_plain_at_q4_k_and_q5_k_is_the_magnitude_weighted_search(quantizer, rng, ty):
    w = (rng.standard_t(5, (8, 1024)) * 0.02).astype(np.float32)
    plain, searched = (quantizer.quantize(w, encoding=ty, method=m) for m in ("plain", "auto"))
    assert plain.method is None and plain.data.tobytes() != searched.data.tobytes()
    np.testing.assert_array_equal(_bits(plain.dequantize()), _bits(_gguf_py_decode(plain.data, ty, w.shape)))
    # the weighting trades weight error for the large weights' accuracy: their error is lower than the search's
    big = np.abs(w) > 3 * np.abs(w).mean()
    err = {k: float(np.square(q.dequantize() - w)[big].mean()) for k, q in (("plain", plain), ("auto", searched))}
    assert err["plain"] < err["auto"], err
    assert plain.rel_mse < 1.3 * searched.rel_mse  # (the weighted search's larger effort can even lower it)


def test_rtn_errors_name_what_is_wrong(quantizer):
    w = np.ones((2, 256), dtype=np.float32)
    with pytest.raises(aq.ConfigurationError, match="round-to-nearest"):
        quantizer.quantize(w, encoding="Q4_K", method="rtn")
    with pytest.raises(aq.ConfigurationError, match="importance"):
        quantizer.quantize(w, encoding="Q4_0", method="rtn", importance=np.ones(256, dtype=np.float32))
    with pytest.raises(aq.ConfigurationError, match="plain"):
        quantizer.quantize(w, encoding="Q3_K", method="plain", importance=np.ones(256, dtype=np.float32))
    with pytest.raises(aq.ConfigurationError, match="method"):
        quantizer.quantize(w, encoding="Q4_0", method="mse")


def test_gguf_runs_round_convolutions_and_conditioning_plainly_below_8_bits(tmp_path, rng):
    src = tmp_path / "m.safetensors"
    tensors = _checkpoint(src, {"input_blocks.1.0.in_layers.2.weight": (128, 64, 3, 3),
                                "input_blocks.1.0.emb_layers.1.weight": (256, 512),
                                "input_blocks.1.1.proj_in.weight": (256, 512)}, rng)
    conv, emb, proj = list(tensors)
    for ty in ("Q4_0", "Q5_1", "Q8_0"):
        out = tmp_path / f"m-{ty}.gguf"
        r = run_cli("quantize", src, out, "--type", ty, "--json", "--quiet")
        assert r.returncode == 0, r.stderr
        data = {t.name: t for t in GGUFReader(str(out)).tensors}
        assert {t.tensor_type.name for t in data.values()} == {ty}
        plain = {n: data[n].data.tobytes() == _reference_bytes(tensors[n].astype(np.float32), ty)
                 for n in (conv, emb, proj)}
        # the policy's layers get llama.cpp's reference rounding at Q4_0; linear layers (and Q5_1, Q8_0) our search
        assert plain == {conv: ty == "Q4_0", emb: ty == "Q4_0", proj: False}, ty
        # and the report says which layers were rounded plainly, and how
        notes = {entry["name"]: entry["note"] or "" for entry in json.loads(r.stdout)["layers"]}
        assert {n: "rounded plainly (round-to-nearest)" in notes[n] for n in notes} == plain, notes
    # and the K-quants' plain roundings (a conditioning projection; convolutions' rows never fit 256)
    src = tmp_path / "k.safetensors"
    tensors = _checkpoint(src, {"input_blocks.1.0.emb_layers.1.weight": (256, 512),
                                "input_blocks.1.1.proj_in.weight": (256, 1024)}, rng)
    q = aq.ArrowQuantV2()
    for ty in ("Q3_K", "Q2_K", "IQ4_XS", "IQ4_NL", "Q4_K", "Q5_K"):
        how = "magnitude-weighted search" if ty in ("Q4_K", "Q5_K") else "gain-unbiased search"
        out = tmp_path / f"k-{ty}.gguf"
        r = run_cli("quantize", src, out, "--type", ty, "--json", "--quiet")
        assert r.returncode == 0, r.stderr
        notes = {entry["name"]: entry["note"] or "" for entry in json.loads(r.stdout)["layers"]}
        assert f"rounded plainly ({how})" in notes["input_blocks.1.0.emb_layers.1.weight"], notes
        assert "rounded plainly" not in notes["input_blocks.1.1.proj_in.weight"], notes
        data = {t.name: t.data.tobytes() for t in GGUFReader(str(out)).tensors}
        for (n, w), method in zip(tensors.items(), ("plain", "auto"), strict=True):
            w2 = w.astype(np.float32)
            assert data[n] == q.quantize(w2, encoding=ty, method=method).data.tobytes(), (ty, n)
        emb = next(iter(tensors))  # the plain rounding is not the search
        assert data[emb] != q.quantize(tensors[emb].astype(np.float32), encoding=ty).data.tobytes()
    # Q6_K keeps its search on those layers too (round-to-nearest raised the output error of the convolutions)
    out = tmp_path / "k-Q6_K.gguf"
    r = run_cli("quantize", src, out, "--type", "Q6_K", "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    assert not any("rounded plainly" in (e["note"] or "") for e in json.loads(r.stdout)["layers"])
