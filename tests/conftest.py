"""Shared fixtures: the quantizer and the standard benchmark tensor of ../shared/bench/weights.py."""

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import arrow_quant_v2 as aq

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ARROW_QUANT_SHARED", REPO.parent / "shared"))


def load_bench_weights():
    """The `weights` module of shared/bench (the standard tensor and the metrics every report quotes)."""
    path = SHARED / "bench" / "weights.py"
    if not path.exists():
        pytest.skip(f"shared benchmark module not found at {path} (set ARROW_QUANT_SHARED)")
    spec = importlib.util.spec_from_file_location("bench_weights", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_weights", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def bench_weights():
    return load_bench_weights()


@pytest.fixture()
def quantizer():
    return aq.ArrowQuantV2()


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(20261126)
