"""jw.sum/mean/min/max/var/std/norm against numpy: every store, ragged blocks, in-core and
streamed at 1/8 of the matrix, float32/float64/int32/int64, axis None/0/1, ``.T`` views,
numpy's result dtypes and scalar types, NaN, keepdims and axis tuples, numerical soundness
(float32 sums, variance with a large mean, 32-bit JAX), one compile per tile shape, and
every error message."""

from __future__ import annotations

import numpy as np
import pytest

import jaxwren as jw
from jaxwren.config import RunSpec
from jaxwren.engine.run import run
from jaxwren.linalg.reductions import Reduce, Stat
from tests.helpers import mem, rand, run_python, tolerance

SHAPE, BLOCK = (203, 117), (24, 24)  # ragged: neither dimension a multiple of the block
FUNCS = ("sum", "mean", "min", "max", "var")


def data(dtype: str, shape: tuple[int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    x = rand(shape, "float64", seed) * 100
    return x.astype(dtype)


def check(got, want, dtype: str) -> None:
    """Same numpy type, dtype and shape; values within the dtype's tolerance (integer
    results exactly)."""
    assert type(got) is type(want), (type(got), type(want))
    assert np.asarray(got).dtype == np.asarray(want).dtype
    assert np.shape(got) == np.shape(want)
    tol = tolerance(np.asarray(want).dtype)
    if np.asarray(want).dtype.kind == "f" and np.dtype(dtype).kind == "f":
        tol = {**tol, "atol": tol["atol"] * 100}  # entries ~100: sums ~1e4
    np.testing.assert_allclose(got, want, **tol)


def match_numpy(x: np.ndarray, url: str, storage: jw.StorageConfig | None) -> None:
    """Every reduction and axis of a stored ``x`` and of its ``.T`` view against numpy,
    in-core and streamed at 1/8 of the matrix's bytes (the view: streamed only)."""
    a = jw.from_numpy(x, url, BLOCK, storage=storage)
    budget = x.nbytes // 8
    for src, ref, budgets in ((a, x, (None, budget)), (a.T, x.T, (budget,))):
        for name in FUNCS:
            for axis in (None, 0, 1):
                want = getattr(np, name)(ref, axis=axis)
                for b in budgets:
                    check(getattr(jw, name)(src, axis, memory_budget=b), want, x.dtype.name)


@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_match_numpy_every_store(store, dtype):
    match_numpy(data(dtype), store.url("r"), store.config)


@pytest.mark.parametrize("dtype", ["float64", "int32"])
def test_match_numpy(dtype):
    match_numpy(data(dtype, seed=10), mem("r"), None)


# ord 2 / -2 / 'nuc' take jw.svd: near-square (polar + eigh, ~18 s of compiles per dtype)
# once, in float64; tall-skinny (TSQR) for the others (int32 also factors in float64)
@pytest.mark.parametrize(("dtype", "shape"), [("float64", SHAPE), ("float32", (251, 117)),
                                              ("int32", (251, 117))])  # fmt: skip
def test_norms_match_numpy(dtype, shape):
    x = data(dtype, shape, seed=1)
    a = jw.from_numpy(x, mem("n"), BLOCK)
    budget = x.nbytes // 8
    for src, ref in ((a, x), (a.T, x.T)):
        for ord in (None, "fro", 1, -1, np.inf, -np.inf, 2, -2, "nuc"):
            want = np.linalg.norm(ref, ord)
            svd = ord in (2, -2, "nuc")  # by jw.svd, which needs more than 1/8 here
            check(jw.norm(src, ord, memory_budget=None if svd else budget), want, dtype)
        vector_ords = (None, 2, 1, 0, np.inf, -np.inf, 3, 0.5, -1.5) if src is a else (1, 3)
        for ord in vector_ords:
            for axis in (0, 1):
                with np.errstate(divide="ignore"):  # numpy: 0 ** -1.5
                    want = np.linalg.norm(ref, ord, axis)
                check(jw.norm(src, ord, axis, memory_budget=budget), want, dtype)
    check(jw.norm(a, 1, axis=(1, 0)), np.linalg.norm(x, 1, axis=(1, 0)), dtype)  # = inf


def test_arrays_and_jax_inputs_and_std():
    x = data("float64", (50, 30), seed=2)
    xj = jw.from_numpy(x, mem("j"), (8, 8)).to_jax()
    for src in (x, xj, x.tolist()):
        for axis in (None, 0, 1):
            check(jw.std(src, axis, ddof=1), np.std(x, axis=axis, ddof=1), "float64")
            check(jw.var(src, axis, ddof=2), np.var(x, axis=axis, ddof=2), "float64")


@pytest.mark.parametrize("dtype", ["bool", "uint8", "int8", "uint32", "float16", "float32"])
def test_result_dtypes_like_numpy(dtype):
    x = rand((19, 13), seed=3) * 20
    x = (x > 0) if dtype == "bool" else np.abs(x).astype(dtype)
    for name in (*FUNCS, "std"):
        for axis in (None, 0, 1):
            got, want = getattr(jw, name)(x, axis), getattr(np, name)(x, axis=axis)
            assert type(got) is type(want) and got.dtype == want.dtype, (name, axis)
            # numpy accumulates float16 in float16 (var overflows): compare in float64
            ref = getattr(np, name)(x.astype(np.float64), axis=axis)
            np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=2e-3)
    with np.errstate(over="ignore"):  # numpy's float16 x.dot(x) overflows
        got, want = jw.norm(x), np.linalg.norm(x)
    assert type(got) is type(want) and got.dtype == want.dtype


def test_nan_propagates_like_numpy():
    x = data("float64", (81, 57), seed=4)
    x[7, 5] = np.nan
    a = jw.from_numpy(x, mem("nan"), (8, 8))
    for name in FUNCS:
        for axis in (None, 0, 1):
            got = getattr(jw, name)(a, axis, memory_budget=x.nbytes // 8)
            want = getattr(np, name)(x, axis=axis)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=name)
            np.testing.assert_allclose(got, want, **tolerance("float64"))
    assert np.isnan(jw.norm(a)) and np.isnan(jw.norm(a, 1, axis=0)[5])


def test_keepdims_and_axis_forms():
    x = data("float64", (21, 11), seed=5)
    for axis in (None, 0, 1, -1, -2, (0, 1), (1, 0), (1,), [0]):
        for name in ("sum", "max", "var"):
            got = getattr(jw, name)(x, axis, keepdims=True)
            want = getattr(np, name)(x, axis=tuple(axis) if isinstance(axis, list) else axis,
                                     keepdims=True)  # fmt: skip
            assert got.shape == want.shape, (name, axis)
            np.testing.assert_allclose(got, want, **tolerance("float64"))


def test_numerically_sound():
    # a large mean: E[x^2] - E[x]^2 would lose every digit of the variance
    x = 1e8 + rand((3001, 7), seed=6)
    a = jw.from_numpy(x, mem("big"), (64, 7))
    np.testing.assert_allclose(jw.var(a, 0, memory_budget=x.nbytes // 4), np.var(x, axis=0),
                               rtol=1e-7)  # fmt: skip
    # float32 data: sums and moments accumulate in float64, closer than numpy's float32
    y = (1e4 + rand((20011, 3), seed=7)).astype(np.float32)
    b = jw.from_numpy(y, mem("f32"), (256, 3))
    exact = y.astype(np.float64)
    for name in ("sum", "mean", "var"):
        for axis in (None, 0):
            got = getattr(jw, name)(b, axis, memory_budget=y.nbytes // 8)
            ref = getattr(np, name)(exact, axis=axis)
            np.testing.assert_allclose(got, ref, rtol=2e-7, err_msg=name)  # float32 rounding


def test_32bit_jax_compensated():
    """Without x64, float32 sums carry a Kahan compensation across tiles."""
    proc = run_python(
        "import numpy as np, jaxwren as jw\n"
        "y = (1e4 + np.random.default_rng(0).standard_normal((40000, 2))).astype(np.float32)\n"
        "a = jw.from_numpy(y, 'memory://k', (256, 2))\n"
        "ref = y.astype(np.float64)\n"
        "for f in ('sum', 'mean', 'var'):\n"
        "    got = getattr(jw, f)(a, 0, memory_budget=y.nbytes // 16)\n"
        "    assert got.dtype == np.float32, got.dtype\n"
        "    np.testing.assert_allclose(got, getattr(np, f)(ref, axis=0), rtol=2e-6)\n"
        "assert jw.sum(y.astype(np.int32)).dtype == np.int32\n"
        "print('ok')\n",
        drop=("JAX_ENABLE_X64",),
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_each_tile_shape_compiles_once():
    x, y = data("float32", (221, 133), 8), data("float32", (221, 133), 9)  # shapes no other
    a, b = jw.from_numpy(x, mem("c-a"), (20, 20)), jw.from_numpy(y, mem("c-b"), (20, 20))
    spec = RunSpec(memory_budget=x.nbytes // 4)  # streamed in both platform lanes
    for axis in (0, 1):
        op = Reduce(Stat("moments"), axis, np.float64, "var")
        first, second = run(op, (a,), None, spec), run(op, (b,), None, spec)
        np.testing.assert_allclose(first.value[1] / x.shape[axis], np.var(x, axis=axis),
                                   rtol=1e-5)  # fmt: skip
        np.testing.assert_allclose(second.value[0], np.mean(y, axis=axis), rtol=1e-5, atol=1e-4)
        assert first.stats.steps_run > 10, first.stats  # many steps ...
        assert 1 <= first.stats.compiles <= 3, first.stats  # ... first, middle, last tile
        assert second.stats.compiles == 0, second.stats  # the same tile shapes never again


def test_errors():
    x = data("float64", (6, 4))
    with pytest.raises(jw.ShapeMismatchError, match=r"sum: a has shape \(0, 4\).*empty axis"):
        jw.sum(np.zeros((0, 4)))
    with pytest.raises(jw.ShapeMismatchError, match=r"a.size == 0"):
        jw.mean(np.zeros((3, 0)), axis=0)
    with pytest.raises(
        jw.ShapeMismatchError, match=r"max: a must be a 2-D matrix, got shape \(5,\)"
    ):
        jw.max(np.zeros(5))
    with pytest.raises(jw.ConfigError, match=r"min: axis=2 is out of range .* use 0"):
        jw.min(x, axis=2)
    with pytest.raises(jw.ConfigError, match=r"axis=True is out of range"):
        jw.sum(x, axis=True)
    with pytest.raises(jw.ConfigError, match=r"must name 0, 1 or both once each"):
        jw.sum(x, axis=(0, -2))
    with pytest.raises(jw.ConfigError, match=r"invalid norm order 'foo' for matrices; use None"):
        jw.norm(x, "foo")
    with pytest.raises(ValueError, match=r"invalid norm order 3.0 for matrices"):
        jw.norm(x, 3)
    with pytest.raises(jw.ConfigError, match=r"ord='fro' is a matrix norm, invalid for vectors"):
        jw.norm(x, "fro", axis=0)
    with pytest.raises(jw.ConfigError, match=r"ord=\[1\] must be None, a number or a string"):
        jw.norm(x, [1])
    with pytest.raises(jw.ConfigError, match=r"ddof=6 leaves no degrees of freedom for 6 "):
        jw.var(x, axis=0, ddof=6)
    with pytest.raises(jw.ConfigError, match=r"ddof='1' must be a number"):
        jw.var(x, ddof="1")
    with pytest.raises(jw.ConfigError, match=r"returned, never stored; call it without out"):
        run(Reduce(Stat("sum"), 0, np.float64, "sum"), (x,), mem("out"), RunSpec())
