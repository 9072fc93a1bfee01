"""Arrays written by zarr-python compute correctly (sharded, both chunk-key encodings,
compressed codecs) and, lacking a generation token, are never reused from a store.
Block-level operations, free/destroy and zarr v2 are in tests/test_storage_interop.py."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

import jaxwren as jw

X = np.arange(7 * 9, dtype="float64").reshape(7, 9)
LAYOUTS = {
    "sharded": {"chunks": (2, 3), "shards": (4, 6)},
    "dot-keys": {"chunks": (2, 3), "chunk_key_encoding": {"name": "default", "separator": "."}},
    "v2-keys": {"chunks": (2, 3), "chunk_key_encoding": {"name": "v2", "separator": "."}},
    "zstd": {"chunks": (2, 3), "compressors": zarr.codecs.ZstdCodec()},
    "gzip-sharded": {"chunks": (2, 3), "shards": (4, 3), "compressors": zarr.codecs.GzipCodec()},
}


@pytest.fixture(params=sorted(LAYOUTS))
def zarr_path(request, tmp_path):
    path = str(tmp_path / request.param)
    z = zarr.create_array(path, shape=X.shape, dtype=X.dtype, zarr_format=3,
                          **LAYOUTS[request.param])  # fmt: skip
    z[:] = X
    return path


def test_opens_reads_and_computes(zarr_path):
    m = jw.BigMatrix.open(zarr_path)
    np.testing.assert_array_equal(m.numpy(), X)
    np.testing.assert_array_equal(np.asarray(m.to_jax()), X)
    np.testing.assert_allclose(np.asarray(jw.matmul(m, m.T)), X @ X.T)
    assert m.block_exists(0, 0)
    assert m.block_idxs_exist == set(m.block_idxs)


def test_no_generation_means_no_reuse(tmp_path):
    path = str(tmp_path / "plain")
    zarr.create_array(path, shape=X.shape, dtype=X.dtype, zarr_format=3, chunks=(4, 4))[:] = X
    m = jw.BigMatrix.open(path)
    assert m.generation() is None
    out = str(tmp_path / "c")
    jw.matmul(m, m.T, out)
    zarr.open_array(path)[0, 0] = 1000.0  # a write jaxwren cannot see
    with jw.observe() as runs:
        again = jw.matmul(m, m.T, out)
    assert runs[0].steps_run >= 1  # never reused: the input cannot be identified
    y = X.copy()
    y[0, 0] = 1000.0
    np.testing.assert_allclose(again.numpy(), y @ y.T)
    assert os.path.exists(os.path.join(out, "zarr.json"))


def test_a_jaxwren_matrix_rewritten_by_zarr_python_is_recomputed(tmp_path):
    """zarr-python writes chunks without touching jaxwren's generation token: the run's
    identity also holds the chunks' storage generations, so a rerun after such a write
    computes afresh instead of handing back the result of the old data (complete and
    partial states alike)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((24, 24))
    s = x @ x.T / 24 + np.eye(24)
    S = jw.from_numpy(s, str(tmp_path / "s"), (8, 8))
    out = str(tmp_path / "l")
    with jw.observe() as runs:
        jw.cholesky(S, out, memory_budget=20_000)
        jw.cholesky(S, out, memory_budget=20_000)  # unchanged: reused
    assert (runs[1].state, runs[1].steps_run) == ("complete", 0)
    s2 = s + 5 * np.eye(24)
    zarr.open_array(str(tmp_path / "s"), mode="r+")[:] = s2  # another tool's write
    with jw.observe() as runs:
        again = jw.cholesky(jw.BigMatrix.open(str(tmp_path / "s")), out, memory_budget=20_000)
    assert runs[0].state == "fresh" and runs[0].steps_run > 0
    np.testing.assert_allclose(again.numpy(), np.linalg.cholesky(s2), rtol=1e-12)
    C = jw.matmul(S, S, str(tmp_path / "c"))
    zarr.open_array(str(tmp_path / "s"), mode="r+")[0:3, 0:3] = 0.0  # one chunk only
    s3 = s2.copy()
    s3[0:3, 0:3] = 0.0
    C = jw.matmul(S, S, C)
    np.testing.assert_allclose(C.numpy(), s3 @ s3, rtol=1e-12)
