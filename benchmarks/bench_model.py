"""Whole-model benchmark: a ~2 GB float16 DiT-like checkpoint through the `arrow-quant` CLI.

This generates a safetensors checkpoint shaped like a DiT-XL stack (patch embedder, time MLP, class embedding
table, N transformer blocks with attention, MLP, adaLN modulation and 1-D norms and biases, final layer), with
N chosen so the file is ~2 GB in float16 (--quick: ~200 MB). Values are standard normal x 0.02.

It then runs, each in its own subprocess under `/usr/bin/time -v` (or, without it, a fresh helper interpreter
that reads `resource.getrusage(RUSAGE_CHILDREN)`):

    arrow-quant quantize CKPT OUT --bits 4 --method rtn --json --quiet
    arrow-quant quantize CKPT OUT --bits 4 --json --quiet          (the default method)
    arrow-quant validate CKPT OUT --json                           (once, on the default-method output)

and reports wall time, GB/s of float16 input (totals.bytes_in / wall time, and the CLI's own totals.gb_per_s),
the child's peak RSS against the largest tensor, and the output size and compression ratio, beside the
acceptance targets of issue 4:

    peak RSS <= 3 x largest tensor (float16 bytes) + 200 MB
    INT4 --method rtn >= 1 GB/s of float16 input; default method >= 0.4 GB/s

Before every timed run the checkpoint is read once (like `cat CKPT > /dev/null`) so that it is in the page
cache: the figures measure quantization, not the disk. GB = 10^9 bytes, MB = 10^6 bytes.

    python benchmarks/bench_model.py           # ~2 GB, writes benchmarks/results/bench_model.json
    python benchmarks/bench_model.py --quick   # ~200 MB smoke test, writes bench_model.quick.json

Memory section (issue 13, `memory_section.py`): peak RSS of `quantize` / `validate` / `export` on generated
checkpoints whose largest tensor is 64 MB, 256 MB and 1 GB, at every profile's default width, against 400 MB;
the 1 GB tensor stored in several chunk rows and round-tripping bit-exactly. It runs after the throughput cases,
or alone (no timing targets, so a loaded machine is fine):

    python benchmarks/bench_model.py --memory-only   # writes benchmarks/results/bench_model.memory.json
    python benchmarks/bench_model.py --no-memory     # the throughput part only
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    REPO_ROOT,
    add_output_option,
    load_before_run,
    machine_info,
    output_path,
    rayon_threads,
    write_json,
)
from memory_section import SIZES, memory_section, print_memory

NAME = "bench_model"
DEFAULT_CLI = REPO_ROOT / "target" / "release" / "arrow-quant"
TIME_V = Path("/usr/bin/time")

GB = 1e9
MB = 1e6
F16 = 2  # bytes per element

HIDDEN = 1152
TARGET_GB = 2.0
QUICK_TARGET_GB = 0.2

# acceptance (issue 4)
RSS_FACTOR = 3
RSS_SLACK = 200 * MB
CASES = [
    # (key, label, extra CLI arguments, GB/s target)
    ("int4_rtn", "INT4 --method rtn", ["--bits", "4", "--method", "rtn"], 1.0),
    ("int4_default", "INT4 default method", ["--bits", "4"], 0.4),
]


# ---------------------------------------------------------------------------------------------------------------
# checkpoint


def dit_layout(n_blocks: int) -> list[tuple[str, tuple[int, ...]]]:
    """DiT-XL-like tensor names and shapes (patch 2, 4 latent channels, 1000 classes + null, 256-d frequency)."""
    h = HIDDEN
    layout: list[tuple[str, tuple[int, ...]]] = [
        ("x_embedder.proj.weight", (h, 4, 2, 2)),
        ("x_embedder.proj.bias", (h,)),
        ("t_embedder.mlp.0.weight", (h, 256)),
        ("t_embedder.mlp.0.bias", (h,)),
        ("t_embedder.mlp.2.weight", (h, h)),
        ("t_embedder.mlp.2.bias", (h,)),
        ("y_embedder.embedding_table.weight", (1001, h)),
    ]
    for i in range(n_blocks):
        b = f"blocks.{i}"
        layout += [
            (f"{b}.norm1.weight", (h,)),
            (f"{b}.norm1.bias", (h,)),
            (f"{b}.attn.qkv.weight", (3 * h, h)),
            (f"{b}.attn.qkv.bias", (3 * h,)),
            (f"{b}.attn.proj.weight", (h, h)),
            (f"{b}.attn.proj.bias", (h,)),
            (f"{b}.norm2.weight", (h,)),
            (f"{b}.norm2.bias", (h,)),
            (f"{b}.mlp.fc1.weight", (4 * h, h)),
            (f"{b}.mlp.fc1.bias", (4 * h,)),
            (f"{b}.mlp.fc2.weight", (h, 4 * h)),
            (f"{b}.mlp.fc2.bias", (h,)),
            (f"{b}.adaLN_modulation.1.weight", (6 * h, h)),
            (f"{b}.adaLN_modulation.1.bias", (6 * h,)),
        ]
    layout += [
        ("final_layer.adaLN_modulation.1.weight", (2 * h, h)),
        ("final_layer.adaLN_modulation.1.bias", (2 * h,)),
        ("final_layer.linear.weight", (32, h)),
        ("final_layer.linear.bias", (32,)),
    ]
    return layout


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def layout_bytes(layout: list[tuple[str, tuple[int, ...]]]) -> int:
    return sum(numel(s) for _, s in layout) * F16


def blocks_for(target_bytes: float) -> int:
    fixed = layout_bytes(dit_layout(0))
    per_block = layout_bytes(dit_layout(1)) - fixed
    return max(1, round((target_bytes - fixed) / per_block))


def write_checkpoint(path: Path, layout: list[tuple[str, tuple[int, ...]]], seed: int) -> float:
    """Generate every tensor (normal x 0.02, float16) and write one safetensors file; returns seconds."""
    import numpy as np
    from safetensors.numpy import save_file

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in layout:
        # float32 draws one tensor at a time, so the transient stays at one tensor
        tensors[name] = (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)).astype(np.float16)
    save_file(tensors, str(path), metadata={"format": "pt", "generator": "benchmarks/bench_model.py"})
    del tensors
    gc.collect()  # the child must not compete with ~2 GB of arrays held here
    return time.perf_counter() - start


def warm_read(path: Path) -> float:
    """Read the whole file once (like `cat path > /dev/null`) so the timed runs read from the page cache."""
    start = time.perf_counter()
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------------
# measured child runs

RUSAGE_HELPER = """
import resource, subprocess, sys, time
out_path, rss_path, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(out_path, "wb") as out:
    start = time.perf_counter()
    rc = subprocess.run(cmd, stdout=out).returncode
    wall = time.perf_counter() - start
