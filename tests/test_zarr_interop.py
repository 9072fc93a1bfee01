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
    from jaxwren.engine.run import run
    from jaxwren.linalg.matmul import Matmul

    out = str(tmp_path / "c")
    run(Matmul(), (m, m.T), out)
    zarr.open_array(path)[0, 0] = 1000.0  # a write jaxwren cannot see
    again = run(Matmul(), (m, m.T), out)
    assert again.stats.steps_run >= 1  # never reused: the input cannot be identified
    y = X.copy()
    y[0, 0] = 1000.0
    np.testing.assert_allclose(again.value.numpy(), y @ y.T)
    assert os.path.exists(os.path.join(out, "zarr.json"))
