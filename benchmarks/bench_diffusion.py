"""The diffusion-specific parts, measured: one section per feature (more sections, such as time grouping and
mixed precision, are added as functions beside `channel_scaling_section` and called from `main`).

Section "channel scaling" (activation-aware, AWQ-style): on the standard tensor (`../shared/bench/weights.py`,
4096 x 4096 float32) with log-normal input-channel magnitudes a_j = exp(N(0, 1)) (fixed seed), for INT4 and INT2
(method auto, i.e. two-level), three ways of quantizing:
- plain: `quantize(w)`;
- importance-only: `quantize(w, importance=a^2)`;
- scaled: `quantize(w, channel_absmax=a)` (columns scaled by a^alpha, alpha searched, scales stored).
Columns: the activation-weighted relative error E = sum a_j^2 (W - What)^2 / sum a_j^2 W^2 (numpy, float64, on
the dequantized tensor), its ratio to plain, the alpha chosen (recovered from the stored scales), bits per weight
(every stored byte counted, channel scales at 32 bits per input channel) and quantize MB/s (float32 input bytes
/ best time, RAYON_NUM_THREADS=2). The acceptance target is E_scaled <= 0.7 x E_plain at INT4 and INT2.
MB = 1e6 bytes.

    python benchmarks/bench_diffusion.py            # writes benchmarks/results/bench_diffusion.json
    python benchmarks/bench_diffusion.py --quick    # 1024 x 1024 standard tensor, 1 repeat
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
from _common import (
    add_output_option,
    best_time_and_result,
    load_before_run,
    load_shared_weights,
    machine_info,
    output_path,
    write_json,
)

NAME = "bench_diffusion"
THREADS = "2"
MB = 1e6
SEED = 20261126
TARGET_RATIO = 0.7
WIDTHS = (4, 2)


def log_normal_magnitudes(channels: int, sigma: float = 1.0, seed: int = SEED) -> np.ndarray:
    """Per-input-channel activation magnitudes a_j = exp(N(0, sigma)), float32, fixed seed."""
    return np.exp(np.random.default_rng(seed).normal(0.0, sigma, channels)).astype(np.float32)


def weighted_error(w: np.ndarray, w_hat: np.ndarray, a: np.ndarray) -> float:
    """E = sum a_j^2 (W - What)^2 / sum a_j^2 W^2 over the 2-D view (a_j repeated over its channel's columns)."""
    w2 = w.reshape(w.shape[0], -1)
    h2 = w_hat.reshape(w.shape[0], -1)
    weight = np.repeat(a.astype(np.float64) ** 2, w2.shape[1] // a.size)
    num = den = 0.0
    for start in range(0, w2.shape[0], 256):  # row blocks keep the float64 temporaries small
        x = w2[start:start + 256].astype(np.float64)
        d = x - h2[start:start + 256]
        num += float(((d * d) @ weight).sum())
        den += float(((x * x) @ weight).sum())
    return num / den


def recovered_alpha(scales: np.ndarray, a: np.ndarray) -> float:
    """The exponent of s = a^alpha / geomean (a floored at 1e-6 max(a)), read back from the stored scales."""
    log_a = np.log(np.maximum(a, 1e-6 * a.max()).astype(np.float64))
    centred = log_a - log_a.mean()
    denom = float(centred @ centred)
    return 0.0 if denom == 0 else round(float(np.log(scales.astype(np.float64)) @ centred) / denom, 3)


def channel_scaling_section(w: np.ndarray, repeats: int) -> dict:
    """E, bits per weight and speed of plain / importance-only / channel-scaled quantization at INT4 and INT2."""
    import arrow_quant_v2

    q = arrow_quant_v2.ArrowQuantV2()
    a = log_normal_magnitudes(w.shape[1])
    importance = (a.astype(np.float64) ** 2).astype(np.float32)
    rows = []
    for bits in WIDTHS:
        variants = {
            "plain": functools.partial(q.quantize, w, bit_width=bits),
            "importance": functools.partial(q.quantize, w, bit_width=bits, importance=importance),
            "scaled": functools.partial(q.quantize, w, bit_width=bits, channel_absmax=a),
        }
        row: dict = {"bits": bits}
        for label, run in variants.items():
            print(f"  int{bits} {label} ...", file=sys.stderr, flush=True)
            seconds, t = best_time_and_result(run, repeats)
            assert t is not None
            row[label] = {
                "E": weighted_error(w, t.dequantize(), a),
                "bits_per_weight": t.bits_per_weight,
                "quantize_mbs": w.nbytes / seconds / MB,
                "encoding": t.encoding,
                "method": t.method,
                "rel_mse": t.rel_mse,
            }
            if t.channel_scales is not None:
                row[label]["alpha"] = recovered_alpha(t.channel_scales, a)
        row["ratio_scaled_plain"] = row["scaled"]["E"] / row["plain"]["E"]
        row["ratio_importance_plain"] = row["importance"]["E"] / row["plain"]["E"]
        row["target_met"] = row["ratio_scaled_plain"] <= TARGET_RATIO
        rows.append(row)
    return {"magnitudes": f"a_j = exp(N(0, 1)), numpy default_rng seed {SEED}", "target_ratio": TARGET_RATIO,
            "rows": rows}


def print_channel_scaling(section: dict, shape: tuple[int, ...], repeats: int) -> None:
    print(f"\nchannel scaling: standard tensor {shape[0]} x {shape[1]} float32, a_j = exp(N(0, 1)), method auto, "
          f"RAYON_NUM_THREADS={THREADS}, best of {repeats}; E = activation-weighted relative error")
    header = (f"{'width':<6} {'encoding':<9} {'E plain':>9} {'E import.':>9} {'E scaled':>9} {'scaled/plain':>12} "
              f"{'alpha':>5} {'bpw plain':>9} {'bpw imp.':>8} {'bpw scaled':>10} {'MB/s plain':>10} "
              f"{'MB/s imp.':>9} {'MB/s scaled':>11}")
    print(header)
    print("-" * len(header))
    for r in section["rows"]:
        p, i, s = r["plain"], r["importance"], r["scaled"]
        print(f"int{r['bits']:<3} {s['encoding']:<9} {p['E']:>9.3e} {i['E']:>9.3e} {s['E']:>9.3e} "
              f"{r['ratio_scaled_plain']:>12.3f} {s['alpha']:>5.2f} {p['bits_per_weight']:>9.4f} "
              f"{i['bits_per_weight']:>8.4f} {s['bits_per_weight']:>10.4f} {p['quantize_mbs']:>10.1f} "
              f"{i['quantize_mbs']:>9.1f} {s['quantize_mbs']:>11.1f}")
    for r in section["rows"]:
        verdict = "met" if r["target_met"] else "NOT met"
        print(f"  int{r['bits']}: E_scaled / E_plain = {r['ratio_scaled_plain']:.3f} "
              f"(target <= {section['target_ratio']}): {verdict}; "
              f"importance-only / plain = {r['ratio_importance_plain']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1024 x 1024 standard tensor, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure (best is kept)")
    add_output_option(parser, NAME)
    args = parser.parse_args()

    if os.environ.get("RAYON_NUM_THREADS") != THREADS:
        # rayon reads RAYON_NUM_THREADS once, when its pool starts: re-run this script with it set.
        env = {**os.environ, "RAYON_NUM_THREADS": THREADS}
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]], env)

    weights: ModuleType = load_shared_weights()
    repeats = args.repeats or (1 if args.quick else 3)
    output = output_path(NAME, args.quick, args.output)
    load = load_before_run("speed figures are noisy")
    started = time.perf_counter()

    size = 1024 if args.quick else 4096
    w = weights.standard_tensor(size, size)
    print(f"channel scaling on the standard tensor {size} x {size} ...", file=sys.stderr, flush=True)
    channel = channel_scaling_section(w, repeats)
    print_channel_scaling(channel, w.shape, repeats)

    elapsed = time.perf_counter() - started
    print(f"\nload average (1 min) before the run: {load:.2f}; total {elapsed:.1f} s")

    import arrow_quant_v2

    report = {
        "benchmark": NAME,
        "quick": args.quick,
        "threads": THREADS,
        "repeats": repeats,
        "mb": MB,
        "machine": machine_info(numpy=np.__version__, arrow_quant_v2=arrow_quant_v2.__version__),
        "standard_tensor": {"rows": size, "cols": size},
        "channel_scaling": channel,
        "seconds": elapsed,
        "load_average_1min_before": load,
    }
    write_json(output, report)


if __name__ == "__main__":
    main()