with open(rss_path, "w") as f:
    f.write(f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss} {wall}")
sys.exit(rc)
"""


def parse_time_v(text: str) -> dict:
    """The figures we use from GNU time's -v report."""
    fields = {
        "max_rss_kb": r"Maximum resident set size \(kbytes\):\s*(\d+)",
        "cpu_percent": r"Percent of CPU this job got:\s*(\d+)%",
        "user_s": r"User time \(seconds\):\s*([\d.]+)",
        "system_s": r"System time \(seconds\):\s*([\d.]+)",
        "major_faults": r"Major \(requiring I/O\) page faults:\s*(\d+)",
        "minor_faults": r"Minor \(reclaiming a frame\) page faults:\s*(\d+)",
    }
    out = {}
    for key, pattern in fields.items():
        m = re.search(pattern, text)
        if m:
            out[key] = float(m.group(1)) if "." in m.group(1) else int(m.group(1))
    if "max_rss_kb" not in out:
        raise RuntimeError(f"no 'Maximum resident set size' in the /usr/bin/time -v output:\n{text}")
    return out


def run_measured(cmd: list[str], tmp: Path, use_time_v: bool) -> dict:
    """Run cmd in its own process tree; returns stdout, exit code, wall seconds and peak RSS of that child."""
    out_file = tmp / "child.stdout"
    stat_file = tmp / "child.rusage"
    if use_time_v:
        full = [str(TIME_V), "-v", "-o", str(stat_file), *cmd]
        start = time.perf_counter()
        proc = subprocess.run(full, capture_output=True)
        wall = time.perf_counter() - start
        stdout = proc.stdout
        stats = parse_time_v(stat_file.read_text()) if stat_file.exists() else {}
        rss_source = "/usr/bin/time -v"
    else:
        # a fresh interpreter per run: RUSAGE_CHILDREN is the max over all of a process's children
        # (the helper times the child itself, so its own start-up is not in the wall time)
        full = [sys.executable, "-c", RUSAGE_HELPER, str(out_file), str(stat_file), *cmd]
        proc = subprocess.run(full, stderr=subprocess.PIPE)
        stdout = out_file.read_bytes() if out_file.exists() else b""
        rss_kb, wall = stat_file.read_text().split() if stat_file.exists() else ("0", "nan")
        stats = {"max_rss_kb": int(rss_kb)}
        wall = float(wall)
        rss_source = "getrusage(RUSAGE_CHILDREN) in a helper interpreter"
    for f in (out_file, stat_file):
        f.unlink(missing_ok=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.decode(errors="replace"))
        sys.exit(f"error: {' '.join(cmd)} exited with {proc.returncode}")
    return {
        "stdout": stdout.decode(),
        "wall_s": wall,
        "rss_source": rss_source,
        "peak_rss_bytes": stats.get("max_rss_kb", 0) * 1024,
        **{k: v for k, v in stats.items() if k != "max_rss_kb"},
    }


