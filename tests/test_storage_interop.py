"""Any valid zarr v3 array written by zarr-python opens and computes; block operations,
free, destroy and overwrite act on exactly the matrix's own keys.

zarr-python cannot reach jaxwren's memory store and s3fs is not installed, so arrays are
written on the file store.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

import jaxwren as jw

X = np.arange(7 * 9, dtype="float64").reshape(7, 9) + 1.0  # no zeros: deletions show
DOT = {"name": "default", "separator": "."}
# name: (zarr.create_array arguments, block shape, key of block (i, j))
LAYOUTS = {
    "blosc": ({"chunks": (2, 3), "compressors": zarr.codecs.BloscCodec()}, (2, 3), "c/{}/{}"),
    "v2-slash": (
        {"chunks": (2, 3), "chunk_key_encoding": {"name": "v2", "separator": "/"}},
        (2, 3),
        "{}/{}",
    ),
    "v2-dot-gzip": (
        {
            "chunks": (3, 4),
            "chunk_key_encoding": {"name": "v2", "separator": "."},
            "compressors": zarr.codecs.GzipCodec(),
        },
        (3, 4),
        "{}.{}",
    ),  # fmt: skip
    "sharded-dot": (
        {"chunks": (2, 3), "shards": (4, 6), "chunk_key_encoding": DOT},
        (4, 6),
        "c.{}.{}",
    ),  # fmt: skip
    "sharded-zstd": (
        {"chunks": (1, 3), "shards": (2, 9), "compressors": zarr.codecs.ZstdCodec()},
        (2, 9),
        "c/{}/{}",
    ),
}


def _keys(path: str) -> set[str]:
    out = set()
    for root, _, files in os.walk(path):
        out |= {os.path.relpath(os.path.join(root, f), path).replace(os.sep, "/") for f in files}
    return out


@pytest.fixture(params=sorted(LAYOUTS))
def layout(request, tmp_path):
    kwargs, block, key = LAYOUTS[request.param]
    path = str(tmp_path / request.param)
    z = zarr.create_array(path, shape=X.shape, dtype=X.dtype, zarr_format=3, **kwargs)
    z[:] = X
    inner = jw.from_numpy(np.full((2, 2), 5.0), path + "/inner", (1, 1))  # nested, not ours
    with open(os.path.join(path, "notes.txt"), "w") as f:
        f.write("not a chunk")
    return path, block, key, inner


def _foreign(path: str) -> set[str]:
    return {k for k in _keys(path) if k.startswith("inner/") or k == "notes.txt"}


def test_opens_reads_and_computes(layout):
    path, block, _, _ = layout
    m = jw.BigMatrix.open(path)
    assert m.block_shape == block and m.generation() is None
    np.testing.assert_array_equal(m.numpy(), X)
    np.testing.assert_array_equal(m.T.numpy(), X.T)
    np.testing.assert_array_equal(np.asarray(jw.load(m)), X)
    np.testing.assert_array_equal(np.asarray(jw.load(m.T)), X.T)
    for i, j in m.block_idxs:
        r0, r1, c0, c1 = m.block_bounds(i, j)
        np.testing.assert_array_equal(m.get_block(i, j), X[r0:r1, c0:c1])  # ragged edges
    assert m.block_idxs_exist == set(m.block_idxs)
    assert all(m.block_exists(i, j) for i, j in m.block_idxs)


def test_delete_block_removes_exactly_its_key(layout):
    path, block, key, _ = layout
    m = jw.BigMatrix.open(path)
    want = X.copy()
    for i, j in [(0, 0), (m.grid_shape[0] - 1, m.grid_shape[1] - 1)]:
        before = _keys(path)
        m.delete_block(i, j)
        removed = before - _keys(path)
        assert removed == {key.format(i, j)}
        r0, r1, c0, c1 = m.block_bounds(i, j)
        want[r0:r1, c0:c1] = 0
        assert not m.block_exists(i, j)
    assert m.block_idxs_exist == set(m.block_idxs) - {(0, 0), (m.grid_shape[0] - 1,
                                                              m.grid_shape[1] - 1)}  # fmt: skip
    np.testing.assert_array_equal(m.numpy(), want)
    np.testing.assert_array_equal(zarr.open_array(path)[:], want)  # zarr-python agrees
    m.put_block(np.full(block, 9.0), 0, 0)
    want[: block[0], : block[1]] = 9.0
    np.testing.assert_array_equal(zarr.open_array(path)[:], want)
    assert m.generation() is not None  # jaxwren wrote it: now it has a generation


def test_free_destroy_and_overwrite_keep_other_objects(layout):
    path, _, key, inner = layout
    m = jw.BigMatrix.open(path)
    foreign = _foreign(path)
    m.free()
    assert m.block_idxs_exist == set() and key.format(0, 0) not in _keys(path)
    np.testing.assert_array_equal(m.numpy(), np.zeros_like(X))
    assert _foreign(path) == foreign and "zarr.json" in _keys(path)
    zarr.open_array(path)[:] = X
    new = jw.BigMatrix.create(path, (3, 3), (2, 2), "int32", overwrite=True)
    assert {k for k in _keys(path) if not k.startswith(("inner/", "jaxwren/"))} == {
        "zarr.json", "notes.txt"}  # fmt: skip
    np.testing.assert_array_equal(new.numpy(), np.zeros((3, 3), np.int32))
    new.destroy()
    assert _keys(path) == foreign
    np.testing.assert_array_equal(inner.numpy(), np.full((2, 2), 5.0))
    with pytest.raises(jw.MatrixNotFoundError, match="no matrix at"):
        jw.BigMatrix.open(path)


@pytest.mark.parametrize("separator", [".", "/"])
def test_zarr_v2_is_named_and_overwrite_replaces_it(tmp_path, separator):
    path = str(tmp_path / "v2")
    z = zarr.create_array(path, shape=X.shape, dtype=X.dtype, zarr_format=2, chunks=(2, 3),
                          chunk_key_encoding={"name": "v2", "separator": separator})  # fmt: skip
    z[:] = X
    with pytest.raises(jw.MatrixNotFoundError, match=r"zarr v2 array.*zarr\.create_array"):
        jw.BigMatrix.open(path)
    m = jw.BigMatrix.create(path, (2, 2), (1, 1), overwrite=True)
    assert _keys(path) == {"zarr.json", "jaxwren/generation"}
    np.testing.assert_array_equal(m.numpy(), np.zeros((2, 2)))


def test_overwrite_refuses_a_group(tmp_path):
    path = str(tmp_path / "group")
    zarr.open_group(path, mode="w", zarr_format=3).create_array("a", shape=(2, 2), dtype="f8")
    with pytest.raises(jw.MatrixExistsError, match="holds a zarr group, not an array"):
        jw.BigMatrix.create(path, (2, 2), (1, 1), overwrite=True)
    assert zarr.open_group(path, mode="r")["a"].shape == (2, 2)  # untouched


def test_overwrite_on_every_store_keeps_nested_matrices(store):
    url = store.url("outer")
    jw.from_numpy(X, url, (2, 3), storage=store.config)
    inner = jw.from_numpy(np.ones((2, 2)), url + "/inner", (1, 1), storage=store.config)
    m = jw.from_numpy(X[:3, :3] * 2, url, (2, 2), storage=store.config, overwrite=True)
    assert m.block_idxs_exist == set(m.block_idxs)
    np.testing.assert_array_equal(m.numpy(), X[:3, :3] * 2)
    np.testing.assert_array_equal(inner.numpy(), np.ones((2, 2)))
    m.destroy()
    np.testing.assert_array_equal(
        jw.BigMatrix.open(inner.url, storage=store.config).numpy(), np.ones((2, 2))
    )
