"""Streaming row batches (A.iter_row_batches) and the regression example."""

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
from tests.helpers import mem, rand


def test_batches_in_order_with_ragged_last(store):
    x = rand((50, 6))
    a = jw.from_numpy(x, store.url("rows"), (8, 6), storage=store.config)
    batches = list(a.iter_row_batches(16))
    assert [b.shape for b in batches] == [(16, 6), (16, 6), (16, 6), (2, 6)]
    assert all(isinstance(b, jax.Array) for b in batches)
    np.testing.assert_array_equal(np.concatenate([np.asarray(b) for b in batches]), x)
    assert batches[0].sharding.spec == P(("rows", "cols"), None)  # 16 rows over 8 devices


def test_drop_remainder_shuffle_and_sharding():
    x = rand((50, 4))
    a = jw.from_numpy(x, mem("shuf"), (10, 4))
    kept = list(a.iter_row_batches(16, drop_remainder=True))
    assert len(kept) == 3
    one = [np.asarray(b) for b in a.iter_row_batches(10, shuffle=True, seed=3)]
    two = [np.asarray(b) for b in a.iter_row_batches(10, shuffle=True, seed=3)]
    assert all(np.array_equal(p, q) for p, q in zip(one, two, strict=True))  # seeded
    assert sorted(b[0, 0] for b in one) == sorted(x[::10, 0])  # every batch once
    assert not all(np.array_equal(b, x[10 * i : 10 * i + 10]) for i, b in enumerate(one))
    sh = NamedSharding(jw.default_mesh(), P("rows", None))
    got = list(a.iter_row_batches(20, sharding=sh))
    assert got[0].sharding == sh and got[-1].shape == (10, 4)
    np.testing.assert_array_equal(np.asarray(got[-1]), x[40:])
    np.testing.assert_array_equal(np.asarray(next(a.T.iter_row_batches(2))), x.T[:2])


def test_reads_run_ahead(monkeypatch):
    a = jw.from_numpy(rand((40, 4)), mem("ahead"), (4, 4))
    started = []
    orig = jw.BigMatrix.read_region_into_async

    def counting(self, r0, r1, c0, c1, out):
        started.append(r0)
        return orig(self, r0, r1, c0, c1, out)

    monkeypatch.setattr(jw.BigMatrix, "read_region_into_async", counting)
    it = a.iter_row_batches(8, prefetch=2, sharding=NamedSharding(jw.default_mesh(), P()))
    next(it)
    assert sorted(set(started)) == [0, 8, 16]  # batch 0 yielded, batches 1 and 2 in flight


def test_batch_errors():
    a = jw.from_numpy(rand((5, 2)), mem("bad-batches"), (2, 2))
    with pytest.raises(jw.ConfigError, match="batch_rows=0 must be an int >= 1"):
        next(a.iter_row_batches(0))
    with pytest.raises(jw.ConfigError, match="prefetch=-1"):
        next(a.iter_row_batches(2, prefetch=-1))


def test_regression_example_matches_lstsq(tmp_path):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "examples/regression.py", "--rows=6000", "--dim=16",
                           "--block=1000", "--epochs=20", f"--store={tmp_path}"], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "(b) normal equations" in proc.stdout
    assert "(c) jw.lstsq" in proc.stdout


def test_batch_arguments_are_refused_at_the_call():
    a = jw.from_numpy(rand((16, 6)), mem("bad-args"), (4, 6))
    for prefetch in (True, False, 1.5, "2", None):
        with pytest.raises(jw.ConfigError, match=rf"prefetch={prefetch!r} must be an int >= 0"):
            a.iter_row_batches(4, prefetch=prefetch)  # no next(): refused at the call
    with pytest.raises(jw.ConfigError, match="batch_rows=True must be an int >= 1"):
        a.iter_row_batches(True)
    three = NamedSharding(jw.default_mesh(jax.devices()[:3]), P("cols", None))  # 1 x 3 mesh
    with pytest.raises(jw.ShapeMismatchError, match=r"dimension 0 \(rows, size 4\) is not "
                       r"divisible by mesh axis 'cols' of size 3"):  # fmt: skip
        a.iter_row_batches(4, sharding=three)
    assert len(list(a.iter_row_batches(4, prefetch=np.int64(1)))) == 4


def test_batches_on_a_make_mesh_mesh():
    mesh = jax.make_mesh((2, 4), ("rows", "cols"))  # Explicit axes
    x = rand((50, 8))
    a = jw.from_numpy(x, mem("explicit-batches"), (8, 8))
    sh = NamedSharding(mesh, P(("rows", "cols"), None))
    got = list(a.iter_row_batches(16, sharding=sh))
    assert [b.sharding == sh for b in got] == [True, True, True, False]  # ragged: default
    assert got[-1].sharding.mesh == mesh
    np.testing.assert_array_equal(np.concatenate([np.asarray(b) for b in got]), x)