def summarize_layers(layers: list[dict]) -> dict:
    kept: dict[str, int] = {}
    bits: dict[str, int] = {}
    for layer in layers:
        if layer.get("kept"):
            kept[layer["kept"]] = kept.get(layer["kept"], 0) + 1
        else:
            bits[str(layer["bits"])] = bits.get(str(layer["bits"]), 0) + 1
    return {"kept_by_reason": kept, "quantized_by_bits": bits}


def quantize_case(cli: Path, ckpt: Path, out: Path, extra: list[str], tmp: Path, args: argparse.Namespace) -> dict:
    runs = []
    for _ in range(args.repeats):
        out.unlink(missing_ok=True)
        warm_s = warm_read(ckpt)
        cmd = [str(cli), "quantize", str(ckpt), str(out), *extra, "--json", "--quiet"]
        r = run_measured(cmd, tmp, args.use_time_v)
        report = json.loads(r.pop("stdout"))
        r["warm_read_s"] = warm_s
        r["report"] = report
        runs.append(r)
    best = min(runs, key=lambda r: r["wall_s"])
    totals = best["report"]["totals"]
    return {
        "command": [Path(cli).name, "quantize", "CKPT", "OUT", *extra, "--json", "--quiet"],
        "runs": len(runs),
        "wall_s": best["wall_s"],
        "wall_s_all": [r["wall_s"] for r in runs],
        "gb_per_s_wall": totals["bytes_in"] / best["wall_s"] / GB,
        "gb_per_s_cli": totals["gb_per_s"],
        "cli_seconds": totals["seconds"],
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
        "rss_source": best["rss_source"],
        "cpu_percent": best.get("cpu_percent"),
        "user_s": best.get("user_s"),
        "system_s": best.get("system_s"),
        "major_faults": best.get("major_faults"),
        "minor_faults": best.get("minor_faults"),
        "warm_read_s": best["warm_read_s"],
        "output_bytes": out.stat().st_size,
        "totals": totals,
        "layers": summarize_layers(best["report"]["layers"]),
    }


def compare_case(ckpt: Path, out: Path, extra: list[str], tmp: Path, args: argparse.Namespace) -> dict:
    """This build against --baseline-cli on one case: runs alternate (baseline, this, baseline, ...), so both see
    the same machine load; the fastest run of each is compared."""
    walls: dict[str, list[float]] = {"baseline": [], "this": []}
    for _ in range(args.repeats):
        for name, cli in (("baseline", args.baseline_cli), ("this", args.cli)):
            out.unlink(missing_ok=True)
            warm_read(ckpt)
            cmd = [str(cli), "quantize", str(ckpt), str(out), *extra, "--json", "--quiet"]
            walls[name].append(run_measured(cmd, tmp, args.use_time_v)["wall_s"])
    return {
        "baseline_cli": str(args.baseline_cli),
        "wall_s_baseline": walls["baseline"],
        "wall_s_this": walls["this"],
        "throughput_ratio": min(walls["baseline"]) / min(walls["this"]),
    }


# ---------------------------------------------------------------------------------------------------------------
# report


