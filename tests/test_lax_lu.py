"""jaxwren.lax.lu_factor / lu_solve / solve: against scipy and jax.scipy (values, pivots,
pivot-hostile matrices, derivatives), the compiled collectives, program size, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import pytest
import scipy.linalg as sl
from jax.test_util import check_grads

import jaxwren as jw
import jaxwren.lax as wl
from jaxwren.errors import (
    ConfigError,
    DTypeMismatchError,
    NonFiniteError,
    ShapeMismatchError,
    SingularMatrixError,
)
from tests.test_lax import _collectives, sharded

N, B = 37, 4  # ragged: padded to 48 on the 2 x 4 mesh


def hostile(kind: str, n: int = N, b: int = B, seed: int = 0) -> np.ndarray:
    """Matrices that defeat pivoting confined to blocks, or sit near singularity."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.standard_normal((n, n))
    if kind == "leading_zero":
        a = rng.standard_normal((n, n))
        a[0, 0] = 0.0
        return a
    if kind == "singular_diagonal_blocks":  # a block shift plus small noise off its blocks
        a = np.roll(np.eye(n), b, axis=1) + 0.02 * rng.standard_normal((n, n)) / np.sqrt(n)
        blk = np.arange(n) // b
        a[blk[:, None] == blk[None, :]] = 0.0
        assert np.linalg.cond(a) < 10
        return a
    if kind == "near_singular":  # cond 1e12
        u, _ = np.linalg.qr(rng.standard_normal((n, n)))
        v, _ = np.linalg.qr(rng.standard_normal((n, n)))
        return (u * np.logspace(0, -12, n)) @ v.T
    raise ValueError(kind)


def backward_error(a: np.ndarray, x: np.ndarray, b: np.ndarray) -> float:
    r = a @ x - b
    return float(
        np.linalg.norm(r, np.inf) / (np.linalg.norm(a, np.inf) * np.linalg.norm(x, np.inf))
    )


def lu(x, **kw):
    return wl.lu_factor(x, block=B, **kw)


@pytest.mark.parametrize("kind", ["random", "leading_zero", "singular_diagonal_blocks",
                                  "near_singular"])  # fmt: skip
def test_lu_factor_matches_scipy(kind):
    a = hostile(kind)
    # block 2: 20 block columns, so the kernel's four trailing windows (phases) run too
    got, piv = wl.lu_factor(sharded(a), block=2 if kind == "random" else B)
    want, wpiv = sl.lu_factor(a)
    np.testing.assert_array_equal(np.asarray(piv), wpiv)  # the same pivots as LAPACK's
    if kind != "near_singular":  # there rounding differences grow along the factor
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)
    p, low, up = sl.lu(a)  # P L U = A, with our L and U
    low, up = np.tril(np.asarray(got), -1) + np.eye(N), np.triu(np.asarray(got))
    assert np.linalg.norm(p @ low @ up - a) <= 1e-14 * N * np.linalg.norm(a)
    assert got.sharding == jw.default_sharding((N, N), jw.default_mesh())
    b = np.random.default_rng(1).standard_normal((N, 9))
    x = np.asarray(wl.lu_solve((got, piv), b, block=B))
    assert backward_error(a, x, b) <= 1e-14


def test_lu_factor_in_jit_and_float32():
    a = hostile("random", seed=2)
    got, piv = jax.jit(lu)(sharded(a))
    np.testing.assert_allclose(np.asarray(got), sl.lu_factor(a)[0], rtol=1e-10, atol=1e-12)
    got32, piv32 = lu(a.astype(np.float32))
    assert got32.dtype == np.float32 and piv32.dtype == np.int32
    want = sl.lu_factor(a.astype(np.float32))[0]
    np.testing.assert_allclose(np.asarray(got32), want, rtol=1e-3, atol=1e-4)
    ints, _ = lu(np.arange(N * N).reshape(N, N) % 7 + 7 * np.eye(N, dtype=np.int64))
    assert ints.dtype == jsl.lu_factor(jnp.eye(3, dtype=jnp.int64))[0].dtype


def test_lu_solve_matches_scipy():
    a = hostile("random", seed=3)
    f = lu(sharded(a))
    rng = np.random.default_rng(4)
    for trans, b in ((0, rng.standard_normal(N)), (1, rng.standard_normal((N, 9)))):
        x = wl.lu_solve(f, b, trans=trans, block=B)
        assert x.shape == b.shape
        want = sl.lu_solve(sl.lu_factor(a), b, trans=trans)
        np.testing.assert_allclose(np.asarray(x), want, rtol=1e-10, atol=1e-10)


