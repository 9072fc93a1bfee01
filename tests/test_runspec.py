"""One RunSpec for every operation: ``spec=`` is honoured, and the keyword copies merge
with it (a disagreement is refused)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import jaxwren as jw
from jaxwren.config import run_spec
from tests.helpers import rand

X = rand((36, 10))  # ragged against every default tile
Y = rand((20, 10), seed=1)
L = np.tril(rand((36, 36), seed=2)) + 36 * np.eye(36)
B = rand((36, 3), seed=3)
BUDGET = 40_000_000

# every public operation, called with spec= only (jw.explain plans it, nothing runs)
CALLS = {
    "argmin": lambda s: jw.argmin(X, axis=1, spec=s),
    "matmul": lambda s: jw.matmul(X, X.T, spec=s),
    "solve_triangular": lambda s: jw.solve_triangular(L, B, spec=s),
    "cho_solve": lambda s: jw.cho_solve(L, B, spec=s),
    "map_blocks": lambda s: jw.map_blocks(lambda b: 2 * b, X, spec=s),
    "pairwise_sq_distances": lambda s: jw.pairwise_sq_distances(X, Y, spec=s),
    "nearest_neighbors": lambda s: jw.nearest_neighbors(X, Y, k=2, spec=s),
    "qr": lambda s: jw.qr(X, spec=s),
    "lstsq": lambda s: jw.lstsq(X, B, spec=s),
    "svd": lambda s: jw.svd(X, spec=s),
    "randomized_svd": lambda s: jw.randomized_svd(X, 3, spec=s),
    "sum": lambda s: jw.sum(X, axis=0, spec=s),
    "mean": lambda s: jw.mean(X, spec=s),
    "min": lambda s: jw.min(X, axis=1, spec=s),
    "max": lambda s: jw.max(X, spec=s),
    "var": lambda s: jw.var(X, axis=0, spec=s),
    "std": lambda s: jw.std(X, spec=s),
    "norm": lambda s: jw.norm(X, ord=2, spec=s),
    "cholesky": lambda s: jw.cholesky(L @ L.T, spec=s),
    "lu_factor": lambda s: jw.lu_factor(L, spec=s),
    "lu_solve": lambda s: jw.lu_solve((L, np.arange(L.shape[0], dtype=np.int32)), B, spec=s),
    "solve": lambda s: jw.solve(L, B, spec=s),
    "inv": lambda s: jw.inv(L, spec=s),
    "slogdet": lambda s: jw.slogdet(L, spec=s),
    "polar": lambda s: jw.polar(X, spec=s),
    "eigh": lambda s: jw.eigh(L + L.T, spec=s),
}


def _operations() -> set[str]:
    """The public functions that run the pipeline: those with the run keywords."""
    out = set()
    for name in jw.__all__:
        fn = getattr(jw, name)
        if callable(fn) and not inspect.isclass(fn):
            params = inspect.signature(fn).parameters
            if "memory_budget" in params or name == "cho_solve":  # cho_solve: **kwargs
                out.add(name)
    return out


def test_the_table_covers_every_operation():
    assert _operations() == set(CALLS)
    for name in CALLS:
        params = inspect.signature(getattr(jw, name)).parameters
        assert "spec" in params or name == "cho_solve", name


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_operation_honours_its_spec(name):
    report = jw.explain(CALLS[name], jw.RunSpec(memory_budget=BUDGET, prefetch=0))
    assert report.budget == BUDGET and report.prefetch == 0
    assert report.operation


def test_spec_refused_at_a_budget_no_tiling_fits():
    with pytest.raises(jw.MemoryBudgetError, match="smallest workable budget"):
        jw.matmul(X, X.T, spec=jw.RunSpec(memory_budget=64))


def test_keywords_fill_what_the_spec_leaves_at_its_default():
    spec = jw.RunSpec(memory_budget="1MiB")
    merged = run_spec("matmul", spec, prefetch=0, memory_budget=1 << 20)  # the same budget
    assert merged == jw.RunSpec(memory_budget=1 << 20, prefetch=0)
    assert run_spec("matmul", None, progress=None) == jw.RunSpec()  # None: not given
    report = jw.explain(jw.matmul, X, X.T, memory_budget=BUDGET, spec=jw.RunSpec(prefetch=0))
    assert report.budget == BUDGET and report.prefetch == 0


def test_a_keyword_and_a_spec_that_disagree_are_refused():
    with pytest.raises(jw.ConfigError, match=r"prefetch=2 and spec.prefetch=0 disagree"):
        jw.sum(X, prefetch=2, spec=jw.RunSpec(prefetch=0))
    with pytest.raises(jw.ConfigError, match="memory_budget.*disagree; give memory_budget once"):
        jw.matmul(X, X.T, memory_budget="2MiB", spec=jw.RunSpec(memory_budget="1MiB"))
    with pytest.raises(jw.ConfigError, match="spec must be a jw.RunSpec, got dict"):
        jw.qr(X, spec={"prefetch": 0})
    with pytest.raises(jw.ConfigError, match="prefetch=-1 must be an int >= 0"):
        jw.argmin(X, prefetch=-1, spec=jw.RunSpec())
