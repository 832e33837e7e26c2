"""Sequential `quantize` calls against one `quantize_batch` call, one `quantize_arrow` call and the bare kernel.

Every input is one flat float32 numpy array (numpy rng, a different draw per case); `quantize` and
`quantize_batch` get a dict of per-layer reshaped views of it, `quantize_arrow` a Table whose `weights` column
(a `FixedSizeListArray`) is built on the same buffer without a copy (checked by buffer address) before the timed
region, and the kernel baseline `_kernel_seconds(layers, 4, 128, method, repeats=1)` runs the same core batch
kernel, timed inside Rust with no Python boundary, on the same dict. Cases:

  layer count: 1, 10, 50, 100 layers of 256 x 1024 (~1 MB each), plus 100 layers of 256 x 256 (the earlier
               attempt's case, PEERS.md)
  size:        one layer of 4, 40 and 400 MB (1024 x 1024, 2560 x 4096, 25600 x 4096; --quick skips 400 MB)

overhead = API time - kernel time; "overhead reduction" = sequential overhead / batch (or arrow) overhead.
Each case runs with method "mse" (the default) and "rtn" (a faster kernel). In each of N rounds every variant
runs once, in an order rotated from round to round, and the best of each is kept: a burst of load elsewhere on
the machine then slows all variants alike. int4, group 128, asymmetric, float16 scales. MB = 10^6 bytes.

    python benchmarks/bench_batch_api_performance.py          # writes benchmarks/results/<this script>.json
    python benchmarks/bench_batch_api_performance.py --quick  # no 400 MB layer, 3 rounds: <this script>.quick.json
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import numpy as np
from _common import (
    NOISY,
    add_output_option,
    describe_rayon_threads,
    interleaved_best,
    load_average,
    load_before_run,
    machine_info,
    output_path,
    rayon_threads,
    timed,
    write_json,
)

try:
    import pyarrow as pa

    import arrow_quant_v2
    from arrow_quant_v2._core import _kernel_seconds
except ImportError as exc:  # pragma: no cover - environment problem, not a benchmark result
    sys.exit(f"error: cannot import arrow_quant_v2 / pyarrow ({exc}); build it first (maturin develop --release)")

NAME = "bench_batch_api_performance"

MB = 1e6
BITS = 4
GROUP = 128
METHODS = ("mse", "rtn")
LAYER_COUNTS = (1, 10, 50, 100)
LAYER_SHAPE = (256, 1024)
EARLIER_CASE = (100, (256, 256))  # the earlier attempt's 100-layer case (PEERS.md)
SIZE_CASES = (("4 MB", (1024, 1024)), ("40 MB", (2560, 4096)), ("400 MB", (25600, 4096)))
BIG_BYTES = 200 * MB  # inputs this large get fewer rounds

# Seed targets (TASK_4_7_BENCHMARK_BLOCKED.md), never reached by the earlier attempt.
SEED_OVERHEAD_REDUCTION = 100.0
SEED_100_LAYER_OVERHEAD_MS = 2.0
# Outside reference, measured elsewhere (shared/bench/PEERS.md, the earlier attempt, same kind of machine):
# whole-call times, kernels included.
EARLIER_SMALL_BATCH_MS = 30.0
EARLIER_SMALL_ARROW_MS = 267.0
EARLIER_BATCH_4MB_MS = 4.4
EARLIER_ARROW_4MB_MS = 38.0


class Case:
    """`layers` layers of `shape` in one flat float32 array, its per-layer views and an Arrow Table on it."""

    def __init__(self, section: str, label: str, layers: int, shape: tuple[int, int], seed: int) -> None:
        self.section = section
        self.label = label
        self.n_layers = layers
        self.shape = shape
        n = shape[0] * shape[1]
        self.flat = np.random.default_rng(seed).standard_normal(layers * n, dtype=np.float32)
        names = [f"layer_{i:03d}.weight" for i in range(layers)]
        self.layers = {name: self.flat[i * n:(i + 1) * n].reshape(shape) for i, name in enumerate(names)}
        weights = pa.FixedSizeListArray.from_arrays(pa.array(self.flat), n)
        shapes = pa.array([list(shape)] * layers, pa.list_(pa.int64()))
        self.table = pa.table({"layer_name": names, "weights": weights, "shape": shapes})
        column = self.table.column("weights")
        if column.num_chunks != 1 or column.chunk(0).values.buffers()[1].address != self.flat.ctypes.data:
            sys.exit(f"error: the Arrow input of case {label!r} is not on the numpy memory (a copy was made)")

    @property
    def nbytes(self) -> int:
        return self.flat.nbytes


def measure(q: arrow_quant_v2.ArrowQuantV2, case: Case, method: str, repeats: int) -> dict:
    opts = {"bit_width": BITS, "group_size": GROUP, "method": method}

    def sequential() -> list:
        return [q.quantize(w, name=name, **opts) for name, w in case.layers.items()]

    def batch() -> arrow_quant_v2.BatchResult:
        return q.quantize_batch(case.layers, **opts)

    def arrow() -> pa.Table:
        return q.quantize_arrow(case.table, **opts)

    result = batch()  # warm-up, and a check that every layer came back
    if len(result) != case.n_layers or result.errors:
        sys.exit(f"error: quantize_batch returned {len(result)} layers, errors {dict(result.errors)}")
    del result
    if arrow().num_rows != case.n_layers:
        sys.exit(f"error: quantize_arrow did not return {case.n_layers} rows")
    sequential()
    gc.collect()
    best = interleaved_best({
        "sequential": timed(sequential),
        "batch": timed(batch),
        "arrow": timed(arrow),
        "kernel": lambda: {"s": _kernel_seconds(case.layers, BITS, GROUP, method, repeats=1)},
    }, repeats)

    kernel_s = best["kernel"]
    row = {
        "section": case.section,
        "case": case.label,
        "method": method,
        "layers": case.n_layers,
        "shape": list(case.shape),
        "bytes": case.nbytes,
        "repeats": repeats,
        "kernel_s": kernel_s,
    }
    for api in ("sequential", "batch", "arrow"):
        overhead = best[api] - kernel_s
        row[f"{api}_s"] = best[api]
        row[f"{api}_over_kernel"] = best[api] / kernel_s
        row[f"{api}_overhead_ms"] = overhead * 1e3
        row[f"{api}_overhead_us_per_layer"] = overhead / case.n_layers * 1e6
    for api in ("batch", "arrow"):
        # undefined when the API's overhead is within the noise (at or below zero)
        ratio = row["sequential_overhead_ms"] / row[f"{api}_overhead_ms"] if row[f"{api}_overhead_ms"] > 0 else None
        row[f"{api}_overhead_reduction"] = ratio
        row[f"sequential_over_{api}"] = best["sequential"] / best[api]
    return row


def fmt_reduction(value: float | None) -> str:
    return "noise" if value is None else f"{value:.1f}x"


def print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    header = (f"{'case':>16} {'MB':>5} {'method':>6} {'seq ms':>8} {'batch ms':>8} {'arrow ms':>8} {'kernel ms':>9} "
              f"{'seq/kern':>8} {'batch/kern':>10} {'arrow/kern':>10} {'seq ovh ms':>10} {'batch ovh ms':>12} "
              f"{'arrow ovh ms':>12} {'batch us/l':>10} {'arrow us/l':>10} {'reduction b/a':>15}")
    print(header)
    print("-" * len(header))
    for r in rows:
        case = f"{r['layers']} x " + "x".join(map(str, r["shape"]))
        reduction = f"{fmt_reduction(r['batch_overhead_reduction'])}/{fmt_reduction(r['arrow_overhead_reduction'])}"
        print(f"{case:>16} {r['bytes'] / MB:>5.0f} {r['method']:>6} {r['sequential_s'] * 1e3:>8.2f} "
              f"{r['batch_s'] * 1e3:>8.2f} {r['arrow_s'] * 1e3:>8.2f} {r['kernel_s'] * 1e3:>9.2f} "
              f"{r['sequential_over_kernel']:>8.3f} {r['batch_over_kernel']:>10.3f} {r['arrow_over_kernel']:>10.3f} "
              f"{r['sequential_overhead_ms']:>10.2f} {r['batch_overhead_ms']:>12.2f} {r['arrow_overhead_ms']:>12.2f} "
              f"{r['batch_overhead_us_per_layer']:>10.1f} {r['arrow_overhead_us_per_layer']:>10.1f} "
              f"{reduction:>15}")


def summarize(rows: list[dict]) -> list[dict]:
    """One line per 100-layer case, API, method and seed target; 'noise?' when the overhead is not above zero."""
    lines = []
    for r in rows:
        if r["layers"] != 100:
            continue
        case = f"100 x {'x'.join(map(str, r['shape']))}"
        for api in ("batch", "arrow"):
            ovh = r[f"{api}_overhead_ms"]
            red = r[f"{api}_overhead_reduction"]
            noise = ovh <= 0
            lines.append({"method": r["method"], "case": case, "api": api,
                          "target": f"overhead reduction >= {SEED_OVERHEAD_REDUCTION:g}x (seed)",
                          "measured": fmt_reduction(red),
                          "verdict": "noise?" if noise else ("ok" if red >= SEED_OVERHEAD_REDUCTION else "MISSED")})
            lines.append({"method": r["method"], "case": case, "api": api,
                          "target": f"100-layer overhead <= {SEED_100_LAYER_OVERHEAD_MS:g} ms (seed)",
                          "measured": f"{ovh:.2f} ms",
                          "verdict": "noise?" if noise else ("ok" if ovh <= SEED_100_LAYER_OVERHEAD_MS else "MISSED")})
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved rounds, best kept (default 15; 5 for inputs of 200 MB and more)")
    parser.add_argument("--quick", action="store_true", help="no 400 MB layer, 3 rounds (smoke test)")
    add_output_option(parser, NAME)
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 15)
    big_repeats = min(repeats, 3 if args.quick else 5)
    output = output_path(NAME, args.quick, args.output)

    load = load_before_run(f"{NOISY} (an overhead below zero means noise)")
    q = arrow_quant_v2.ArrowQuantV2()
    specs = [("layers", f"{n} layers", n, LAYER_SHAPE) for n in LAYER_COUNTS]
    specs.append(("layers", "earlier attempt's case", *EARLIER_CASE))
    specs += [("sizes", label, 1, shape) for label, shape in SIZE_CASES if not (args.quick and label == "400 MB")]
    rows = []
    start = time.perf_counter()
    # one input alive at a time: the 400 MB layer is built, measured and freed in turn
    for seed, (section, label, layers, shape) in enumerate(specs, start=1):
        case = Case(section, label, layers, shape, seed)
        n = big_repeats if case.nbytes >= BIG_BYTES else repeats
        for method in METHODS:
            print(f"  {label} ({case.nbytes / MB:.0f} MB), {method}, {n} rounds ...", file=sys.stderr, flush=True)
            rows.append(measure(q, case, method, n))
        del case
        gc.collect()
    elapsed = time.perf_counter() - start
    load_after = load_average()

    threads = describe_rayon_threads()
    print(f"\nint{BITS} g{GROUP} asymmetric, best of {repeats} interleaved rounds ({big_repeats} for inputs >= "
          f"{BIG_BYTES / MB:.0f} MB), RAYON_NUM_THREADS={threads}, load average (1 min) before {load:.2f}, "
          f"after {load_after:.2f}; MB = 1e6 bytes")
    print("seq = one q.quantize call per layer; batch = one q.quantize_batch call; arrow = one q.quantize_arrow "
          "call (input prebuilt, zero-copy); kern = the same core kernel timed in Rust on the same memory")
    print("ovh = API time - kernel time; us/l = overhead per layer; reduction b/a = sequential overhead / batch "
          "(arrow) overhead ('noise' when that overhead is <= 0)")
    print_rows(f"Layer count: N layers of {LAYER_SHAPE[0]} x {LAYER_SHAPE[1]} (and the earlier attempt's 100 x "
               f"{EARLIER_CASE[1][0]}x{EARLIER_CASE[1][1]})", [r for r in rows if r["section"] == "layers"])
    print_rows("Size: one layer per call", [r for r in rows if r["section"] == "sizes"])

    print("\nOutside reference, measured elsewhere (PEERS.md, earlier attempt; NOT measured in this run), "
          "whole calls, kernels included:")
    print(f"  100 layers of 256 x 256: quantize_batch {EARLIER_SMALL_BATCH_MS:g} ms, quantize_arrow "
          f"{EARLIER_SMALL_ARROW_MS:g} ms; one 4 MB layer: quantize_batch {EARLIER_BATCH_4MB_MS:g} ms "
          f"(1 byte per weight, one scale per tensor), quantize_arrow {EARLIER_ARROW_4MB_MS:g} ms")
    for r in rows:
        if (r["layers"], tuple(r["shape"])) == EARLIER_CASE:
            print(f"  this run, 100 x 256x256 {r['method']}: quantize_batch {r['batch_s'] * 1e3:.2f} ms, "
                  f"quantize_arrow {r['arrow_s'] * 1e3:.2f} ms")
        if r["case"] == "4 MB":
            print(f"  this run, one 4 MB layer {r['method']}: quantize_batch {r['batch_s'] * 1e3:.2f} ms, "
                  f"quantize_arrow {r['arrow_s'] * 1e3:.2f} ms")

    summary = summarize(rows)
    print("\nSeed targets (TASK_4_7_BENCHMARK_BLOCKED.md: 100x overhead reduction, 100-layer batch overhead "
          "<= 2 ms)")
    for s in summary:
        print(f"  {s['method']:>4}  {s['case']:<15} {s['api']:>5}  {s['target']:<36} {s['measured']:>10}  "
              f"{s['verdict']}")
    print("(noise? = the API's overhead was not measurable above the kernel in this run: the best API time was at "
          "or below the best kernel time)")
    print(f"\ntotal {elapsed:.1f} s")

    report = {
        "benchmark": NAME,
        "quick": args.quick,
        "bit_width": BITS,
        "group_size": GROUP,
        "methods": list(METHODS),
        "repeats": repeats,
        "repeats_large_inputs": big_repeats,
        "large_input_bytes": BIG_BYTES,
        "arrow_layout": "weights: fixed_size_list<float32> on the numpy buffer (zero-copy, checked), prebuilt",
        "rayon_num_threads": rayon_threads(),
        "load_average_1min_before": load,
        "load_average_1min_after": load_after,
        "seconds": elapsed,
        "mb": MB,
        "machine": machine_info(numpy=np.__version__, pyarrow=pa.__version__,
                                arrow_quant_v2=arrow_quant_v2.__version__),
        "results": rows,
        "targets": summary,
        "seed_targets": {
            "source": "TASK_4_7_BENCHMARK_BLOCKED.md",
            "overhead_reduction": SEED_OVERHEAD_REDUCTION,
            "batch_overhead_100_layers_ms": SEED_100_LAYER_OVERHEAD_MS,
        },
        "earlier_attempt_outside_reference": {
            "source": "shared/bench/PEERS.md, measured elsewhere",
            "quantize_batch_100x256x256_ms": EARLIER_SMALL_BATCH_MS,
            "quantize_arrow_100x256x256_ms": EARLIER_SMALL_ARROW_MS,
            "quantize_batch_4mb_ms": EARLIER_BATCH_4MB_MS,
            "quantize_arrow_4mb_ms": EARLIER_ARROW_4MB_MS,
        },
    }
    write_json(output, report)


if __name__ == "__main__":
    main()
