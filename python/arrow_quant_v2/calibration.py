"""`CalibrationRecorder`: collect calibration statistics from a diffusion model's sampling loop.

For every layer and denoising timestep it keeps the range of the layer's input activations (min, max), how many
activations were seen, and the largest magnitude per input channel. The result is the calibration table that
`read_calibration` / `write_calibration` accept (see docs/CALIBRATION.md). All reductions are vectorised numpy; the
recorder never looks at single elements in Python.

Feeding it from PyTorch forward pre-hooks (the package itself does not import torch)::

    import torch
    from arrow_quant_v2 import CalibrationRecorder

    recorder = CalibrationRecorder(num_timesteps=scheduler.config.num_train_timesteps)
    current_t = 0
    handles = []
    for name, module in unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            axis = 1 if isinstance(module, torch.nn.Conv2d) else -1
            handles.append(module.register_forward_pre_hook(
                lambda m, args, name=name, axis=axis: recorder.observe(
                    name, current_t, args[0].detach().float().cpu().numpy(), channel_axis=axis
                )
            ))
    with torch.no_grad():
        latents = torch.randn(1, 4, 64, 64)
        for t in scheduler.timesteps:
            current_t = int(t)
            noise = unet(latents, t, encoder_hidden_states=text_embeddings).sample
            latents = scheduler.step(noise, t, latents).prev_sample
    for h in handles:
        h.remove()
    recorder.write("calibration.parquet")
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np
import numpy.typing as npt

from ._core import read_calibration, write_calibration

__all__ = ["CalibrationRecorder"]


@dataclass
class _Stats:
    """What was seen of one layer at one timestep."""

    min: float
    max: float
    count: int
    channel_absmax: npt.NDArray[np.float32]


class CalibrationRecorder:
    """Accumulates per-(layer, timestep) activation statistics: min, max, count and per-channel absmax.

    `num_timesteps` is the sampler's number of training timesteps T (recorded timesteps lie in [0, T)).
    `channel_axis` is the input-channel axis of the activations: -1 for `Linear` inputs `[..., in_features]`,
    1 for convolution inputs `[N, C, H, W]`; `observe` can override it per call.
    """

    def __init__(self, num_timesteps: int = 1000, channel_axis: int = -1) -> None:
        num_timesteps = operator.index(num_timesteps)
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps = {num_timesteps}; expected a positive number of sampler timesteps")
        self._num_timesteps = num_timesteps
        self._channel_axis = operator.index(channel_axis)
        self._stats: dict[tuple[str, int], _Stats] = {}
        self._channels: dict[str, int] = {}

    @property
    def num_timesteps(self) -> int:
        """The sampler's number of timesteps T."""
        return self._num_timesteps

    @property
    def channel_axis(self) -> int:
        """The default input-channel axis of observed activations."""
        return self._channel_axis

    def observe(self, layer_name: str, timestep: int, activations: Any, *, channel_axis: int | None = None) -> None:
        """Adds the input activations of `layer_name` at `timestep` (anything `numpy.asarray` accepts).

        Raises `ValueError` for a timestep outside [0, num_timesteps), an empty array, non-finite values, or a
        channel count different from earlier calls for the same layer; `TypeError` for a non-numeric array.
        """
        if not isinstance(layer_name, str) or not layer_name:
            raise ValueError(f"layer_name = {layer_name!r}; expected a non-empty str")
        t = operator.index(timestep)
        if not 0 <= t < self._num_timesteps:
            raise ValueError(
                f"layer '{layer_name}': timestep {t} is outside [0, {self._num_timesteps}); "
                "record the sampler's timesteps (0 .. num_timesteps-1) or raise num_timesteps"
            )
        a = np.asarray(activations)
        if a.dtype.kind not in "fiu":
            raise TypeError(
                f"layer '{layer_name}', timestep {t}: activations have dtype {a.dtype}; expected a float array "
                "(e.g. tensor.detach().float().cpu().numpy())"
            )
        if a.size == 0:
            raise ValueError(f"layer '{layer_name}', timestep {t}: empty activations (shape {a.shape})")
        axis = self._channel_axis if channel_axis is None else operator.index(channel_axis)
        if a.ndim == 0 or not -a.ndim <= axis < a.ndim:
            raise ValueError(
                f"layer '{layer_name}', timestep {t}: channel_axis {axis} does not exist in activations of shape "
                f"{a.shape}; use -1 for Linear inputs [..., in_features] and 1 for conv inputs [N, C, H, W]"
            )
        axis %= a.ndim
        channels = a.shape[axis]
        known = self._channels.get(layer_name)
        if known is not None and known != channels:
            raise ValueError(
                f"layer '{layer_name}', timestep {t}: {channels} channels along axis {axis} (shape {a.shape}), "
                f"but earlier calls for this layer had {known}; check channel_axis"
            )
        # Two passes over the data: per-channel max and min. NaN and inf propagate into them, so the global
        # figures below also tell whether every value was finite.
        others = tuple(i for i in range(a.ndim) if i != axis)
        cmax = np.max(a, axis=others).astype(np.float64, copy=False)
        cmin = np.min(a, axis=others).astype(np.float64, copy=False)
        lo, hi = float(cmin.min()), float(cmax.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            bad = a.size - int(np.count_nonzero(np.isfinite(a)))
            raise ValueError(
                f"layer '{layer_name}', timestep {t}: {bad} of {a.size} activations are not finite (NaN or inf)"
            )
        absmax = np.maximum(cmax, -cmin).astype(np.float32)
        self._channels[layer_name] = channels
        key = (layer_name, t)
        s = self._stats.get(key)
        if s is None:
            self._stats[key] = _Stats(lo, hi, int(a.size), absmax)
        else:
            s.min = min(s.min, lo)
            s.max = max(s.max, hi)
            s.count += int(a.size)
            np.maximum(s.channel_absmax, absmax, out=s.channel_absmax)

    @property
    def layers(self) -> list[str]:
        """The names of the layers observed, sorted."""
        return sorted(self._channels)

    def __len__(self) -> int:
        """The number of (layer, timestep) rows."""
        return len(self._stats)

    def __repr__(self) -> str:
        return (
            f"CalibrationRecorder({len(self._channels)} layers, {len(self._stats)} rows, "
            f"num_timesteps={self._num_timesteps})"
        )

    def table(self) -> dict[str, object]:
        """The statistics in the dict form of a calibration table, one row per (layer, timestep), sorted."""
        keys = sorted(self._stats)
        rows = [self._stats[k] for k in keys]
        return {
            "layer_name": np.array([k[0] for k in keys], dtype=object),
            "timestep": np.array([k[1] for k in keys], dtype=np.int64),
            "min": np.array([r.min for r in rows], dtype=np.float64),
            "max": np.array([r.max for r in rows], dtype=np.float64),
            "count": np.array([r.count for r in rows], dtype=np.int64),
            "channel_absmax": [r.channel_absmax.copy() for r in rows],
            "num_timesteps": self._num_timesteps,
        }

    def write(self, path: str | PathLike[str]) -> None:
        """Validates the statistics and writes them as a Parquet calibration file (atomically)."""
        write_calibration(self.table(), path)

    def to_arrow(self) -> Any:
        """The validated statistics as a pyarrow Table (what `read_calibration` returns)."""
        return read_calibration(self.table())
