"""LU's algorithms side by side (the block-cyclic kernel, the in-core tile plan, the
out-of-core tile plan): against scipy on ragged sizes, every store, hostile matrices,
typed errors, the selector's choice and reason, kill-and-resume, bounded compiles."""

from __future__ import annotations

import ast
import re

import jax
import numpy as np
import pytest
import scipy.linalg as sl

import jaxwren as jw
from jaxwren.config import RunSpec
from jaxwren.engine.run import run
from jaxwren.linalg.lu import LUFactor
from jaxwren.sharding.platform import platform_profile
from tests.helpers import mem, run_until_killed
from tests.test_lax_lu import hostile

N = 77  # ragged: not a multiple of the tiles (16, 24) nor of the stored blocks (16)
TILED = "tiles" if platform_profile().shares_host_memory else "out-of-core"


def factor(a, out, plan="auto", tile=None, **spec):
    got = run(LUFactor(plan=plan, tile=tile), (a,), out, RunSpec(**spec))
    return got.value, got.report


def check_scipy(lu, piv, a, exact=True):
    """The pivots are scipy's; the factor equal to scipy's (``exact``) or, for an
    ill-conditioned matrix (its factors are sensitive to rounding), ``P L U = A``."""
    want, wpiv = sl.lu_factor(a)
    np.testing.assert_array_equal(np.asarray(piv).reshape(-1), wpiv)
    if not exact:
        perm = np.arange(len(a))
        for i, p in enumerate(np.asarray(piv).reshape(-1)):
            perm[[i, p]] = perm[[p, i]]
        prod = (np.tril(lu, -1) + np.eye(len(a))) @ np.triu(lu)
        assert np.abs(prod - a[perm]).max() <= 1e-14 * len(a) * np.abs(a).max()
        return
    rtol = 1e-12 if a.dtype == np.float64 else 1e-5
    np.testing.assert_allclose(lu, want, rtol=0, atol=rtol * np.abs(want).max())


PLANS = [("kernel", None), ("tiles", 16), ("out-of-core", 24)]


@pytest.mark.parametrize(("plan", "tile"), PLANS)
def test_each_algorithm_matches_scipy_on_every_store(store, plan, tile, dtype="float64"):
    a = hostile("random", N, seed=3).astype(dtype)
    stored = jw.from_numpy(a, store.url("A"), (16, 16), storage=store.config)
    (lu, piv), report = factor(stored, store.url("F"), plan, tile, storage=store.config)
    want = TILED if plan == "tiles" else plan
    assert ast.literal_eval(report.tiling)[0] == want
    assert f"selected {want}: asked for" in report.reason
    check_scipy(lu.numpy(), piv.numpy(), a)
    growth = np.abs(np.triu(sl.lu_factor(a)[0])).max() / np.abs(a).max()
    np.testing.assert_allclose(report.details["growth_factor"], growth, rtol=1e-5)


@pytest.mark.parametrize(("plan", "tile"), PLANS[1:])  # (the kernel's: tests/test_lu.py)
def test_each_algorithm_matches_scipy_in_float32(plan, tile):
    class Memory:
        config = None

        def url(self, name):
            return mem(name)

    test_each_algorithm_matches_scipy_on_every_store(Memory(), plan, tile, "float32")


@pytest.mark.parametrize("kind", ["leading_zero", "singular_diagonal_blocks", "near_singular"])
@pytest.mark.parametrize("plan", ["tiles", "out-of-core"])
def test_tile_plans_pivot_across_tiles(kind, plan):
    """Pivots leave the column tile: a block-local pivoting would fail these."""
    a = hostile(kind, N, b=16, seed=4)
    (lu, piv), _ = factor(a, mem("hostile"), plan, 16, block_shape=(16, 16))
    check_scipy(lu.numpy(), piv.numpy(), a, exact=kind != "near_singular")


@pytest.mark.parametrize("plan", ["tiles", "out-of-core"])
def test_exactly_singular_and_non_finite_raise_typed_errors(plan):
    a = hostile("random", N, seed=5)
    a[:, 40] = 0.0  # U[:, 40] stays exactly zero: the first zero pivot is U[40, 40]
    with pytest.raises(jw.SingularMatrixError, match=r"U\[40, 40\] is exactly zero") as err:
        factor(a, mem("singular"), plan, 16, block_shape=(16, 16))
    assert err.value.column == 40
    a = hostile("random", N, seed=6)
    a[60, 2] = np.nan
    with pytest.raises(jw.NonFiniteError, match="NaN or Inf"):
        factor(a, mem("nan"), plan, 16, block_shape=(16, 16))


