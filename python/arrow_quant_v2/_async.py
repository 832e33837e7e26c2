"""`AsyncArrowQuantV2`: awaitable versions of the long calls of `ArrowQuantV2`.

The Rust core releases the GIL for all heavy work, so running the blocking calls in a worker thread lets an
asyncio program (a server, a notebook) keep serving while a model is quantized. Progress callbacks are invoked on
that worker thread.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from os import PathLike
from typing import Any, Literal

from ._core import ArrowQuantV2, DiffusionQuantConfig

_Path = str | PathLike[str]


class AsyncArrowQuantV2:
    """Async front of `ArrowQuantV2`: `await q.quantize_diffusion_model(...)` and friends."""

    def __init__(self, mode: Literal["diffusion"] = "diffusion") -> None:
        self._sync = ArrowQuantV2(mode=mode)

    @property
    def mode(self) -> str:
        return self._sync.mode

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))

    async def quantize_diffusion_model(
        self,
        model_path: _Path,
        output_path: _Path,
        config: DiffusionQuantConfig | None = None,
        progress_callback: Callable[[str, float], object] | None = None,
        calibration: Any = None,
    ) -> dict[str, Any]:
        return await self._run(
            self._sync.quantize_diffusion_model, model_path, output_path, config, progress_callback, calibration
        )

    async def quantize_from_safetensors(
        self,
        safetensors_path: _Path,
        output_path: _Path,
        config: DiffusionQuantConfig | None = None,
        progress_callback: Callable[[str, float], object] | None = None,
        calibration: Any = None,
    ) -> dict[str, Any]:
        return await self._run(
            self._sync.quantize_from_safetensors, safetensors_path, output_path, config, progress_callback, calibration
        )

    async def validate_quality(self, original_path: _Path, quantized_path: _Path) -> dict[str, Any]:
        return await self._run(self._sync.validate_quality, original_path, quantized_path)

    def get_markov_metrics(self, threshold: float = 0.1) -> dict[str, Any] | None:
        """Markov metrics of the last run with time-aware parameters (immediate: nothing to wait for)."""
        return self._sync.get_markov_metrics(threshold)

    def __repr__(self) -> str:
        return f"AsyncArrowQuantV2(mode={self.mode!r})"
