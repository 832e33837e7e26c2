"""Scale-out on Ray Data: many checkpoints (or one large one) quantized across a cluster.

``quantize_many(sources, output_dir, config)`` plans every checkpoint on the driver from its headers (no weight
bytes go through the object store) into units of work for a pool of Ray actors that read the checkpoints from
shared storage themselves. A checkpoint that is a small share of the run (at most 1 / (2 x pool) of its source
bytes, as in a catalogue of many) is one unit: an actor quantizes it whole with the local path, which overlaps
its writing with its quantization. A larger one (one too big for a node, or fewer checkpoints than workers) is
one unit per tensor: each result is staged in a file with a deterministic name, and the checkpoint is assembled on
an actor as soon as its units are done, with the writer of a local run. Either way each output is byte-identical
to ``arrow-quant quantize`` of that checkpoint with the same config. Under mixed
precision (a ``target_bits_per_weight``, or the automatic INT4 plan of the default config) estimate units measure
every quantized tensor first, and the first quantize unit of a checkpoint allocates its widths from those small
files. Everything runs in one pass over one pool, and a unit that needs a file no unit has staged yet (an
estimate, a plan, a quantized unit) makes it itself, so no actor waits for another. Re-running the same call
resumes (staged units, estimates, plans and finished outputs are skipped). See docs/SCALE_OUT.md.

Needs ``ray[data]`` (the extra ``arrow-quant-v2[ray]``); this module imports Ray only when it runs. Also a command
line: ``python -m arrow_quant_v2.distributed SOURCES... OUTPUT_DIR [--ray ADDRESS | --workers N]``, which the
``arrow-quant quantize-many`` command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import _core
from ._core import DiffusionQuantConfig, QuantizationError

__all__ = ["quantize_many", "format_report", "output_name", "main"]

#: Folder of the staged units under the output folder (one subfolder per checkpoint and config).
STAGING = ".arrow-quant-staging"

#: Source bytes per Ray task (a block of consecutive units), at least 4 blocks per worker.
BLOCK_BYTES = 64 << 20

#: How a run splits its checkpoints into units (`quantize_many`'s `units`).
UNITS = ("auto", "checkpoint", "tensor")

#: glibc's malloc settings of the worker processes (unless the driver's environment sets them): keep freed memory
#: for the next batch rather than handing it back to the kernel after each one, which made a third of an assembly's
#: time page faults (docs/SCALE_OUT.md, "What limits scaling").
WORKER_MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": str(512 << 20), "MALLOC_TOP_PAD_": str(64 << 20)}

#: How long a unit that finds a staged file missing waits for the actor that has it before making it itself.
PEER_WAIT_SECONDS = 10.0


def _wait_for(paths: list[Path], seconds: float) -> None:
    """Waits until every path exists or `seconds` have passed (an earlier unit still running on another actor
    usually stages it within moments; a lost one never does, and the caller then makes it)."""
    deadline = time.monotonic() + seconds
    while any(not p.exists() for p in paths) and time.monotonic() < deadline:
        time.sleep(0.01)


def _estimate_path(staging: Path, index: int) -> Path:
    """The staged estimate of tensor `index` in a checkpoint's staging folder."""
    return staging / f"{index:06d}.estimate.json"


def _staged_path(staging: Path, index: int) -> Path:
    """The staged row batches of tensor `index` in a checkpoint's staging folder."""
    return staging / f"{index:06d}.arrow"

_EXTENSIONS = {"parquet": ".parquet", "arrow": ".arrow"}


def _require_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:  # pragma: no cover - exercised only without ray
        raise ImportError(
            "arrow_quant_v2.distributed needs Ray Data: pip install 'arrow-quant-v2[ray]' (ray[data])"
        ) from e
    return ray


