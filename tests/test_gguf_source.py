"""A GGUF file as the source of a run: an F16 / F32 GGUF (llama.cpp's converter, ComfyUI-GGUF) re-quantized to
GGUF with its metadata copied, quantized to Parquet, validated against; a quantized GGUF source refused by name."""

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
    for name, t in tensors.items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
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


def test_a_quantized_gguf_source_is_refused_by_tensor_and_type(tmp_path, rng):
    st = tmp_path / "m.safetensors"
    save_file({"blocks.0.attn.qkv.weight": (rng.standard_normal((512, 256)) * 0.02).astype(np.float16)}, str(st))
    q8 = tmp_path / "m-Q8_0.gguf"
    r = run_cli("quantize", st, q8, "--type", "Q8_0", "--quiet")
    assert r.returncode == 0, r.stderr
    again = tmp_path / "again.gguf"
    r = run_cli("quantize", q8, again, "--type", "Q4_K_M", "--quiet")
    assert r.returncode == 2
    assert "'blocks.0.attn.qkv.weight' is Q8_0" in r.stderr and "export" in r.stderr, r.stderr
    assert not again.exists()
