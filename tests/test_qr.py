"""jw.qr / jw.lstsq / jw.svd (TSQR) against numpy: stores, ragged shapes, both plans, errors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxwren as jw
from tests.helpers import mem

OOC = "2MiB"  # forces several row tiles (two passes for Q) at the sizes below


def tall(m: int, n: int, dtype: str = "float64", seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((m, n)).astype(dtype)


def check_qr(q: np.ndarray, r: np.ndarray, a: np.ndarray) -> None:
    n = a.shape[1]
    f64 = a.dtype == np.float64
    assert np.abs(q.T @ q - np.eye(n)).max() < (1e-13 if f64 else 1e-5)
    assert np.linalg.norm(q @ r - a) / np.linalg.norm(a) < (1e-14 if f64 else 1e-6)
    np.testing.assert_array_equal(np.tril(r, -1), 0)
    assert (np.diag(r) >= 0).all()
    ref = np.linalg.qr(a.astype(np.float64), mode="r")
    ref = np.sign(np.diag(ref))[:, None] * ref  # numpy's signs fall as they may
    np.testing.assert_allclose(r, ref, atol=(1e-10 if f64 else 1e-3) * np.abs(ref).max())


@pytest.mark.parametrize("budget", [None, OOC], ids=["in-core", "tiles"])
def test_qr_store_to_store(store, budget):
    a = tall(3001, 23)
    A = jw.from_numpy(a, store.url("a"), (500, 23), storage=store.config)
    with jw.observe() as runs:
        Q, R = jw.qr(A, store.url("qr"), memory_budget=budget, storage=store.config)
    assert isinstance(Q, jw.BigMatrix) and Q.shape == a.shape
    check_qr(Q.numpy(), np.asarray(R), a)
    tiles = runs[0].steps_run
    assert tiles == 1 if budget is None else tiles >= 5  # 2 passes + the top of the tree


def test_qr_returned_and_r_mode_agree():
    a = tall(2049, 40, seed=1)  # 2049 rows: a tile of 4096, half the devices hold padding only
    Q, R = jw.qr(a)
    check_qr(np.asarray(Q), np.asarray(R), a)
    np.testing.assert_allclose(np.asarray(jw.qr(a, mode="r")), np.asarray(R), atol=1e-12)
    R2 = jw.qr(jnp.asarray(a), mode="r", memory_budget=OOC)
    np.testing.assert_allclose(np.asarray(R2), np.asarray(R), atol=1e-12)


def test_qr_float32_and_integers():
    a = tall(1500, 16, "float32")
    Q, R = jw.qr(a)
    assert Q.dtype == np.float32
    check_qr(np.asarray(Q), np.asarray(R), a)
    ints = np.arange(600 * 3).reshape(600, 3) % 7
    _, r = jw.qr(ints)
    assert r.dtype == np.float64
    np.testing.assert_allclose(
        np.abs(np.asarray(r)), np.abs(np.linalg.qr(ints, mode="r")), atol=1e-10
    )


def test_qr_rerun_sees_new_data(tmp_path):
    a = tall(2500, 8)
    A = jw.from_numpy(a, str(tmp_path / "a"), (500, 8))
    out = str(tmp_path / "qr")
    jw.qr(A, out, memory_budget=OOC)
    with jw.observe() as runs:
        jw.qr(A, out, memory_budget=OOC)
    assert runs[0].state == "complete" and runs[0].steps_run == 0  # this computation's
    a[700:900] *= -3.0
    A.write_region(700, 0, a[700:900])
    Q, R = jw.qr(A, out, memory_budget=OOC)
    check_qr(Q.numpy(), np.asarray(R), a)


def test_qr_bad_input_before_anything_is_written(tmp_path):
    with pytest.raises(jw.ShapeMismatchError, match="fewer rows than columns"):
        jw.qr(tall(10, 40))
    wide = jw.BigMatrix.create(mem("wide"), (5000, 4097), (5000, 512), "float32")
    with pytest.raises(jw.ShapeMismatchError, match="at most 4096"):
        jw.qr(wide)
    a = tall(3000, 5)
    a[2999, 4] = np.nan
    out = tmp_path / "qr"
    for budget in (None, OOC):
        with pytest.raises(jw.NonFiniteError, match="NaN or Inf"):
            jw.qr(a, str(out), memory_budget=budget)
        assert not [p for p in out.rglob("*") if p.is_file()]  # the call's keys are gone
    with pytest.raises(jw.ConfigError, match="mode"):
        jw.qr(a, mode="complete")
    A = jw.from_numpy(tall(600, 4), str(tmp_path / "A"), (100, 4))
    with pytest.raises(jw.OutputConflictError):
        jw.qr(A, str(tmp_path / "A"))


@pytest.mark.parametrize("budget", [None, OOC], ids=["in-core", "tiles"])
def test_lstsq_matches_numpy(store, budget):
    a, b = tall(2800, 12, seed=2), tall(2800, 3, seed=3)
    A = jw.from_numpy(a, store.url("a"), (700, 12), storage=store.config)
    B = jw.from_numpy(b, store.url("b"), (700, 3), storage=store.config)
    x = jw.lstsq(A, B, memory_budget=budget)
    np.testing.assert_allclose(np.asarray(x), np.linalg.lstsq(a, b, rcond=None)[0], atol=1e-12)
    x1 = jw.lstsq(A, b[:, 0], memory_budget=budget)
    assert x1.shape == (12,)
    np.testing.assert_allclose(np.asarray(x1), np.linalg.lstsq(a, b[:, 0])[0], atol=1e-12)


def test_lstsq_errors(tmp_path):
    a, b = tall(900, 6), tall(900, 1)
    dup = a.copy()
    dup[:, 5] = dup[:, 1]
    out = tmp_path / "x"
    with pytest.raises(jw.RankDeficientError, match="linearly dependent"):
        jw.lstsq(dup, b, str(out))
    assert not [p for p in out.rglob("*") if p.is_file()]
    with pytest.raises(jw.ShapeMismatchError, match="one row per row"):
        jw.lstsq(a, b[:800])
    bad = b.copy()
    bad[3] = np.inf
    with pytest.raises(jw.NonFiniteError):
        jw.lstsq(a, bad)


@pytest.mark.parametrize("budget", [None, OOC], ids=["in-core", "tiles"])
def test_svd_matches_numpy(store, budget):
    a = tall(2600, 19, seed=4)
    A = jw.from_numpy(a, store.url("a"), (650, 19), storage=store.config)
    U, S, Vt = jw.svd(A, store.url("svd"), memory_budget=budget, storage=store.config)
    u = U.numpy()
    ref = np.linalg.svd(a, compute_uv=False)
    np.testing.assert_allclose(np.asarray(S), ref, rtol=1e-12)
    assert np.abs(u.T @ u - np.eye(19)).max() < 1e-13
    assert np.linalg.norm((u * np.asarray(S)) @ np.asarray(Vt) - a) / np.linalg.norm(a) < 1e-14
    s_only = jw.svd(a, compute_uv=False, memory_budget=budget)
    np.testing.assert_allclose(np.asarray(s_only), ref, rtol=1e-12)


def test_tsqr_kernels_make_no_batched_lapack_call():
    """jaxlib 0.10 runs a batched LAPACK call's chunks on the intra-op pool and blocks a
    pool thread on them: on several CPU devices that deadlocked (0% CPU). Every LAPACK
    call in the TSQR kernels must be un-batched (``num_batch_dims = "0"``)."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxwren.linalg import tsqr_kernel as tk

    mesh = jw.default_mesh()
    n, leaf = 8, tk.leaf_rows(8)
    rows = leaf * mesh.devices.size * 5  # five leaves per device
    x = jax.ShapeDtypeStruct((rows, n), jnp.float32, sharding=NamedSharding(mesh, P(tk.ALL, None)))
    texts = [
        tk.local_kernel(mesh, leaf, 1, nq).lower(x).as_text()
        for nq in (0, tk.tree_levels(rows, mesh, leaf))
    ]
    calls = [line for text in texts for line in text.splitlines() if "@lapack_" in line]
    assert len(calls) >= 3  # geqrf for R; geqrf + orgqr for Q
    batched = [c for c in calls if 'num_batch_dims = "0"' not in c]
    assert not batched, batched[0][:300]
