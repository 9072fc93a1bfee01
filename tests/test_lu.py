"""jw.lu_factor / lu_solve / solve / inv / slogdet / det on the engine: against scipy and
numpy on stored and in-memory matrices (ragged, pivot-hostile, singular, int/bf16/f32/f64
inputs), the growth factor and refinement in the run report, typed errors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg as sl

import jaxwren as jw
from tests.helpers import mem
from tests.test_lax_lu import N, backward_error, hostile


@pytest.fixture(params=["memory", "file"])
def url(request, tmp_path):
    return mem("lu") if request.param == "memory" else str(tmp_path / "lu")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lu_factor_store_to_store_matches_scipy(url, dtype):
    a = hostile("leading_zero").astype(dtype)
    stored = jw.from_numpy(a, url + "/A", (16, 16))  # ragged: 37 = 2 * 16 + 5
    with jw.observe() as runs:
        lu, piv = jw.lu_factor(stored, url + "/F")
    assert isinstance(lu, jw.BigMatrix) and lu.url.endswith("/F/lu") and piv.shape == (N, 1)
    want, wpiv = sl.lu_factor(a)
    np.testing.assert_array_equal(piv.numpy()[:, 0], wpiv)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == "float64" else {"rtol": 1e-3, "atol": 1e-4}
    np.testing.assert_allclose(lu.numpy(), want, **tol)
    growth = np.abs(np.triu(want)).max() / np.abs(a).max()
    np.testing.assert_allclose(runs[-1].details["growth_factor"], growth, rtol=1e-5)
    b = np.random.default_rng(1).standard_normal((N, 3)).astype(dtype)
    for trans in (0, 1):  # from the stored factor
        x = jw.lu_solve((lu, piv), b, trans=trans)
        np.testing.assert_allclose(np.asarray(x), sl.lu_solve((want, wpiv), b, trans=trans),
                                   **tol)  # fmt: skip


def test_lu_factor_returned_and_input_dtypes():
    ints = (np.arange(N * N).reshape(N, N) % 11 + 11 * np.eye(N)).astype(np.int64)
    lu, piv = jw.lu_factor(ints)
    assert lu.dtype == jnp.float64 and piv.dtype == jnp.int32 and piv.shape == (N,)
    lu, piv = np.asarray(lu), np.asarray(piv)  # ties among integers: pivots may differ
    perm = np.arange(N)
    for i, p in enumerate(piv):
        perm[[i, p]] = perm[[p, i]]
    lu_product = (np.tril(lu, -1) + np.eye(N)) @ np.triu(lu)
    np.testing.assert_allclose(lu_product, ints[perm], rtol=1e-12, atol=1e-11)
    bf = hostile("random").astype(jnp.bfloat16)
    lu, _ = jw.lu_factor(bf)  # 16-bit floats factor in float32
    assert lu.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(lu), sl.lu_factor(np.asarray(bf, np.float32))[0],
                               rtol=1e-3, atol=1e-4)  # fmt: skip


@pytest.mark.parametrize("kind", ["random", "leading_zero", "singular_diagonal_blocks",
                                  "near_singular"])  # fmt: skip
def test_solve_backward_error_and_slogdet(kind):
    a = hostile(kind, seed=3)
    b = np.random.default_rng(2).standard_normal((N, 2))
    x = np.asarray(jw.solve(a, b))
    assert backward_error(a, x, b) <= 1e-14
    sign, logdet = jw.slogdet(a)
    want = np.linalg.slogdet(a)
    assert sign == want[0]
    # near-singular: U's tiny pivots carry relative errors ~ cond * eps from any order
    np.testing.assert_allclose(logdet, want[1], rtol=1e-8 if kind == "near_singular" else 1e-12)


def test_singular_matrix_typed_error_and_slogdet():
    a = hostile("random", seed=4)
    a[:, 7] = 0.0
    with pytest.raises(jw.SingularMatrixError, match=r"U\[7, 7\] is exactly zero") as e:
        jw.lu_factor(a, mem("lu-singular"))
    assert e.value.column == 7
    with pytest.raises(jw.MatrixNotFoundError):
        jw.BigMatrix.open(mem("lu-singular") + "/lu")  # nothing stored
    with pytest.raises(jw.SingularMatrixError, match="column 7"):
        jw.solve(a, np.ones(N))
    assert jw.slogdet(a) == (0.0, -np.inf) and jw.det(a) == 0.0  # as numpy's


def test_inv_and_det():
    a = hostile("singular_diagonal_blocks", seed=5)
    np.testing.assert_allclose(np.asarray(jw.inv(a)), np.linalg.inv(a), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(jw.det(a), np.linalg.det(a), rtol=1e-12)


def test_mixed_precision_refinement_reports_iterations():
    a = hostile("random", seed=6)
    b = np.random.default_rng(7).standard_normal(N)
    with jw.observe() as runs:
        x = np.asarray(jw.solve(a, b, refine=True))
    (report,) = runs
    assert report.details["refine_converged"] and 1 <= report.details["refine_iterations"] <= 4
    assert backward_error(a, x[:, None], b[:, None]) <= 1e-14
    spd = a @ a.T + N * np.eye(N)
    with jw.observe() as runs:
        x = np.asarray(jw.solve(spd, b, assume_a="pos", refine=True))
    assert runs[-1].details["refine_converged"]
    assert backward_error(spd, x[:, None], b[:, None]) <= 1e-14
    hard = hostile("near_singular", seed=8)  # cond 1e12: float32 cannot factor it usefully
    with jw.observe() as runs:
        x = np.asarray(jw.solve(hard, b, refine=True))
    assert not runs[0].details["refine_converged"]  # it stalled ...
    assert [r.operation for r in runs] == ["solve", "solve"]  # ... and fell back to float64
    assert backward_error(hard, x[:, None], b[:, None]) <= 1e-14


def test_over_budget_is_a_typed_error():
    with pytest.raises(jw.MemoryBudgetError, match=r"lu_factor: .*smallest workable budget"):
        jw.lu_factor(hostile("random"), memory_budget="1KiB")
