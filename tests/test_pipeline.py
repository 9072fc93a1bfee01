"""The pipeline's guarantees, one test per defect class: stale/foreign results, aliasing,
cleanup, dtypes, meshes, budgets, RunSpec validation (every store kind where it matters)."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

import jaxwren as jw
from jaxwren.config import RunSpec
from jaxwren.engine.run import run
from jaxwren.linalg.cholesky import Cholesky
from jaxwren.linalg.matmul import Matmul
from tests.helpers import mem, rand, tolerance


def spd(n: int, seed: int = 0) -> np.ndarray:
    x = rand((n, n), seed=seed)
    return x @ x.T + n * np.eye(n)


# ------------------------------------------------------------------ stale / foreign results
def test_out_reused_by_other_inputs_never_returns_a_foreign_result(store):
    a, b = rand((20, 20), seed=1), rand((20, 20), seed=2)
    A = jw.from_numpy(a, store.url("a"), (8, 8), storage=store.config)
    B = jw.from_numpy(b, store.url("b"), (8, 8), storage=store.config)
    c = store.url("c")
    kw = dict(storage=store.config, memory_budget=20_000)
    jw.matmul(A, A, c, **kw)
    jw.matmul(B, B, c, **kw)
    C = jw.matmul(A, A, c, **kw)
    np.testing.assert_allclose(C.numpy(), a @ a, **tolerance("float64"))


@pytest.mark.parametrize("change", ["put_block", "overwrite"])
def test_changed_input_is_recomputed(store, change):
    a = rand((20, 12), seed=3)
    url = store.url("a")
    A = jw.from_numpy(a, url, (8, 8), storage=store.config)
    c = store.url("c")
    first = run(Matmul(), (A, A.T), c, RunSpec(storage=store.config))
    assert first.report.steps_run >= 1
    if change == "put_block":
        a[:8, :8] = 5.0
        A.put_block(a[:8, :8], 0, 0)
    else:
        a = 2 * a
        A = jw.from_numpy(a, url, (8, 8), storage=store.config, overwrite=True)
    again = run(Matmul(), (A, A.T), c, RunSpec(storage=store.config))
    assert again.report.steps_run >= 1
    np.testing.assert_allclose(again.value.numpy(), a @ a.T, **tolerance("float64"))


def test_changed_input_refactors_cholesky(store):
    s = spd(24, seed=4)
    S = jw.from_numpy(s, store.url("s"), (8, 8), storage=store.config)
    out = store.url("l")
    jw.cholesky(S, out, storage=store.config, memory_budget=60_000)
    s2 = s + 3 * np.eye(24)
    for i in range(3):
        S.put_block(s2[8 * i : 8 * i + 8, 8 * i : 8 * i + 8], i, i)
    L = jw.cholesky(S, out, storage=store.config, memory_budget=60_000)
    np.testing.assert_allclose(L.numpy(), np.linalg.cholesky(s2), **tolerance("float64"))


def test_results_derived_from_a_rewritten_out_are_recomputed():
    a, b = rand((16, 16), seed=5), rand((16, 16), seed=6)
    A, B = jw.from_numpy(a, mem("d-a"), (8, 8)), jw.from_numpy(b, mem("d-b"), (8, 8))
    c, d = mem("d-c"), mem("d-d")
    C = jw.matmul(A, A, c)
    jw.matmul(C, C, d)
    C = jw.matmul(B, B, c)  # C is rewritten: what was computed from it is void
    D = jw.matmul(C, C, d)
    np.testing.assert_allclose(D.numpy(), (b @ b) @ (b @ b), **tolerance("float64"))


def test_complete_result_is_returned_without_running():
    a = rand((16, 16), seed=7)
    A = jw.from_numpy(a, mem("cmp-a"), (8, 8))
    c = mem("cmp-c")
    assert run(Matmul(), (A, A), c).report.steps_run == 1
    again = run(Matmul(), (A, A), c)
    assert again.report.steps_run == 0 and again.report.bytes_read == 0
    np.testing.assert_allclose(again.value.numpy(), a @ a, **tolerance("float64"))


def test_write_to_out_voids_its_completion():
    a = rand((16, 16), seed=8)
    A = jw.from_numpy(a, mem("wo-a"), (8, 8))
    C = jw.matmul(A, A, mem("wo-c"))
    C.put_block(np.zeros((8, 8)), 0, 0)
    again = run(Matmul(), (A, A), C)
    assert again.report.steps_run == 1
    np.testing.assert_allclose(again.value.numpy(), a @ a, **tolerance("float64"))


# ------------------------------------------------------------------ outputs: aliasing, cleanup
def test_out_over_a_prefix_holding_inputs_is_refused_and_nothing_deleted(store):
    root = store.url("prefix")
    S = jw.from_numpy(spd(16), f"{root}/S", (8, 8), storage=store.config)
    other = jw.from_numpy(np.ones((4, 4)), f"{root}/other", (4, 4), storage=store.config)
    with pytest.raises(jw.OutputConflictError, match=r"contains input #0"):
        jw.cholesky(S, root, storage=store.config)
    with pytest.raises(jw.OutputConflictError, match="lies inside input #0"):
        jw.cholesky(S, f"{root}/S/L", storage=store.config)
    np.testing.assert_array_equal(other.numpy(), np.ones((4, 4)))
    jw.BigMatrix.open(S.url, storage=store.config).numpy()  # still there


def test_out_holding_other_data_or_inside_another_matrix_is_refused(store):
    root = store.url("p2")
    jw.from_numpy(np.ones((4, 4)), f"{root}/M", (4, 4), storage=store.config)
    x = rand((8, 8))
    with pytest.raises(jw.OutputConflictError, match="already holds 1 object|already holds"):
        jw.matmul(x, x, root, storage=store.config)
    with pytest.raises(jw.OutputConflictError, match="lies inside the stored matrix"):
        jw.matmul(x, x, f"{root}/M/inner", storage=store.config)


def test_out_through_a_symlink_to_an_input_is_refused(tmp_path):
    A = jw.from_numpy(rand((8, 8)), str(tmp_path / "a"), (4, 4))
    os.symlink(tmp_path / "a", tmp_path / "link")
    with pytest.raises(jw.OutputConflictError, match="is input #0"):
        jw.matmul(A, A, str(tmp_path / "link"))


def test_failed_factorisation_removes_only_what_it_created(store):
    bad = spd(16)
    bad[3, 3] = -50.0
    S = jw.from_numpy(bad, store.url("bad"), (8, 8), storage=store.config)
    out = store.url("lbad")
    with pytest.raises(jw.NotPositiveDefiniteError):
        jw.cholesky(S, out, storage=store.config, memory_budget=20_000)
    with pytest.raises(jw.MatrixNotFoundError):
        jw.BigMatrix.open(out, storage=store.config)
    np.testing.assert_array_equal(S.numpy(), bad)


def test_singular_solve_stores_nothing(store):
    lower = np.tril(rand((12, 12), seed=9)) + 12 * np.eye(12)
    lower[5, 5] = 0.0
    out = store.url("x")
    with pytest.raises(jw.NonFiniteError, match="singular"):
        jw.solve_triangular(lower, np.ones((12, 2)), out, storage=store.config)
    with pytest.raises(jw.MatrixNotFoundError):
        jw.BigMatrix.open(out, storage=store.config)


# ------------------------------------------------------------------ dtypes
def test_int64_matmul_is_exact():
    a = np.array([[2**24 + 1, 3], [5, 2**40 + 7]], dtype=np.int64)
    b = np.array([[1, 0], [0, 3]], dtype=np.int64)
    got = jw.matmul(a, b)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(np.asarray(got), a @ b)
    A = jw.from_numpy(a, mem("i64-a"), (1, 1))
    np.testing.assert_array_equal(jw.matmul(A, b, mem("i64-c"), memory_budget=10_000).numpy(),
                                  a @ b)  # fmt: skip


def test_mixed_int_float_follows_jnp():
    a, b = np.arange(12, dtype=np.int32).reshape(3, 4), np.ones((4, 2), np.float32)
    got = jw.matmul(a, b)
    assert got.dtype == jax.numpy.result_type(a.dtype, b.dtype) == np.float32
    np.testing.assert_allclose(np.asarray(got), a @ b)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_floats(dtype):
    a = rand((24, 16), seed=10).astype(dtype)
    got = jw.matmul(a, a.T)
    assert got.dtype == a.dtype
    ref = a.astype(np.float32) @ a.T.astype(np.float32)
    np.testing.assert_allclose(np.asarray(got, np.float32), ref, **tolerance("bfloat16"))
    s = spd(16).astype(dtype)
    L = jw.cholesky(s)
    assert L.dtype == np.float32  # 16-bit inputs factor in float32
    np.testing.assert_allclose(np.asarray(L) @ np.asarray(L).T, s.astype(np.float32), rtol=1e-4)


# ------------------------------------------------------------------ meshes
def test_explicit_mesh_from_make_mesh_works_and_results_come_back_on_it():
    mesh = jax.make_mesh((2, 4), ("rows", "cols"))
    a, s = rand((16, 12), seed=11), spd(16, seed=12)
    c = jw.matmul(a, a.T, mesh=mesh)
    assert c.sharding.mesh == mesh
    np.testing.assert_allclose(np.asarray(c), a @ a.T, **tolerance("float64"))
    L = jw.cholesky(s, mesh=mesh)
    np.testing.assert_allclose(np.asarray(L), np.linalg.cholesky(s), **tolerance("float64"))
    x = jw.solve_triangular(np.asarray(L), np.ones(16), mesh=mesh)
    np.testing.assert_allclose(np.asarray(L) @ np.asarray(x), np.ones(16), **tolerance("float64"))


# ------------------------------------------------------------------ budgets and RunSpec
def test_budget_between_minimum_and_pipelined_runs_without_prefetch():
    a = rand((64, 64), seed=13)
    A = jw.from_numpy(a, mem("bud-a"), (16, 16))
    out = mem("bud-c")
    at0, at1 = (jw.explain(jw.matmul, A, A, out, prefetch=pf) for pf in (0, 1))
    smallest = min(c.projected_bytes for c in at0.candidates)
    assert min(c.projected_bytes for c in at1.candidates) > smallest  # prefetch costs memory
    res = run(Matmul(), (A, A), out, RunSpec(memory_budget=smallest))
    assert res.report.prefetch == 0 and "prefetch degraded" in res.report.reason
    np.testing.assert_allclose(res.value.numpy(), a @ a, **tolerance("float64"))
    with pytest.raises(jw.MemoryBudgetError, match=f"smallest workable budget is .*{smallest} "):
        run(Matmul(), (A, A), mem("bud-c2"), RunSpec(memory_budget=smallest - 1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prefetch": -1}, r"prefetch=-1 must be an int >= 0"),
        ({"prefetch": True}, r"prefetch=True must be an int >= 0"),
        ({"memory_budget": float("nan")}, "not a finite size"),
        ({"memory_budget": float("inf")}, "not a finite size"),
        ({"memory_budget": [1, 2]}, "is not a size"),
        ({"block_shape": [8, 8, 8]}, "must be two positive ints"),
        ({"progress": "yes"}, "must be True, False or None"),
    ],
    ids=[
        "negative-prefetch",
        "bool-prefetch",
        "nan-budget",
        "inf-budget",
        "list-budget",
        "3d-block",
        "str-progress",
    ],  # fmt: skip
)
def test_runspec_rejects_bad_settings(kwargs, match):
    with pytest.raises(jw.ConfigError, match=match):
        RunSpec(**kwargs)
    with pytest.raises(jw.ConfigError, match=match):
        jw.matmul(np.ones((2, 2)), np.ones((2, 2)), **kwargs)


def test_cholesky_op_statistics_name_what_ran():
    s = spd(32, seed=14)
    S = jw.from_numpy(s, mem("st-s"), (8, 8))
    res = run(Cholesky(), (S,), mem("st-l"), RunSpec(memory_budget=20_000))
    assert res.report.steps_run > 1 and res.report.bytes_written >= 32 * 32 * 8 * 0.5
    assert res.report.bytes_read > 0


def test_an_input_written_by_another_tool_is_seen_on_every_store(store):
    """A write that bypasses jaxwren (here TensorStore directly, as zarr-python or any
    zarr writer would) leaves the generation token alone; the chunks' storage
    generations still change, so the stored result is not reused."""
    s = spd(16, seed=9)
    S = jw.from_numpy(s, store.url("foreign-s"), (8, 8), storage=store.config)
    out = store.url("foreign-l")
    jw.cholesky(S, out, storage=store.config)
    assert run(Cholesky(), (S,), out, RunSpec(storage=store.config)).report.steps_run == 0
    s2 = s.copy()
    s2[8:16, 8:16] += 2 * np.eye(8)  # one block changes
    S._base[8:16, 8:16].write(s2[8:16, 8:16]).result()  # not a jaxwren write
    res = run(Cholesky(), (S,), out, RunSpec(storage=store.config))
    assert res.report.steps_run > 0
    np.testing.assert_allclose(res.value.numpy(), np.linalg.cholesky(s2), **tolerance("float64"))


def test_a_result_written_by_another_tool_is_recomputed_on_every_store(store):
    """A complete result's record holds its data stamp: a write to the stored result
    that bypasses jaxwren (the token stays) makes the rerun compute it again instead of
    handing back the altered matrix as the result."""
    s = spd(16, seed=10)
    S = jw.from_numpy(s, store.url("fresult-s"), (8, 8), storage=store.config)
    L = jw.cholesky(S, store.url("fresult-l"), storage=store.config)
    assert run(Cholesky(), (S,), L, RunSpec(storage=store.config)).report.steps_run == 0
    L._base[8:16, 0:8].write(np.full((8, 8), 9.0)).result()  # not a jaxwren write
    res = run(Cholesky(), (S,), L, RunSpec(storage=store.config))
    assert res.report.steps_run > 0
    np.testing.assert_allclose(res.value.numpy(), np.linalg.cholesky(s), **tolerance("float64"))
    assert run(Cholesky(), (S,), L, RunSpec(storage=store.config)).report.steps_run == 0
