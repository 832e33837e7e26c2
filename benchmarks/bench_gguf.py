"""GGUF types: our block codecs against llama.cpp's own C quantizers for the same type, in one run (issue 14).

Sections:
- `types`: for every ggml block type, on the standard tensor (shared/bench/weights.py, 4096 x 4096 float32) and on
  the MiniLM tensors whose rows fit the type's block: weight rel-MSE and MB/s of float32 input of
  `ArrowQuantV2().quantize(w, encoding=T)` on RAYON_NUM_THREADS=2 threads (numpy's BLAS on one: THREADS) against
  llama.cpp's quantizer (shared/bench/ggml_ref.py, one thread: its `ggml_quantize_chunk` is single-threaded) and
  the speed target
  (ours >= k x 2 x llama.cpp 1-thread: k = 10 for Q2_K / Q4_K / Q5_K / Q6_K / IQ4_NL / IQ4_XS, 2 for Q3_K, 1 for the
  block-32 types); best of `--repeats` runs each.
- `e2e`: for every type, the output error of the terrain UNet and the MiniLM embedding error when the tensors the
  type applies to are replaced by ours / by llama.cpp's (the rest float32). Terrain: the tensors a GGUF run
  quantizes (the layer policy's 49 convolutions of at least 65536 weights; the smaller ones stay 16-bit), each
  stored as the file stores it, flattened to rows of the type's block (`comfy.gguf.orig_shape`: every block-32
  type, and the 256-element-block types under `--fallback size`); llama.cpp's quantizer gets the same rows. The
  figure pools TERRAIN_SETS input sets (bench_e2e.py's, then seeds 1..15: the RMS of their output rel-errors): on
  one set of eight samples a type's ratio to llama.cpp moved by up to 2x from set to set, and eight sets were still
  too few; the first set's figure and every set's ratio are printed beside it. Ours follows the GGUF runs' layer
  policy: those layers get each type's plain rounding (`method="plain"`, pipeline::policy::gguf_rounding:
  llama.cpp's reference rounding at Q4_0, so those tensors equal llama.cpp's there; the gain-unbiased weighted
  searches at Q2_K / Q3_K / IQ4_NL / IQ4_XS; the magnitude-weighted searches at Q4_K / Q5_K; our search at Q8_0 /
  Q4_1 / Q5_0 / Q5_1 / Q6_K), with the all-searched figure beside it where that differs. MiniLM: its linear
  layers whose rows fit the type's block, as 2-D views.
- `files`: whole-model GGUF files: the terrain UNet through `arrow-quant quantize ... --type P --fallback F` for
  every preset P (`--presets`) and, where P's base type has 256-element blocks, every row fallback F
  (`--fallbacks`: quality, size), read back with gguf-py's GGUFReader and dequantizers and run, against "the
  llama.cpp way" (llama.cpp's base type where the rows fit, float16 elsewhere: what llama-quantize does to a
  diffusion model) and against llama.cpp's quantizer at our file's own types, on the tensors our file quantizes,
  in our file's stored shapes: tensor bytes and output rel-error (pooled over the TERRAIN_SETS input sets). At
  Q4_K_M also llama.cpp's Q4_0 on the tensors we quantize (the acceptance of issue 14).
- `cli`: a whole-checkpoint CLI run at --type Q4_K_M on bench_model.py's DiT-like float16 checkpoint: GB/s of
  float16 input (target >= 1 GB/s).

Needs `make peers` (llama.cpp's library) and `make bench-e2e` (onnxruntime, the terrain package).

    python benchmarks/bench_gguf.py                      # everything, writes benchmarks/results/bench_gguf.json
    python benchmarks/bench_gguf.py --only types --repeats 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    REPO_ROOT,
    load_before_run,
    load_shared_weights,
    machine_info,
    output_path,
    rerun_with_env,
    write_json,
)

# Our kernels on 2 threads; numpy's OpenBLAS on 1. OpenBLAS's workers busy-wait for a while after every matrix
# product (the rel-MSE dots here), and on a 2-core machine that took one core from our 2 threads while llama.cpp's
# single-threaded quantizer ran beside it undisturbed: Q4_1 measured 0.83-0.93x its target so, 1.5-1.8x without.
THREADS = {"RAYON_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "1"}

NAME = "bench_gguf"
CLI = REPO_ROOT / "target" / "release" / "arrow-quant"
TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]
SEARCHED = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"}  # llama.cpp searches these
SPEED_FACTOR = {"Q2_K": 10, "Q4_K": 10, "Q5_K": 10, "Q6_K": 10, "IQ4_NL": 10, "IQ4_XS": 10, "Q3_K": 2}
MB = 1e6


def rel_mse(w: np.ndarray, w_hat: np.ndarray) -> float:
    a = np.asarray(w, dtype=np.float64).ravel()
    e = a - np.asarray(w_hat, dtype=np.float64).ravel()
    return float(e @ e / (a @ a))


def best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def fits(ty: str, cols: int, g: Any) -> bool:
    return cols % g.BLOCK[ty][0] == 0


def type_section(g: Any, repeats: int) -> dict[str, Any]:
    from _e2e_models import MiniLM

    import arrow_quant_v2 as aq

    q = aq.ArrowQuantV2()
    std = load_shared_weights().standard_tensor()
    minilm = {n: w for n, w in MiniLM.shared().weights().items() if w.ndim == 2}
    rows = {}
    for ty in TYPES:
        ours_q = q.quantize(std, encoding=ty)
        ours_s = best_seconds(lambda ty=ty: q.quantize(std, encoding=ty), repeats)
        blob = g.quantize(std, ty)
        peer_s = best_seconds(lambda ty=ty: g.quantize(std, ty), 1 if ty in SEARCHED else repeats)
        peer_hat = g.dequantize(blob, ty, std.shape)
        row = {
            "ours_rel_mse": rel_mse(std, ours_q.dequantize()),
            "llama_rel_mse": rel_mse(std, peer_hat),
            "ours_mb_s_2t": std.nbytes / ours_s / MB,
            "llama_mb_s_1t": std.nbytes / peer_s / MB,
            "bits_per_weight": ours_q.nbytes * 8 / std.size,
        }
        row["speed_ratio_vs_2x_1t"] = row["ours_mb_s_2t"] / (2 * row["llama_mb_s_1t"])
        row["speed_target"] = SPEED_FACTOR.get(ty, 1)
        mini = []
        for w in minilm.values():
            if not fits(ty, w.shape[1], g):
                continue
            ours = q.quantize(w, encoding=ty).dequantize()
            peer = g.dequantize(g.quantize(w, ty), ty, w.shape)
            mini.append((rel_mse(w, ours), rel_mse(w, peer)))
        row["minilm_tensors"] = len(mini)
        if mini:
            row["minilm_ours_rel_mse"] = float(np.mean([a for a, _ in mini]))
            row["minilm_llama_rel_mse"] = float(np.mean([b for _, b in mini]))
        row["weight_ok"] = (ty not in SEARCHED) or (
            row["ours_rel_mse"] <= row["llama_rel_mse"]
            and row.get("minilm_ours_rel_mse", 0.0) <= row.get("minilm_llama_rel_mse", 0.0))
        row["speed_ok"] = row["speed_ratio_vs_2x_1t"] >= row["speed_target"]
        rows[ty] = row
        print(f"{ty:<7} ours {row['ours_rel_mse']:.3e} {row['ours_mb_s_2t']:8.0f} MB/s | llama.cpp "
              f"{row['llama_rel_mse']:.3e} {row['llama_mb_s_1t']:7.0f} MB/s 1T | speed "
              f"x{row['speed_ratio_vs_2x_1t']:.1f} (>= {row['speed_target']}) | MiniLM "
              f"{row.get('minilm_ours_rel_mse', float('nan')):.3e} vs "
              f"{row.get('minilm_llama_rel_mse', float('nan')):.3e} ({len(mini)} tensors)", flush=True)
    return rows


TERRAIN_SETS = 16  # input sets the terrain figure pools


def plain_rounded(name: str, ndim: int, patterns: list[str]) -> bool:
    """The GGUF runs' layer policy (pipeline::policy::plain_rounding): convolution kernels and conditioning
    projections get their type's plain rounding (`method="plain"`)."""
    return ndim >= 3 or any(p.lower() in name.lower() for p in patterns)


