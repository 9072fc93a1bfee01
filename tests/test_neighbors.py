"""pairwise_sq_distances, argmin and nearest_neighbors against a float64 numpy brute force:
stores, ragged blocks, in-core and streamed plans (both data layouts), k = 1 and k > 1,
leave-one-out, exact ties, the float32 near-tie rule, 16-bit and integer inputs, the
two-step path against the fused one, one compile per tile shape, stored results (resume,
reuse, recomputation after the data changed), and every error message."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

import jaxwren as jw
from jaxwren.config import RunSpec
from jaxwren.engine.run import run
from jaxwren.linalg.distances import PairwiseSqDistances, pairwise_sq_distances
from jaxwren.linalg.neighbors import NearestNeighbors, Tiling, nearest_neighbors
from jaxwren.linalg.reduce import Argmin, argmin
from tests.helpers import mem, rand, tolerance

SMALL = 20_000  # bytes: streams the shapes below through many steps


def sq_dists(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The float64 brute force (differences, not the GEMM formula)."""
    q, x = q.astype(np.float64), x.astype(np.float64)
    return ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def brute_knn(q: np.ndarray, x: np.ndarray, k: int, exclude_self: bool = False):
    d = sq_dists(q, x)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]  # ties: the lowest index first
    return idx, np.take_along_axis(d, idx, 1)


@pytest.mark.parametrize("budget", [None, SMALL], ids=["in-core", "streamed"])
def test_stores_ragged_two_step_and_fused(store, budget):
    q, x = rand((37, 13), seed=1), rand((53, 13), seed=2)
    Q = jw.from_numpy(q, store.url("q"), (8, 5), storage=store.config)
    X = jw.from_numpy(x, store.url("x"), (10, 6), storage=store.config)
    spec = RunSpec(memory_budget=budget, storage=store.config)
    runs = [run(PairwiseSqDistances(), (Q, X), store.url("d"), spec)]
    D = runs[0].value
    runs.append(run(Argmin(1), (D,), None, spec))
    idx, vals = runs[1].value
    runs.append(run(NearestNeighbors(1), (Q, X), None, spec))
    nn_idx, nn_d = runs[2].value
    ref = sq_dists(q, x)
    assert isinstance(D, jw.BigMatrix) and D.shape == (37, 53) and D.block_shape == (8, 10)
    np.testing.assert_allclose(D.numpy(), ref, **tolerance("float64"))
    np.testing.assert_array_equal(np.asarray(idx), ref.argmin(axis=1))
    np.testing.assert_allclose(np.asarray(vals), ref.min(axis=1), **tolerance("float64"))
    np.testing.assert_array_equal(np.asarray(nn_idx)[:, 0], np.asarray(idx))  # two-step = fused
    np.testing.assert_allclose(np.asarray(nn_d)[:, 0], np.asarray(vals), **tolerance("float64"))
    steps = [r.report.steps_run for r in runs]
    assert min(steps) > 1 if budget else max(steps) == 1, steps


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("budget", [None, 30_000], ids=["in-core", "streamed"])
def test_knn_matches_brute_force(k, budget):
    q, x = rand((45, 9), seed=3), rand((70, 9), seed=4)
    Q, X = jw.from_numpy(q, mem("kq"), (8, 9)), jw.from_numpy(x, mem("kx"), (16, 4))
    res = run(NearestNeighbors(k), (Q, X), None, RunSpec(memory_budget=budget))
    idx, dist = res.value
    ref_idx, ref_d = brute_knn(q, x, k)
    assert idx.shape == dist.shape == (45, k) and idx.dtype == np.int32
    assert isinstance(idx, jax.Array) and dist.dtype == np.float64
    np.testing.assert_array_equal(np.asarray(idx), ref_idx)
    np.testing.assert_allclose(np.asarray(dist), ref_d, **tolerance("float64"))
    ring = "ring=True" in res.report.tiling  # the tiling the run chose
    assert (res.report.steps_run == 1 and not ring) if budget is None else ring