def print_report(res: dict) -> None:
    ck = res["checkpoint"]
    tgt = res["targets"]
    print(f"\ncheckpoint: DiT-like, {ck['blocks']} blocks, {ck['tensors']} tensors, {ck['bytes'] / GB:.3f} GB "
          f"float16 ({ck['file_bytes'] / GB:.3f} GB file); largest tensor {ck['largest_name']} "
          f"{list(ck['largest_shape'])} = {ck['largest_bytes'] / MB:.1f} MB")
    print(f"page cache: the checkpoint was read once before every timed run (warm read "
          f"{res['warm_read_gbs']:.2f} GB/s), so these figures exclude the disk")
    print(f"peak RSS from {res['rss_source']}; GB = 1e9 bytes, MB = 1e6 bytes; "
          f"{res['repeats']} run(s) per case, fastest kept")

    header = (f"{'case':<20} {'wall s':>7} {'GB/s wall':>9} {'GB/s cli':>8} {'target':>8} {'peak RSS MB':>11} "
              f"{'RSS target':>10} {'CPU%':>5} {'out MB':>8} {'ratio':>6} {'bits/w':>6} {'worst cos':>9} "
              f"{'fallbk':>6} {'ok':>3}")
    print("\n" + header)
    print("-" * len(header))
    for key, label, _, target in CASES:
        c = res["cases"][key]
        t = c["totals"]
        ok = c["gb_per_s_wall"] >= target and c["peak_rss_bytes"] <= tgt["peak_rss_bytes"]
        cpu = "-" if c["cpu_percent"] is None else c["cpu_percent"]
        print(f"{label:<20} {c['wall_s']:>7.2f} {c['gb_per_s_wall']:>9.3f} {c['gb_per_s_cli']:>8.3f} "
              f"{'>= ' + format(target, '.1f'):>8} {c['peak_rss_bytes'] / MB:>11.1f} "
              f"{'<= ' + format(tgt['peak_rss_bytes'] / MB, '.0f'):>10} {cpu:>5} "
              f"{c['output_bytes'] / MB:>8.1f} {t['compression_ratio']:>6.2f} {t['bits_per_weight']:>6.2f} "
              f"{t['worst_cosine']:>9.5f} {t['fallbacks']:>6} {'yes' if ok else 'NO':>3}")
    for key, label, _, _ in CASES:
        b = res["cases"][key].get("baseline")
        if b:
            print(f"{label}: this build / baseline throughput {b['throughput_ratio']:.3f} (alternating; wall s "
                  f"this {', '.join(f'{w:.2f}' for w in b['wall_s_this'])}; baseline "
                  f"{', '.join(f'{w:.2f}' for w in b['wall_s_baseline'])})")
    for key, label, _, _ in CASES:
        lay = res["cases"][key]["layers"]
        kept = ", ".join(f"{k}: {v}" for k, v in sorted(lay["kept_by_reason"].items())) or "none"
        q = ", ".join(f"INT{k}: {v}" for k, v in sorted(lay["quantized_by_bits"].items())) or "none"
        print(f"{label}: quantized {q}; kept {kept}")

    v = res["validate"]
    print(f"\nvalidate ({v['of']} output): {'passed' if v['passed'] else 'FAILED'} "
          f"({v['layers_failed']} of {v['layers']} layers under the floor {v['floor']}), worst cosine "
          f"{v['worst_cosine']:.5f}; {v['wall_s']:.2f} s, peak RSS {v['peak_rss_bytes'] / MB:.1f} MB "
          f"(no target)")
    print(f"output file vs checkpoint file: {v['output_bytes'] / MB:.1f} MB vs {ck['file_bytes'] / MB:.1f} MB "
          f"= {ck['file_bytes'] / v['output_bytes']:.2f}x smaller")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"~{QUICK_TARGET_GB} GB checkpoint (smoke test)")
    parser.add_argument("--target-gb", type=float, default=None,
                        help=f"checkpoint size in GB (default {TARGET_GB}, with --quick {QUICK_TARGET_GB})")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per case (fastest is kept)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the checkpoint and outputs (default: a new folder under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and outputs")
    parser.add_argument("--cli", type=Path, default=DEFAULT_CLI, help="the arrow-quant binary")
    parser.add_argument("--baseline-cli", type=Path, default=None,
                        help="an older arrow-quant binary: each case also runs it, alternating with --cli "
                             "(--repeats runs each), and reports the throughput ratio of this build to it")
    parser.add_argument("--rusage", action="store_true",
                        help="measure peak RSS with getrusage in a helper interpreter even if /usr/bin/time exists")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-only", action="store_true",
                        help="run the memory section only (peak RSS at 64 MB / 256 MB / 1 GB tensors)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory section")
    parser.add_argument("--memory-sizes", nargs="*", default=None, choices=[k for k, _ in SIZES],
                        help="the memory section's largest-tensor sizes (default: all)")
    add_output_option(parser, NAME)
    args = parser.parse_args()
    args.output = output_path(NAME + (".memory" if args.memory_only else ""), args.quick, args.output)
    args.target_gb = args.target_gb or (QUICK_TARGET_GB if args.quick else TARGET_GB)
    args.use_time_v = TIME_V.is_file() and os.access(TIME_V, os.X_OK) and not args.rusage
    if not args.cli.is_file():
        sys.exit(f"error: {args.cli} not found; build it with `cargo build --release -p arrow-quant-cli`")
    if args.baseline_cli and not args.baseline_cli.is_file():
        sys.exit(f"error: --baseline-cli {args.baseline_cli} not found")

    load = load_before_run()

    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="bench_model_", dir=args.workdir))
    else:
        work = Path(tempfile.mkdtemp(prefix="bench_model_", dir="/tmp"))
    start = time.perf_counter()
    try:
        res = {} if args.memory_only else run(args, work, load)
        if not args.no_memory:
            res["memory"] = memory_section(
                args.cli, work, lambda cmd: run_measured(cmd, work, args.use_time_v), args.seed, args.memory_sizes)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    res["seconds"] = time.perf_counter() - start
    if not args.memory_only:
        print_report(res)
    if "memory" in res:
        print_memory(res["memory"])
    print(f"load average (1 min) before the run: {load:.2f}")
    print(f"\ntotal {res['seconds']:.1f} s")
    write_json(args.output, res)


