"""Stubs of arrow_quant_v2.distributed (scale-out on Ray Data; Ray itself is imported only at run time)."""

import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from ._core import DiffusionQuantConfig

__all__ = ["quantize_many", "format_report", "output_name", "main"]

STAGING: str
UNITS: tuple[str, ...]

def output_name(source: str | os.PathLike[str], fmt: str = "parquet") -> str: ...
def quantize_many(
    sources: Iterable[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    config: DiffusionQuantConfig | None = None,
    *,
    address: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    threads_per_worker: int = 1,
    max_retries: int = 3,
    units: Literal["auto", "checkpoint", "tensor"] = "auto",
    _unit_delay: float = 0.0,
) -> dict[str, Any]: ...
def format_report(report: dict[str, Any]) -> str: ...
def main(argv: Sequence[str] | None = None) -> int: ...
