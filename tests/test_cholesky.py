"""jw.cholesky against numpy: stores, ragged n, meshes, both paths, resume, errors."""

from __future__ import annotations

import ast
import importlib

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

import jaxwren as jw
from jaxwren.config import RunSpec
from jaxwren.engine.run import run
from jaxwren.linalg.cholesky import Cholesky
from jaxwren.sharding.platform import platform_profile
from tests.helpers import mem, run_until_killed, tolerance

select_mod = importlib.import_module("jaxwren.linalg.cholesky.select")


def spd(n: int, dtype: str = "float64", seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, n))
    return (x @ x.T / n + np.eye(n)).astype(dtype)


def check_factor(l_mat: np.ndarray, a: np.ndarray) -> None:
    ref = np.linalg.cholesky(a.astype(np.float64))
    tol = tolerance(a.dtype)
    np.testing.assert_allclose(l_mat, ref, rtol=tol["rtol"] * 100, atol=tol["atol"] * 100)
    np.testing.assert_array_equal(np.triu(l_mat, 1), 0)
    resid = np.linalg.norm(l_mat @ l_mat.T - a) / np.linalg.norm(a)
    assert resid < (1e-12 if a.dtype == np.float64 else 1e-5)


OOC = 60_000  # bytes: forces the out-of-core tile plan for the sizes below
PLANS = ["tiles", "kernel", "out-of-core"]


@pytest.fixture(params=PLANS)
def budget(request, monkeypatch):
    """The three ways a stored factor is computed: the tile plan with everything fitting
    (the CPU profile's default), the in-core kernel (the accelerator profile's default and
    what returned factors take), both forced here whatever the profile, and the tile plan
    at a budget below the matrix."""
    if request.param != "out-of-core":  # as Cholesky("kernel") / Cholesky("tiles") rank it
        # (the tile plan: forced too, so the accelerator profile's lane runs it as well)
        monkeypatch.setattr(select_mod, "tiles_first", lambda _mesh: request.param == "tiles")
    return OOC if request.param == "out-of-core" else None