def output_name(source: str | os.PathLike[str], fmt: str = "parquet") -> str:
    """The output file name of a checkpoint: ``model.safetensors``, ``model.safetensors.index.json``, ``model.gguf``
    and a folder ``model/`` all give ``model.parquet`` (or ``.arrow``)."""
    path = Path(source)
    name = path.name
    for suffix in (".safetensors.index.json", ".safetensors", ".gguf"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name + _EXTENSIONS[fmt]


def _config_kwargs(config: DiffusionQuantConfig | None) -> dict[str, Any] | None:
    """Constructor arguments that rebuild `config` in a worker (checked: the rebuilt config is the same)."""
    if config is None:
        return None
    kwargs: dict[str, Any] = {
        name: getattr(config, name)
        for name in (
            "bit_width",
            "layout",
            "method",
            "quality_floor",
            "fail_fast",
            "min_elements",
            "keep_patterns",
            "keep_first_last",
            "format",
            "enable_time_aware",
            "num_time_groups",
            "time_grouping",
            "activation_bits",
            "boundary_smoothing",
            "smoothing_window",
            "enable_spatial",
            "unclipped_patterns",
            "target_bits_per_weight",
            "auto_mixed_precision",
        )
    }
    kwargs["profile"] = config.profile or "local"
    if config.layout == "flat":
        kwargs.update(group_size=config.group_size, symmetric=config.symmetric, scale_dtype=config.scale_dtype)
    if DiffusionQuantConfig(**kwargs).to_dict() != config.to_dict():  # pragma: no cover - a missed field
        raise _core.ConfigurationError(f"cannot ship {config!r} to the workers")
    return kwargs


def _source_stamp(source: Path) -> list[Any]:
    """Size and modification time of the checkpoint's files, so a changed checkpoint is not resumed."""
    if source.is_dir():
        paths = sorted(source.glob("*.safetensors")) + sorted(source.glob("*.index.json"))
    elif source.name.endswith(".index.json"):
        paths = sorted(source.parent.glob("*.safetensors")) + [source]
    else:
        paths = [source]
    stamp = []
    for p in paths:
        try:
            st = p.stat()
            stamp.append([p.name, st.st_size, st.st_mtime_ns])
        except OSError:
            stamp.append([p.name, None, None])
    return stamp


def _mark_attempt(staged: str) -> None:
    """Records one attempt at a unit: files ``<staged>.attempt-<n>``; attempts beyond the first are retries."""
    n = 0
    while True:
        try:
            fd = os.open(f"{staged}.attempt-{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            return
        except FileExistsError:
            n += 1


class _UnitWorker:
    """A Ray actor: loads the extension once, then does units: whole checkpoints into their outputs, estimates and
    quantized tensors into their staging files, and assemblies of staged checkpoints into their outputs."""

    def __init__(
        self,
        config: dict[str, Any] | None,
        threads: int,
        workers_dir: str,
        unit_delay: float = 0.0,
    ) -> None:
        # Before the first kernel call, which starts the thread pool.
        os.environ["RAYON_NUM_THREADS"] = str(threads)
        self._config = None if config is None else DiffusionQuantConfig(**config)
        self._delay = unit_delay
        Path(workers_dir).mkdir(parents=True, exist_ok=True)
        self._pid_file = Path(workers_dir) / str(os.getpid())
        self._pid_file.touch()
        # Plans this actor could not make (plan path -> error), so a failed checkpoint's other units fail fast.
        self._failed_plans: dict[str, str] = {}
        self._local = _core.ArrowQuantV2()

    @contextlib.contextmanager
    def _attempt(self, marker: str, delay: float) -> Iterator[None]:
        """One attempt at the unit whose attempts are marked `marker` (attempts beyond one per unit are the run's
        retries). Test runs sleep `delay` first, their pid file naming the unit in progress meanwhile."""
        _mark_attempt(marker)
        try:
            if delay:
                self._pid_file.write_text(marker)
                time.sleep(delay)
            yield
        finally:
            if delay:
                self._pid_file.write_text("")

    def _whole(self, source: str, staging: Path, output: str) -> str:
        """Quantizes a whole checkpoint into `output` with the local path (as `arrow-quant quantize` does) and
        returns its report totals as JSON. The output appears whole or not at all, so a retry starts afresh."""
        with self._attempt(str(staging / "checkpoint"), self._delay * 4):
            report = self._local.quantize_diffusion_model(source, output, self._config)
        return json.dumps(report["totals"])

    def _ensure_plan(self, source: str, staging: Path, plan: str, estimates: list[int]) -> None:
        """Makes the checkpoint's plan if no unit has yet: from its staged estimates, estimating here any tensor
        whose estimate is not staged within `PEER_WAIT_SECONDS` (so a unit never waits on a lost one).
        Deterministic and atomic, so two actors making the same plan write the same bytes."""
        if os.path.exists(plan):
            return
        if plan in self._failed_plans:
            raise QuantizationError(self._failed_plans[plan])
        try:
            paths = {i: _estimate_path(staging, i) for i in estimates}
            self._from_staged(
                "estimate", source, paths, None,
                lambda staged: _core.plan_from_estimates(source, staged, plan, self._config),
            )
        except QuantizationError as e:
            self._failed_plans[plan] = f"{type(e).__name__}: {e}"
            raise

    def _assemble(self, source: str, staging: Path, output: str, plan: str | None, tensors: int) -> str:
        """Writes the checkpoint's output from its staged units (quantizing here any unit not staged within
        `PEER_WAIT_SECONDS`, as a lost one) and returns its report totals as JSON."""
        paths = {i: _staged_path(staging, i) for i in range(tensors)}
        report = self._from_staged(
            "quantize", source, paths, plan,
            lambda staged: _core.assemble_units(source, staged, output, self._config, plan),
        )
        return json.dumps(report["totals"])

    def _from_staged(
        self, kind: str, source: str, paths: dict[int, Path], plan: str | None, read: Callable[[list[str]], Any]
    ) -> Any:
        """Returns `read` of the staged files `paths` (tensor index -> file) of `kind` units: waits up to
        `PEER_WAIT_SECONDS` for the actors that have them, makes here any still missing (as a lost one), and makes
        again any that `read` finds torn, once per file. Staged files are linked into place without waiting for the
        disk, so an operating-system crash before a resume can leave one torn; `read`'s error then begins with its
        path."""
        _wait_for(list(paths.values()), PEER_WAIT_SECONDS)
        make = {str(p): functools.partial(self._unit, kind, source, i, str(p), plan) for i, p in paths.items()}
        for path, make_one in make.items():
            if not os.path.exists(path):
                make_one()
        redone: set[str] = set()
        while True:
            try:
                return read(list(make))
            except QuantizationError as e:
                torn = next((p for p in make if p not in redone and str(e).startswith(f"{p}:")), None)
                if torn is None:
                    raise
                redone.add(torn)
                Path(torn).unlink(missing_ok=True)
                make[torn]()

    def _run(self, row: dict[str, Any]) -> str:
        """Does one unit; returns the report totals of a whole checkpoint or an assembly, else an empty string."""
        kind, source, staging, target = str(row["kind"]), str(row["source"]), Path(row["staging"]), str(row["target"])
        if kind == "checkpoint":
            return self._whole(source, staging, target)
        plan = str(row["plan"]) or None
        if plan is not None and kind != "estimate":
            self._ensure_plan(source, staging, plan, json.loads(str(row["estimates"])))
        if kind == "assemble":
            return self._assemble(source, staging, target, plan, int(row["index"]))
        # A unit staged by an earlier attempt (a retry after a lost worker, or a unit that needed it) is not redone.
        if not os.path.exists(target):
            self._unit(kind, source, int(row["index"]), target, plan)
        return ""

    def _unit(self, kind: str, source: str, index: int, target: str, plan: str | None) -> None:
        """Estimates or quantizes one tensor into `target`, recording the attempt."""
        with self._attempt(target, self._delay):
            if kind == "estimate":
                _core.estimate_unit(source, index, target, self._config)
            else:
                _core.quantize_unit(source, index, target, self._config, plan)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        columns = ("checkpoint", "kind", "bytes", "seconds", "error", "report")
        out: dict[str, list[Any]] = {k: [] for k in columns}
        for i in range(len(batch["kind"])):
            row = {k: v[i] for k, v in batch.items()}
            start = time.perf_counter()
            error = report = ""
            try:
                report = self._run(row)
            except (QuantizationError, OSError) as e:
                error = f"{type(e).__name__}: {e}"
            out["checkpoint"].append(int(row["checkpoint"]))
            out["kind"].append(str(row["kind"]))
            out["bytes"].append(int(row["bytes"]))
            out["seconds"].append(time.perf_counter() - start)
            out["error"].append(error)
            out["report"].append(report)
        return out


class _Checkpoint:
    """The driver's state of one checkpoint."""

    def __init__(self, number: int, source: str, output: Path) -> None:
        self.number = number
        self.source = source
        self.output = output
        self.staging: Path | None = None
        self.units: list[dict[str, Any]] = []
        self.status = "planned"
        self.error = ""
        self.seconds = 0.0
        self.summary: dict[str, Any] = {}
        self.retries = 0
        # The tensors with estimate units (set with the units; none when the config plans no mixed precision).
        self.estimated: list[int] = []
        # One unit for the whole checkpoint (quantized by the local path) rather than one per tensor.
        self.whole = False

    @functools.cached_property
    def nbytes(self) -> int:
        """The source bytes of the tensors it quantizes (once `units` is set)."""
        return sum(u["bytes"] for u in self.units)

    @property
    def expected_attempts(self) -> int:
        """Attempts of a run without retries."""
        return 1 if self.whole else len(self.units) + len(self.estimated)

    def staged(self, index: int) -> Path:
        assert self.staging is not None
        return _staged_path(self.staging, index)

    def estimate(self, index: int) -> Path:
        assert self.staging is not None
        return _estimate_path(self.staging, index)

    @property
    def plan(self) -> Path | None:
        return None if self.staging is None or not self.estimated else self.staging / "plan.json"

    @functools.cached_property
    def estimates_json(self) -> str:
        """`estimated` as the rows carry it: what a unit needs to make the plan if it is the first to need it."""
        return json.dumps(self.estimated)

    def unit_row(self, kind: str, index: int, nbytes: int = 0) -> dict[str, Any]:
        """The dataset row of one unit: an estimate or a quantize unit of tensor `index`, the assembly (`index`
        is then the count of tensors) or the whole checkpoint."""
        assert self.staging is not None
        if kind in ("assemble", "checkpoint"):
            target = self.output
        else:
            target = self.estimate(index) if kind == "estimate" else self.staged(index)
        return {
            "checkpoint": self.number,
            "kind": kind,
            "source": self.source,
            "index": index,
            "staging": str(self.staging),
            "target": str(target),
            "bytes": nbytes,
            "plan": str(self.plan or ""),
            "estimates": "[]" if kind == "estimate" else self.estimates_json,
        }

    def row(self) -> dict[str, Any]:
        s = self.summary
        return {
            "source": self.source,
            "output": str(self.output),
            "status": self.status,
            "tensors": s.get("tensors"),
            "bytes_in": s.get("bytes_in"),
            "bytes_out": s.get("bytes_out"),
            "worst_cosine": s.get("worst_cosine"),
            "seconds": self.seconds,
            "retries": self.retries,
            "error": self.error or None,
        }


class _Progress:
    """One line per finished checkpoint and an overall bar (units, bytes, ETA) on stderr."""

    def __init__(self, enabled: bool, units: int, nbytes: int) -> None:
        self.enabled = enabled
        self.units, self.bytes = units, nbytes
        self.done_units = self.done_bytes = 0
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def unit(self, nbytes: int) -> None:
        self.done_units += 1
        self.done_bytes += nbytes
        now = time.perf_counter()
        if self.enabled and (self.tty or now - self.last >= 5.0 or self.done_units == self.units):
            self.last = now
            self._bar(end="\r" if self.tty else "\n")

    def _bar(self, end: str) -> None:
        elapsed = time.perf_counter() - self.start
        rate = self.done_bytes / elapsed if elapsed > 0 else 0.0
        left = (self.bytes - self.done_bytes) / rate if rate > 0 else float("nan")
        frac = self.done_bytes / self.bytes if self.bytes else 1.0
        bar = "#" * int(frac * 30)
        eta = f"{left:5.1f} s" if left == left and self.done_units >= 3 else "   ? s"
        sys.stderr.write(
            f"[{bar:<30}] {self.done_units}/{self.units} units  {_mb(self.done_bytes)}/{_mb(self.bytes)}  "
            f"{rate / 1e6:7.1f} MB/s  ETA {eta}{end}"
        )
        sys.stderr.flush()

    def line(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(("\r\x1b[K" if self.tty else "") + text + "\n")
            sys.stderr.flush()


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def _describe(c: _Checkpoint) -> str:
    r = c.row()
    if c.status == "failed":
        return f"failed   {c.source}: {c.error}"
    cos = "-" if r["worst_cosine"] is None else f"{r['worst_cosine']:.4f}"
    return (
        f"{c.status:<8} {c.source} -> {c.output}  {r['tensors']} tensors  {_mb(r['bytes_in'])} -> "
        f"{_mb(r['bytes_out'])}  worst cosine {cos}  {c.seconds:.2f} s  {c.retries} retries"
    )


def _unit_rows(todo: list[_Checkpoint], units: str, pool: int) -> list[dict[str, Any]]:
    """The rows of the one pass over `pool` actors, in this order: every estimate unit (few and light), the whole
    checkpoints, largest first (so the small ones fill the end), then each split checkpoint's quantize units
    followed by the assembly of the split checkpoint before it (a lag of one, so that the units it assembles are
    done by the time an actor reaches it), then the last assembly. A unit that needs what an earlier one has not
    staged yet (a plan, an assembled unit) makes it itself, so no actor ever waits.

    `units` is ``checkpoint`` (every checkpoint whole), ``tensor`` (every one split) or ``auto``: whole when it
    is at most 1 / (2 x `pool`) of the run's bytes (there are then enough to keep the pool busy to the end) and no
    earlier run staged units of it (they are reused)."""
    run_bytes = sum(c.nbytes for c in todo)
    for c in todo:
        assert c.staging is not None
        if units == "auto":
            c.whole = c.nbytes * 2 * pool <= run_bytes and not any(c.staging.glob("*.arrow"))
        else:
            c.whole = units == "checkpoint"
    estimate_rows: list[dict[str, Any]] = []
    whole_rows = [c.unit_row("checkpoint", len(c.units), c.nbytes) for c in todo if c.whole]
    whole_rows.sort(key=lambda r: -r["bytes"])
    rows: list[dict[str, Any]] = []
    lagging: dict[str, Any] | None = None
    for c in (c for c in todo if not c.whole):
        plan = c.plan
        if plan is not None and not plan.exists():
            for u in c.units:
                if u["estimate"] and not c.estimate(u["index"]).exists():
                    estimate_rows.append(c.unit_row("estimate", u["index"], u["bytes"]))
        for u in c.units:
            if not c.staged(u["index"]).exists():
                rows.append(c.unit_row("quantize", u["index"], u["bytes"]))
        if lagging is not None:
            rows.append(lagging)
        lagging = c.unit_row("assemble", len(c.units))
    if lagging is not None:
        rows.append(lagging)
    return estimate_rows + whole_rows + rows


def _blocks(rows: list[dict[str, Any]], pool: int) -> list[list[dict[str, Any]]]:
    """`rows` cut into Ray tasks of consecutive units, each one call of an actor: blocks of about
    min(`BLOCK_BYTES`, bytes / (4 x `pool`)), enough to balance the pool, few enough that Ray's per-task cost
    stays small next to the quantization. A whole checkpoint is a block of its own."""
    target = max(1, min(BLOCK_BYTES, sum(r["bytes"] for r in rows) // (4 * pool)))
    blocks: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for r in rows:
        whole = r["kind"] == "checkpoint"
        if current and r["bytes"] and (size + r["bytes"] > target or whole):
            blocks.append(current)
            current, size = [], 0
        current.append(r)
        size += r["bytes"]
        if whole:
            blocks.append(current)
            current, size = [], 0
    if current:
        blocks.append(current)
    return blocks


def _init_ray(ray: Any, address: str | None, workers: int | None, threads: int) -> bool:
    """Connects to `address`, or keeps the running session, or starts a local cluster; True if started here."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "include_dashboard": False}
    if address is not None:
        ray.init(address=address, **kwargs)
    else:
        cpus = (workers or os.cpu_count() or 1) * threads
        ray.init(num_cpus=cpus, **kwargs)
    return True


def _map_units(
    ray: Any,
    ds: Any,
    config: dict[str, Any] | None,
    threads: int,
    staging_root: Path,
    unit_delay: float,
    pool: int,
    max_retries: int,
) -> Any:
    """The units through a fixed pool of `_UnitWorker` actors, one block of units per call, retries bounded."""
    settings = {
        "config": config,
        "threads": threads,
        "workers_dir": str(staging_root / "workers"),
        "unit_delay": unit_delay,
    }

    class _Worker(_UnitWorker):
        # The settings travel with the class (pickled by value), not as constructor arguments in the object
        # store, which a restarted actor could not get back if they were lost.
        def __init__(self) -> None:
            super().__init__(**settings)

    env = {k: v for k, v in WORKER_MALLOC_ENV.items() if k not in os.environ}
    return ds.map_batches(
        _Worker,
        batch_size=None,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=pool),
        num_cpus=threads,
        max_restarts=max_retries,
        max_task_retries=max_retries,
        runtime_env={"env_vars": env},
    )


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
    units: str = "auto",
    _unit_delay: float = 0.0,
) -> dict[str, Any]:
    """Quantizes every checkpoint of `sources` into ``output_dir/<name>.parquet`` (or ``.arrow``) on Ray.

    `address`: a Ray cluster to connect to (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``); without it the
    running Ray session is used, or a local cluster is started (and shut down at the end) with `workers` x
    `threads_per_worker` CPUs. `workers`: actors in the pool (default: the cluster's CPUs / `threads_per_worker`);
    each quantizes one tensor at a time with `threads_per_worker` kernel threads. A lost worker's units are retried
    up to `max_retries` times (Ray's actor restarts and task retries). A checkpoint that fails (bad file, bad
    weights) is reported and the others go on. Outputs that exist are skipped and staged units are reused, so
    re-running the same call resumes an interrupted run.

    `units`: how checkpoints become units of work. ``auto`` (the default) quantizes a checkpoint that is at most
    1 / (2 x the pool) of the run's source bytes whole on one actor, with the local path (the fastest way when there
    are many), and splits a larger one into one unit per tensor, staged and then assembled (the way one checkpoint
    spreads over many workers); ``checkpoint`` and ``tensor`` force one way. A lost worker loses the unit it had.

    Returns ``{"checkpoints": [...], "totals": {...}}``: per checkpoint `source`, `output`, `status`
    (``quantized``, ``skipped`` (the output existed) or ``failed``), `tensors`, `bytes_in`, `bytes_out`,
    `worst_cosine`, `seconds` (worker and assembly time), `retries`, `error`; totals with the wall `seconds` and
    `gb_per_s`. Raises `ConfigurationError` for settings the distributed path refuses (calibration: see
    docs/SCALE_OUT.md).
    """
    start = time.perf_counter()
    if units not in UNITS:
        raise ValueError(f"units must be one of {', '.join(UNITS)}, not {units!r}")
    _core.check_distributable_config(config)
    shipped = _config_kwargs(config)
    fmt = (config.format if config is not None else None) or "parquet"
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging_root = out_dir / STAGING
    # The settings as used (None is the default config), so that equal settings resume each other's units.
    # The format as written (a config without one writes `fmt`, the outputs' extension).
    settings = {**(config or DiffusionQuantConfig()).to_dict(), "format": fmt}
    config_json = json.dumps(settings, sort_keys=True)

    checkpoints: list[_Checkpoint] = []
    names: dict[str, str] = {}
    for number, source in enumerate(sources):
        src = os.fspath(source)
        name = output_name(src, fmt)
        if name in names:
            raise ValueError(f"{src} and {names[name]} would both be written to {out_dir / name}")
        names[name] = src
        checkpoints.append(_Checkpoint(number, src, out_dir / name))

    def staging_of(c: _Checkpoint) -> Path:
        """The checkpoint's staging folder: named by its output, source, config and source files' stamps."""
        key = hashlib.sha256(
            json.dumps([c.source, config_json, _source_stamp(Path(c.source))]).encode()
        ).hexdigest()[:16]
        return staging_root / f"{c.output.name}-{key}"

    todo: list[_Checkpoint] = []
    for c in checkpoints:
        if c.output.exists():
            c.status = "skipped"
            # A run stopped after the output appeared but before its staged units were removed left them.
            shutil.rmtree(staging_of(c), ignore_errors=True)
            try:
                meta = _core.load_quantized(c.output).metadata
                c.summary = json.loads(meta.get("arrow_quant.report", "{}"))
            except (QuantizationError, OSError, ValueError):
                pass
            continue
        try:
            c.units = _core.plan_units(c.source, config)
        except (QuantizationError, OSError) as e:
            c.status, c.error = "failed", f"{type(e).__name__}: {e}"
            continue
        c.staging = staging_of(c)
        c.staging.mkdir(parents=True, exist_ok=True)
        c.estimated = [u["index"] for u in c.units if u["estimate"]]
        todo.append(c)
    by_number = {c.number: c for c in checkpoints}

    def assembled(c: _Checkpoint, row: dict[str, Any]) -> None:
        """The assembly or the whole unit of `c` came back: its outcome is the checkpoint's (a unit's error before
        it is one the assembly did not hit again, a unit's error after it one from a redundant attempt)."""
        assert c.staging is not None
        if row["error"]:
            c.status, c.error = "failed", str(row["error"])
        else:
            c.status, c.error = "quantized", ""
            c.summary = json.loads(str(row["report"]))
            attempts = sum(1 for _ in c.staging.glob("*.attempt-*"))
            c.retries = max(0, attempts - c.expected_attempts)
            shutil.rmtree(c.staging, ignore_errors=True)
        bar.line(_describe(c))

    bar = _Progress(progress, 0, 0)
    for c in checkpoints:
        if c.status in ("skipped", "failed"):
            bar.line(_describe(c))

    started_here = False
    all_rows: list[dict[str, Any]] = []
    if todo:
        ray = _require_ray()
        started_here = _init_ray(ray, address, workers, threads_per_worker)
        ray_data_log = logging.getLogger("ray.data")
        ray_data_level = ray_data_log.level
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # this module draws its own
            ray_data_log.setLevel(logging.ERROR)
            pool = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // threads_per_worker)
            blocks = _blocks(_unit_rows(todo, units, pool), pool)
            all_rows = [r for b in blocks for r in b]
            bar.units, bar.bytes = len(all_rows), sum(r["bytes"] for r in all_rows)
            import pyarrow as pa  # with ray[data]

            ds = ray.data.from_arrow([pa.Table.from_pylist(b) for b in blocks])
            with warnings.catch_warnings():
                # Ray 2.60 has no named parameter for actor restarts and task retries: they still go through
                # `**ray_remote_args`, which warns that it is deprecated.
                warnings.simplefilter("ignore", DeprecationWarning)
                results = _map_units(ray, ds, shipped, threads_per_worker, staging_root, _unit_delay, pool, max_retries)
            for row in results.iter_rows():
                c = by_number[int(row["checkpoint"])]
                bar.unit(int(row["bytes"]))
                c.seconds += float(row["seconds"])
                if row["kind"] in ("assemble", "checkpoint"):
                    assembled(c, row)
        finally:
            ray_data_log.setLevel(ray_data_level)
            if started_here:
                ray.shutdown()
    shutil.rmtree(staging_root / "workers", ignore_errors=True)
    try:
        staging_root.rmdir()  # only when no checkpoint left units behind
    except OSError:
        pass

    seconds = time.perf_counter() - start
    done = [c for c in checkpoints if c.status == "quantized"]
    bytes_in = sum(c.summary.get("bytes_in", 0) for c in done)
    return {
        "checkpoints": [c.row() for c in checkpoints],
        "totals": {
            "checkpoints": len(checkpoints),
            "quantized": len(done),
            "skipped": sum(c.status == "skipped" for c in checkpoints),
            "failed": sum(c.status == "failed" for c in checkpoints),
            "units": len(all_rows),
            "bytes_in": bytes_in,
            "bytes_out": sum(c.summary.get("bytes_out", 0) for c in done),
            "retries": sum(c.retries for c in checkpoints),
            "seconds": seconds,
            "gb_per_s": bytes_in / 1e9 / max(seconds, 1e-9),
        },
    }


def format_report(report: dict[str, Any]) -> str:
    """The final report as a table: one line per checkpoint, then the totals."""
    head = f"{'checkpoint':<40} {'status':<9} {'tensors':>7} {'in':>10} {'out':>10} {'worst cos':>9} "
    head += f"{'seconds':>8} {'retries':>7}"
    lines = [head, "-" * len(head)]
    for r in report["checkpoints"]:
        cos = "-" if r["worst_cosine"] is None else f"{r['worst_cosine']:.4f}"
        tensors = "-" if r["tensors"] is None else str(r["tensors"])
        lines.append(
            f"{Path(r['source']).name[:40]:<40} {r['status']:<9} {tensors:>7} {_mb(r['bytes_in']):>10} "
            f"{_mb(r['bytes_out']):>10} {cos:>9} {r['seconds']:>8.2f} {r['retries']:>7}"
        )
        if r["error"]:
            lines.append(f"    {r['error']}")
    t = report["totals"]
    lines.append(
        f"{t['quantized']} quantized, {t['skipped']} skipped, {t['failed']} failed; {t['units']} units, "
        f"{_mb(t['bytes_in'])} in {t['seconds']:.2f} s ({t['gb_per_s']:.3f} GB/s), {t['retries']} retries"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m arrow_quant_v2.distributed SOURCES... OUTPUT_DIR``: exit 0 if every checkpoint is done, 2 if
    one failed or the input is bad."""
    p = argparse.ArgumentParser(prog="arrow-quant quantize-many", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", metavar="SOURCES... OUTPUT_DIR")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--ray", metavar="ADDRESS", help="Ray cluster address (default: a local cluster)")
    where.add_argument("--workers", type=int, help="workers of a local cluster (default: one per CPU)")
    p.add_argument("--pool", type=int, help="actors in the pool on a --ray cluster (default: its CPUs)")
    p.add_argument("--threads-per-worker", type=int, default=1)
    p.add_argument("--profile", default="local", choices=["edge", "local", "cloud"])
    p.add_argument("--bits", type=int)
    p.add_argument("--floor", type=float)
    p.add_argument("--target-bpw", type=float, help="mixed precision: stored bits per weight over the whole model")
    p.add_argument(
        "--no-auto-mixed-precision", action="store_true", help="every layer at --bits: no automatic plan at INT4"
    )
    p.add_argument("--format", default="parquet", choices=["parquet", "arrow"])
    p.add_argument("--max-retries", type=int, default=3)
    p.add_argument(
        "--units",
        default="auto",
        choices=list(UNITS),
        help="units of work: a whole checkpoint, a tensor, or auto (whole when a checkpoint is a small share)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    args = p.parse_args(argv)
    if len(args.paths) < 2:
        p.error("give at least one source and the output folder")
    *sources, output_dir = args.paths
    overrides: dict[str, Any] = {"format": args.format}
    if args.bits is not None:
        overrides["bit_width"] = args.bits
    if args.floor is not None:
        overrides["quality_floor"] = args.floor
    if args.target_bpw is not None:
        overrides["target_bits_per_weight"] = args.target_bpw
    if args.no_auto_mixed_precision:
        overrides["auto_mixed_precision"] = False
    try:
        config = DiffusionQuantConfig.from_profile(args.profile, **overrides)
        report = quantize_many(
            sources,
            output_dir,
            config,
            address=args.ray,
            workers=args.workers if args.ray is None else args.pool,
            progress=not args.quiet,
            threads_per_worker=args.threads_per_worker,
            max_retries=args.max_retries,
            units=args.units,
            _unit_delay=float(os.environ.get("ARROW_QUANT_TEST_UNIT_DELAY", "0")),
        )
    except (QuantizationError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 2 if report["totals"]["failed"] else 0


if __name__ == "__main__":
    # Run the module's own copy (not __main__'s), so that Ray ships the worker class by reference.
    from arrow_quant_v2.distributed import main as _main

    sys.exit(_main())
