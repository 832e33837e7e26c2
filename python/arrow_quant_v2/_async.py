"""`AsyncArrowQuantV2`: awaitable versions of the long calls of `ArrowQuantV2`.

The Rust core releases the GIL for all heavy work, so running the blocking calls in a worker thread lets an
asyncio program (a server, a notebook) keep serving while a model is quantized. Progress callbacks are invoked on
that worker thread.

Cancelling the awaiting task (`task.cancel()`) stops a model run: the worker stops after the tensor in progress,
the output file is not written (nor any temporary file left), and `asyncio.CancelledError` reaches the caller
once the worker has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import Callable
from os import PathLike
from typing import Any, Literal

from ._core import ArrowQuantV2, CancelledError, DiffusionQuantConfig

_Path = str | PathLike[str]


def _identity(path: _Path) -> tuple[int, int, int] | None:
    """The file at `path` as (device, inode, mtime): a rename into place changes it. None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


class AsyncArrowQuantV2:
    """Async front of `ArrowQuantV2`: `await q.quantize_diffusion_model(...)` and friends."""

    def __init__(self, mode: Literal["diffusion"] = "diffusion") -> None:
        self._sync = ArrowQuantV2(mode=mode)

    @property
    def mode(self) -> str:
        return self._sync.mode

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))

    async def _run_model(
        self,
        fn: Callable[..., Any],
        source: _Path,
        output: _Path,
        config: DiffusionQuantConfig | None,
        progress_callback: Callable[[str, float], object] | None,
        calibration: Any,
    ) -> Any:
        """Runs a model call on a worker thread; a cancelled task stops it through its progress callback (an
        exception raised there sets the core's cancel flag) and waits for it to clean up."""
        stop = threading.Event()

        def progress(name: str, fraction: float) -> object:
            if stop.is_set():
                raise CancelledError("the asyncio task was cancelled")
            return None if progress_callback is None else progress_callback(name, fraction)

        before = _identity(output)
        worker = asyncio.get_running_loop().run_in_executor(
            None, functools.partial(fn, source, output, config, progress, calibration)
        )
        try:
            return await asyncio.shield(worker)
        except asyncio.CancelledError:
            stop.set()
            # The worker removes its temporary file when it stops: wait for that before the cancel propagates.
            with contextlib.suppress(Exception):
                await worker
            # A run whose last tensor was done when the cancel arrived may have renamed its output into place.
            if _identity(output) not in (None, before):
                with contextlib.suppress(OSError):
                    os.unlink(output)
            raise

    async def quantize_diffusion_model(
        self,
        model_path: _Path,
        output_path: _Path,
        config: DiffusionQuantConfig | None = None,
        progress_callback: Callable[[str, float], object] | None = None,
        calibration: Any = None,
    ) -> dict[str, Any]:
        return await self._run_model(
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
        return await self._run_model(
            self._sync.quantize_from_safetensors, safetensors_path, output_path, config, progress_callback, calibration
        )

    async def validate_quality(self, original_path: _Path, quantized_path: _Path) -> dict[str, Any]:
        return await self._run(self._sync.validate_quality, original_path, quantized_path)

    def get_markov_metrics(self, threshold: float = 0.1) -> dict[str, Any] | None:
        """Markov metrics of the last run with time-aware parameters (immediate: nothing to wait for)."""
        return self._sync.get_markov_metrics(threshold)

    def __repr__(self) -> str:
        return f"AsyncArrowQuantV2(mode={self.mode!r})"
