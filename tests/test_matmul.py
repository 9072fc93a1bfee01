"""jw.matmul against numpy: stores, ragged shapes, .T views, dtypes, both paths, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import jaxwren as jw
from jaxwren.config import RunSpec
from jaxwren.engine.run import run
from jaxwren.linalg.matmul import Matmul
from tests.helpers import mem, rand, run_until_killed, tolerance

TINY = 60_000  # bytes: forces many out-of-core steps on the shapes below


@pytest.mark.parametrize("budget", [None, TINY], ids=["in-core", "out-of-core"])
def test_store_to_store(store, budget):
    a, b = rand((37, 23), seed=1), rand((23, 29), seed=2)
    A = jw.from_numpy(a, store.url("a"), (8, 5), storage=store.config)
    B = jw.from_numpy(b, store.url("b"), (5, 7), storage=store.config)
    C = jw.matmul(A, B, store.url("c"), memory_budget=budget, storage=store.config)
    assert isinstance(C, jw.BigMatrix) and C.shape == (37, 29) and C.block_shape == (8, 7)
    np.testing.assert_allclose(C.numpy(), a @ b, **tolerance("float64"))


@pytest.mark.parametrize("budget", [None, TINY], ids=["in-core", "out-of-core"])
def test_transposed_views(budget):
    a, b = rand((23, 37), seed=3), rand((29, 23), seed=4)
    A = jw.from_numpy(a, mem("tv-a"), (5, 8))
    B = jw.from_numpy(b, mem("tv-b"), (7, 5))
    c = jw.matmul(A.T, B.T, memory_budget=budget * 4 if budget else None)
    np.testing.assert_allclose(np.asarray(c), a.T @ b.T, **tolerance("float64"))
    C = jw.matmul(A.T, B.T, mem("tv-c"), memory_budget=budget)
    np.testing.assert_allclose(C.numpy(), a.T @ b.T, **tolerance("float64"))


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("budget", [None, TINY], ids=["in-core", "out-of-core"])
def test_dtypes(dtype, budget):
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    a, b = rand((21, 30), seed=5).astype(np_dtype), rand((30, 19), seed=6).astype(np_dtype)
    A = jw.from_numpy(a, mem("dt-a-"), (8, 8))
    B = jw.from_numpy(b, mem("dt-b-"), (8, 8))
    C = jw.matmul(A, B, mem("dt-c-"), memory_budget=budget)
    assert C.dtype == jnp.matmul(jnp.asarray(a), jnp.asarray(b)).dtype
    ref = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(C.numpy().astype(np.float64), ref, **tolerance(C.dtype))


def test_mixed_operands_and_sharded_result():
    a, b = rand((32, 24), seed=7), rand((24, 16), seed=8)
    A = jw.from_numpy(a, mem("mix-a"), (8, 8))
    c = jw.matmul(A, jnp.asarray(b))
    assert isinstance(c, jax.Array) and c.sharding.spec == jax.sharding.PartitionSpec(
        "rows", "cols"
    )
    np.testing.assert_allclose(np.asarray(c), a @ b, **tolerance("float64"))
    np.testing.assert_allclose(np.asarray(jw.matmul(a, b)), a @ b, **tolerance("float64"))
    mixed = jw.matmul(a.astype(np.float32), b)  # f32 @ f64 -> f64, as jnp.matmul
    assert mixed.dtype == np.float64


def test_out_of_core_result_returned_when_it_fits():
    a, b = rand((40, 64), seed=9), rand((64, 24), seed=10)
    A = jw.from_numpy(a, mem("ret-a"), (8, 8))
    B = jw.from_numpy(b, mem("ret-b"), (8, 8))
    c = jw.matmul(A, B, memory_budget=60_000)  # C stays on devices, K is streamed
    np.testing.assert_allclose(np.asarray(c), a @ b, **tolerance("float64"))


def test_existing_out_is_reused():
    a, b = rand((9, 9), seed=11), rand((9, 9), seed=12)
    C = jw.BigMatrix.create(mem("reuse-c"), (9, 9), (4, 4), "float64")
    assert jw.matmul(a, b, C) is C
    np.testing.assert_allclose(C.numpy(), a @ b, **tolerance("float64"))
    C2 = jw.matmul(a, 2 * b, C.url)  # an existing URL is reopened and overwritten
    np.testing.assert_allclose(C2.numpy(), 2 * a @ b, **tolerance("float64"))


def test_each_tile_shape_compiles_once():
    a, b = rand((50, 44), seed=13), rand((44, 41), seed=14)
    A = jw.from_numpy(a, mem("once-a"), (8, 8))
    B = jw.from_numpy(b, mem("once-b"), (8, 8))
    B2 = jw.from_numpy(2 * b, mem("once-b2"), (8, 8))
    with jw.observe() as runs:
        C = jw.matmul(A, B, mem("once-c"), memory_budget=20_000)
        C2 = jw.matmul(A, B2, mem("once-c2"), memory_budget=20_000)
    np.testing.assert_allclose(C.numpy(), a @ b, **tolerance("float64"))
    np.testing.assert_allclose(C2.numpy(), 2 * a @ b, **tolerance("float64"))
    first, second = runs
    assert first.tiling == second.tiling  # the same tile shapes
    # dozens of steps, ragged edges included, and one kernel per step kind (first/middle/last)
    assert first.steps_run > 20
    assert first.compiles <= 3
    assert second.compiles == 0  # the same tile shapes never compile again


def test_progress_and_report(capsys):
    a, b = rand((40, 40), seed=15), rand((40, 40), seed=16)
    A = jw.from_numpy(a, mem("prog-a"), (8, 8))
    B = jw.from_numpy(b, mem("prog-b"), (8, 8))
    with jw.observe() as runs:
        C = jw.matmul(A, B, mem("prog-c"), memory_budget=TINY, progress=True)
    np.testing.assert_allclose(C.numpy(), a @ b, **tolerance("float64"))
    (report,) = runs
    assert report.operation == "matmul" and report.steps_run > 1 and report.tiles
    assert report.stored == {"C": C.url} and report.state == "fresh"
    captured = capsys.readouterr()
    assert "matmul" in captured.err  # the progress bar
    assert captured.out == ""  # the library never prints


def test_errors_before_anything_is_written():
    A = jw.from_numpy(rand((6, 4)), mem("err-a"), (2, 2))
    with pytest.raises(jw.ShapeMismatchError, match=r"inner dimensions differ.*\(6, 4\).*\(6, 4\)"):
        jw.matmul(A, A)
    with pytest.raises(jw.ShapeMismatchError, match="non-empty 2-D matrix"):
        jw.matmul(np.ones(3), np.ones((3, 3)))
    with pytest.raises(jw.ShapeMismatchError, match="non-empty 2-D matrix"):
        jw.matmul(np.ones((2, 3, 3)), np.ones((3, 3)))
    with pytest.raises(jw.OutputConflictError, match=r"\) is input #0"):
        jw.matmul(A, A.T, A.url)
    with pytest.raises(jw.OutputConflictError, match=r"\) is input #1"):
        jw.matmul(np.ones((4, 6)), A, A)
    bad = jw.BigMatrix.create(mem("err-out"), (4, 5), (2, 2), "float64")
    with pytest.raises(jw.ShapeMismatchError, match=r"must have shape \(4, 4\)"):
        jw.matmul(A.T, A, bad)
    bad32 = jw.BigMatrix.create(mem("err-out32"), (4, 4), (2, 2), "float32")
    with pytest.raises(jw.ShapeMismatchError, match="dtype float64"):
        jw.matmul(A.T, A, bad32)
    never = mem("err-never")
    with pytest.raises(jw.MemoryBudgetError, match=r"smallest workable budget is [0-9]+ bytes"):
        jw.matmul(A.T, A, never, memory_budget=100)
    with pytest.raises(jw.MatrixNotFoundError):
        jw.BigMatrix.open(never)  # refused before out was created
    with pytest.raises(jw.ConfigError, match="memory_budget='lots'"):
        jw.matmul(A.T, A, memory_budget="lots")
    wrong_mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    with pytest.raises(jw.ConfigError, match="mesh must be a jax.sharding.Mesh with axes"):
        jw.matmul(A.T, A, mesh=wrong_mesh)
    with pytest.raises(jw.DTypeMismatchError, match="not supported"):
        jw.matmul(np.array([["a"]]), np.array([["b"]]))
    assert bad.block_idxs_exist == set() and bad32.block_idxs_exist == set()


def test_resume_after_kill(tmp_path):
    a, b = rand((48, 40), seed=21), rand((40, 56), seed=22)
    A = jw.from_numpy(a, str(tmp_path / "a"), (8, 8))
    B = jw.from_numpy(b, str(tmp_path / "b"), (8, 8))
    out = str(tmp_path / "c")
    call = (f"jw.matmul(jw.BigMatrix.open({A.url!r}), jw.BigMatrix.open({B.url!r}), {out!r}, "
            f"memory_budget={TINY})")  # fmt: skip
    # (3 or 4 output tiles: the platform profile's memory projections decide)
    run_until_killed(tmp_path, call, after_marks=2)
    assert len(jw.BigMatrix.open(out).marks()) == 2
    spec = RunSpec(memory_budget=TINY)
    done = run(Matmul(), (A, B), out, spec)
    np.testing.assert_allclose(done.value.numpy(), a @ b, **tolerance("float64"))
    assert done.report.steps_skipped >= 2 and done.report.steps_run > 0  # finished tiles skipped
    again = run(Matmul(), (A, B), out, spec)  # complete: nothing runs
    assert again.value.url == done.value.url
    assert again.report.steps_run == 0 and again.report.bytes_read == 0