def test_the_selector_and_the_budget():
    """A factor on CPU devices of one process, stored or returned, takes the tile plan
    (elsewhere the kernel); below the in-core budget the out-of-core plan runs
    (resumable); a returned factor never runs out of core."""
    a = hostile("random", N, seed=7)
    (lu, piv), report = factor(a, mem("auto"), block_shape=(16, 16))
    chosen = ast.literal_eval(report.tiling)[0]
    assert chosen == ("tiles" if platform_profile().host_lapack else "kernel")
    assert f"selected {chosen}: " in report.reason
    check_scipy(lu.numpy(), piv.numpy(), a)
    (lu, piv), report = factor(a, None)
    assert ast.literal_eval(report.tiling)[0] == chosen
    assert isinstance(lu, jax.Array) and isinstance(piv, jax.Array) and piv.shape == (N,)
    check_scipy(np.asarray(lu), np.asarray(piv), a)
    (lu, piv), report = factor(a, None, "out-of-core")
    assert ast.literal_eval(report.tiling)[0] == "kernel"
    assert "the out-of-core plan only stores" in report.reason
    check_scipy(np.asarray(lu), np.asarray(piv), a)
    with pytest.raises(jw.MemoryBudgetError, match="smallest workable budget") as err:
        factor(a, mem("tiny"), memory_budget=1_000, block_shape=(16, 16))
    smallest = int(re.search(r"budget is [^(]*\((\d+) bytes\)\.$", str(err.value)).group(1))
    (lu, piv), report = factor(a, mem("small"), memory_budget=smallest, block_shape=(16, 16))
    assert ast.literal_eval(report.tiling)[0] == "out-of-core"
    assert "the next that fits" in report.reason
    check_scipy(lu.numpy(), piv.numpy(), a)
    with pytest.raises(jw.ConfigError, match="plan='fast' must be"):
        LUFactor(plan="fast")


@pytest.mark.parametrize("after", [3, 9])
def test_out_of_core_resumes_after_a_kill(tmp_path, after):
    """Killed after 3 records (a column and a half), or after 9 (every column's two
    records, 2 x 4, and one fix-up: the columns not fixed up may be half rewritten, so
    they are factored again); the rerun skips what is recorded."""
    n, t = 61, 16  # 4 column tiles
    a = hostile("leading_zero", n, seed=8)
    A = jw.from_numpy(a, str(tmp_path / "a"), (16, 16))
    out = str(tmp_path / "f")
    call = ("from jaxwren.engine.run import run\nfrom jaxwren.linalg.lu import LUFactor\n"
            f"run(LUFactor(plan='out-of-core', tile={t}), (jw.BigMatrix.open({A.url!r}),), "
            f"{out!r}, jw.RunSpec())")  # fmt: skip
    run_until_killed(tmp_path, call, after_marks=after)
    with jw.observe() as runs:
        (lu, piv), report = factor(A, out, "out-of-core", t)
    assert report.state == "partial" and report.steps_skipped > 0
    check_scipy(lu.numpy(), piv.numpy(), a)
    assert len(runs) == 1


def test_compiles_stay_flat_in_the_number_of_column_tiles():
    """The device sweep (accelerator profile: out-of-core): twice the column tiles
    compile at most one more shape (a longer run of rows). On CPU devices of one process
    the tile plans sweep on host BLAS and compile nothing."""
    counts = []
    for n in (64 + 3, 128 + 3):  # 9 and 17 column tiles of 8
        a = hostile("random", n, seed=9)
        _, report = factor(a, mem("compiles"), "tiles", 8, block_shape=(8, 8))
        counts.append(report.compiles)
    if platform_profile().shares_host_memory:
        assert counts == [0, 0], counts
    else:
        assert counts[0] <= 9 and counts[1] <= counts[0] + 1, counts


@pytest.mark.parametrize("refine", [False, True])
def test_solve_on_the_tile_plan(refine):
    """On CPU devices of one process ``solve`` factors on the tile plan (float32 when
    ``refine``, refined with float64 residuals to the float64 backward error)."""
    a = hostile("leading_zero", N, seed=10)
    b = np.random.default_rng(11).standard_normal((N, 3))
    with jw.observe() as runs:
        x = np.asarray(jw.solve(jw.from_numpy(a, mem("A"), (16, 16)), b, refine=refine))
    want = "tiles" if platform_profile().host_lapack else "kernel"
    assert ast.literal_eval(runs[0].tiling)[0] == want
    err = np.abs(a @ x - b).max(axis=0) / (np.abs(a).sum(axis=1).max() * np.abs(x).max(axis=0))
    assert err.max() <= 1e-14
    np.testing.assert_allclose(x, sl.solve(a, b), rtol=1e-9, atol=1e-12)
    if refine:
        assert runs[0].details["refine_converged"] and runs[0].details["refine_iterations"] >= 1