def test_solve_gen_and_pos():
    rng = np.random.default_rng(5)
    a, b = hostile("leading_zero", seed=5), rng.standard_normal((N, 9))
    np.testing.assert_allclose(np.asarray(wl.solve(sharded(a), b, block=B)),
                               np.linalg.solve(a, b), rtol=1e-9, atol=1e-10)  # fmt: skip
    s = a @ a.T + N * np.eye(N)
    got = wl.solve(sharded(s), b, assume_a="pos", block=B)
    np.testing.assert_allclose(np.asarray(got), np.linalg.solve(s, b), rtol=1e-10, atol=1e-12)


def test_derivatives_match_jax_scipy():
    a = hostile("random", seed=6)
    w = np.random.default_rng(7).standard_normal((N, N))
    g = jax.grad(lambda x: jnp.sum(lu(x)[0] * w))(sharded(a))
    np.testing.assert_allclose(g, jax.grad(lambda x: jnp.sum(jsl.lu_factor(x)[0] * w))(a),
                               rtol=1e-9, atol=1e-10)  # fmt: skip
    # (reverse mode transposes the jvp rule: a wrong rule cannot give these gradients)
    b = np.random.default_rng(8).standard_normal((N, 9))
    ours = jax.grad(lambda a: jnp.sum(jnp.sin(wl.solve(a, b, block=B))))
    ref = jax.grad(lambda a: jnp.sum(jnp.sin(jnp.linalg.solve(a, b))))
    np.testing.assert_allclose(ours(sharded(a)), ref(a), rtol=1e-8, atol=1e-9)


def test_lu_solve_check_grads():
    f = lu(sharded(hostile("random", seed=10)))
    b = np.random.default_rng(11).standard_normal((N, 9))
    check_grads(lambda m, b: wl.lu_solve((m, f[1]), b, 1, block=B), (f[0], b), order=1,
                modes=("rev",))  # fmt: skip


def test_compiled_lu_gathers_no_matrix_and_stays_small():
    n, mesh = 512, jw.default_mesh()
    spec = jax.ShapeDtypeStruct((n, n), jnp.float64, sharding=jw.default_sharding((n, n), mesh))
    hlo = jax.jit(lambda x: wl.lu_factor(x, block=16)).lower(spec).compile().as_text()
    found = _collectives(hlo)
    assert found and max(size for _, size in found) <= n * n // 4, found
    ref = _collectives(jax.jit(jsl.lu_factor).lower(spec).compile().as_text())
    assert max(size for _, size in ref) >= n * n  # jax's own gathers: the check can fail

    def size(n: int) -> int:
        spec = jax.ShapeDtypeStruct((n, n), jnp.float64)
        return len(jax.jit(lambda x: wl.lu_factor(x, block=4)).lower(spec).as_text().splitlines())

    small, large = size(256), size(1024)  # 64 and 256 block columns
    assert abs(large - small) <= 0.05 * small


def test_singular_and_bad_input():
    a = hostile("random", seed=9)
    a[:, 5] = 0.0  # column 5 has no pivot: LAPACK's info = 6
    with pytest.raises(SingularMatrixError, match=r"U\[5, 5\] is exactly zero.*info = 6") as e:
        lu(a)
    assert e.value.column == 5
    got, piv = jax.jit(lu)(sharded(a))  # traced: returned as scipy's
    np.testing.assert_allclose(np.asarray(got), sl.lu_factor(a)[0], rtol=1e-10, atol=1e-12)
    with pytest.raises(NonFiniteError, match=r"lax.solve: the solution has NaN"):
        wl.solve(sharded(a), np.ones((N, 9)), block=B)
    nan = np.eye(N)
    nan[3, 1] = np.nan
    with pytest.raises(NonFiniteError, match=r"lu_factor: the input holds NaN"):
        lu(nan)
    with pytest.raises(ShapeMismatchError, match=r"lu_factor: a must be one non-empty square"):
        wl.lu_factor(np.ones((3, 4)))
    with pytest.raises(DTypeMismatchError, match=r"float16 is not supported"):
        wl.lu_factor(np.eye(4, dtype=np.float16))
    with pytest.raises(ShapeMismatchError, match=r"piv must be the \(n,\) integer pivots"):
        wl.lu_solve((got, np.zeros(N)), np.ones(N))
    with pytest.raises(ConfigError, match=r"pass lu_and_piv as the pair"):
        wl.lu_solve(got, np.ones(N))
    with pytest.raises(ConfigError, match=r"assume_a must be 'gen' or 'pos'"):
        wl.solve(a, np.ones(N), assume_a="sym")
