"""jaxwren.lax: traceable sharded cholesky / solve_triangular / cho_solve / cho_logdet
against jnp and jax.scipy (values, jvp, grad, second order), the compiled collectives, the
GP example against scikit-learn, bad input."""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import re

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

import jaxwren as jw
import jaxwren.lax as wl
from jaxwren.errors import (
    ConfigError,
    DTypeMismatchError,
    NonFiniteError,
    NotPositiveDefiniteError,
    ShapeMismatchError,
)

N, B = 37, 4  # n not a multiple of the block (nor of the mesh): padded to 48
TOL = {"rtol": 1e-10, "atol": 1e-10}


def spd(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, n))
    return x @ x.T / n + np.eye(n)


def sharded(x: np.ndarray, mesh=None) -> jax.Array:
    mesh = mesh or jw.default_mesh()
    return jax.device_put(x, jw.default_sharding(x.shape, mesh))


def close(a, b, **tol) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **(tol or TOL))


@pytest.fixture(scope="module")
def a() -> jax.Array:
    return sharded(spd(N))


def chol(x):
    return wl.cholesky(x, block=B)


def test_cholesky_matches_jnp_eager_and_in_jit(a):
    ref = jnp.linalg.cholesky(np.asarray(a))
    low = chol(a)
    close(low, ref)
    assert low.sharding == jw.default_sharding((N, N), jw.default_mesh())
    close(jax.jit(chol)(a), ref)
    skew = np.asarray(a) + np.triu(np.random.default_rng(1).standard_normal((N, N)), 1) * 0.1
    close(chol(skew), jnp.linalg.cholesky(skew))  # symmetrised as jnp does
    low = wl.cholesky(np.tril(skew), block=B, symmetrize_input=False)  # lower triangle only
    close(low, ref)


@pytest.mark.parametrize(("lower", "trans"), [(True, False), (True, True), (False, False),
                                              (False, True)])  # fmt: skip
def test_solve_triangular_matches_scipy(lower, trans):
    rng = np.random.default_rng(2)
    t = np.linalg.cholesky(spd(N))
    t = (t if lower else t.T) + (np.triu if lower else np.tril)(rng.standard_normal((N, N)), 1)
    shapes = [(N, 9)] + ([(N,)] if lower and not trans else [])  # 9 >= 4: columns split
    for b in (rng.standard_normal(shape) for shape in shapes):
        x = wl.solve_triangular(sharded(t), b, lower=lower, trans=trans, block=B)
        close(x, jsl.solve_triangular(t, b, lower=lower, trans=trans), rtol=1e-9, atol=1e-9)
        assert x.shape == b.shape


def test_cho_solve_and_logdet(a):
    rng = np.random.default_rng(3)
    low, an = chol(a), np.asarray(a)
    for b in (rng.standard_normal(N), rng.standard_normal((N, 3))):  # 3 < 4: replicated
        close(wl.cho_solve(low, b, block=B), np.linalg.solve(an, b), rtol=1e-9, atol=1e-9)
    close(wl.cho_logdet(low), np.linalg.slogdet(an)[1])


def test_cholesky_derivatives_match_jnp(a):
    w = jnp.asarray(np.random.default_rng(4).standard_normal((N, N)))
    g = jax.grad(lambda x: jnp.sum(chol(x) * w))(a)
    close(g, jax.grad(lambda x: jnp.sum(jnp.linalg.cholesky(x) * w))(np.asarray(a)))
    _, t = jax.jvp(chol, (a,), (w,))
    close(t, jax.jvp(jnp.linalg.cholesky, (np.asarray(a),), (w,))[1])
    check_grads(chol, (a,), order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize(("lower", "trans"), [(True, True), (False, False)])
def test_solve_derivatives_match_jax_scipy(lower, trans):
    rng = np.random.default_rng(5)
    t = np.linalg.cholesky(spd(N))
    t = sharded(t if lower else t.T)
    b = jnp.asarray(rng.standard_normal((N, 9)))
    ours = functools.partial(wl.solve_triangular, block=B, lower=lower, trans=trans)
    ref = functools.partial(jsl.solve_triangular, lower=lower, trans=trans)
    got = jax.grad(lambda t, b: jnp.sum(jnp.sin(ours(t, b))), (0, 1))(t, b)
    want = jax.grad(lambda t, b: jnp.sum(jnp.sin(ref(t, b))), (0, 1))(np.asarray(t), b)
    for g, r in zip(got, want, strict=True):
        close(g, r)
    if not lower:  # once is enough (each mode compiles the derivative programs)
        check_grads(ours, (t, b), order=1, modes=("fwd", "rev"))


def test_logdet_gradient_is_the_inverse(a):
    inv = jax.grad(lambda x: wl.cho_logdet(chol(x)))(a)  # d log det A / dA = A^-1
    close(inv, np.linalg.inv(np.asarray(a)), rtol=1e-9, atol=1e-9)


def test_second_order(a):
    v = jnp.asarray(spd(N, seed=8))

    def hvp(factor, x):
        return jax.jvp(jax.grad(lambda x: jnp.sum(factor(x) ** 3)), (x,), (v,))[1]

    close(hvp(chol, a), hvp(jnp.linalg.cholesky, np.asarray(a)), rtol=1e-9, atol=1e-9)


def _collectives(hlo: str) -> list[tuple[str, int]]:
    """(kind, elements of its largest result) of every all-gather / all-reduce."""
    out = []
    for line in hlo.splitlines():
        m = re.search(r"=\s*(.*?)\s(all-gather|all-reduce)(-start)?\(", line)
        if m:
            dims = re.findall(r"\[([\d,]*)\]", m.group(1))
            out.append((m.group(2), max(int(np.prod([int(d) for d in s.split(",") if d]))
                                        for s in dims)))  # fmt: skip
    return out


def test_compiled_cholesky_gathers_no_matrix():
    n, mesh = 512, jw.default_mesh()
    assert dict(mesh.shape) == {"rows": 2, "cols": 4}
    spec = jax.ShapeDtypeStruct((n, n), jnp.float64, sharding=jw.default_sharding((n, n), mesh))
    compiled = jax.jit(wl.cholesky).lower(spec).compile()
    found = _collectives(compiled.as_text())
    assert found  # the panels' psums are there ...
    assert max(size for _, size in found) <= n * n // 4, found  # ... no matrix-sized one
    # and the reference does gather: the check can fail
    ref = _collectives(jax.jit(jnp.linalg.cholesky).lower(spec).compile().as_text())
    assert max(size for _, size in ref) >= n * n


def _device_bytes(fn, spec, **jit) -> int:
    m = jax.jit(fn, **jit).lower(spec).compile().memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes)  # fmt: skip