def gguf_quantized(path: Path) -> set[str]:
    """The tensors of a checkpoint that a GGUF run quantizes (its report's layers of a block type at --type Q8_0)."""
    with tempfile.TemporaryDirectory(prefix="bench-gguf-probe-") as tmp:
        proc = subprocess.run([str(CLI), "quantize", str(path), str(Path(tmp) / "probe.gguf"), "--type", "Q8_0",
                               "--json", "--quiet"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"arrow-quant quantize --type Q8_0 failed: {proc.stderr.strip()}")
    return {layer["name"] for layer in json.loads(proc.stdout)["layers"]
            if layer["encoding"] not in ("F16", "F32", "BF16", "raw")}


def e2e_section(g: Any) -> dict[str, Any]:
    from _e2e_models import MiniLM, Terrain, output_metrics

    import arrow_quant_v2 as aq

    q = aq.ArrowQuantV2()
    patterns = aq.DiffusionQuantConfig().unclipped_patterns
    out: dict[str, Any] = {}
    terrain_sets = [(m, m.reference()) for m in
                    [Terrain.shared()] + [Terrain(seed=s) for s in range(1, TERRAIN_SETS)]]
    for model in (Terrain.shared(), MiniLM.shared()):
        weights = model.weights()
        in_file = gguf_quantized(model.safetensors_path()) if model.name == "terrain" else None
        section = {}
        for ty in TYPES:
            block = g.BLOCK[ty][0]
            if in_file is not None:  # as the GGUF file stores them: flattened to rows of the block
                names = [n for n in weights if n in in_file and weights[n].size % block == 0]
            else:
                names = [n for n, w in weights.items() if fits(ty, int(np.prod(w.shape[1:])), g)]
            if not names:
                continue
            ours, searched, peer = {}, {}, {}
            plain = [n for n in names if plain_rounded(n, weights[n].ndim, patterns)]
            for n in names:
                w = weights[n]
                w2 = np.ascontiguousarray(w.reshape(-1, block) if in_file is not None else w.reshape(w.shape[0], -1))
                searched[n] = q.quantize(w2, encoding=ty).dequantize().reshape(weights[n].shape)
                ours[n] = (q.quantize(w2, encoding=ty, method="plain").dequantize().reshape(weights[n].shape)
                           if n in plain else searched[n])
                peer[n] = g.dequantize(g.quantize(w2, ty), ty, w2.shape).reshape(weights[n].shape)
            sets: dict[str, list[float]] = {}
            if model.name == "terrain":
                def score(rep, key=None, sets=sets):
                    errs = [output_metrics(r, m.run(rep))["rel_error"] for m, r in terrain_sets]
                    if key:
                        sets[key] = errs
                    return float(np.sqrt(np.mean(np.square(errs))))
                metric = f"output rel-error ({TERRAIN_SETS} input sets pooled)"
            else:
                def score(rep, key=None, model=model):
                    return model.cos_error(rep)
                metric = "1 - cos"
            a, b = score(ours, "ours"), score(peer, "llama")
            row = {"tensors": len(names), "weights": int(sum(weights[n].size for n in names)),
                   "plain_rounded": len(plain), "ours": a, "llama": b, "ratio": a / b if b else float("nan"),
                   "ok": a <= b}
            if sets:
                ratios = [x / y if y else float("nan") for x, y in zip(sets["ours"], sets["llama"], strict=True)]
                row.update(first_set_ours=sets["ours"][0], first_set_llama=sets["llama"][0], set_ratios=ratios,
                           sets_better=int(sum(r <= 1 for r in ratios)))
            if any(not np.array_equal(ours[n], searched[n]) for n in plain):
                row["ours_all_searched"] = score(searched)
            section[ty] = row
            extra = (f" (policy: {len(plain)} rounded plainly; all searched {row['ours_all_searched']:.4e})"
                     if "ours_all_searched" in row else "")
            if sets:
                extra += (f"; at or below llama.cpp on {row['sets_better']}/{TERRAIN_SETS} sets, ratios "
                          + " ".join(f"{r:.2f}" for r in row["set_ratios"]))
            print(f"[{model.name}] {ty:<7} {len(names):>3} tensors: {metric} ours {a:.4e} llama.cpp {b:.4e} "
                  f"ratio {row['ratio']:.3f}{extra}", flush=True)
        out[model.name] = section
    return out


def read_gguf(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, tuple[int, ...]], str]:
    """Every tensor of a GGUF file dequantized by gguf-py (shaped as the source: ggml dims reversed, or the
    `comfy.gguf.orig_shape.<name>` key), its type names, its stored shapes (source order) and
    general.architecture."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch_field = reader.get_field("general.architecture")
    arch = arch_field.contents() if arch_field is not None else ""
    out, types, stored = {}, {}, {}
    for t in reader.tensors:
        shape = stored[t.name] = tuple(int(v) for v in reversed(t.shape))
        orig = reader.get_field(f"comfy.gguf.orig_shape.{t.name}")
        if orig is not None:
            shape = tuple(int(v) for v in orig.contents())
        out[t.name] = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        types[t.name] = t.tensor_type.name
    return out, types, stored, arch


FLOAT_TYPES = ("F16", "F32", "BF16")
# each preset's base type: what llama-quantize gives the tensors whose rows fit it
PRESET_BASE = {"Q8_0": "Q8_0", "Q6_K": "Q6_K", "Q5_K_M": "Q5_K", "Q4_K_M": "Q4_K", "Q4_0": "Q4_0",
               "Q3_K_M": "Q3_K", "Q2_K": "Q2_K", "IQ4_XS": "IQ4_XS"}


def llama_way(g: Any, weights: dict[str, np.ndarray], base: str) -> tuple[dict[str, np.ndarray], int]:
    """llama-quantize on a diffusion model: `base` where the 2-D view's rows fit its blocks, float16 elsewhere;
    the weights and their tensor bytes."""
    way, nbytes = {}, 0
    for n, w in weights.items():
        w2 = np.ascontiguousarray(w.reshape(w.shape[0], -1))
        if fits(base, w2.shape[1], g):
            blob = g.quantize(w2, base)
            way[n] = g.dequantize(blob, base, w2.shape).reshape(w.shape)
            nbytes += blob.nbytes
        else:
            way[n] = w.astype(np.float16).astype(np.float32)
            nbytes += 2 * w.size
    return way, nbytes


def llama_same_types(g: Any, weights: dict[str, np.ndarray], types: dict[str, str],
                     stored: dict[str, tuple[int, ...]], only: str | None = None) -> dict[str, np.ndarray]:
    """llama.cpp's quantizer on the tensors our file quantizes, each at our file's type (`only`: at that type
    instead, where its rows fit) in our file's stored shape; the rest float32."""
    out = {}
    for n, w in weights.items():
        ty = types[n]
        if ty in FLOAT_TYPES:
            continue
        shape = stored[n] if only is None else (w.shape[0], w.size // w.shape[0])
        ty = only or ty
        if not fits(ty, shape[-1], g):
            continue
        w2 = np.ascontiguousarray(w.reshape(-1, shape[-1]))
        out[n] = g.dequantize(g.quantize(w2, ty), ty, w2.shape).reshape(w.shape)
    return out


def files_section(g: Any, presets: list[str], fallbacks: list[str]) -> dict[str, Any]:
    """The terrain UNet through the CLI at every preset and row fallback, against the llama.cpp way and against
    llama.cpp's quantizer at our file's own types on the same tensors (output errors pooled over TERRAIN_SETS
    input sets, as in `e2e`)."""
    from _e2e_models import Terrain, output_metrics

    model = Terrain.shared()
    weights = model.weights()
    sets = [(m, m.reference()) for m in [model] + [Terrain(seed=s) for s in range(1, TERRAIN_SETS)]]

    def err(ws: dict[str, np.ndarray]) -> float:
        errs = [output_metrics(r, m.run(ws))["rel_error"] for m, r in sets]
        return float(np.sqrt(np.mean(np.square(errs))))

    tmp = Path(tempfile.mkdtemp(prefix="bench-gguf-"))
    out: dict[str, Any] = {}
    try:
        src = model.safetensors_path()
        for preset in presets:
            base = PRESET_BASE[preset]
            way, way_bytes = llama_way(g, weights, base)
            way_err = err(way)
            # the fallback only matters where the base type's block is 256 elements
            for fallback in fallbacks if g.BLOCK[base][0] == 256 else fallbacks[:1]:
                dst = tmp / f"terrain-{preset}-{fallback}.gguf"
                t = time.perf_counter()
                proc = subprocess.run([str(CLI), "quantize", str(src), str(dst), "--type", preset, "--fallback",
                                       fallback, "--json", "--quiet"], capture_output=True, text=True)
                seconds = time.perf_counter() - t
                if proc.returncode != 0:
                    raise SystemExit(f"arrow-quant quantize --type {preset} --fallback {fallback} failed: "
                                     f"{proc.stderr.strip()}")
                report = json.loads(proc.stdout)
                back, types, stored, arch = read_gguf(dst)
                ours = {n: back[n] for n in weights}
                ours_err = err(ours)
                same = llama_same_types(g, weights, types, stored)
                same_err, ours_same_err = err(same), err({n: back[n] for n in same})
                ours_bytes = sum(layer["bytes_out"] for layer in report["layers"] if layer["name"] in weights)
                res = {
                    "preset": preset, "fallback": fallback, "architecture": arch,
                    "file_bytes": dst.stat().st_size, "seconds": seconds,
                    "tensor_bytes_ours": ours_bytes, "tensor_bytes_llama_way": way_bytes,
                    "output_rel_error_ours": ours_err, "output_rel_error_llama_way": way_err,
                    "types": {k: sum(1 for v in types.values() if v == k) for k in sorted(set(types.values()))},
                    "same_types_tensors": len(same), "output_rel_error_llama_same_types": same_err,
                    "output_rel_error_ours_same_tensors": ours_same_err,
                    "flattened": sum(1 for n in weights if stored[n] != tuple(weights[n].shape)),
                    "fallbacks": sum(1 for layer in report["layers"] if layer.get("fallback")),
                }
                # ok: our roundings no worse than llama.cpp's at the same types on the same tensors; smaller and
                # lower error than the llama.cpp way are reported beside it (a size fallback trades the one for
                # the other)
                res["smaller_than_llama_way"] = ours_bytes < way_bytes
                res["lower_error_than_llama_way"] = ours_err < way_err
                res["ok"] = ours_same_err <= same_err
                if preset == "Q4_K_M" and fallback == "quality":
                    # the acceptance: smaller and better than the llama.cpp way, and at most llama.cpp's Q4_0 on
                    # the tensors we quantize
                    q40 = llama_same_types(g, weights, types, stored, only="Q4_0")
                    res["q4_0_tensors"] = len(q40)
                    res["output_rel_error_llama_q4_0_same_tensors"] = err(q40)
                    res["output_rel_error_ours_q4_0_tensors"] = err({n: back[n] for n in q40})
                    res["ok"] = (res["ok"] and res["smaller_than_llama_way"] and res["lower_error_than_llama_way"]
                                 and res["output_rel_error_ours_q4_0_tensors"]
                                 <= res["output_rel_error_llama_q4_0_same_tensors"])
                out[f"{preset}/{fallback}"] = res
                q40_note = (f"; on the {res['q4_0_tensors']} Q4_0 fits: ours "
                            f"{res['output_rel_error_ours_q4_0_tensors']:.4e} vs llama.cpp Q4_0 "
                            f"{res['output_rel_error_llama_q4_0_same_tensors']:.4e}" if "q4_0_tensors" in res
                            else "")
                print(f"[files] terrain {preset} --fallback {fallback}: {arch or '(no arch)'}; tensors "
                      f"{ours_bytes / MB:.2f} MB vs llama.cpp way {way_bytes / MB:.2f} MB; output rel-error "
                      f"{ours_err:.4e} vs {way_err:.4e}; our types on the {len(same)} tensors we quantize: ours "
                      f"{ours_same_err:.4e} vs llama.cpp {same_err:.4e}{q40_note}; types {res['types']}, "
                      f"{res['flattened']} flattened; {'ok' if res['ok'] else 'NOT ok'}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def cli_section(target_gb: float) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_model import blocks_for, dit_layout, warm_read, write_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="bench-gguf-cli-"))
    try:
        ckpt = tmp / "dit.safetensors"
        layout = dit_layout(blocks_for(target_gb * 1e9))
        write_checkpoint(ckpt, layout, 0)
        out = tmp / "dit-Q4_K_M.gguf"
        walls = []
        for _ in range(2):
            out.unlink(missing_ok=True)
            warm_read(ckpt)
            t = time.perf_counter()
            proc = subprocess.run([str(CLI), "quantize", str(ckpt), str(out), "--type", "Q4_K_M", "--json",
                                   "--quiet"], capture_output=True, text=True)
            walls.append(time.perf_counter() - t)
            if proc.returncode != 0:
                raise SystemExit(f"CLI failed: {proc.stderr.strip()}")
        report = json.loads(proc.stdout)
        bytes_in = report["totals"]["bytes_in"]
        res = {"bytes_in": bytes_in, "wall_s": min(walls), "gb_per_s": bytes_in / min(walls) / 1e9,
               "output_bytes": out.stat().st_size, "target_gb_per_s": 1.0}
        res["ok"] = res["gb_per_s"] >= 1.0
        print(f"[cli] DiT-like {bytes_in / 1e9:.2f} GB f16 -> Q4_K_M: {res['gb_per_s']:.3f} GB/s (>= 1.0)", flush=True)
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=["types", "e2e", "files", "cli"], default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--presets", default=",".join(PRESET_BASE), help="comma-separated presets of `files`")
    parser.add_argument("--fallbacks", default="quality,size", help="comma-separated --fallback values of `files`")
    parser.add_argument("--cli-gb", type=float, default=1.0, help="size of the DiT-like checkpoint of `cli`")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    rerun_with_env(THREADS)
    sections = args.only or ["types", "e2e", "files", "cli"]
    load = load_before_run()
    sys.path.insert(0, str(Path(__file__).parent))
    from _e2e_models import ggml

    g = ggml()
    if g is None:
        raise SystemExit("error: llama.cpp's library is not built; run `make peers`")
    res: dict[str, Any] = {"benchmark": NAME, "threads": THREADS}
    if "types" in sections:
        res["types"] = type_section(g, args.repeats)
    if "e2e" in sections:
        res["e2e"] = e2e_section(g)
    if "files" in sections:
        presets = [p for p in args.presets.split(",") if p]
        unknown = [p for p in presets if p not in PRESET_BASE]
        if unknown:
            raise SystemExit(f"error: unknown preset(s) {unknown}; known: {list(PRESET_BASE)}")
        res["files"] = files_section(g, presets, [f for f in args.fallbacks.split(",") if f])
    if "cli" in sections:
        res["cli"] = cli_section(args.cli_gb)
    res["machine"] = machine_info(processor=True)
    res["load_average_1min_before"] = load
    write_json(output_path(NAME, False, args.output), res)


if __name__ == "__main__":
    main()
