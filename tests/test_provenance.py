"""Provenance: what a stored result or tile vouches for is checked before it is reused.

One test per row of the voiding table in jaxwren/engine/provenance.py, plus the out's
view in the identity, fill values of an existing out, and no stamp reads for out=None.
"""

from __future__ import annotations

import boto3
import numpy as np
import pytest
import zarr

import jaxwren as jw
from jaxwren.storage import records
from tests.conftest import BUCKET
from tests.helpers import rand, tolerance

TINY = 60_000  # bytes: many out-of-core steps on the shapes below


def _interrupted_matmul(a_m, b_m, out, storage, after=3):
    """An out-of-core matmul into ``out`` that stops (a store outage) right after its
    ``after``-th tile record: its finished tiles stay for a rerun."""
    calls = {"n": 0}
    orig = jw.BigMatrix.mark

    def mark(self, key, *value):
        orig(self, key, *value)
        calls["n"] += 1
        if calls["n"] == after:
            raise jw.StorageError("simulated outage")

    jw.BigMatrix.mark = mark
    try:
        with pytest.raises(jw.StorageError, match="simulated"):
            jw.matmul(a_m, b_m, out, memory_budget=TINY, storage=storage)
    finally:
        jw.BigMatrix.mark = orig


def _tamper_chunk(store, url, key, data):
    """Rewrites one chunk of the matrix at ``url`` with another tool."""
    if store.kind == "s3":
        s3 = boto3.client("s3", endpoint_url=store.config.s3_endpoint, region_name="us-east-1")
        prefix = url.split(f"s3://{BUCKET}/", 1)[1]
        if data is None:
            s3.delete_object(Bucket=BUCKET, Key=f"{prefix}/{key}")
        else:
            body = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/{data}")["Body"].read()
            s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{key}", Body=body)
        return
    z = zarr.open_array(url, mode="r+")
    i, j = (int(p) for p in key.split("/")[1:])
    if data is None:
        import os

        os.remove(os.path.join(url, key))
    else:
        bi, bj = z.chunks
        z[i * bi : (i + 1) * bi, j * bj : (j + 1) * bj] = 1234.5


@pytest.mark.parametrize("how", ["rewrite", "delete"])
@pytest.mark.parametrize("kind", ["file", "s3"])
def test_resume_never_trusts_a_tile_another_tool_changed(kind, how, tmp_path, request):
    storage = request.getfixturevalue("s3_config") if kind == "s3" else None
    root = f"s3://{BUCKET}/prov-{how}" if kind == "s3" else str(tmp_path)
    store = type("S", (), {"kind": kind, "config": storage})()
    a, b = rand((48, 40), seed=1), rand((40, 56), seed=2)
    A = jw.from_numpy(a, f"{root}/a", (8, 8), storage=storage, overwrite=True)
    B = jw.from_numpy(b, f"{root}/b", (8, 8), storage=storage, overwrite=True)
    out = f"{root}/c"
    _interrupted_matmul(A, B, out, storage)
    C = jw.BigMatrix.open(out, storage=storage)
    with pytest.raises(jw.IncompleteMatrixError, match="matmul"):
        C.numpy()  # interrupted: not a result
    written = sorted(C.chunk_generations())
    chunk = next(k for k in written if k.startswith("c/"))
    _tamper_chunk(store, out, chunk, None if how == "delete" else written[-2])
    done = jw.matmul(A, B, out, memory_budget=TINY, storage=storage)
    np.testing.assert_allclose(done.numpy(), a @ b, **tolerance("float64"))
    again = jw.matmul(A, B, out, memory_budget=TINY, storage=storage)  # complete, reused
    np.testing.assert_allclose(again.numpy(), a @ b, **tolerance("float64"))


def test_a_tampered_complete_result_is_recomputed(tmp_path):
    a, b = rand((24, 16), seed=3), rand((16, 20), seed=4)
    A = jw.from_numpy(a, str(tmp_path / "a"), (8, 8))
    B = jw.from_numpy(b, str(tmp_path / "b"), (8, 8))
    out = str(tmp_path / "c")
    jw.matmul(A, B, out)
    zarr.open_array(out, mode="r+")[0:8, 0:8] = 7.0  # another tool rewrites the result
    np.testing.assert_allclose(jw.matmul(A, B, out).numpy(), a @ b, **tolerance("float64"))