@pytest.mark.parametrize("host", [False, True])
@pytest.mark.parametrize("finished", [(), ("c24-0", "p24-0")])
def test_out_of_core_steps_stay_within_the_footprint(finished, host):
    """No step of the out-of-core plans (the device sweep's and the host sweep's in
    pieces; a resumed one too: it first reads the stored pivots) reads or writes more
    than the footprint the budget was checked with; the host plan's settled column
    write is its carry."""
    from jaxwren.engine.memory import projected
    from jaxwren.engine.problem import Resume
    from jaxwren.linalg import lu_plans
    from jaxwren.linalg.lu_ooc import host_ooc_plan
    from jaxwren.linalg.lu_steps import Setup, ooc_plan

    n, t, dtype, mesh = N, 24, np.dtype(np.float64), jw.default_mesh()
    resume = Resume("r", frozenset(f"r-{k}" for k in finished))
    s = Setup(np.zeros((n, n)), n, dtype, mesh, "lu", "piv", resume, "", "lu_factor",
              False, {})  # fmt: skip
    plan = (host_ooc_plan if host else ooc_plan)(s, t)
    fp = (lu_plans.host_ooc_footprint if host else lu_plans.ooc_footprint)(n, t, dtype, mesh)

    def nbytes(shape, dt):
        return int(np.prod(shape)) * np.dtype(dt).itemsize

    assert any(st.label == "stored pivots" for st in plan.steps) == bool(finished)
    settled = 0
    for st in plan.steps:
        assert sum(nbytes(r.shape, r.dtype) for r in st.reads) <= sum(b.nbytes for b in fp.reads)
        dts = [np.dtype(np.int32) if w.target == "piv" else dtype for w in st.writes]
        got = sum(nbytes(w.size, d) for w, d in zip(st.writes, dts, strict=True) if not w.settle)
        assert got <= sum(b.nbytes for b in fp.writes), st.label
        for w in st.writes:
            if w.settle:
                settled += 1
                assert nbytes(w.size, dtype) <= sum(b.nbytes for b in fp.accumulators)
    assert settled == (-(-n // t) if host else 0)
    if host:  # the design's point: tiles of 512 fit a quarter of n = 4096 (with prefetch)
        big = lu_plans.host_ooc_footprint(4096, 512, dtype, mesh)
        assert projected(big, mesh, 1, True) <= 4096**2 * 8 // 4


def test_a_new_factor_takes_smaller_blocks_when_none_fits_the_defaults(tmp_path):
    """The out-of-core tiles are whole blocks of the factor: when none fits the budget
    with the input's blocks, a factor the run creates is stored in smaller ones (the
    report says so) and matches scipy; blocks the user asked for are kept, and the
    refusal names the block_shape that would fit."""
    from jaxwren.engine.memory import projected
    from jaxwren.linalg import lu_plans

    n, mesh = 300, jw.default_mesh()
    a = hostile("random", n, seed=12)
    A = jw.from_numpy(a, str(tmp_path / "a"), (n, n))
    host = lu_plans.available(mesh)  # (the accelerator lane: the device sweep's plan)
    fp = (lu_plans.host_ooc_footprint if host else lu_plans.ooc_footprint)(
        n, 128, np.dtype(np.float64), mesh
    )
    budget = projected(fp, mesh, 1, True)  # out-of-core tiles of 128 just fit
    (lu, piv), report = factor(A, str(tmp_path / "f"), memory_budget=budget)
    if not host:  # the kernel fits there: the input's blocks are kept
        assert ast.literal_eval(report.tiling)[0] == "kernel" and lu.block_shape == (n, n)
        check_scipy(lu.numpy(), piv.numpy(), a)
        return
    assert ast.literal_eval(report.tiling) == ("out-of-core", 128)
    assert lu.block_shape == (128, 128) and piv.block_shape == (128, 1)
    assert "stored in blocks" in report.reason
    check_scipy(lu.numpy(), piv.numpy(), a)
    with pytest.raises(jw.MemoryBudgetError, match=r"block_shape=\(128, 128\)"):
        factor(A, str(tmp_path / "g"), memory_budget=budget, block_shape=(n, n))
    assert not (tmp_path / "g").exists()


def test_the_out_of_core_plan_holds_no_more_than_its_budget(tmp_path):
    """What the out-of-core run allocates in host memory (numpy, traced) stays within
    the budget it was chosen for: a settled column is freed before the next panel, the
    pieces are what the footprint says (a quarter of the bytes, n = 2000)."""
    import tracemalloc

    from jaxwren.linalg import lu_plans

    n = 2000
    a = np.random.default_rng(13).standard_normal((n, n))
    A = jw.from_numpy(a, str(tmp_path / "a"), (1000, 1000))
    budget = n * n * 8 // 4
    if not lu_plans.available(jw.default_mesh()):  # the device sweep: replicated panels
        with pytest.raises(jw.MemoryBudgetError, match="smallest workable budget"):
            factor(A, str(tmp_path / "f"), memory_budget=budget)
        return
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        (lu, piv), report = factor(A, str(tmp_path / "f"), memory_budget=budget)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert ast.literal_eval(report.tiling)[0] == "out-of-core"
    assert 0 < peak <= budget, (peak, budget)
    check_scipy(lu.numpy(), piv.numpy(), a)
