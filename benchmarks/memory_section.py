"""The memory section of bench_model.py: peak RSS of the `arrow-quant` CLI process at any tensor size (issue 13).

For each generated float16 checkpoint whose largest tensor is 64 MB, 256 MB or 1 GB (`[4096, 8192]`,
`[8192, 16384]`, `[32768, 16384]`, besides a few small DiT-like layers), and each profile's default width (edge:
INT2, local: INT4, cloud: INT8), it measures the peak RSS of

    arrow-quant quantize CKPT OUT --profile P --json --quiet
    arrow-quant validate CKPT OUT --json
    arrow-quant export OUT RESTORED.safetensors --dtype f32

each in its own process (the same `run_measured` as the throughput part), against the target of issue 13:
peak RSS <= 400 MB. For the 1 GB case it also checks that the large tensor is stored in several chunk rows and
round-trips bit-exactly: the exported float32 values equal `load_quantized(OUT)[name]`, and the chunk rows' shapes
add up to the source shape. Only RSS is measured here (no timing targets), so the section may run on a loaded
machine. The checkpoint is written streaming (one block of rows at a time), so the benchmark itself stays small.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

MB = 1e6
RSS_TARGET = 400 * MB
BIG = "blocks.0.mlp.fc1.weight"
SIZES = [
    # (key, shape of the largest tensor)
    ("64MB", (4096, 8192)),
    ("256MB", (8192, 16384)),
    ("1GB", (32768, 16384)),
]
PROFILES = ["edge", "local", "cloud"]
H = 1152


def layout(big: tuple[int, int]) -> list[tuple[str, tuple[int, ...]]]:
    """A first layer, a norm, an attention projection, the large tensor and a last layer."""
    return [
        ("x_embedder.proj.weight", (H, 4, 2, 2)),
        ("blocks.0.norm1.weight", (H,)),
        ("blocks.0.attn.qkv.weight", (3 * H, H)),
        (BIG, big),
        ("final_layer.linear.weight", (32, H)),
    ]


def write_streaming(path: Path, tensors: list[tuple[str, tuple[int, ...]]], seed: int) -> None:
    """A float16 safetensors file (normal x 0.02), written one block of rows at a time."""
    import numpy as np

    header: dict[str, Any] = {"__metadata__": {"format": "pt", "generator": "benchmarks/memory_section.py"}}
    offset = 0
    for name, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + 2 * n]}
        offset += 2 * n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, shape in tensors:
            rows = shape[0]
            rest = shape[1:]
            row_len = 1
            for d in rest:
                row_len *= d
            step = max(1, (16 << 20) // max(1, row_len))
            for r in range(0, rows, step):
                k = min(step, rows - r)
                block = rng.standard_normal((k, row_len), dtype=np.float32) * np.float32(0.02)
                f.write(block.astype("<f2").tobytes())


def chunk_rows(out: Path, name: str) -> list[list[int]]:
    """The `shape` of every row of tensor `name` in a Parquet model file (one per chunk row)."""
    import pyarrow.parquet as pq

    table = pq.read_table(out, columns=["name", "shape"])
    return [r["shape"] for r in table.to_pylist() if r["name"] == name]


def round_trip(cli: Path, out: Path, restored: Path, measured: Callable[[list[str]], dict]) -> tuple[dict, bool]:
    """Exports `out` as float32 (measured) and compares the large tensor with `load_quantized`'s values."""
    import numpy as np
    from safetensors.numpy import load_file

    import arrow_quant_v2

    run = measured([str(cli), "export", str(out), str(restored), "--dtype", "f32"])
    exported = load_file(str(restored))[BIG]
    loaded = arrow_quant_v2.load_quantized(out)[BIG]
    same = exported.dtype == np.float32 and exported.shape == loaded.shape and bool(np.array_equal(exported, loaded))
    del exported, loaded
    return run, same


def memory_section(cli: Path, work: Path, measured: Callable[[list[str]], dict], seed: int,
                   sizes: list[str] | None = None) -> dict:
    """Runs the section; `measured(cmd)` runs one command in its own process and returns its figures."""
    results: dict[str, Any] = {"target_peak_rss_bytes": RSS_TARGET, "cases": {}}
    for key, big in SIZES:
        if sizes and key not in sizes:
            continue
        ckpt = work / f"mem-{key}.safetensors"
        print(f"memory: writing the {key} checkpoint {list(big)} ...", file=sys.stderr, flush=True)
        write_streaming(ckpt, layout(big), seed)
        for profile in PROFILES:
            out = work / f"mem-{key}-{profile}.parquet"
            restored = work / f"mem-{key}-{profile}.restored.safetensors"
            print(f"memory: {key} --profile {profile} ...", file=sys.stderr, flush=True)
            q = measured([str(cli), "quantize", str(ckpt), str(out), "--profile", profile, "--json", "--quiet"])
            report = json.loads(q.pop("stdout"))
            v = measured([str(cli), "validate", str(ckpt), str(out), "--json"])
            vrep = json.loads(v.pop("stdout"))
            shapes = chunk_rows(out, BIG)
            e, same = round_trip(cli, out, restored, measured)
            e.pop("stdout", None)
            big_layer = next(layer for layer in report["layers"] if layer["name"] == BIG)
            case = {
                "largest_shape": list(big),
                "profile": profile,
                "encoding": big_layer.get("encoding"),
                "quantize_peak_rss_bytes": q["peak_rss_bytes"],
                "validate_peak_rss_bytes": v["peak_rss_bytes"],
                "export_peak_rss_bytes": e["peak_rss_bytes"],
                "quantize_wall_s": q["wall_s"],
                "validate_passed": vrep["passed"],
                "chunk_rows": len(shapes),
                "chunk_rows_add_up": sum(s[0] for s in shapes) == big[0] and all(s[1:] == [big[1]] for s in shapes),
                "round_trip_bit_exact": same,
                "output_bytes": out.stat().st_size,
            }
            case["ok"] = (
                max(case["quantize_peak_rss_bytes"], case["validate_peak_rss_bytes"], case["export_peak_rss_bytes"])
                <= RSS_TARGET
                and case["validate_passed"]
                and case["round_trip_bit_exact"]
                and case["chunk_rows_add_up"]
                and (key != "1GB" or case["chunk_rows"] > 1)
            )
            results["cases"][f"{key}-{profile}"] = case
            out.unlink(missing_ok=True)
            restored.unlink(missing_ok=True)
        ckpt.unlink(missing_ok=True)
    results["ok"] = all(c["ok"] for c in results["cases"].values())
    return results


def print_memory(res: dict) -> None:
    """The section's table."""
    header = (f"{'case':<14} {'encoding':<9} {'quantize MB':>11} {'validate MB':>11} {'export MB':>9} "
              f"{'target':>7} {'rows':>5} {'exact':>5} {'valid':>5} {'ok':>3}")
    print("\nmemory (peak RSS of the CLI process; MB = 1e6 bytes)\n" + header)
    print("-" * len(header))
    for key, c in res["cases"].items():
        print(f"{key:<14} {c['encoding'] or '-':<9} {c['quantize_peak_rss_bytes'] / MB:>11.1f} "
              f"{c['validate_peak_rss_bytes'] / MB:>11.1f} {c['export_peak_rss_bytes'] / MB:>9.1f} "
              f"{'<= ' + format(res['target_peak_rss_bytes'] / MB, '.0f'):>7} {c['chunk_rows']:>5} "
              f"{'yes' if c['round_trip_bit_exact'] else 'NO':>5} {'yes' if c['validate_passed'] else 'NO':>5} "
              f"{'yes' if c['ok'] else 'NO':>3}")
