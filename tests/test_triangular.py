"""solve_triangular, cho_solve and cho_logdet against scipy, in-core and streamed."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.linalg as sl

import jaxwren as jw
from tests.helpers import mem, rand

STREAM = 60_000  # bytes: forces several row tiles of l for n=45


def factor(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = rand((n, n), seed=seed)
    a = x @ x.T / n + np.eye(n)
    return a, np.linalg.cholesky(a)


@pytest.mark.parametrize("k", [None, 1, 3, 16])
@pytest.mark.parametrize(
    ("lower", "trans"), [(True, False), (True, True), (False, False), (False, True)]
)
@pytest.mark.parametrize("budget", [None, STREAM], ids=["in-core", "streamed"])
def test_solve_triangular_matches_scipy(k, lower, trans, budget):
    _, l_mat = factor(45, seed=1)
    m = l_mat if lower else l_mat.T.copy()
    b = rand((45,) if k is None else (45, k), seed=2)
    ref = sl.solve_triangular(m, b, lower=lower, trans=int(trans))
    stored = jw.from_numpy(m, mem("tri"), (8, 8))
    for source, mb in ((m, None), (stored, budget)):
        x = jw.solve_triangular(source, b, lower=lower, trans=trans, memory_budget=mb)
        assert x.shape == b.shape
        np.testing.assert_allclose(np.asarray(x), ref, rtol=1e-10, atol=1e-10)


def test_stores_and_out(store):
    a, l_mat = factor(37, seed=3)
    b = rand((37, 9), seed=4)
    L = jw.from_numpy(l_mat, store.url("l"), (8, 8), storage=store.config)
    B = jw.from_numpy(b, store.url("b"), (8, 8), storage=store.config)
    X = jw.solve_triangular(L, B, store.url("x"), memory_budget=STREAM, storage=store.config)
    assert isinstance(X, jw.BigMatrix) and X.shape == (37, 9)
    np.testing.assert_allclose(X.numpy(), sl.solve_triangular(l_mat, b, lower=True), rtol=1e-10)
    Y = jw.cho_solve(L, B, store.url("y"), storage=store.config)
    np.testing.assert_allclose(Y.numpy(), np.linalg.solve(a, b), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("budget", [None, STREAM], ids=["in-core", "streamed"])
def test_cho_solve_and_logdet_after_cholesky(budget):
    a, _ = factor(45, seed=5)
    A = jw.from_numpy(a, mem("cs-a"), (8, 8))
    L = jw.cholesky(A, mem("cs-l"), memory_budget=budget)
    b = rand(45, seed=6)
    x = jw.cho_solve(L, b, memory_budget=budget)
    np.testing.assert_allclose(
        np.asarray(x), sl.cho_solve((np.linalg.cholesky(a), True), b), rtol=1e-10, atol=1e-10
    )
    assert jw.cho_logdet(L) == pytest.approx(np.linalg.slogdet(a)[1], rel=1e-12)
    assert jw.cho_logdet(np.asarray(jw.cholesky(a))) == pytest.approx(np.linalg.slogdet(a)[1])


def test_errors():
    _, l_mat = factor(8)
    with pytest.raises(jw.ShapeMismatchError, match=r"as many rows: got l \(8, 8\) and b \(7, 1\)"):
        jw.solve_triangular(l_mat, np.ones(7))
    with pytest.raises(jw.ShapeMismatchError, match="must be square"):
        jw.solve_triangular(np.ones((3, 4)), np.ones(3))
    singular = np.tril(np.ones((4, 4)))
    singular[2, 2] = 0
    with pytest.raises(jw.NonFiniteError, match="singular"):
        jw.solve_triangular(singular, np.ones(4))
    with pytest.raises(jw.MemoryBudgetError, match="smallest workable budget"):
        jw.solve_triangular(l_mat, np.ones((8, 2)), memory_budget=100)
    with pytest.raises(jw.NonFiniteError, match="diagonal must be positive"):
        jw.cho_logdet(-np.eye(3))
    with pytest.raises(jw.ShapeMismatchError, match="must be square"):
        jw.cho_logdet(np.ones((2, 3)))
    assert isinstance(jw.solve_triangular(jax.numpy.asarray(l_mat), np.ones(8)), jax.Array)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("budget", [None, 400_000], ids=["in-core", "tiles"])
def test_few_columns_on_a_mesh_without_the_first_device(k, budget):
    """Fewer columns than devices: X is replicated and one device of the mesh computes
    each step (the others would repeat it); that device need not be jax's first."""
    from jax.sharding import AxisType

    devices = jax.devices()[4:8]
    mesh = jax.make_mesh((2, 2), ("rows", "cols"), axis_types=(AxisType.Auto,) * 2,
                         devices=devices)  # fmt: skip
    s, low = factor(300, seed=4)
    b = rand((300, k), seed=5)
    L = jw.from_numpy(low, mem(f"few-{k}-{budget}"), (64, 64))
    x = jw.cho_solve(L, b, mesh=mesh, memory_budget=budget)
    np.testing.assert_allclose(np.asarray(x), np.linalg.solve(s, b), rtol=1e-9, atol=1e-9)
    assert set(x.sharding.device_set) == set(devices)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_in_core_solve_is_the_lax_kernel(dtype):
    """In-core, the store-backed solve runs jaxwren.lax's substitution kernel (one kernel,
    two entries): the same numbers as jw.lax.solve_triangular; streamed under a budget."""
    _, l_mat = factor(45, seed=4)
    m, b = l_mat.astype(dtype), rand((45, 11), seed=5).astype(dtype)
    L = jw.from_numpy(m, mem(f"tri-lax-{dtype}"), (8, 8))
    with jw.observe() as runs:
        x = jw.solve_triangular(L, b, trans=True)
        y = jw.solve_triangular(L, b, trans=True, memory_budget=STREAM * m.itemsize // 8)
    assert [r.tiling.startswith("('in-core'") for r in runs] == [True, False]
    ref = jw.lax.solve_triangular(jax.numpy.asarray(m), jax.numpy.asarray(b), trans=True)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(ref))
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(np.asarray(y), sl.solve_triangular(m, b, lower=True, trans=1), rtol=tol,
                               atol=tol)  # fmt: skip
