"""Helpers shared by the benchmark scripts in this folder.

The scripts run as `python benchmarks/<script>.py`, so this folder is on `sys.path` and they import from here
with `from _common import ...`. What lives here:

- `REPO_ROOT`, `results_paths`, `add_output_option`, `output_path`, `write_json`: where a run's JSON goes
  (`benchmarks/results/<name>.json`, or `<name>.quick.json` for a `--quick` smoke test, so a smoke test never
  overwrites the real figures) and writing it;
- `load_shared_weights`: the standard tensor and metrics of `../shared/bench/weights.py`;
- `time_once`, `best_time`, `best_time_and_result`, `timed`, `interleaved_best`: best-of-N timing;
- `load_average`, `load_before_run`: the 1-minute load average, with a warning when the machine is busy;
- `rayon_threads`, `describe_rayon_threads`, `machine_info`: the environment a run was measured in;
- `rerun_with_env`: re-runs the script with environment variables that must be set before the process starts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

# Above this 1-minute load average the run starts with a warning: other work makes the figures noisy.
BUSY_LOAD = 0.5
NOISY = "other work on the machine makes these figures noisy"


# ---------------------------------------------------------------------------------------------------------------
# results


def results_paths(name: str) -> tuple[Path, Path]:
    """The JSON paths of benchmark `name`: (full run `results/<name>.json`, smoke test `results/<name>.quick.json`)."""
    return RESULTS_DIR / f"{name}.json", RESULTS_DIR / f"{name}.quick.json"


def add_output_option(parser: argparse.ArgumentParser, name: str) -> None:
    """Add `--output PATH` (default: `results_paths(name)`, the quick one with `--quick`) to `parser`."""
    results, quick_results = results_paths(name)
    parser.add_argument("--output", type=Path, default=None,
                        help=f"JSON output (default {results.relative_to(REPO_ROOT)}; "
                        f"with --quick: {quick_results.name})")


def output_path(name: str, quick: bool, override: Path | None = None) -> Path:
    """Where the JSON of benchmark `name` goes: `override` if given, else its full-run or `--quick` path."""
    if override:
        return override
    results, quick_results = results_paths(name)
    return quick_results if quick else results


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write `report` as indented JSON to `path` (creating its folder) and say so on stdout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------------------------
# the shared standard tensor


def load_shared_weights() -> ModuleType:
    """Import shared/bench/weights.py (beside the repo, or where ARROW_QUANT_SHARED points)."""
    override = os.environ.get("ARROW_QUANT_SHARED")
    shared = Path(override).expanduser().resolve() if override else REPO_ROOT.parent / "shared"
    bench = shared / "bench"
    if not (bench / "weights.py").is_file():
        how = "ARROW_QUANT_SHARED" if override else "the default location beside the repo"
        sys.exit(
            f"error: {bench / 'weights.py'} not found ({how}). The standard tensor lives in "
            "shared/bench/weights.py; set ARROW_QUANT_SHARED=/path/to/shared (the folder that holds bench/)."
        )
    sys.path.insert(0, str(bench))
    import weights  # the folder is only known at run time

    return weights


# ---------------------------------------------------------------------------------------------------------------
# timing


def time_once(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes; its result is dropped inside the timed region."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """The best of `repeats` timed calls of `fn` (inf when `repeats` is 0)."""
    return min((time_once(fn) for _ in range(repeats)), default=float("inf"))


def best_time_and_result(fn: Callable[[], T], repeats: int) -> tuple[float, T | None]:
    """The best of `repeats` timed calls of `fn`, and the result of the last call (None when `repeats` is 0)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def timed(fn: Callable[[], object]) -> Callable[[], dict[str, float]]:
    """Wrap `fn` as an `interleaved_best` variant: one call, returning {"s": seconds}."""

    def run() -> dict[str, float]:
        start = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - start
        del out  # freed outside the timed region, like the kernel's results in _kernel_seconds
        return {"s": elapsed}

    return run


def interleaved_best(variants: dict[str, Callable[[], dict[str, float]]], repeats: int,
                     limits: dict[str, int] | None = None) -> dict[str, float]:
    """Round-robin rounds, the order rotated each round; the best of every named time is kept.

    A variant returns {"s": seconds, ...}; its figures are stored as `name` ("s") and `name_key` (others).
    `limits` caps the number of rounds of slow variants.
    """
    limits = limits or {}
    names = list(variants)
    best: dict[str, float] = {}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if r >= limits.get(name, repeats):
                continue
            for key, value in variants[name]().items():
                full = name if key == "s" else f"{name}_{key}"
                best[full] = min(best.get(full, float("inf")), value)
    return best


# ---------------------------------------------------------------------------------------------------------------
# environment


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def load_before_run(noisy: str = NOISY) -> float:
    """The 1-minute load average before a run; above `BUSY_LOAD`, warn on stderr that `noisy`."""
    load = load_average()
    if load > BUSY_LOAD:
        print(f"warning: load average {load:.2f} before the run: {noisy}", file=sys.stderr)
    return load


def rayon_threads() -> str | None:
    """RAYON_NUM_THREADS as set in the environment (None when unset)."""
    return os.environ.get("RAYON_NUM_THREADS")


def describe_rayon_threads() -> str:
    """RAYON_NUM_THREADS for a report line, or what rayon does when it is unset."""
    return os.environ.get("RAYON_NUM_THREADS", f"unset (rayon default; {os.cpu_count()} CPUs)")


def rerun_with_env(env: dict[str, str]) -> None:
    """Re-runs the calling script (same arguments) with `env` added, unless it already has those values: for
    settings read once, when a library starts (rayon's RAYON_NUM_THREADS, when its pool starts; OpenBLAS's
    OPENBLAS_NUM_THREADS, when numpy loads it)."""
    if all(os.environ.get(k) == v for k, v in env.items()):
        return
    script = str(Path(sys.argv[0]).resolve())
    os.execve(sys.executable, [sys.executable, script, *sys.argv[1:]], {**os.environ, **env})


def machine_info(processor: bool = False, **versions: object) -> dict[str, object]:
    """CPU count, platform, (processor,) Python version, then `versions` in the order given, for the JSON."""
    info: dict[str, object] = {"cpu_count": os.cpu_count(), "platform": platform.platform()}
    if processor:
        info["processor"] = platform.processor()
    info["python"] = platform.python_version()
    info.update(versions)
    return info
