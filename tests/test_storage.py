"""BigMatrix on memory, file and s3 stores."""

from __future__ import annotations

import numpy as np
import pytest
import tensorstore as ts
import zarr

import jaxwren as jw
from tests.helpers import rand


def test_roundtrip_ragged(store):
    x = rand((10, 7))
    a = jw.from_numpy(x, store.url(), (4, 3), storage=store.config)
    assert a.shape == (10, 7) and a.block_shape == (4, 3) and a.grid_shape == (3, 3)
    assert a.dtype == np.float64
    assert a.block_idxs == [(i, j) for i in range(3) for j in range(3)]
    np.testing.assert_array_equal(a.numpy(), x)
    for i, j in a.block_idxs:
        blk = a.get_block(i, j)
        np.testing.assert_array_equal(blk, x[4 * i : 4 * i + 4, 3 * j : 3 * j + 3])
    assert a.get_block(2, 2).shape == (2, 1)  # ragged edge at true size


def test_create_put_delete_free(store):
    a = jw.BigMatrix.create(store.url(), (5, 5), (2, 2), "float32", storage=store.config)
    assert a.block_idxs_exist == set()
    np.testing.assert_array_equal(a.numpy(), np.zeros((5, 5), np.float32))
    a.put_block(np.full((2, 2), 3, np.float32), 0, 1)
    a.put_block(np.full((1, 1), 7, np.float32), 2, 2)
    assert a.block_idxs_exist == {(0, 1), (2, 2)}
    assert a.block_exists(0, 1) and not a.block_exists(0, 0)
    assert a.numpy()[4, 4] == 7 and a.numpy()[0, 2] == 3
    a.delete_block(0, 1)
    assert a.block_idxs_exist == {(2, 2)}
    np.testing.assert_array_equal(a.get_block(0, 1), np.zeros((2, 2)))
    a.free()
    assert a.block_idxs_exist == set()
    b = jw.BigMatrix.open(a.url, storage=store.config)  # header survives free()
    assert b.shape == (5, 5) and b.block_shape == (2, 2) and b.dtype == np.float32


def test_transposed_view(store):
    x = rand((9, 5))
    a = jw.from_numpy(x, store.url(), (4, 2), storage=store.config)
    t = a.T
    assert t.shape == (5, 9) and t.block_shape == (2, 4) and t.grid_shape == (3, 3)
    assert t.T.shape == a.shape and t.transposed and not t.T.transposed
    np.testing.assert_array_equal(t.numpy(), x.T)
    for i, j in t.block_idxs:
        r0, r1, c0, c1 = t.block_bounds(i, j)
        np.testing.assert_array_equal(t.get_block(i, j), x.T[r0:r1, c0:c1])
    t.put_block(np.ones((2, 4)), 1, 0)  # block (1, 0) of x.T == block (0, 1) of x
    np.testing.assert_array_equal(a.get_block(0, 1), np.ones((4, 2)))
    t.delete_block(1, 0)
    assert (0, 1) not in a.block_idxs_exist and (1, 0) not in t.block_idxs_exist


def test_parent_fn(store):
    calls = []

    def parent(m, i, j):
        calls.append((i, j))
        r0, r1, c0, c1 = m.block_bounds(i, j)
        return np.full((r1 - r0, c1 - c0), 10 * i + j, dtype=np.float64)

    a = jw.BigMatrix.create(
        store.url(), (5, 3), (2, 2), "float64", storage=store.config, parent_fn=parent
    )
    a.put_block(np.zeros((2, 2)), 0, 0)
    np.testing.assert_array_equal(a.get_block(2, 1), np.full((1, 1), 21.0))
    assert calls == [(2, 1)]
    np.testing.assert_array_equal(a.get_block(0, 0), np.zeros((2, 2)))  # written: no parent
    full = a.numpy()
    assert full[4, 2] == 21 and full[0, 0] == 0 and full[2, 0] == 10
    assert sorted(calls[1:]) == sorted({(i, j) for i in range(3) for j in range(2)} - {(0, 0)})


def test_reopen_by_url_alone(store):
    x = rand((6, 6), "float32")
    a = jw.from_numpy(x, store.url(), (4, 4), storage=store.config)
    b = jw.BigMatrix.open(a.url, storage=store.config)
    assert (b.shape, b.block_shape, b.dtype) == ((6, 6), (4, 4), np.float32)
    np.testing.assert_array_equal(b.numpy(), x)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "int32"])
def test_dtypes(dtype):
    x = rand((5, 4)).astype(dtype) if dtype != "bfloat16" else rand((5, 4)).astype(jnp_bf16())
    a = jw.from_numpy(x, f"memory://dt-{dtype}", (2, 3))
    assert a.dtype == x.dtype
    np.testing.assert_array_equal(a.numpy(), x)


def jnp_bf16():
    import ml_dtypes

    return ml_dtypes.bfloat16


def test_zarr_python_and_tensorstore_interop(tmp_path):
    x = rand((7, 5), "float32")
    path = tmp_path / "interop"
    a = jw.from_numpy(x, str(path), (3, 2))
    z = zarr.open_array(str(path), mode="r")
    assert z.shape == (7, 5) and z.chunks == (3, 2)
    np.testing.assert_array_equal(z[...], x)
    t = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}).result()
    np.testing.assert_array_equal(t.read().result(), x)
    # and the other way: a zarr-python array opens as a BigMatrix
    zpath = tmp_path / "from-zarr"
    z2 = zarr.create_array(str(zpath), shape=(6, 4), chunks=(4, 4), dtype="float64")
    z2[...] = np.arange(24.0).reshape(6, 4)
    b = jw.BigMatrix.open(f"file://{zpath}")
    assert b.block_shape == (4, 4)
    np.testing.assert_array_equal(b.numpy(), np.arange(24.0).reshape(6, 4))
    assert a.url == f"file://{path}"


def test_overwrite(store):
    url = store.url()
    jw.from_numpy(np.ones((3, 3)), url, (2, 2), storage=store.config)
    b = jw.from_numpy(np.zeros((4, 4)), url, (2, 2), storage=store.config, overwrite=True)
    assert b.shape == (4, 4)
    np.testing.assert_array_equal(jw.BigMatrix.open(url, storage=store.config).numpy(), 0)
