"""`quantize_batch` and `quantize_batch_with_progress`: results, failures, progress, GIL release."""

import threading
import time

import numpy as np
import pytest

import arrow_quant_v2 as aq


def layers(rng, count=6, shape=(64, 128)):
    return {f"blocks.{i}.w": rng.standard_normal(shape).astype(np.float32) for i in range(count)}


def test_batch_equals_single_calls_and_keeps_order(quantizer, rng):
    weights = layers(rng)
    result = quantizer.quantize_batch(weights, bit_width=2, group_size=64, method="rtn")
    assert isinstance(result, dict) and isinstance(result, aq.BatchResult)
    assert list(result) == list(weights)
    assert result.errors == {}
    for name, w in weights.items():
        single = quantizer.quantize(w, bit_width=2, group_size=64, method="rtn", name=name)
        assert np.array_equal(result[name].data, single.data)
        assert result[name].name == name


def test_batch_defaults(quantizer, rng):
    result = quantizer.quantize_batch(layers(rng, 2))
    t = next(iter(result.values()))
    # the default method is "auto": the two-level encoding at 4 bits (32-element sub-blocks)
    assert (t.bits, t.group_size, t.symmetric, t.method, t.encoding) == (4, 32, False, None, "int4_2l")
    assert t.encoding == "int4_2l" and t.params is not None


def test_failure_raises_without_continue_on_error(quantizer, rng):
    weights = layers(rng)
    weights["blocks.2.w"][0, 0] = np.nan
    with pytest.raises(aq.InvalidWeightsError, match="blocks.2.w"):
        quantizer.quantize_batch(weights)


def test_continue_on_error_reports_the_failed_layers(quantizer, rng):
    weights = layers(rng)
    weights["blocks.1.w"][5, 7] = np.inf
    weights["blocks.4.w"][0, 1] = np.nan
    result = quantizer.quantize_batch(weights, continue_on_error=True)
    assert set(result) == set(weights) - {"blocks.1.w", "blocks.4.w"}
    assert set(result.errors) == {"blocks.1.w", "blocks.4.w"}
    assert isinstance(result.errors["blocks.1.w"], aq.InvalidWeightsError)
    assert "element 647" in str(result.errors["blocks.1.w"])


def test_progress_is_reported_on_the_calling_thread(quantizer, rng):
    weights = layers(rng, 8)
    weights["big"] = rng.standard_normal((256, 256)).astype(np.float32)
    calls = []
    caller = threading.get_ident()

    def progress(name, fraction):
        calls.append((name, fraction, threading.get_ident()))

    quantizer.quantize_batch_with_progress(weights, bit_width=4, progress_callback=progress)
    assert sorted(name for name, _, _ in calls) == sorted(weights)
    fractions = [f for _, f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert all(thread == caller for _, _, thread in calls)


def test_progress_counts_failed_layers_with_continue_on_error(quantizer, rng):
    weights = layers(rng, 3)
    weights["blocks.0.w"][0, 0] = np.nan
    seen = []
    result = quantizer.quantize_batch_with_progress(
        weights, progress_callback=lambda n, f: seen.append(n), continue_on_error=True
    )
    assert sorted(seen) == sorted(weights)
    assert list(result.errors) == ["blocks.0.w"]


def test_callback_exception_stops_the_batch_and_propagates(quantizer, rng):
    weights = layers(rng, 40, (128, 256))
    calls = []

    class Stop(Exception):
        pass

    def progress(name, fraction):
        calls.append(name)
        raise Stop(name)

    with pytest.raises(Stop):
        quantizer.quantize_batch_with_progress(weights, progress_callback=progress)
    assert len(calls) == 1


def test_the_gil_is_released_during_a_large_batch(quantizer, rng):
    weights = {f"l{i}": rng.standard_normal((1024, 1024)).astype(np.float32) for i in range(8)}
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    thread = threading.Thread(target=ticker)
    thread.start()
    try:
        time.sleep(0.01)
        start = time.perf_counter()
        quantizer.quantize_batch(weights, method="mse")
        end = time.perf_counter()
    finally:
        stop.set()
        thread.join()
    during = [t for t in ticks if start < t < end]
    # With the GIL held for the whole call the other thread could not run at all while it lasted.
    assert len(during) >= 3, (len(during), end - start)


def test_empty_batch(quantizer):
    assert dict(quantizer.quantize_batch({})) == {}
    assert dict(quantizer.quantize_batch_with_progress({}, progress_callback=lambda n, f: None)) == {}