def test_store_to_store(store, budget):
    a = spd(45)
    A = jw.from_numpy(a, store.url("a"), (8, 8), storage=store.config)
    L = jw.cholesky(A, store.url("l"), memory_budget=budget, storage=store.config)
    assert isinstance(L, jw.BigMatrix) and L.block_shape == (8, 8)
    check_factor(L.numpy(), a)
    np.testing.assert_array_equal(A.numpy(), a)  # input untouched


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 13, 64, 101])
def test_in_memory_inputs(dtype, n):
    a = spd(n, dtype)
    L = jw.cholesky(a)
    assert isinstance(L, jax.Array) and L.dtype == a.dtype and L.shape == (n, n)
    check_factor(np.asarray(L), a)
    check_factor(np.asarray(jw.cholesky(jax.numpy.asarray(a))), a)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_out_of_core_ragged(dtype):
    a = spd(70, dtype, seed=1)
    A = jw.from_numpy(a, mem("ooc-a"), (8, 8))
    L = jw.cholesky(A, mem("ooc-l"), memory_budget=OOC // (2 if dtype == "float32" else 1))
    check_factor(L.numpy(), a)


@pytest.mark.parametrize("mesh_shape", [(1, 8), (8, 1), (2, 2)])
def test_meshes(mesh_shape, budget):
    r, c = mesh_shape
    mesh = jax.make_mesh(
        (r, c), ("rows", "cols"), axis_types=(AxisType.Auto,) * 2, devices=jax.devices()[: r * c]
    )
    a = spd(50, seed=2)
    A = jw.from_numpy(a, mem("mesh-a"), (8, 8))
    L = jw.cholesky(A, mem("mesh-l"), mesh=mesh, memory_budget=budget)
    check_factor(L.numpy(), a)


def test_upper_triangle_absent_or_garbage(budget):
    a = spd(40, seed=3)
    A = jw.BigMatrix.create(mem("lower-a"), (40, 40), (8, 8), "float64")
    for i, j in A.block_idxs:
        if j <= i:
            A.put_block(a[8 * i : 8 * i + 8, 8 * j : 8 * j + 8], i, j)
    assert (0, 1) not in A.block_idxs_exist  # numpywren's BigSymmetricMatrix
    check_factor(jw.cholesky(A, mem("lower-l"), memory_budget=budget).numpy(), a)
    G = jw.from_numpy(np.tril(a) + np.triu(np.full_like(a, np.nan), 1), mem("garbage"), (8, 8))
    check_factor(jw.cholesky(G, mem("garbage-l"), memory_budget=budget).numpy(), a)


def test_not_positive_definite(budget):
    a = spd(40, seed=4)
    a[30, 30] = -50.0  # fails in the block column holding column 30
    A = jw.from_numpy(a, mem("npd-a"), (8, 8))
    out = mem("npd-l")
    with pytest.raises(
        jw.NotPositiveDefiniteError, match=r"not positive definite.*block column"
    ) as e:
        jw.cholesky(A, out, memory_budget=budget)
    assert isinstance(e.value, np.linalg.LinAlgError)
    col = int(str(e.value).split("(columns ")[1].split(":")[0])
    assert col <= 30
    with pytest.raises(jw.MatrixNotFoundError):  # the out this call created is gone again
        jw.BigMatrix.open(out)
    existing = jw.BigMatrix.create(mem("npd-existing"), (40, 40), (8, 8), "float64")
    with pytest.raises(jw.NotPositiveDefiniteError):
        jw.cholesky(A, existing, memory_budget=budget)
    assert not any(m.endswith("complete") for m in existing.marks())  # never looks complete
    with pytest.raises(jw.NotPositiveDefiniteError):
        jw.cholesky(-np.eye(3))


def test_nan_and_inf(budget):
    a = spd(40, seed=5)
    a[20, 3] = np.nan
    A = jw.from_numpy(a, mem("nan-a"), (8, 8))
    with pytest.raises(jw.NonFiniteError, match="NaN or Inf.*nan_to_num"):
        jw.cholesky(A, mem("nan-l"), memory_budget=budget)
    b = spd(10)
    b[9, 0] = np.inf
    with pytest.raises(jw.NonFiniteError, match="NaN or Inf"):
        jw.cholesky(b)


@pytest.mark.parametrize("kind", ["stored", "device", "numpy", "out-of-core"])
def test_any_non_finite_lower_entry_is_named(kind):
    """Neither plan makes a pass of its own over the input: a NaN or Inf anywhere in the
    lower triangle fails the factor (in-core kernel, or a diagonal tile's LAPACK factor
    out-of-core), and only then is the input checked to name the cause. Every kind of
    bad value, on and below the diagonal, first and last rows."""
    import jax

    base = spd(37, seed=6)  # not a multiple of the kernel block or the tiles
    for (i, j), bad in [((0, 0), np.nan), ((36, 36), np.inf), ((36, 0), -np.inf),
                        ((20, 19), np.nan), ((1, 0), np.inf), ((30, 29), np.inf)]:  # fmt: skip
        a = base.copy()
        a[i, j] = bad
        budget, out = None, None
        if kind in ("stored", "out-of-core"):
            x = jw.from_numpy(a, mem(f"nf-{i}-{j}"), (8, 8))
            if kind == "out-of-core":
                budget, out = OOC // 4, mem(f"nf-l-{i}-{j}")
        else:
            x = jax.numpy.asarray(a) if kind == "device" else a
        with pytest.raises(jw.NonFiniteError, match="NaN or Inf on or below the diagonal"):
            jw.cholesky(x, out, memory_budget=budget)
    b = base.copy()
    b[0, 36] = np.nan  # above the diagonal: never read
    check_factor(np.asarray(jw.cholesky(b)), base)
    B = jw.from_numpy(b, mem("nf-upper"), (8, 8))
    check_factor(jw.cholesky(B, mem("nf-upper-l"), memory_budget=OOC // 4).numpy(), base)


def test_bad_input_errors():
    with pytest.raises(jw.ShapeMismatchError, match=r"must be square, got shape \(3, 4\)"):
        jw.cholesky(np.ones((3, 4)))
    with pytest.raises(jw.ShapeMismatchError, match="non-empty 2-D"):
        jw.cholesky(np.ones(4))
    with pytest.raises(jw.DTypeMismatchError, match="complex"):
        jw.cholesky(np.eye(3).astype(np.complex64))
    A = jw.from_numpy(spd(16), mem("err-a"), (8, 8))
    with pytest.raises(jw.OutputConflictError, match=r"\) is input #0"):
        jw.cholesky(A, A.url)
    wrong = jw.BigMatrix.create(mem("err-out"), (16, 15), (8, 8), "float64")
    with pytest.raises(jw.ShapeMismatchError, match=r"must have shape \(16, 16\)"):
        jw.cholesky(A, wrong)
    with pytest.raises(jw.MemoryBudgetError, match="pass out=URL"):  # tiles need less
        jw.cholesky(jw.from_numpy(spd(48), mem("err-a48"), (8, 8)), memory_budget=1000)
    never = mem("err-never")
    with pytest.raises(jw.MemoryBudgetError, match="smallest workable budget"):
        jw.cholesky(A, never, memory_budget=1000)
    with pytest.raises(jw.MatrixNotFoundError):
        jw.BigMatrix.open(never)  # refused before out was created
    assert wrong.block_idxs_exist == set()


def test_existing_out_with_stale_blocks_is_replaced(budget):
    a = spd(24, seed=6)
    out = jw.from_numpy(np.full((24, 24), 7.0), mem("stale"), (8, 8))
    got = jw.cholesky(a, out, memory_budget=budget).numpy()
    check_factor(got, a)
    assert not np.any(np.triu(got, 1))  # the stale 7s above the diagonal are gone too


def test_stored_factor_skips_blocks_above_the_diagonal(budget, request):
    a = spd(40, seed=8)
    with jw.observe() as runs:
        L = jw.cholesky(a, mem("upper"), block_shape=(16, 16), memory_budget=budget)
    (report,) = runs
    kernel = request.node.callspec.params["budget"] == "kernel"  # the plan this param forces
    assert (ast.literal_eval(report.tiling)[0] == "kernel") == kernel
    assert report.tiles.startswith("kernel: in-core") == kernel
    assert L.block_idxs_exist == {(i, j) for i in range(3) for j in range(i + 1)}
    check_factor(L.numpy(), a)  # the absent blocks read as zeros


def test_out_of_core_takes_several_k_tiles_per_step():
    a = spd(96, seed=9)  # 16 KB: tiles of 8 with K panels of 8..32 fit, tiles of 16 do not
    A = jw.from_numpy(a, mem("kpanels"), (8, 8))
    with jw.observe() as runs:
        L = jw.cholesky(A, mem("kpanels-l"), memory_budget=16_000)
    check_factor(L.numpy(), a)
    (got,) = runs
    name, t, kt = ast.literal_eval(got.tiling)  # tiles of t, K panels of kt tiles
    assert name == "out-of-core"
    nt = -(-96 // t)
    assert kt > 1  # each GEMM step takes several K tiles: fewer steps than one per tile
    widths = [w for w in range(kt, 0, -1) if w == kt or w & (w - 1) == 0]  # kt, 2^i < kt

    def chunks(j: int) -> int:  # greedy: no step multiplies zero padding
        count = 0
        while j:
            j -= next(w for w in widths if w <= j)
            count += 1
        return count

    gemms = sum((nt - j) * chunks(j) for j in range(nt))
    assert got.steps_run == gemms + nt * (nt + 1) // 2
    assert gemms < sum((nt - j) * j for j in range(nt))
    l_reads = sum((nt - j) * 2 * t * j * t for j in range(nt)) * 8
    a_reads = sum((nt - j) * t * t for j in range(nt)) * 8
    assert got.bytes_read == l_reads + a_reads  # K panels read unpadded


def test_resume_after_kill(tmp_path):
    n, budget = 64, OOC
    a = spd(n, seed=7)
    A = jw.from_numpy(a, str(tmp_path / "a"), (8, 8))
    out = str(tmp_path / "l")
    call = f"jw.cholesky(jw.BigMatrix.open({A.url!r}), {out!r}, memory_budget={budget})"
    run_until_killed(tmp_path, call, after_marks=6)
    stored = jw.BigMatrix.open(out)
    done = stored.marks()
    assert len(done) == 6 and not any(m.endswith("complete") for m in done)
    with jw.observe() as runs:
        L = jw.cholesky(A, out, memory_budget=budget)
        check_factor(L.numpy(), a)
        assert any(m.endswith("complete") for m in stored.marks())
        jw.cholesky(A, out, memory_budget=budget)  # complete: nothing runs again
    res, again = runs
    assert res.state == "partial" and res.steps_skipped >= 6  # the six finished tiles
    assert again.state == "complete" and again.steps_run == 0 and again.bytes_read == 0


def test_resume_inside_a_column_inverts_the_stored_diagonal_tile(tmp_path):
    """Killed after the first column's diagonal tile and two of its solves: the rerun
    skips those three and solves the rest of the column with the stored L[0, 0]."""
    n, budget = 64, 16_000
    a = spd(n, seed=8)
    A = jw.from_numpy(a, str(tmp_path / "a"), (8, 8))
    out = str(tmp_path / "l")
    call = f"jw.cholesky(jw.BigMatrix.open({A.url!r}), {out!r}, memory_budget={budget})"
    run_until_killed(tmp_path, call, after_marks=3)
    done = {m.rsplit("-", 3)[-3] + "-" + m.rsplit("-", 2)[-2] + "-" + m.rsplit("-", 1)[-1]
            for m in jw.BigMatrix.open(out).marks()}  # fmt: skip
    assert done == {"t8-0-0", "t8-1-0", "t8-2-0"}, done
    with jw.observe() as runs:
        L = jw.cholesky(A, out, memory_budget=budget)
    assert runs[0].state == "partial" and runs[0].steps_skipped == 3
    check_factor(L.numpy(), a)


def test_the_op_ranks_the_plan_it_is_asked_for():
    """``Cholesky("kernel")`` / ``("tiles")`` (benchmarks compare the two) rank that plan
    first for a stored factor; the result is the same; a returned factor always takes
    the kernel (a tile plan only stores)."""
    a = spd(50, seed=11)
    tiled = "tiles" if platform_profile().shares_host_memory else "out-of-core"
    for prefer, name in (("kernel", "kernel"), ("tiles", tiled)):
        spec = RunSpec(block_shape=(8, 8))
        got = run(Cholesky(prefer), (a,), mem(f"prefer-{prefer}"), spec)
        assert ast.literal_eval(got.report.tiling)[0] == name
        assert got.report.tiles.startswith(f"{name}: ")
        assert f"selected {name}: asked for" in got.report.reason
        check_factor(got.value.numpy(), a)
    got = run(Cholesky("tiles"), (a,), None, RunSpec())
    check_factor(np.asarray(got.value), a)
    assert ast.literal_eval(got.report.tiling)[0] == "kernel"
    assert "only the kernel returns one" in got.report.reason
    with pytest.raises(jw.ConfigError, match="plan='fast' must be"):
        Cholesky("fast")


def test_finished_tiles_stay_in_memory_when_the_budget_holds_them():
    """Where device buffers are host memory (the CPU profile), a fresh tile plan whose
    budget holds the lower triangle keeps its finished tiles in host memory: the K panels
    are views of them, so only A's lower tiles are read. A budget that cannot hold them
    reads the panels back from the store; a resumed run (finished tiles in the store, not
    in memory) does too. The accelerator profile always reads the panels back."""
    kept = platform_profile().shares_host_memory
    a = spd(96, seed=12)
    A = jw.from_numpy(a, mem("kept-a"), (8, 8))
    got = run(Cholesky("tiles"), (A,), mem("kept-l"), RunSpec()).report
    L = jw.BigMatrix.open(got.stored["L"])
    check_factor(L.numpy(), a)
    assert ("finished tiles kept in memory" in got.tiles) == kept
    t = ast.literal_eval(got.tiling)[1]  # tiles of t
    nt = -(-96 // t)
    lower = nt * (nt + 1) // 2 * t * t * 8  # A's lower tiles
    assert (got.bytes_read == lower) == kept  # else the K panels too
    small = run(Cholesky("tiles"), (A,), mem("kept-l2"), RunSpec(memory_budget=16_000))
    check_factor(small.value.numpy(), a)
    assert "kept in memory" not in small.report.tiles
    assert small.report.bytes_read > lower


@pytest.mark.parametrize(("block", "dtype"), [(24, "float64"), (48, "float32"), (12, "float64")])
def test_work_tiles_independent_of_the_stored_blocks(block, dtype):
    """The in-core tile plan factors on its own work tile (32 at n = 100), whatever the
    stored blocks: when the tile cuts them, L is written by columns of whole stored blocks
    as they complete (lower blocks only), and failures are still named."""
    a = spd(100, dtype, seed=13)
    A = jw.from_numpy(a, mem(f"wt-a-{block}"), (block, block))
    with jw.observe() as runs:
        L = run(Cholesky("tiles"), (A,), mem(f"wt-l-{block}"), RunSpec()).value
    check_factor(L.numpy(), a)
    (got,) = runs
    name, t, _ = ast.literal_eval(got.tiling)
    if platform_profile().shares_host_memory:
        assert (name, t) == ("tiles", 32) and "columns of stored blocks" in got.tiles
    nb = -(-100 // block)
    assert L.block_idxs_exist == {(i, j) for i in range(nb) for j in range(i + 1)}
    bad = a.copy()
    bad[70, 70] = -50.0
    B = jw.from_numpy(bad, mem(f"wt-bad-{block}"), (block, block))
    with pytest.raises(jw.NotPositiveDefiniteError, match=r"block column 2 \(columns 64:96\)"
                       if name == "tiles" else "block column"):  # fmt: skip
        run(Cholesky("tiles"), (B,), mem(f"wt-bad-l-{block}"), RunSpec())
    bad[70, 3] = np.nan
    B = jw.from_numpy(bad, mem(f"wt-nan-{block}"), (block, block))
    with pytest.raises(jw.NonFiniteError, match="NaN or Inf"):
        run(Cholesky("tiles"), (B,), mem(f"wt-nan-l-{block}"), RunSpec())


def test_the_report_names_the_algorithm_and_the_selectors_reason():
    """jw.explain and jw.observe show the algorithm (first item of the tiling) and the
    selector's reason (after the engine's, in ``reason`` and ``str(report)``), also when
    the budget overrules it."""
    from jaxwren.linalg.cholesky import select

    a = spd(64, seed=14)
    A = jw.from_numpy(a, mem("why-a"), (8, 8))
    best, why = select.select(jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4),
                                                ("rows", "cols")), True)  # fmt: skip
    planned = jw.explain(jw.cholesky, A, mem("why-l"))
    assert ast.literal_eval(planned.tiling)[0] == best
    assert planned.reason == f"{planned.reason.split('; selected ')[0]}; selected {best}: {why}"
    assert planned.reason.startswith("cheapest within budget at prefetch=1")
    assert f"selected {best}: {why}" in str(planned) and why not in planned.tiles
    with jw.observe() as runs:
        jw.cholesky(A, mem("why-l"))
        jw.cholesky(A)
        jw.cholesky(A, mem("why-ooc"), memory_budget=16_000)
    stored, returned, small = runs
    assert (stored.tiling, stored.tiles, stored.reason) == (planned.tiling, planned.tiles,
                                                            planned.reason)  # fmt: skip
    assert ast.literal_eval(returned.tiling)[0] == "kernel"
    assert "selected kernel: a returned factor" in returned.reason
    assert ast.literal_eval(small.tiling)[0] == "out-of-core"
    if best != "out-of-core":
        assert f"selected {best} (" in small.reason and "does not fit the budget" in small.reason


def test_update_steps_counts_the_k_chunks():
    """The closed-form count the selector costs every work tile by (down to tiles of 8)."""
    from jaxwren.linalg.cholesky.tiles import k_chunks, update_steps

    for kt in (1, 2, 3, 4, 7):
        for nt in (1, 2, 5, 33):
            assert update_steps(nt, kt) == sum((nt - j) * len(k_chunks(j, kt)) for j in range(nt))