def test_a_transposed_out_is_another_result(store):
    a, b = rand((24, 16), seed=5), rand((16, 24), seed=6)
    A = jw.from_numpy(a, store.url("a"), (8, 8), storage=store.config)
    B = jw.from_numpy(b, store.url("b"), (8, 8), storage=store.config)
    C = jw.matmul(A, B, store.url("c"), storage=store.config)
    jw.matmul(A, B, C.T)  # the same product into the transposed view
    np.testing.assert_allclose(C.numpy(), (a @ b).T, **tolerance("float64"))
    s = a.T @ a + 24 * np.eye(16)
    S = jw.from_numpy(s, store.url("s"), (8, 8), storage=store.config)
    L = jw.cholesky(S, store.url("l"), storage=store.config)
    jw.cholesky(S, L.T)
    np.testing.assert_allclose(L.numpy(), np.linalg.cholesky(s).T, **tolerance("float64"))


@pytest.mark.parametrize("fill", [7.0, float("nan")])
def test_cholesky_into_an_out_with_a_fill_value(fill, tmp_path):
    n = 40
    x = rand((n, n), seed=7)
    s = x @ x.T + n * np.eye(n)
    S = jw.from_numpy(s, str(tmp_path / "s"), (16, 16))
    out = str(tmp_path / "l")
    zarr.create_array(out, shape=(n, n), chunks=(16, 16), dtype="float64", fill_value=fill)
    for budget in (None, 20_000):  # in-core, then out-of-core (the tile plan)
        L = jw.cholesky(S, out, memory_budget=budget)
        ref = np.linalg.cholesky(s)
        np.testing.assert_allclose(L.numpy(), ref, **tolerance("float64"))
        np.testing.assert_allclose(zarr.open_array(out)[:], ref, **tolerance("float64"))


def test_cholesky_into_an_out_with_a_parent_fn(tmp_path):
    n = 24
    x = rand((n, n), seed=8)
    s = x @ x.T + n * np.eye(n)
    S = jw.from_numpy(s, str(tmp_path / "s"), (8, 8))
    out = jw.BigMatrix.create(str(tmp_path / "l"), (n, n), (8, 8), "float64",
                              parent_fn=lambda m, i, j: np.full((8, 8), 5.0))  # fmt: skip
    L = jw.cholesky(S, out)
    np.testing.assert_allclose(L.numpy(), np.linalg.cholesky(s), **tolerance("float64"))
    np.testing.assert_allclose(jw.BigMatrix.open(L.url).numpy(), np.linalg.cholesky(s),
                               **tolerance("float64"))  # fmt: skip


def test_returned_results_read_no_stamps(store, monkeypatch):
    a, b = rand((24, 16), seed=9), rand((16, 20), seed=10)
    A = jw.from_numpy(a, store.url("a"), (8, 8), storage=store.config)
    B = jw.from_numpy(b, store.url("b"), (8, 8), storage=store.config)
    calls = {"n": 0}
    orig = records.generations

    def counting(*args, **kwargs):
        calls["n"] += 1
        return orig(*args, **kwargs)

    monkeypatch.setattr(records, "generations", counting)
    np.testing.assert_allclose(np.asarray(jw.matmul(A, B)), a @ b, **tolerance("float64"))
    assert calls["n"] == 0  # out=None: nothing stored, no stamp requests
    jw.matmul(A, B, store.url("c"), storage=store.config)
    assert calls["n"] > 0  # a stored result reads them (the counter sees the calls)


def test_a_jaxwren_write_to_an_input_voids_the_result(store):
    a, b = rand((16, 16), seed=11), rand((16, 16), seed=12)
    A = jw.from_numpy(a, store.url("a"), (8, 8), storage=store.config)
    B = jw.from_numpy(b, store.url("b"), (8, 8), storage=store.config)
    out = store.url("c")
    jw.matmul(A, B, out, storage=store.config)
    A.put_block(np.ones((8, 8)), 0, 0)
    a[:8, :8] = 1.0
    np.testing.assert_allclose(jw.matmul(A, B, out, storage=store.config).numpy(), a @ b,
                               **tolerance("float64"))  # fmt: skip


def test_resume_keeps_tiles_across_prefetch_and_budget(tmp_path):
    a, b = rand((48, 40), seed=13), rand((40, 56), seed=14)
    A = jw.from_numpy(a, str(tmp_path / "a"), (8, 8))
    B = jw.from_numpy(b, str(tmp_path / "b"), (8, 8))
    out = str(tmp_path / "c")
    _interrupted_matmul(A, B, out, None)  # prefetch=1, budget TINY
    for pf, budget in ((0, TINY), (2, TINY + 4_000)):  # another K panel or window
        with jw.observe() as runs:
            C = jw.matmul(A, B, out, memory_budget=budget, prefetch=pf)
        np.testing.assert_allclose(C.numpy(), a @ b, **tolerance("float64"))
        assert runs[0].state == "partial" and "resume" in runs[0].reason
        if pf == 0:
            assert runs[0].steps_skipped >= 3  # the three recorded tiles
        jw.BigMatrix.open(out).clear_marks()  # the next pass starts from the same state
        _interrupted_matmul(A, B, out, None)
