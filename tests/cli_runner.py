"""The release `arrow-quant` binary for the CLI tests: `run_cli(*args)` runs it (a test is skipped when it is not
built)."""

import subprocess
from pathlib import Path

import pytest

CLI = Path(__file__).resolve().parents[1] / "target" / "release" / "arrow-quant"


def run_cli(*args) -> subprocess.CompletedProcess:
    if not CLI.exists():
        pytest.skip(f"{CLI} not built (make build)")
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, check=False)
