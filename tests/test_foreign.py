"""Operands from other libraries: zarr arrays, dask arrays and URL strings."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

import jaxwren as jw
from tests.helpers import rand, tolerance


def test_zarr_dask_and_url_operands(tmp_path):
    x, b = rand((60, 40), seed=51), rand((40, 7), seed=52)
    z = zarr.create_array(str(tmp_path / "z"), shape=x.shape, chunks=(16, 16), dtype="float64")
    z[:] = x
    jw.from_numpy(x, str(tmp_path / "a"), (16, 16))
    for i, a in enumerate((z, da.from_array(x, chunks=(16, 16)), str(tmp_path / "a"))):
        np.testing.assert_allclose(np.asarray(jw.matmul(a, b)), x @ b, **tolerance("float64"))
        C = jw.matmul(a, b, str(tmp_path / f"c{i}"), memory_budget=40_000)
        np.testing.assert_allclose(C.numpy(), x @ b, **tolerance("float64"))
    s = x.T @ x + 40 * np.eye(40)
    L = jw.cholesky(da.from_array(s, chunks=8))
    np.testing.assert_allclose(np.asarray(L), np.linalg.cholesky(s), **tolerance("float64"))


def test_a_zarr_operand_is_read_tile_by_tile(tmp_path, monkeypatch):
    x, b = rand((96, 64), seed=53), rand((64, 5), seed=54)
    z = zarr.create_array(str(tmp_path / "z"), shape=x.shape, chunks=(16, 16), dtype="float64")
    z[:] = x
    largest = {"n": 0}
    orig = type(z).__getitem__

    def recording(self, key):
        out = orig(self, key)
        largest["n"] = max(largest["n"], np.asarray(out).size)
        return out

    monkeypatch.setattr(type(z), "__getitem__", recording)
    C = jw.matmul(z, b, str(tmp_path / "c"), memory_budget=90_000)
    np.testing.assert_allclose(C.numpy(), x @ b, **tolerance("float64"))
    assert 0 < largest["n"] <= x.size // 2  # never the whole matrix at once


def test_reductions_take_zarr_dask_and_url_operands(tmp_path):
    x = rand((40, 24), seed=55)
    z = zarr.create_array(str(tmp_path / "z"), shape=x.shape, chunks=(16, 16), dtype="float64")
    z[:] = x
    jw.from_numpy(x, str(tmp_path / "a"), (16, 16))
    for a in (z, da.from_array(x, chunks=(16, 16)), str(tmp_path / "a")):
        np.testing.assert_allclose(jw.mean(a, axis=0), x.mean(axis=0), **tolerance("float64"))
        np.testing.assert_allclose(jw.norm(a), np.linalg.norm(x), **tolerance("float64"))


def test_a_url_operand_that_holds_nothing_is_typed(tmp_path):
    with pytest.raises(jw.MatrixNotFoundError):
        jw.matmul(str(tmp_path / "nothing"), np.ones((2, 2)))