def run(args: argparse.Namespace, work: Path, load: float) -> dict:
    n_blocks = blocks_for(args.target_gb * GB)
    layout = dit_layout(n_blocks)
    largest_name, largest_shape = max(layout, key=lambda t: numel(t[1]))
    largest = numel(largest_shape) * F16
    ckpt = work / "dit.safetensors"
    print(f"writing a {layout_bytes(layout) / GB:.2f} GB DiT-like checkpoint ({n_blocks} blocks) to {ckpt} ...",
          file=sys.stderr, flush=True)
    gen_s = write_checkpoint(ckpt, layout, args.seed)

    cases = {}
    for key, label, extra, _ in CASES:
        print(f"quantizing: {label} ...", file=sys.stderr, flush=True)
        out = work / f"{key}.parquet"
        cases[key] = quantize_case(args.cli, ckpt, out, extra, work, args)
        if args.baseline_cli:
            cases[key]["baseline"] = compare_case(ckpt, out, extra, work, args)
        if key != CASES[-1][0]:
            out.unlink(missing_ok=True)

    vkey = CASES[-1][0]
    vout = work / f"{vkey}.parquet"
    print("validating ...", file=sys.stderr, flush=True)
    warm_read(ckpt)
    v = run_measured([str(args.cli), "validate", str(ckpt), str(vout), "--json"], work, args.use_time_v)
    vrep = json.loads(v.pop("stdout"))
    vlayers = vrep.get("layers", [])

    import numpy as np

    import arrow_quant_v2

    return {
        "benchmark": NAME,
        "quick": args.quick,
        "checkpoint": {
            "kind": "DiT-XL-like, normal x 0.02, float16",
            "hidden": HIDDEN,
            "blocks": n_blocks,
            "tensors": len(layout),
            "bytes": layout_bytes(layout),
            "file_bytes": ckpt.stat().st_size,
            "largest_name": largest_name,
            "largest_shape": list(largest_shape),
            "largest_bytes": largest,
            "generate_s": gen_s,
        },
        "targets": {
            "peak_rss_bytes": RSS_FACTOR * largest + RSS_SLACK,
            "peak_rss_rule": f"<= {RSS_FACTOR} x largest tensor (float16 bytes) + {RSS_SLACK / MB:.0f} MB",
            "gb_per_s": {key: target for key, _, _, target in CASES},
        },
        "page_cache": "the checkpoint is read once before every timed run, so runs read from the page cache",
        "warm_read_gbs": ckpt.stat().st_size / warm_read(ckpt) / GB,
        "rss_source": v["rss_source"],
        "repeats": args.repeats,
        "gb": GB,
        "mb": MB,
        "cases": cases,
        "validate": {
            "of": vkey,
            "passed": bool(vrep.get("passed")),
            "floor": vrep.get("floor"),
            "layers": len(vlayers),
            "layers_failed": sum(1 for layer in vlayers if not layer.get("passed")),
            "worst_cosine": min((layer["cosine"] for layer in vlayers), default=float("nan")),
            "wall_s": v["wall_s"],
            "peak_rss_bytes": v["peak_rss_bytes"],
            "output_bytes": vout.stat().st_size,
        },
        "machine": machine_info(processor=True, numpy=np.__version__, arrow_quant_v2=arrow_quant_v2.__version__,
                                rayon_num_threads=rayon_threads()),
        "load_average_1min_before": load,
    }


if __name__ == "__main__":
    main()
