"""Batches streamed straight from part files (jw.iter_table_batches) and the taxi example."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxwren as jw
from tests.helpers import mem
from tests.test_tables import csv_bytes, parquet_bytes, parts_data, put


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_batches_cross_parts_in_order(store, fmt):
    xs = parts_data([7, 13, 5])
    enc = csv_bytes if fmt == "csv" else parquet_bytes
    parts = put(store.url("parts"), {f"p{i}.{fmt}": enc(x) for i, x in enumerate(xs)},
                store.config)  # fmt: skip
    got = list(jw.iter_table_batches(f"{parts}/p*.{fmt}", 8, storage=store.config))
    assert [b.shape for b in got] == [(8, 3), (8, 3), (8, 3), (1, 3)]
    assert all(isinstance(b, jax.Array) and b.dtype == np.float32 for b in got)
    assert got[0].sharding.spec == P(("rows", "cols"), None)  # 8 rows over 8 devices
    np.testing.assert_array_equal(np.concatenate([np.asarray(b) for b in got]),
                                  np.concatenate(xs).astype(np.float32))  # fmt: skip


def test_shuffle_columns_drop_remainder_and_sharding():
    xs = parts_data([10, 10, 10, 10])
    parts = put(mem("p"), {f"p{i}.csv": csv_bytes(x) for i, x in enumerate(xs)})
    pattern, want = f"{parts}/*.csv", np.concatenate(xs)[:, [2, 0]]

    def run(**kw):
        return [np.asarray(b) for b in jw.iter_table_batches(pattern, 6, columns=["hour", "fare"],
                                                             dtype="float64", **kw)]  # fmt: skip

    plain = run()
    np.testing.assert_array_equal(np.concatenate(plain), want)
    one, two, other = run(shuffle=True), run(shuffle=True), run(shuffle=True, seed=1)
    assert all(np.array_equal(p, q) for p, q in zip(one, two, strict=True))  # seeded
    rows = np.concatenate(one)
    assert not np.array_equal(rows, want) and not np.array_equal(rows, np.concatenate(other))
    np.testing.assert_array_equal(np.sort(rows, axis=0), np.sort(want, axis=0))  # each row once
    assert [len(b) for b in run(drop_remainder=True)] == [6] * 6
    sh = NamedSharding(jw.default_mesh(), P("rows", None))  # 2 x 4 mesh: 6 rows over 2
    got = list(jw.iter_table_batches(pattern, 6, sharding=sh))
    assert got[0].sharding == sh and got[-1].shape == (4, 3)
    four = NamedSharding(jw.default_mesh(), P(("rows", "cols"), None))
    with pytest.raises(jw.ShapeMismatchError, match="not divisible by mesh axis"):
        next(jw.iter_table_batches(pattern, 6, sharding=four))


def test_prefetch_puts_batches_ahead(monkeypatch):
    parts = put(mem("p"), {"p.csv": csv_bytes(parts_data([40])[0])})
    put_calls = []
    orig = jax.device_put

    def counting(x, *a, **kw):
        put_calls.append(len(x))
        return orig(x, *a, **kw)

    monkeypatch.setattr(jax, "device_put", counting)
    it = jw.iter_table_batches(f"{parts}/*.csv", 4, prefetch=2)
    next(it)
    assert len(put_calls) == 3  # the batch yielded and two on their way


def test_batch_errors():
    parts = put(mem("p"), {"p.csv": b"a\n1\n", "q.csv": b"a\nx\n", "r.dat": b"a\n1\n"})
    with pytest.raises(jw.ConfigError, match="batch_size=0 must be an int >= 1"):
        jw.iter_table_batches(f"{parts}/*.csv", 0)
    with pytest.raises(jw.ConfigError, match="prefetch=-1"):
        jw.iter_table_batches(f"{parts}/*.csv", 2, prefetch=-1)
    with pytest.raises(jw.ConfigError, match="cannot tell the format"):
        jw.iter_table_batches(f"{parts}/*.dat", 2)
    assert len(list(jw.iter_table_batches(f"{parts}/*.dat", 2, format="csv"))) == 1
    with pytest.raises(jw.PartsNotFoundError, match="no part file matches"):
        jw.iter_table_batches(f"{parts}/*.parquet", 2)
    it = jw.iter_table_batches(f"{parts}/*.csv", 1)
    with pytest.raises(jw.TableParseError, match=r"q\.csv, row 1, column 'a' holds 'x'"):
        list(it)


def test_taxi_example_matches_numpy(tmp_path):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "examples/taxi_regression.py", "--rows=6000",
                           "--parts=3", "--epochs=1", f"--store={tmp_path}"], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "(a) normal equations" in proc.stdout and "(b) SGD" in proc.stdout
    assert "normal equations vs numpy: max relative difference" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "csv").iterdir())[0] == "part-00000.csv"
