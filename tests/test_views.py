"""BigMatrix as an array: views (region, transposed, cast), numpy protocols, A @ B, copy."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

import jaxwren as jw
from tests.helpers import rand, tolerance


@pytest.fixture
def stored(store):
    x = rand((50, 30), seed=31)
    return x, jw.from_numpy(x, store.url("a"), (16, 16), storage=store.config)


def test_region_views_read_like_numpy_slices(stored):
    x, A = stored
    cases = [
        (A[5:40, 3:27], x[5:40, 3:27]),
        (A[5:40, 3:27].T, x[5:40, 3:27].T),
        (A.T[3:20, 7:9], x.T[3:20, 7:9]),
        (A[5:40, 3:27][2:5, -3:], x[5:40, 3:27][2:5, -3:]),
        (A[-10:, :], x[-10:, :]),
        (A[:, 0:1000], x[:, 0:1000]),  # bounds clamp as numpy's
        (A[7:8], x[7:8]),
    ]
    for view, ref in cases:
        assert view.shape == ref.shape
        np.testing.assert_array_equal(view.numpy(), ref)
        np.testing.assert_array_equal(np.asarray(view), ref)
        np.testing.assert_array_equal(np.asarray(view.to_jax()), ref)
        i, j = view.grid_shape[0] - 1, view.grid_shape[1] - 1  # a ragged edge block
        r0, r1, c0, c1 = view.block_bounds(i, j)
        np.testing.assert_array_equal(view.get_block(i, j), ref[r0:r1, c0:c1])


def test_a_view_reads_only_its_chunks(tmp_path):
    x = rand((48, 48), seed=32)
    A = jw.from_numpy(x, str(tmp_path / "a"), (16, 16), storage=jw.StorageConfig(file_memmap=False))
    with open(tmp_path / "a" / "c" / "2" / "2", "wb") as f:  # corrupt a chunk outside
        f.write(b"garbage")
    np.testing.assert_array_equal(A[0:32, 0:48].numpy(), x[0:32, :])
    np.testing.assert_array_equal(A[0:48, 0:32].numpy(), x[:, 0:32])
    with pytest.raises(jw.StorageError):
        A.numpy()  # the whole matrix does read the bad chunk


def test_cast_views(stored):
    x, A = stored
    f32 = A.astype("float32")
    assert f32.dtype == np.float32
    np.testing.assert_array_equal(f32.numpy(), x.astype(np.float32))
    np.testing.assert_array_equal(A[1:9, 2:4].astype("float32").T.numpy(),
                                  x[1:9, 2:4].astype(np.float32).T)  # fmt: skip
    np.testing.assert_array_equal(A.astype("int32", casting="unsafe").numpy(),
                                  x.astype(np.int32))  # fmt: skip
    with pytest.raises(jw.DTypeMismatchError, match="casting='unsafe'"):
        A.astype("int32")
    with pytest.raises(jw.DTypeMismatchError, match="casting must be one of"):
        A.astype("float32", casting="sometimes")


def test_bad_selections_are_typed(stored):
    _, A = stored
    with pytest.raises(jw.BlockIndexError, match="step"):
        A[::2, :]
    with pytest.raises(jw.BlockIndexError, match="basic slices"):
        A[[0, 2], :]
    with pytest.raises(jw.BlockIndexError, match="basic slices"):
        A[3, 4]
    with pytest.raises(jw.BlockIndexError, match="selects nothing"):
        A[10:10, :]
    with pytest.raises(jw.BlockIndexError, match="selects nothing"):
        A[60:70, :]


def test_views_are_read_only(stored, store):
    x, A = stored
    V = A[0:16, 0:16]
    for write in (lambda: V.put_block(np.ones((16, 16)), 0, 0),
                  lambda: V.write_region(0, 0, np.ones((2, 2))),
                  lambda: A.astype("float32").free()):  # fmt: skip
        with pytest.raises(jw.OutputConflictError, match="read-only"):
            write()
    with pytest.raises(jw.OutputConflictError, match="region or cast view"):
        jw.matmul(A[0:16, 0:16], A[0:16, 0:16], out=V)
    np.testing.assert_array_equal(A.numpy(), x)  # nothing written


def test_operations_read_views(stored, store):
    x, A = stored
    b = rand((24, 7), seed=33)
    B = jw.from_numpy(b, store.url("b"), (16, 16), storage=store.config)
    ref = x[5:40, 3:27] @ b
    np.testing.assert_allclose(np.asarray(jw.matmul(A[5:40, 3:27], B)), ref, **tolerance("float64"))
    out = store.url("c")
    C = jw.matmul(A[5:40, 3:27], B, out, memory_budget=20_000, storage=store.config)
    np.testing.assert_allclose(C.numpy(), ref, **tolerance("float64"))
    # another view into the same out is another result (not the stored one reused)
    C2 = jw.matmul(A[0:35, 3:27], B, out, memory_budget=20_000, storage=store.config)
    np.testing.assert_allclose(C2.numpy(), x[0:35, 3:27] @ b, **tolerance("float64"))
    s = x[0:30, :].T @ x[0:30, :] + 30 * np.eye(30)
    S = jw.from_numpy(np.pad(s, ((2, 0), (0, 3))), store.url("s"), (8, 8), storage=store.config)
    L = jw.cholesky(S[2:32, 0:30])
    np.testing.assert_allclose(np.asarray(L), np.linalg.cholesky(s), **tolerance("float64"))


def test_array_protocols(stored, store):
    x, A = stored
    assert (A.ndim, A.size, len(A), A.nbytes) == (2, x.size, 50, x.nbytes)
    np.testing.assert_array_equal(np.asarray(A), x)
    assert np.asarray(A, dtype=np.float32).dtype == np.float32
    b = rand((30, 4), seed=34)
    B = jw.from_numpy(b, store.url("b"), (16, 16), storage=store.config)
    np.testing.assert_allclose(np.asarray(A @ B), x @ b, **tolerance("float64"))
    np.testing.assert_allclose(np.asarray(x.T @ A), x.T @ x, **tolerance("float64"))
    V = pickle.loads(pickle.dumps(A[1:5, 2:9].T.astype("float32")))
    np.testing.assert_array_equal(V.numpy(), x[1:5, 2:9].T.astype(np.float32))
    assert "[1:5, 2:9].T.astype(float32)" in repr(V)


def test_asarray_refuses_above_the_limit(stored, monkeypatch):
    x, A = stored
    monkeypatch.setattr(jw.BigMatrix, "max_asarray_bytes", x.nbytes - 1)
    with pytest.raises(jw.MemoryBudgetError, match="max_asarray_bytes"):
        np.asarray(A)
    np.testing.assert_array_equal(np.asarray(A[0:10, :]), x[0:10, :])  # a part still reads


def test_copy_materialises_any_view(stored, store):
    x, A = stored
    view = A[3:47, 2:29].T.astype("float32")
    C = jw.copy(view, store.url("c"), (8, 10), storage=store.config, panel_bytes=1000)
    assert (C.shape, C.block_shape, C.dtype) == ((27, 44), (8, 10), np.float32)
    np.testing.assert_array_equal(C.numpy(), x[3:47, 2:29].T.astype(np.float32))
    with pytest.raises(jw.MatrixExistsError):
        jw.copy(A, C.url, storage=store.config)
    with pytest.raises(jw.OutputConflictError, match="own matrix"):
        jw.copy(A[0:5, :], A.url, storage=store.config, overwrite=True)
    np.testing.assert_array_equal(A.numpy(), x)


def test_an_interrupted_copy_refuses_to_be_read(tmp_path, monkeypatch):
    x = rand((40, 8), seed=35)
    A = jw.from_numpy(x, str(tmp_path / "a"), (8, 8))
    calls = {"n": 0}
    orig = jw.BigMatrix.read_region

    def failing(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return orig(self, *args)

    monkeypatch.setattr(jw.BigMatrix, "read_region", failing)
    with pytest.raises(KeyboardInterrupt):
        jw.copy(A, str(tmp_path / "c"), panel_bytes=8 * 8 * 8)
    assert not os.path.exists(tmp_path / "c" / "zarr.json")  # removed: it created it
    monkeypatch.undo()
    np.testing.assert_array_equal(jw.copy(A, str(tmp_path / "c")).numpy(), x)
