"""Throughput of arrow_quant_v2.distributed (Ray Data) against the single-process CLI, on 8 generated checkpoints.

Six runs over the same 8 checkpoints (default profile `local`, Parquet):
- the CLI, `arrow-quant quantize` once per checkpoint, with 1 and with 2 kernel threads (RAYON_NUM_THREADS);
- `quantize_many` on a local Ray cluster (`ray.init(num_cpus=2)`, started once, not timed) with 1 and with 2
  single-threaded workers (the actor pool's start is timed: it is part of every run): with the default units
  (`auto`: here each checkpoint is one unit) and with `units="tensor"` (every checkpoint split into tensor units,
  staged and assembled: the way one big checkpoint spreads over a cluster).
Every output is checked byte-identical to the CLI's. Throughput is source bytes / wall seconds (best of
`--repeat`). Acceptance (docs/SCALE_OUT.md): Ray 2 workers >= 1.6x Ray 1 worker, and >= 0.8x the CLI with 2
threads. Results go to benchmarks/results/distributed.json.

The default checkpoint is 1 GB (float16), the size of a DiT-XL or an SD 1.5 UNet: a Ray run has a fixed cost of
about 1-1.5 s (the pool's actors start, each loading Ray Data and the extension) that a 200 MB checkpoint does
not amortize; `--mb-per-checkpoint 192` shows it.

    python benchmarks/bench_distributed.py [--mb-per-checkpoint 1024] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "target" / "release" / "arrow-quant"
RESULTS = REPO / "benchmarks" / "results"


def make_checkpoints(folder: Path, count: int, mb: float) -> list[Path]:
    """`count` DiT-XL-like checkpoints of about `mb` MB each: float16 blocks of hidden size 1152 (qkv, proj, fc1,
    fc2: 2.7 to 10.6 MB per tensor, as in real diffusion transformers), norms and the first layer kept."""
    hidden = 1152
    shapes = (("attn.qkv", (3 * hidden, hidden)), ("attn.proj", (hidden, hidden)),
              ("mlp.fc1", (4 * hidden, hidden)), ("mlp.fc2", (hidden, 4 * hidden)))
    paths = []
    for i in range(count):
        rng = np.random.default_rng(100 + i)
        t: dict[str, np.ndarray] = {"x_embedder.proj.weight": rng.standard_normal((hidden, 16)).astype(np.float16)}
        size, b = 0, 0
        while size < mb * 1e6:
            for name, shape in shapes:
                w = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)
                t[f"blocks.{b}.{name}.weight"] = w
                size += w.nbytes
            t[f"blocks.{b}.norm1.weight"] = np.ones(hidden, dtype=np.float16)
            b += 1
        p = folder / f"model-{i}.safetensors"
        save_file(t, str(p))
        paths.append(p)
    return paths


def run_cli(sources: list[Path], out: Path, threads: int) -> float:
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    for s in sources:
        subprocess.run(
            [str(CLI), "quantize", str(s), str(out / f"{s.stem}.parquet"), "--quiet", "--json"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return time.perf_counter() - start


def run_ray(sources: list[Path], out: Path, workers: int, units: str = "auto") -> float:
    from arrow_quant_v2.distributed import quantize_many

    start = time.perf_counter()
    report = quantize_many(sources, out, workers=workers, progress=False, units=units)
    seconds = time.perf_counter() - start
    assert report["totals"]["quantized"] == len(sources), report
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", type=int, default=8)
    p.add_argument("--mb-per-checkpoint", type=float, default=1024.0)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    if not CLI.exists():
        print(f"{CLI} not built: run `make build`", file=sys.stderr)
        return 2
    import ray

    work = Path(tempfile.mkdtemp(prefix="aq-bench-distributed-"))
    try:
        sources = make_checkpoints(work, args.checkpoints, args.mb_per_checkpoint)
        total = sum(s.stat().st_size for s in sources)
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
        # One-time costs of the driver process (Ray Data's first execution), not of a run: a small warm-up run.
        (work / "warm").mkdir()
        run_ray(make_checkpoints(work / "warm", 1, 4), work / "warm-out", 2, "tensor")
        runs = {
            "cli_1_thread": lambda out: run_cli(sources, out, 1),
            "cli_2_threads": lambda out: run_cli(sources, out, 2),
            "ray_1_worker": lambda out: run_ray(sources, out, 1),
            "ray_2_workers": lambda out: run_ray(sources, out, 2),
            "ray_1_worker_tensor_units": lambda out: run_ray(sources, out, 1, "tensor"),
            "ray_2_workers_tensor_units": lambda out: run_ray(sources, out, 2, "tensor"),
        }
        seconds: dict[str, float] = {}
        reference: dict[str, bytes] = {}
        for _ in range(args.repeat):
            for name, run in runs.items():
                out = work / name
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                s = run(out)
                seconds[name] = min(s, seconds.get(name, float("inf")))
                for f in sorted(out.glob("*.parquet")):
                    data = f.read_bytes()
                    assert reference.setdefault(f.name, data) == data, f"{name}: {f.name} differs from the CLI's"
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gbps = {k: total / 1e9 / v for k, v in seconds.items()}
    ratios = {
        "ray_2_vs_1_worker": gbps["ray_2_workers"] / gbps["ray_1_worker"],
        "ray_2_workers_vs_cli_2_threads": gbps["ray_2_workers"] / gbps["cli_2_threads"],
        "cli_2_vs_1_thread": gbps["cli_2_threads"] / gbps["cli_1_thread"],
        "tensor_units_ray_2_vs_1_worker": gbps["ray_2_workers_tensor_units"] / gbps["ray_1_worker_tensor_units"],
        "tensor_units_ray_2_workers_vs_cli_2_threads": gbps["ray_2_workers_tensor_units"] / gbps["cli_2_threads"],
    }
    targets = {"ray_2_vs_1_worker": 1.6, "ray_2_workers_vs_cli_2_threads": 0.8}
    print(f"{args.checkpoints} checkpoints, {total / 1e6:.0f} MB in all (float16), profile local, Parquet, "
          f"best of {args.repeat}")
    print(f"{'run':<28} {'seconds':>8} {'GB/s':>7}")
    for k in runs:
        print(f"{k:<28} {seconds[k]:>8.2f} {gbps[k]:>7.3f}")
    for k, v in ratios.items():
        target = targets.get(k)
        verdict = "" if target is None else (f"  (target >= {target}: " + ("ok)" if v >= target else "MISSED)"))
        print(f"{k:<44} {v:5.2f}x{verdict}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "checkpoints": args.checkpoints,
        "bytes": total,
        "seconds": seconds,
        "gb_per_s": gbps,
        "ratios": ratios,
        "targets": targets,
        "cpus": os.cpu_count(),
    }
    (RESULTS / "distributed.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(ratios[k] >= t for k, t in targets.items()) else 1


if __name__ == "__main__":
    sys.exit(main())
