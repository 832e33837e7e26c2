"""Kernel throughput and quality on the standard tensor, against the machine's own copy bandwidth.

For bits 8 / 4 / 2 x method rtn / mse (group 64, asymmetric) x 1 and 2 rayon threads this measures:
quantize MB/s (float32 input bytes / best `q.quantize` time), dequantize MB/s (float32 output bytes / best
`t.dequantize()` time), rel-MSE and cosine (from the shared `weights.metrics`), bits per weight, and in the
same process the numpy copy bandwidth of the same bytes, so that the quantize / copy ratio is comparable
across machines. It also quotes `rtn_reference(w, 4, 64)` next to our rtn int4 g64 result.

rayon reads RAYON_NUM_THREADS once, when its pool starts, so each thread count runs in a subprocess of this
script (`--worker`), which prints one JSON object on stdout. MB = 10^6 bytes.

    python benchmarks/bench_kernels.py           # full run, writes benchmarks/results/bench_kernels.json
    python benchmarks/bench_kernels.py --quick   # 1024 x 1024 tensor, fewer repeats: a smoke test
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    add_output_option,
    best_time,
    load_before_run,
    load_shared_weights,
    machine_info,
    output_path,
    rayon_threads,
    write_json,
)

NAME = "bench_kernels"

BITS = (8, 4, 2)
METHODS = ("rtn", "mse")
THREADS = (1, 2)
GROUP = 64
MB = 1e6

# Outside reference, measured elsewhere (PEERS.md: 2-core AMD EPYC, same standard tensor). Not measured here:
# compare ratios (ours / numpy copy in the same run), not absolute MB/s.
PEER_COPY_GBS = {"1T": 14.3, "2T": 17.2}
PEERS = [
    # (tool, format, bits/w, quantize MB/s 1T, 2T, dequantize MB/s 2T, rel-MSE)
    ("llama.cpp (C)", "Q8_0", 8.50, "1114", "2315", "9660", 2.98e-5),
    ("HQQ (torch, CPU)", "8-bit g64", 8.50, "6", "9", "1006", 2.65e-5),
    ("llama.cpp (C)", "Q4_K", 4.50, "62", "120", "11528", 5.15e-3),
    ("llama.cpp (C)", "IQ4_NL", 4.50, "23", "45", "4874", 5.93e-3),
    ("llama.cpp (C)", "Q4_0", 4.50, "3829", "5153", "8138", 7.65e-3),
    ("HQQ (torch, CPU)", "4-bit g64", 4.50, "6", "9", "978", 7.50e-3),
    ("torch / numpy", "RTN asym int4 g64", 4.50, "~500-1000", "", "", 8.22e-3),
    ("llama.cpp (C)", "Q2_K", 2.63, "70", "142", "6643", 8.84e-2),
    ("HQQ (torch, CPU)", "2-bit g64", 2.50, "6", "8", "1015", 1.97e-1),
    ("torch / numpy", "RTN asym int2 g64", 2.50, "~500-1000", "", "", 2.09e-1),
]


def worker(args: argparse.Namespace) -> None:
    """Measure every configuration in this process (one rayon thread count) and print JSON on stdout."""
    import numpy as np

    import arrow_quant_v2

    weights = load_shared_weights()
    w = weights.standard_tensor(args.rows, args.cols)
    nbytes = w.nbytes

    dst = np.empty_like(w)
    dst.fill(0.0)  # touch every page so the copy measures bandwidth, not page faults
    copy_s = best_time(functools.partial(np.copyto, dst, w), args.repeats)
    del dst

    q = arrow_quant_v2.ArrowQuantV2()
    rows = []
    for bits in BITS:
        for method in METHODS:

            def run(bits=bits, method=method):
                return q.quantize(w, bit_width=bits, group_size=GROUP, symmetric=False, method=method)

            t = run()  # warm-up, and the tensor we check
            quant_s = best_time(run, args.repeats)
            dequant_s = best_time(t.dequantize, args.repeats)
            m = weights.metrics(w, t.dequantize())
            rows.append(
                {
                    "bits": bits,
                    "method": method,
                    "group_size": GROUP,
                    "symmetric": False,
                    "quantize_s": quant_s,
                    "quantize_mbs": nbytes / quant_s / MB,
                    "dequantize_s": dequant_s,
                    "dequantize_mbs": nbytes / dequant_s / MB,
                    "quantize_over_copy": copy_s / quant_s,
                    "rel_mse": m["rel_mse"],
                    "cosine": m["cosine"],
                    "max_abs_err": m["max_abs_err"],
                    "rel_mse_reported": t.rel_mse,
                    "cosine_reported": t.cosine,
                    "bits_per_weight": t.bits_per_weight,
                    "nbytes_out": t.nbytes,
                }
            )
            del t

    out = {
        "rayon_num_threads": rayon_threads(),
        "bytes": nbytes,
        "copy_s": copy_s,
        "copy_mbs": nbytes / copy_s / MB,
        "rows": rows,
    }
    if args.reference:
        ref = weights.metrics(w, weights.rtn_reference(w, 4, GROUP))
        out["rtn_reference_int4_g64"] = ref
    print(json.dumps(out))


def run_worker(threads: int, args: argparse.Namespace, reference: bool) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--rows", str(args.rows)]
    cmd += ["--cols", str(args.cols), "--repeats", str(args.repeats)]
    if reference:
        cmd.append("--reference")
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        sys.exit(f"error: worker with RAYON_NUM_THREADS={threads} failed (exit {proc.returncode})")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        sys.exit(f"error: worker with RAYON_NUM_THREADS={threads} printed nothing")
    return json.loads(lines[-1])


def print_report(runs: dict[int, dict], args: argparse.Namespace) -> None:
    first = runs[THREADS[0]]
    mib = first["bytes"] / 2**20
    print(f"\nstandard tensor {args.rows} x {args.cols} float32 ({mib:.1f} MiB), group {GROUP}, asymmetric, "
          f"best of {args.repeats}; MB = 1e6 bytes")
    for threads, run in runs.items():
        print(f"numpy copy of the same bytes, {threads}T: {run['copy_mbs']:.0f} MB/s")

    header = (f"{'bits':>4} {'method':>6} {'thr':>3} {'quant MB/s':>10} {'quant/copy':>10} "
              f"{'dequant MB/s':>12} {'bits/w':>6} {'rel-MSE':>9} {'cosine':>9}")
    print("\n" + header)
    print("-" * len(header))
    for bits in BITS:
        for method in METHODS:
            for threads, run in runs.items():
                r = next(x for x in run["rows"] if x["bits"] == bits and x["method"] == method)
                print(f"{bits:>4} {method:>6} {threads:>3} {r['quantize_mbs']:>10.0f} "
                      f"{r['quantize_over_copy']:>10.3f} {r['dequantize_mbs']:>12.0f} "
                      f"{r['bits_per_weight']:>6.2f} {r['rel_mse']:>9.3e} {r['cosine']:>9.6f}")

    same = all(
        (a["rel_mse"], a["cosine"]) == (b["rel_mse"], b["cosine"])
        for run in runs.values()
        for a, b in zip(first["rows"], run["rows"], strict=True)
    )
    print(f"quality identical at every thread count: {'yes' if same else 'NO'}")

    ref = first.get("rtn_reference_int4_g64")
    ours = next(x for x in first["rows"] if x["bits"] == 4 and x["method"] == "rtn")
    if ref:
        print(f"\nrtn_reference(w, 4, 64) rel-MSE {ref['rel_mse']:.3e} | "
              f"ours rtn int4 g64 {ours['rel_mse']:.3e} | "
              f"ours / reference = {ours['rel_mse'] / ref['rel_mse']:.3f}")

    print("\nOutside reference, measured elsewhere (PEERS.md, 2-core AMD EPYC; NOT measured in this run):")
    print(f"  numpy copy of a 400 MB array: {PEER_COPY_GBS['1T']} GB/s 1T, {PEER_COPY_GBS['2T']} GB/s 2T")
    print(f"  {'tool':<17} {'format':<18} {'bits/w':>6} {'quant MB/s 1T/2T':>17} {'dequant 2T':>10} "
          f"{'rel-MSE':>9}")
    for tool, fmt, bpw, q1, q2, dq, mse in PEERS:
        qs = f"{q1} / {q2}" if q2 else q1
        print(f"  {tool:<17} {fmt:<18} {bpw:>6.2f} {qs:>17} {dq:>10} {mse:>9.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1024 x 1024 tensor, 3 repeats (smoke test)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure (best is kept)")
    add_output_option(parser, NAME)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cols", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        worker(args)
        return

    load_shared_weights()  # fail early, before any subprocess, if shared/ is missing
    size = 1024 if args.quick else 4096
    args.rows = args.rows or size
    args.cols = args.cols or size
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.output = output_path(NAME, args.quick, args.output)

    load = load_before_run()
    start = time.perf_counter()
    runs = {}
    for i, threads in enumerate(THREADS):
        print(f"measuring with RAYON_NUM_THREADS={threads} ...", file=sys.stderr, flush=True)
        runs[threads] = run_worker(threads, args, reference=(i == 0))
    elapsed = time.perf_counter() - start

    print_report(runs, args)
    print(f"load average (1 min) before the run: {load:.2f}")
    print(f"\ntotal {elapsed:.1f} s")

    import numpy as np

    import arrow_quant_v2

    report = {
        "benchmark": NAME,
        "quick": args.quick,
        "tensor": {"rows": args.rows, "cols": args.cols, "dtype": "float32"},
        "group_size": GROUP,
        "symmetric": False,
        "repeats": args.repeats,
        "mb": MB,
        "machine": machine_info(processor=True, numpy=np.__version__, arrow_quant_v2=arrow_quant_v2.__version__),
        "runs": {str(k): v for k, v in runs.items()},
        "seconds": elapsed,
        "load_average_1min_before": load,
        "peers_outside_reference": {
            "source": "shared/bench/PEERS.md, measured elsewhere",
            "numpy_copy_gbs": PEER_COPY_GBS,
            "quantizers": [
                dict(zip(("tool", "format", "bits_per_weight", "quantize_mbs_1t", "quantize_mbs_2t",
                          "dequantize_mbs_2t", "rel_mse"), p, strict=True))
                for p in PEERS
            ],
        },
    }
    write_json(args.output, report)


if __name__ == "__main__":
    main()