def test_compiled_memory_per_device():
    """Per device: the operand, the factor and one layout copy (3 x n^2/p) when the
    operand is donated (or dead after the call, inside a larger jit); undonated, the
    layout change's all-to-all buffers add one more copy. jnp gathers n^2 per device."""
    n, mesh = 2048, jw.default_mesh()
    spec = jax.ShapeDtypeStruct((n, n), jnp.float64, sharding=jw.default_sharding((n, n), mesh))
    share = n * n * 8 // 8
    workspace = share // 4
    assert _device_bytes(wl.cholesky, spec, donate_argnums=0) <= 3 * share + workspace
    assert _device_bytes(wl.cholesky, spec) <= 4 * share + workspace
    assert _device_bytes(jnp.linalg.cholesky, spec) >= n * n * 8  # the check can fail


def test_program_size_flat_in_block_columns():
    def size(n: int) -> int:
        spec = jax.ShapeDtypeStruct((n, n), jnp.float64)
        return len(jax.jit(lambda x: wl.cholesky(x, block=4)).lower(spec).as_text().splitlines())

    small, large = size(256), size(1024)  # 64 and 256 block columns
    assert abs(large - small) <= 0.05 * small


def test_bad_input(a):
    with pytest.raises(ShapeMismatchError, match=r"cholesky: x must be one non-empty square"):
        wl.cholesky(jnp.ones((4, 5)))
    with pytest.raises(ShapeMismatchError, match=r"a stack of matrices is not supported"):
        wl.cholesky(jnp.ones((2, 4, 4)))
    with pytest.raises(DTypeMismatchError, match=r"float16 is not supported.*astype"):
        wl.cholesky(jnp.eye(4, dtype=jnp.float16))
    ints = chol(4 * np.eye(N, dtype=np.int64))  # promoted as jnp promotes
    assert ints.dtype == jnp.linalg.cholesky(np.eye(N, dtype=np.int64)).dtype
    close(ints, 2 * np.eye(N))
    other = jax.make_mesh((2, 4), ("x", "y"), axis_types=(AxisType.Auto,) * 2)
    with pytest.raises(ConfigError, match=r"mesh= must be a mesh with axes \('rows', 'cols'\)"):
        wl.cholesky(a, mesh=other)
    with pytest.raises(ConfigError, match=r"argument's sharding must be .*jw.default_mesh"):
        wl.cholesky(jax.device_put(np.eye(8), NamedSharding(other, P("x", "y"))))
    with pytest.raises(ShapeMismatchError, match=r"b must be an \(n,\) vector .* n = 37"):
        wl.cho_solve(a, jnp.ones(5))
    with pytest.raises(ConfigError, match=r"trans must be a bool"):
        wl.solve_triangular(a, jnp.ones(N), trans="X")


def test_failures_eager_raise_traced_give_nan():
    bad = -np.eye(N)  # the shapes of the tests above: their compiled programs are reused
    with pytest.raises(NotPositiveDefiniteError, match=r"not positive definite.*NaN instead"):
        chol(bad)
    nan = np.eye(N)
    nan[5, 2] = np.nan
    with pytest.raises(NonFiniteError, match=r"cholesky: the input holds NaN"):
        chol(nan)
    traced, _ = jax.jvp(chol, (bad,), (np.zeros((N, N)),))  # traced: NaN, as jnp's
    np.testing.assert_array_equal(traced, jnp.linalg.cholesky(bad))
    assert np.isnan(traced).sum() == N * (N + 1) // 2
    with pytest.raises(NonFiniteError, match=r"solve_triangular: .* singular"):
        wl.solve_triangular(np.zeros((N, N)), np.ones((N, 9)), block=B)


def test_mesh_from_argument_and_context():
    x = spd(16, seed=9)
    tall = jax.make_mesh((4, 2), ("rows", "cols"), axis_types=(AxisType.Auto,) * 2)
    low = wl.cholesky(sharded(x, tall), block=2)
    assert low.sharding.mesh == tall
    close(low, np.linalg.cholesky(x))
    with jax.set_mesh(tall):
        low = jax.jit(lambda x: wl.cholesky(x, block=2))(jnp.asarray(x))
    close(low, np.linalg.cholesky(x))


def test_gaussian_process_example_matches_sklearn():
    path = pathlib.Path(__file__).parents[1] / "examples" / "gaussian_process.py"
    spec = importlib.util.spec_from_file_location("gaussian_process_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(["--n=150", "--steps=2"])
    assert out["rel_err_vs_sklearn"] < 1e-8
    assert out["grad_rel_err_vs_sklearn"] < 1e-8
    assert out["grad_rel_err_vs_jnp"] < 1e-10
