"""Store-backed jw.eigh / jw.polar / jw.svd (any shape) against numpy and scipy: every
store, stored and returned results, a rerun reusing the stored result, the budget."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sl

import jaxwren as jw

RNG = np.random.default_rng(3)
N = 45  # ragged: blocks of 16, a 2 x 4 mesh


def symmetric(n: int) -> np.ndarray:
    x = RNG.standard_normal((n, n))
    return x + x.T


def test_eigh_on_every_store_and_resumed(store):
    a = symmetric(N)
    A = jw.from_numpy(a, store.url("a"), (16, 16), storage=store.config)
    out = store.url("eig")
    with jw.observe() as runs:
        w, V = jw.eigh(A, out, storage=store.config)
        w2, V2 = jw.eigh(A, out, storage=store.config)  # the stored result, reused
    v = V.numpy()
    assert isinstance(V, jw.BigMatrix) and w.shape == (N,)
    np.testing.assert_allclose(np.asarray(w), np.linalg.eigvalsh(a), atol=1e-12 * 20)
    assert np.abs(v.T @ v - np.eye(N)).max() < 1e-13
    assert np.linalg.norm(a @ v - v * np.asarray(w)) < 1e-12 * np.linalg.norm(a)
    assert runs[0].steps_run == 1 and runs[1].steps_run == 0
    np.testing.assert_array_equal(V2.numpy(), v)


def test_eigh_returned_matches_lax_and_reads_lower_triangle():
    a = symmetric(N)
    w, V = jw.eigh(
        np.tril(a) + np.triu(np.ones((N, N)), 1), symmetrize_input=False, termination_size=16
    )  # fmt: skip  (splits, then leaves)
    wl_, vl = jw.lax.eigh(a, termination_size=16)
    np.testing.assert_allclose(np.asarray(w), np.asarray(wl_), atol=1e-12)
    np.testing.assert_allclose(np.abs(np.asarray(V)), np.abs(np.asarray(vl)), atol=1e-10)


def test_polar_stored_and_svd_any_shape():  # (every store: the eigh test above)
    a = RNG.standard_normal((N, 30))
    U, H = jw.polar(jw.from_numpy(a, "memory://eigh-ops/p", (16, 16)), "memory://eigh-ops/u")
    u_ref, h_ref = sl.polar(a)
    np.testing.assert_allclose(U.numpy(), u_ref, atol=1e-12)
    np.testing.assert_allclose(H.numpy(), h_ref, atol=1e-12)
    for shape in ((N, 30), (30, N)):  # near-square and wide: polar + eigh, not TSQR
        b = RNG.standard_normal(shape)
        u, s, vt = (np.asarray(x) for x in jw.svd(b))
        k = min(shape)
        assert u.shape == (shape[0], k) and vt.shape == (k, shape[1])
        np.testing.assert_allclose(s, np.linalg.svd(b, compute_uv=False), atol=1e-12)
        assert np.abs(u.T @ u - np.eye(k)).max() < 1e-12
        assert np.abs(vt @ vt.T - np.eye(k)).max() < 1e-12
        assert np.linalg.norm((u * s) @ vt - b) < 1e-13 * np.linalg.norm(b) * 10
    s = jw.svd(b, compute_uv=False)
    np.testing.assert_allclose(np.asarray(s), np.linalg.svd(b, compute_uv=False), atol=1e-12)


def test_refusals():
    with pytest.raises(jw.ShapeMismatchError, match=r"eigh: a must be square .* jw.svd"):
        jw.eigh(np.ones((4, 5)))
    with pytest.raises(jw.MemoryBudgetError, match=r"eigh: .*smallest workable budget"):
        jw.eigh(symmetric(N), memory_budget="10KiB")
    with pytest.raises(jw.ConfigError, match=r"termination_size must be an int >= 2"):
        jw.eigh(symmetric(N), termination_size=0)
    bad = symmetric(8)
    bad[1, 2] = np.inf
    with pytest.raises(jw.NonFiniteError, match=r"eigh: a holds NaN or Inf"):
        jw.eigh(bad)
    with pytest.raises(jw.NonFiniteError, match=r"polar: a holds NaN or Inf .* clean it first"):
        jw.polar(bad)