@pytest.mark.parametrize("layout", ["ring", "ring-per-hop", "broadcast"])
@pytest.mark.parametrize("tiles", [(16, 16, 1, 2), (48, 32, 3, 3), (24, 70, 3, 70)])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_every_layout_and_tiling(layout, tiles, exclude_self):
    """Every tiling the search may pick gives the same neighbours (chunks ragged or not;
    the ring's hops in one launch, as on CPU, or one launch per hop, as elsewhere)."""
    x = rand((45, 9), seed=17)
    X = jw.from_numpy(x, mem("lay"), (8, 9))
    tq, tn, qc, cw = tiles
    ring = layout != "broadcast"
    tn = -(-tn // 8) * 8 if ring else tn
    tiling = Tiling(tq, tn, qc, min(cw, tn // 8 if ring else tn), ring)
    for k in (1, 3):
        op = NearestNeighbors(k, exclude_self, tiling=tiling, fused=layout == "ring")
        idx, dist = run(op, (X, X)).value
        ref_idx, ref_d = brute_knn(x, x, k, exclude_self)
        np.testing.assert_array_equal(np.asarray(idx), ref_idx)
        np.testing.assert_allclose(np.asarray(dist), ref_d, **tolerance("float64"))


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("budget", [None, 60_000], ids=["in-core", "streamed"])
def test_leave_one_out(k, budget):
    x = rand((161, 7), seed=5)
    X = jw.from_numpy(x, mem("loo"), (9, 7))
    idx, dist = nearest_neighbors(X, X, k, exclude_self=True, memory_budget=budget)
    ref_idx, ref_d = brute_knn(x, x, k, exclude_self=True)
    np.testing.assert_array_equal(np.asarray(idx), ref_idx)
    np.testing.assert_allclose(np.asarray(dist), ref_d, **tolerance("float64"))
    assert not np.any(np.asarray(idx) == np.arange(161)[:, None])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("budget", [None, 40_000], ids=["in-core", "streamed"])
def test_exact_ties_go_to_the_lowest_index(dtype, budget):
    # small integers: every distance is exact in float32 too, and most of them tie
    rng = np.random.default_rng(6)
    x = rng.integers(0, 3, (90, 4)).astype(dtype)
    x[50:60] = x[0:10]  # duplicate rows
    q = rng.integers(0, 3, (33, 4)).astype(dtype)
    X = jw.from_numpy(x, mem("tie"), (16, 4))
    for k in (1, 5):
        idx, dist = nearest_neighbors(q, X, k, memory_budget=budget)
        ref_idx, ref_d = brute_knn(q, x, k)
        np.testing.assert_array_equal(np.asarray(idx), ref_idx)
        np.testing.assert_array_equal(np.asarray(dist), ref_d)
    loo, _ = nearest_neighbors(X, X, 2, exclude_self=True, memory_budget=budget)
    np.testing.assert_array_equal(np.asarray(loo), brute_knn(x, x, 2, exclude_self=True)[0])
    d = np.asarray(pairwise_sq_distances(q, X))
    np.testing.assert_array_equal(np.asarray(argmin(d, axis=1)[0]), d.argmin(axis=1))
    np.testing.assert_array_equal(np.asarray(argmin(d, axis=0)[0]), d.argmin(axis=0))


def assert_float32_rule(q, x, idx, dist, k, exclude_self=False):
    """The documented rule (u = 2**-24, d features): distances within
    (2d + 3) u (|q|^2 + |x|^2) of the exact ones; an index may differ from the float64
    brute force only where the two candidates' float64 distances differ by at most
    2 (2d + 3) u (|q|^2 + max |x|^2). Also the practical 1e-5 (|q|^2 + |x|^2)."""
    ref_idx, _ = brute_knn(q, x, k, exclude_self)
    d64 = sq_dists(q, x)
    qn, xn = (q.astype(np.float64) ** 2).sum(1), (x.astype(np.float64) ** 2).sum(1)
    unit = (2 * q.shape[1] + 3) * 2.0**-24
    bound = 2 * unit * (qn[:, None] + np.maximum(xn[idx], xn[ref_idx]))
    ours, best = np.take_along_axis(d64, idx, 1), np.take_along_axis(d64, ref_idx, 1)
    differ = idx != ref_idx
    assert np.all(np.abs(ours - best)[differ] <= bound[differ])
    assert np.all(np.abs(ours - best)[differ] <= 1e-5 * (qn[:, None] + xn[idx])[differ])
    assert np.all(np.abs(dist - ours) <= unit * (qn[:, None] + xn[idx]))
    return int(differ.sum())


@pytest.mark.parametrize("budget", [None, 32_000], ids=["in-core", "streamed"])
def test_float32_picks_float64_neighbours_up_to_near_ties(budget):
    rng = np.random.default_rng(7)
    base = rng.random((20, 24))
    # near-duplicates: 5 copies of each row, moved by ~1e-7 relative (below float32 rounding)
    x = np.repeat(base, 5, axis=0) * (1 + 1e-7 * rng.standard_normal((100, 24)))
    q = base[rng.integers(0, 20, 40)] + 0.05 * rng.random((40, 24))
    x32, q32 = x.astype(np.float32), q.astype(np.float32)
    X = jw.from_numpy(x32, mem("f32"), (16, 24))
    differ = 0
    for k in (1, 6):
        idx, dist = nearest_neighbors(q32, X, k, memory_budget=budget)
        assert dist.dtype == np.float32
        differ += assert_float32_rule(q32, x32, np.asarray(idx), np.asarray(dist), k)
    idx, dist = nearest_neighbors(X, X, 3, exclude_self=True, memory_budget=budget)
    differ += assert_float32_rule(x32, x32, np.asarray(idx), np.asarray(dist), 3, True)
    assert differ > 0  # the data really has near-ties that float32 cannot order
    far = rand((30, 24), "float32", seed=8)  # well-separated data: no index differs
    idx, _ = nearest_neighbors(q32, far, 2, memory_budget=budget)
    np.testing.assert_array_equal(np.asarray(idx), brute_knn(q32, far, 2)[0])


def test_in_memory_operands_dtypes_and_shardings():
    q, x = rand((40, 6), seed=9), rand((24, 6), seed=10)
    for qq, xx in [(q, x), (jax.numpy.asarray(q), x), (q.astype(np.float32), x)]:
        idx, dist = nearest_neighbors(qq, xx, 2)
        np.testing.assert_array_equal(np.asarray(idx), brute_knn(q, x, 2)[0])
        assert dist.dtype == np.float64  # float32 with float64 computes in float64
        assert idx.sharding.spec == jax.sharding.PartitionSpec(("rows", "cols"), None)
    idx, dist = nearest_neighbors(q.astype(np.float16), x.astype(np.float16), 1)
    assert dist.dtype == np.float32  # 16-bit floats compute in float32
    d = pairwise_sq_distances(jax.numpy.asarray(q), x)
    assert isinstance(d, jax.Array) and d.shape == (40, 24)
    assert d.sharding.spec == jax.sharding.PartitionSpec("rows", "cols")
    np.testing.assert_allclose(np.asarray(d), sq_dists(q, x), **tolerance("float64"))
    i0, v0 = argmin(d, axis=0)
    np.testing.assert_array_equal(np.asarray(i0), sq_dists(q, x).argmin(axis=0))
    assert i0.shape == v0.shape == (24,) and i0.dtype == np.int32 and v0.dtype == d.dtype
    ints = np.random.default_rng(11).integers(-5, 5, (19, 23)).astype(np.int32)
    for axis in (0, 1, -1):
        i, v = argmin(ints, axis=axis)
        np.testing.assert_array_equal(np.asarray(i), ints.argmin(axis=axis))
        np.testing.assert_array_equal(np.asarray(v), ints.min(axis=axis))


@pytest.mark.parametrize("axis", [0, 1])
def test_argmin_streamed_transposed_view(axis):
    a = rand((41, 35), seed=12)
    a[5, :] = a[7, :] = -10.0  # ties along both axes
    A = jw.from_numpy(a, mem("am"), (8, 6))
    for src, ref in [(A, a), (A.T, a.T)]:
        idx, vals = argmin(src, axis=axis, memory_budget=9_000)
        np.testing.assert_array_equal(np.asarray(idx), ref.argmin(axis=axis))
        np.testing.assert_array_equal(np.asarray(vals), ref.min(axis=axis))


def test_pairwise_feature_panels_and_returned_result():
    x, y = rand((20, 70), seed=13), rand((18, 70), seed=14)
    X, Y = jw.from_numpy(x, mem("px"), (8, 16)), jw.from_numpy(y, mem("py"), (8, 16))
    D = pairwise_sq_distances(X, Y, mem("pd"), memory_budget=20_000)  # feature panels
    np.testing.assert_allclose(D.numpy(), sq_dists(x, y), **tolerance("float64"))
    d = pairwise_sq_distances(X, Y, memory_budget=60_000)  # streamed panels, D returned
    np.testing.assert_allclose(np.asarray(d), sq_dists(x, y), **tolerance("float64"))
    same = pairwise_sq_distances(X, X)
    assert np.all(np.asarray(same) >= 0)  # clamped at 0


def test_each_tile_shape_compiles_once():
    q, x = rand((50, 8), seed=15), rand((90, 8), seed=16)
    Q, X = jw.from_numpy(q, mem("c-q"), (8, 8)), jw.from_numpy(x, mem("c-x"), (8, 8))
    X2 = jw.from_numpy(2 * x, mem("c-x2"), (8, 8))
    spec = RunSpec(memory_budget=12_000)
    run(NearestNeighbors(3), (Q, X), None, spec)  # warm the shared small kernels
    first = run(NearestNeighbors(2), (Q, X), None, spec)
    second = run(NearestNeighbors(2), (Q, X2), None, spec)
    np.testing.assert_array_equal(np.asarray(first.value[0]), brute_knn(q, x, 2)[0])
    np.testing.assert_array_equal(np.asarray(second.value[0]), brute_knn(q, 2 * x, 2)[0])
    assert first.report.steps_run > 10  # many steps ...
    assert 1 <= first.report.compiles <= 4, first.report  # ... compile start and update once
    assert second.report.compiles == 0  # the same tile shapes never compile again
    d = run(PairwiseSqDistances(), (Q, X), mem("c-d"), RunSpec(memory_budget=10_000))
    assert d.report.steps_run > 10 and d.report.compiles <= 3, d.report


def test_errors_before_anything_is_written():
    x = rand((6, 4))
    X = jw.from_numpy(x, mem("e-x"), (2, 2))
    with pytest.raises(jw.ShapeMismatchError, match=r"queries has 4 features .* data has 3"):
        nearest_neighbors(X, np.ones((5, 3)))
    with pytest.raises(jw.ShapeMismatchError, match=r"x has 4 features.*transposed"):
        pairwise_sq_distances(X, X.T)
    with pytest.raises(jw.ShapeMismatchError, match="non-empty 2-D matrix"):
        nearest_neighbors(np.ones((0, 4)), X)
    with pytest.raises(jw.ShapeMismatchError, match="non-empty 2-D matrix"):
        nearest_neighbors(X, np.ones(4))
    with pytest.raises(jw.ShapeMismatchError, match="non-empty 2-D matrix"):
        argmin(np.ones((3, 0)))
    for k in (0, -1, 2.0, True):
        with pytest.raises(jw.ConfigError, match=r"k must be a positive integer"):
            nearest_neighbors(X, X, k)
    with pytest.raises(jw.ConfigError, match=r"k=7 exceeds the 6 candidates .* k <= 6"):
        nearest_neighbors(X, X, 7)
    with pytest.raises(jw.ConfigError, match=r"k=6 exceeds the 5 candidates \(6 data rows "
                       r"less the query itself\); pass k <= 5"):  # fmt: skip
        nearest_neighbors(X, X, 6, exclude_self=True)
    with pytest.raises(jw.ShapeMismatchError, match="exclude_self=True needs queries to be"):
        nearest_neighbors(x[:3], X, exclude_self=True)
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(jw.NonFiniteError, match=r"data row 4 holds NaN or Inf.*nan_to_num"):
        nearest_neighbors(x, bad)
    bad[4, 1], bad[2, 0] = 1.0, np.inf
    with pytest.raises(jw.NonFiniteError, match="queries row 2 holds NaN or Inf"):
        nearest_neighbors(bad, X, memory_budget=40_000)
    never = mem("e-never")
    with pytest.raises(jw.NonFiniteError, match="y row 2 holds NaN or Inf"):
        pairwise_sq_distances(X, bad, never)
    with pytest.raises(jw.MemoryBudgetError, match=r"smallest workable budget is \d+ bytes"):
        pairwise_sq_distances(X, X, never, memory_budget=300)
    with pytest.raises(jw.MatrixNotFoundError):
        jw.BigMatrix.open(never)  # refused before out was created
    with pytest.raises(
        jw.MemoryBudgetError, match=r"or pass out=URL to store the result, which needs"
    ):
        pairwise_sq_distances(X, X, memory_budget=1000)
    with pytest.raises(jw.OutputConflictError, match="is input #0"):
        pairwise_sq_distances(X, x, X)
    with pytest.raises(jw.MemoryBudgetError, match=r"nearest_neighbors: the smallest plan"):
        nearest_neighbors(X, X, memory_budget=1000)
    with pytest.raises(jw.MemoryBudgetError, match=r"argmin: the smallest plan"):
        argmin(X, memory_budget=100)
    with pytest.raises(jw.ConfigError, match=r"argmin: the result is returned .* without out"):
        run(Argmin(0), (X,), mem("e-argmin"))
    with pytest.raises(jw.ConfigError, match=r"axis must be 0 .* or 1 .*, got 2"):
        argmin(X, axis=2)
    with pytest.raises(jw.ConfigError, match=r"axis must be 0 .* got None"):
        argmin(X, axis=None)
    with pytest.raises(jw.NonFiniteError, match=r"argmin: a holds NaN \(first in column 0\)"):
        argmin(np.where(np.eye(4, 3) > 0, np.nan, 1.0), axis=0)
    wrong = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    with pytest.raises(jw.ConfigError, match="mesh must be a jax.sharding.Mesh with axes"):
        nearest_neighbors(X, X, mesh=wrong)
    with pytest.raises(jw.DTypeMismatchError, match="not supported"):
        nearest_neighbors(np.array([["a"]]), np.array([["b"]]))


def test_stored_results_resume_and_reuse(tmp_path):
    rng = np.random.default_rng(41)
    q, d = rng.standard_normal((90, 5)), rng.standard_normal((50, 5))
    Q = jw.from_numpy(q, str(tmp_path / "q"), (8, 5))
    D = jw.from_numpy(d, str(tmp_path / "d"), (8, 5))
    ref_idx, ref_d = brute_knn(q, d, 3)
    out, spec = str(tmp_path / "nn"), RunSpec(memory_budget=12_000)
    calls = {"n": 0}
    orig = jw.BigMatrix.mark

    def failing_mark(self, key, *value):
        orig(self, key, *value)
        calls["n"] += 1
        if calls["n"] == 1:
            raise jw.StorageError("simulated outage after the first query tile")

    jw.BigMatrix.mark = failing_mark
    try:
        with pytest.raises(jw.StorageError, match="simulated"):
            nearest_neighbors(Q, D, k=3, out=out, memory_budget=12_000)
    finally:
        jw.BigMatrix.mark = orig
    done = run(NearestNeighbors(3), (Q, D), out, spec)
    idx, dist = done.value
    assert isinstance(idx, jw.BigMatrix) and idx.dtype == np.int32 and idx.shape == (90, 3)
    assert idx.url.endswith("/nn/indices") and dist.url.endswith("/nn/sq_distances")
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(dist.numpy(), ref_d, rtol=1e-9)
    assert done.report.steps_skipped >= 1 and done.report.steps_run > 0  # the recorded tile
    again = run(NearestNeighbors(3), (Q, D), out, spec)  # complete: nothing runs
    assert again.report.steps_run == 0 and again.report.bytes_read == 0
    assert [m.url for m in again.value] == [idx.url, dist.url]
    with pytest.raises(jw.ShapeMismatchError, match="must have shape"):
        nearest_neighbors(Q, D, k=2, out=out)  # another k: the stored results do not fit
    excl = run(NearestNeighbors(3, exclude_self=True), (Q, Q), str(tmp_path / "loo"), spec)
    np.testing.assert_array_equal(excl.value[0].numpy(), brute_knn(q, q, 3, True)[0])
    bad = q.copy()
    bad[3, 1] = np.nan
    with pytest.raises(jw.NonFiniteError, match="queries row 3"):
        nearest_neighbors(bad, D, k=1, out=str(tmp_path / "nn-bad"))
    for name in ("indices", "sq_distances"):  # nothing left behind
        with pytest.raises(jw.MatrixNotFoundError):
            jw.BigMatrix.open(str(tmp_path / "nn-bad" / name))


def test_stored_rerun_after_the_data_changed_recomputes(store):
    q, x = rand((30, 4), seed=42), rand((40, 4), seed=43)
    Q = jw.from_numpy(q, store.url("q"), (8, 4), storage=store.config)
    X = jw.from_numpy(x, store.url("x"), (8, 4), storage=store.config)
    out, spec = store.url("nn"), RunSpec(memory_budget=20_000, storage=store.config)
    first = run(NearestNeighbors(2), (Q, X), out, spec)
    np.testing.assert_array_equal(first.value[0].numpy(), brute_knn(q, x, 2)[0])
    assert run(NearestNeighbors(2), (Q, X), out, spec).report.steps_run == 0  # reused
    x[8:16] = q[:8] + 1e-3  # the first queries' nearest rows are now 8..15
    X.put_block(x[8:16], 1, 0)
    second = run(NearestNeighbors(2), (Q, X), out, spec)
    assert second.report.steps_run > 0 and second.report.steps_skipped == 0
    idx, dist = (m.numpy() for m in second.value)
    ref_idx, ref_d = brute_knn(q, x, 2)
    np.testing.assert_array_equal(idx, ref_idx)
    assert np.all(idx[:8, 0] == np.arange(8, 16))  # not the stale result
    np.testing.assert_allclose(dist, ref_d, **tolerance("float64"))
    d_out = store.url("d")
    D = pairwise_sq_distances(Q, X, d_out, storage=store.config)
    np.testing.assert_allclose(D.numpy(), sq_dists(q, x), **tolerance("float64"))
    x[0] = 5.0
    X.put_block(x[0:8], 0, 0)
    D = pairwise_sq_distances(Q, X, d_out, storage=store.config)
    np.testing.assert_allclose(D.numpy(), sq_dists(q, x), **tolerance("float64"))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("budget", [None, 4_000], ids=["in-core", "streamed"])
def test_argmin_16_bit_floats(dtype, budget):
    a = rand((23, 17), seed=44).astype(dtype)
    a[4, :] = a[9, :] = -8  # ties along both axes, exact in 16 bits
    up = a.astype(np.float32)
    A = jw.from_numpy(a, mem("a16"), (8, 8))
    for axis, src in itertools.product((0, 1), (a, A)):
        res = run(Argmin(axis), (src,), None, RunSpec(memory_budget=budget))
        idx, vals = res.value
        assert vals.dtype == a.dtype and idx.dtype == np.int32
        np.testing.assert_array_equal(np.asarray(idx), up.argmin(axis=axis))
        np.testing.assert_array_equal(np.asarray(vals).astype(np.float32), up.min(axis=axis))
        assert res.report.steps_run > 1 if budget and src is A else res.report.steps_run == 1
    i, v = argmin(a, axis=1)  # the public function
    np.testing.assert_array_equal(np.asarray(i), up.argmin(axis=1))
    a[2, 3] = np.nan
    with pytest.raises(jw.NonFiniteError, match=r"first in column 3"):
        argmin(jw.from_numpy(a, mem("a16"), (8, 8)), axis=0, memory_budget=budget)


def test_integer_inputs_compute_in_the_default_float():
    rng = np.random.default_rng(45)
    x, y = rng.integers(-9, 9, (21, 5)).astype(np.int32), rng.integers(-9, 9, (13, 5))
    for xx, yy, want in [(x, y, np.float64), (x, y.astype(np.float32), np.float32),
                         (x.astype(np.int8), y.astype(np.uint8), np.float64)]:  # fmt: skip
        d = pairwise_sq_distances(xx, yy)
        assert d.dtype == want
        np.testing.assert_array_equal(np.asarray(d), sq_dists(xx, yy))  # small ints: exact
        idx, dist = nearest_neighbors(xx, yy, 2)
        assert dist.dtype == want
        np.testing.assert_array_equal(np.asarray(dist), brute_knn(xx, yy, 2)[1])
    X = jw.from_numpy(x, mem("int-x"), (8, 5))
    D = pairwise_sq_distances(X, y, mem("int-d"), memory_budget=9_000)  # tiles of 8 rows
    assert D.dtype == np.float64
    np.testing.assert_array_equal(D.numpy(), sq_dists(x, y))
