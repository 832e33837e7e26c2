"""Calibration statistics from Python: CalibrationRecorder, read_calibration / write_calibration in every input
form, and every documented error path."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import arrow_quant_v2 as aq
from arrow_quant_v2 import CalibrationError, CalibrationRecorder, read_calibration, write_calibration

KEY = "arrow_quant.num_timesteps"


def num_timesteps(table: pa.Table) -> int:
    return int(table.schema.metadata[KEY.encode()])


def rows(table: pa.Table) -> dict[tuple[str, int], dict]:
    return {(r["layer_name"], r["timestep"]): r for r in table.to_pylist()}


def small_dict(**overrides):
    d = {
        "layer_name": ["down.0", "down.0", "up.1"],
        "timestep": [0, 5, 0],
        "min": [-1.0, -2.0, 0.0],
        "max": [1.0, 2.0, 0.5],
        "count": [10, 20, 30],
        "channel_absmax": [np.array([1.0, 0.5], dtype=np.float32), np.array([2.0, 1.0]), None],
        "num_timesteps": 10,
    }
    d.update(overrides)
    return d


# --- the recorder --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "axis"), [((2, 7, 16), -1), ((3, 8, 5, 5), 1)], ids=["linear", "conv"])
def test_recorder_matches_numpy_over_calls_and_timesteps(shape, axis):
    rng = np.random.default_rng(0)
    rec = CalibrationRecorder(num_timesteps=50, channel_axis=axis)
    seen: dict[tuple[str, int], list[np.ndarray]] = {}
    for call in range(12):
        layer, t = ("blocks.0.attn", "blocks.1.mlp")[call % 2], (0, 7, 49)[call % 3]
        x = (rng.standard_normal(shape) * (1 + call)).astype(np.float32)
        rec.observe(layer, t, x)
        seen.setdefault((layer, t), []).append(x)
    assert rec.layers == ["blocks.0.attn", "blocks.1.mlp"]
    assert len(rec) == len(seen) == 6
    table = rec.table()
    assert table["num_timesteps"] == 50
    got = {
        (name, t): (mn, mx, c, a)
        for name, t, mn, mx, c, a in zip(
            table["layer_name"], table["timestep"], table["min"], table["max"], table["count"],
            table["channel_absmax"], strict=True,
        )
    }
    assert list(got) == sorted(seen)
    for key, xs in seen.items():
        stacked = np.stack(xs)
        mn, mx, count, absmax = got[key]
        assert mn == pytest.approx(float(stacked.min()))
        assert mx == pytest.approx(float(stacked.max()))
        assert count == stacked.size
        channel_axis = axis % len(shape) + 1  # after stacking
        others = tuple(i for i in range(stacked.ndim) if i != channel_axis)
        assert absmax.dtype == np.float32
        np.testing.assert_allclose(absmax, np.abs(stacked).max(axis=others), rtol=1e-6)


def test_recorder_accepts_float16_integers_and_a_per_call_axis():
    rec = CalibrationRecorder(num_timesteps=4)
    rec.observe("lin", 1, np.array([[-3.0, 0.5], [1.0, 2.0]], dtype=np.float16))
    rec.observe("conv", 1, np.arange(24).reshape(1, 2, 3, 4), channel_axis=1)
    rec.observe("vec", 3, [1.0, -4.0, 2.0])
    t = rec.table()
    np.testing.assert_array_equal(t["layer_name"], ["conv", "lin", "vec"])
    np.testing.assert_array_equal(t["min"], [0.0, -3.0, -4.0])
    np.testing.assert_array_equal(t["channel_absmax"][0], [11.0, 23.0])
    np.testing.assert_array_equal(t["channel_absmax"][1], [3.0, 2.0])
    np.testing.assert_array_equal(t["channel_absmax"][2], [1.0, 4.0, 2.0])
    assert "3 rows" in repr(rec)


def test_recorder_table_write_read_round_trip(tmp_path: Path):
    rng = np.random.default_rng(1)
    rec = CalibrationRecorder(num_timesteps=1000)
    for t in (999, 500, 0):
        rec.observe("unet.down.0.proj", t, rng.standard_normal((2, 16, 32)).astype(np.float32))
        rec.observe("unet.down.0.conv", t, rng.standard_normal((2, 8, 4, 4)), channel_axis=1)
    path = tmp_path / "cal.parquet"
    rec.write(path)
    assert path.exists()
    back = read_calibration(path)
    assert isinstance(back, pa.Table)
    assert num_timesteps(back) == 1000
    assert back.num_rows == len(rec) == 6
    table = rec.table()
    by_key = rows(back)
    for i, (name, t) in enumerate(zip(table["layer_name"], table["timestep"], strict=True)):
        r = by_key[(name, int(t))]
        assert r["min"] == pytest.approx(table["min"][i], rel=1e-6)
        assert r["max"] == pytest.approx(table["max"][i], rel=1e-6)
        assert r["count"] == table["count"][i]
        np.testing.assert_array_equal(np.array(r["channel_absmax"], dtype=np.float32), table["channel_absmax"][i])
    # The file read back by pyarrow itself carries T too, and rec.to_arrow() is the same table.
    assert num_timesteps(pq.read_table(path)) == 1000
    assert rec.to_arrow().equals(back)
    # str paths work as well as pathlib ones.
    assert read_calibration(str(path)).equals(back)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r.observe("a", 10, np.ones(3)), "layer 'a': timestep 10 is outside [0, 10)"),
        (lambda r: r.observe("a", -1, np.ones(3)), "timestep -1 is outside"),
        (lambda r: r.observe("a", 0, np.ones((0, 4))), "layer 'a', timestep 0: empty activations"),
        (lambda r: r.observe("a", 0, np.array([1.0, np.nan, np.inf, 2.0])), "2 of 4 activations are not finite"),
        (lambda r: r.observe("a", 0, np.float32(1.0)), "channel_axis -1 does not exist"),
        (lambda r: r.observe("a", 0, np.ones((2, 3)), channel_axis=2), "channel_axis 2 does not exist"),
        (lambda r: r.observe("", 0, np.ones(3)), "expected a non-empty str"),
    ],
    ids=["timestep-high", "timestep-negative", "empty", "non-finite", "scalar", "bad-axis", "no-name"],
)
def test_recorder_value_errors(call, message):
    rec = CalibrationRecorder(num_timesteps=10)
    with pytest.raises(ValueError) as e:
        call(rec)
    assert message in str(e.value)
    assert len(rec) == 0


def test_recorder_channel_count_must_not_change():
    rec = CalibrationRecorder(num_timesteps=10)
    rec.observe("blocks.3.ff", 0, np.ones((2, 64), dtype=np.float32))
    with pytest.raises(ValueError, match=r"layer 'blocks.3.ff', timestep 4: 32 channels .* earlier calls .* had 64"):
        rec.observe("blocks.3.ff", 4, np.ones((2, 32), dtype=np.float32))
    with pytest.raises(TypeError, match="dtype <U1"):
        rec.observe("blocks.3.ff", 0, np.array(["a"]))
    with pytest.raises(ValueError, match="num_timesteps = 0"):
        CalibrationRecorder(num_timesteps=0)


def test_empty_recorder_cannot_be_written(tmp_path: Path):
    with pytest.raises(CalibrationError, match="no rows"):
        CalibrationRecorder().write(tmp_path / "cal.parquet")
    assert not (tmp_path / "cal.parquet").exists()


# --- read_calibration / write_calibration in every form ------------------------------------------------------


def test_read_calibration_from_a_dict_merges_rows():
    d = small_dict(
        layer_name=np.array(["down.0", "down.0", "down.0"]),
        timestep=np.array([5, 5, 0], dtype=np.uint8),
        min=np.array([-1.0, -2.0, 0.0], dtype=np.float16),
        channel_absmax=np.array([[1.0, 0.5], [2.0, 0.25], [0.0, 0.0]], dtype=np.float32),
    )
    table = read_calibration(d)
    assert num_timesteps(table) == 10
    r = rows(table)
    assert set(r) == {("down.0", 0), ("down.0", 5)}
    merged = r[("down.0", 5)]
    assert (merged["min"], merged["max"], merged["count"]) == (-2.0, 2.0, 30)
    assert merged["channel_absmax"] == [2.0, 0.5]


def test_read_calibration_from_a_dict_with_defaults():
    table = read_calibration({"layer_name": ["a"], "timestep": [41], "min": [0], "max": [1]})
    assert num_timesteps(table) == 42
    assert table.to_pylist() == [
        {"layer_name": "a", "timestep": 41, "min": 0.0, "max": 1.0, "channel_absmax": None, "count": 1}
    ]


def test_read_calibration_from_arrow_tables_and_batches():
    schema_meta = {KEY: "10"}
    table = pa.table(
        {
            "layer_name": pa.array(["a", "b", "a"], pa.large_string()),
            "timestep": pa.array([0, 3, 0], pa.int16()),
            "min": pa.array([-1.0, 0.0, -3.0], pa.float32()),
            "max": [1.0, 2.0, 0.0],
            "channel_absmax": pa.array([[1.0, 2.0], None, [3.0, 0.0]], pa.list_(pa.float64())),
        },
        metadata=schema_meta,
    )
    out = read_calibration(table)
    assert num_timesteps(out) == 10
    r = rows(out)
    assert (r[("a", 0)]["min"], r[("a", 0)]["count"], r[("a", 0)]["channel_absmax"]) == (-3.0, 2, [3.0, 2.0])
    assert r[("b", 3)]["channel_absmax"] is None
    assert read_calibration(table.to_batches()[0]).equals(out)
    # Without the metadata key, T is the largest timestep + 1.
    assert num_timesteps(read_calibration(table.replace_schema_metadata(None))) == 4


def test_write_calibration_from_a_table_and_arrow_ipc_files(tmp_path: Path):
    parquet = tmp_path / "cal.parquet"
    write_calibration(small_dict(), parquet)
    written = pq.read_table(parquet)
    assert num_timesteps(written) == 10 and written.num_rows == 3
    # A written file, re-written from its pyarrow table, reads back the same; Arrow IPC files are read too.
    ipc = tmp_path / "cal.arrow"
    with pa.OSFile(str(ipc), "wb") as sink, pa.ipc.new_file(sink, written.schema) as writer:
        writer.write_table(written)
    assert read_calibration(ipc).equals(read_calibration(parquet))
    again = tmp_path / "again.parquet"
    write_calibration(read_calibration(parquet), again)
    assert read_calibration(again).equals(read_calibration(parquet))


# --- errors from the core (CalibrationError) -----------------------------------------------------------------


def expect(source, *parts: str) -> None:
    with pytest.raises(CalibrationError) as e:
        read_calibration(source)
    assert isinstance(e.value, aq.QuantizationError)
    for part in parts:
        assert part in str(e.value), str(e.value)


def test_missing_column_and_wrong_column_type():
    table = pa.table({"layer_name": ["a"], "timestep": [0], "min": [0.0]})
    expect(table, "calibration table", "missing column 'max'")
    table = pa.table({"layer_name": ["a"], "timestep": [0.5], "min": [0.0], "max": [1.0]})
    expect(table, "column 'timestep' has type Float64; expected an integer type")
    table = pa.table({"layer_name": [1], "timestep": [0], "min": [0.0], "max": [1.0]})
    expect(table, "column 'layer_name' has type Int64")


def test_statistics_are_validated_with_the_row_and_layer_named():
    expect(small_dict(timestep=[0, 10, 0]), "calibration dict", "row 1 (layer 'down.0', timestep 10)", "[0, 10)")
    expect(small_dict(min=[-1.0, -2.0, 0.75]), "row 2 (layer 'up.1', timestep 0)", "min = 0.75, max = 0.5")
    expect(
        small_dict(channel_absmax=[np.ones(2), np.ones(3), None]),
        "row 1 (layer 'down.0', timestep 5)",
        "channel_absmax has 3 channels but row 0 of the same layer has 2",
    )
    expect(small_dict(count=[10, 0, 1]), "row 1", "count = 0")
    expect(small_dict(num_timesteps=0), "num_timesteps = 0")
    table = pa.table({"layer_name": ["a"], "timestep": [0], "min": [2.0], "max": [1.0]})
    expect(table, "calibration table", "layer 'a'", "min <= max")


@pytest.mark.parametrize(
    ("overrides", "parts"),
    [
        ({"min": [0.0, 1.0]}, ["key 'min' has 2 values; expected 3"]),
        ({"timestep": np.zeros(4, dtype=np.int64)}, ["key 'timestep' has 4 values; expected 3"]),
        ({"count": [1]}, ["key 'count' has 1 values; expected 3"]),
        ({"channel_absmax": [None, None]}, ["key 'channel_absmax' has 2 values; expected 3"]),
        ({"channel_absmax": np.ones((4, 2))}, ["key 'channel_absmax' has 4 values; expected 3"]),
        ({"timestep": [0.0, 1.0, 2.0]}, ["key 'timestep' has dtype float64; expected integers"]),
        ({"max": ["1", "2", "3"]}, ["key 'max' has dtype <U1; expected floats"]),
        ({"min": [[0.0], [1.0], [2.0]]}, ["key 'min' has shape [3, 1]"]),
        ({"layer_name": "down.0"}, ["key 'layer_name' is a str; expected a sequence of str"]),
        ({"layer_name": ["a", 2, "b"]}, ["key 'layer_name' has a int at row 1; expected str"]),
        ({"channel_absmax": [np.ones(2), np.ones((2, 2)), None]}, ["key 'channel_absmax' has shape [2, 2]", "row 1"]),
        ({"channel_absmax": np.ones(3)}, ["key 'channel_absmax' is an array of shape [3]"]),
        ({"num_timesteps": 10.5}, ["key 'num_timesteps' is a float; expected an integer"]),
        ({"max": None}, ["missing key 'max'"]),
        ({"chanel_absmax": None}, ["unknown key 'chanel_absmax'"]),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, list) else next(iter(v)),
)
def test_dict_keys_of_the_wrong_type_or_length(overrides, parts):
    expect(small_dict(**overrides), "calibration dict", *parts)


def test_missing_dict_key():
    d = small_dict()
    del d["timestep"]
    expect(d, "missing key 'timestep'", "layer_name")


def test_files_that_do_not_exist_or_are_not_tables(tmp_path: Path):
    expect(tmp_path / "nope.parquet", "nope.parquet", "cannot read the file")
    text = tmp_path / "cal.csv"
    text.write_text("layer_name,timestep,min,max\na,0,0,1\n")
    expect(text, "cal.csv", "neither a Parquet nor an Arrow IPC file")
    truncated = tmp_path / "broken.parquet"
    truncated.write_bytes(b"PAR1 not really")
    expect(truncated, "broken.parquet", "not a readable calibration table")
    expect(12, "calibration input", "got int", "a path")


def test_write_calibration_validates_before_writing(tmp_path: Path):
    path = tmp_path / "cal.parquet"
    with pytest.raises(CalibrationError, match="timestep 10"):
        write_calibration(small_dict(timestep=[0, 10, 0]), path)
    assert list(tmp_path.iterdir()) == []
