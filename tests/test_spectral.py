"""jaxwren.lax.polar (QDWH) against scipy.linalg.polar and jaxwren.lax.eigh (QDWH-eig
spectral divide and conquer) against numpy.linalg.eigh: hard spectra, ragged n, f32/f64,
the compiled collectives, bounded compilation, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg as sl

import jaxwren as jw
import jaxwren.lax as wl
from jaxwren.errors import ConfigError, NonFiniteError, ShapeMismatchError
from jaxwren.lax import divide_conquer, eigh_kernels
from tests.test_lax import _collectives

RNG = np.random.default_rng(0)


def orthogonal(n: int) -> np.ndarray:
    return np.linalg.qr(RNG.standard_normal((n, n)))[0]


def with_spectrum(ev: np.ndarray) -> np.ndarray:
    q = orthogonal(len(ev))
    a = (q * ev) @ q.T
    return (a + a.T) / 2


def sharded(x: np.ndarray) -> jax.Array:
    return jax.device_put(x, jw.default_sharding(x.shape, jw.default_mesh()))


def check_polar(a: np.ndarray, u, h, tol: float) -> None:
    u, h = np.asarray(u), np.asarray(h)
    k = min(a.shape)
    gram = u.T @ u if a.shape[0] >= a.shape[1] else u @ u.T
    assert np.abs(gram - np.eye(k)).max() <= tol
    assert np.linalg.norm(u @ h - a) <= tol * np.linalg.norm(a)
    np.testing.assert_array_equal(h, h.T)
    assert np.linalg.eigvalsh(h).min() >= -tol * np.linalg.norm(a, 2)
    _, h_ref = sl.polar(a)  # H is unique (U is not when a is singular)
    assert np.linalg.norm(h - h_ref) <= 10 * tol * np.linalg.norm(h_ref)


N = 37  # ragged: not a multiple of the block nor of the mesh


@pytest.mark.parametrize("kind", ["random", "ill-conditioned", "rank-deficient"])
def test_polar_matches_scipy(kind):
    if kind == "random":
        a = RNG.standard_normal((N, N))
    elif kind == "ill-conditioned":  # singular values 1e-12 .. 1
        a = (orthogonal(N) * np.logspace(-12, 0, N)) @ orthogonal(N).T
    else:
        a = RNG.standard_normal((N, 9)) @ RNG.standard_normal((9, N))
    u, h = wl.polar(sharded(a))
    check_polar(a, u, h, 1e-13)
    if kind == "random":  # U is unique here
        np.testing.assert_allclose(np.asarray(u), sl.polar(a)[0], atol=1e-12)


def test_polar_wide_float32():  # (tall: tests/test_eigh_ops.py)
    wide = RNG.standard_normal((20, 45))
    u, h = wl.polar(wide.astype(np.float32))
    assert u.shape == (20, 45) and h.shape == (45, 45) and u.dtype == np.float32
    check_polar(wide, u, h, 5e-6)


def spectra(n: int) -> dict[str, np.ndarray]:
    return {
        "random": RNG.standard_normal(n),
        "clustered": np.repeat([1.0, 2.0, 3.0], [n // 3, n // 3, n - 2 * (n // 3)])
        + 1e-13 * RNG.standard_normal(n),
        "repeated": np.repeat([-1.0, 5.0], [n // 2, n - n // 2]),
        "rank-deficient": np.concatenate([np.zeros(n - n // 5), RNG.standard_normal(n // 5)]),
        "indefinite": 100 * RNG.standard_normal(n),
        "spread 1e-12..1": np.logspace(-12, 0, n),
    }


def check_eigh(a: np.ndarray, w, v, tol: float) -> None:
    w, v = np.asarray(w), np.asarray(v)
    n, norm = a.shape[0], np.linalg.norm(a, 2)
    assert np.abs(w - np.linalg.eigvalsh(a)).max() <= tol * norm
    assert np.abs(v.T @ v - np.eye(n)).max() <= tol
    assert np.linalg.norm(a @ v - v * w) <= tol * np.linalg.norm(a)


def test_eigh_hard_spectra_bounded_compiles():
    n = 70  # ragged; termination 24: two levels of splits, every bucket 128
    sizes = []
    for name, ev in spectra(n).items():
        a = with_spectrum(ev)
        w, v = wl.eigh(sharded(a), termination_size=24)
        check_eigh(a, w, v, 1e-12)
        assert np.all(np.diff(np.asarray(w)) >= -1e-13 * np.abs(ev).max()), name
        sizes.append(eigh_kernels.divide._cache_size())
    assert divide_conquer.ladder(n, jw.default_mesh(), 24) == (128,)
    assert sizes[-1] == sizes[0] == 1  # one compiled divide for every split of every input
    assert eigh_kernels.child._cache_size() <= 2  # (with and without accumulated vectors)


def test_eigh_in_jit_diagonal_and_lower_triangle():
    a = with_spectrum(spectra(70)["repeated"])
    w, v = jax.jit(lambda x: wl.eigh(x, termination_size=24))(sharded(a))  # one program
    check_eigh(a, w, v, 1e-12)
    d = RNG.standard_normal(50)
    w, v = wl.eigh(np.diag(d), termination_size=24)  # nearly diagonal: sorted, no split
    np.testing.assert_array_equal(np.asarray(w), np.sort(d))
    a = with_spectrum(np.linspace(1, 2, 50))
    skew = a + np.triu(RNG.standard_normal((50, 50)), 1)  # junk above the diagonal
    w, v = wl.eigh(skew, symmetrize_input=False)  # numpy's UPLO='L': reads the lower
    check_eigh(a, w, v, 1e-12)


def test_compiled_polar_gathers_no_matrix():
    n, mesh = 128, jw.default_mesh()
    spec = jax.ShapeDtypeStruct((n, n), jnp.float64, sharding=jw.default_sharding((n, n), mesh))
    compiled = jax.jit(wl.polar).lower(spec).compile()  # traceable: inside the user's jit
    found = _collectives(compiled.as_text())
    assert found and max(size for _, size in found) <= n * n // 2, found  # panels only
    a = RNG.standard_normal((n, n))
    check_polar(a, *compiled(sharded(a)), 1e-13)
    ref = _collectives(jax.jit(jnp.linalg.eigh).lower(spec).compile().as_text())
    assert max(size for _, size in ref) >= n * n  # the reference gathers: the check can fail


def test_bad_input():
    with pytest.raises(ShapeMismatchError, match=r"polar: x must be one non-empty \(m, n\)"):
        wl.polar(np.ones((2, 3, 3)))
    with pytest.raises(ShapeMismatchError, match=r"eigh: x must be one non-empty square"):
        wl.eigh(np.ones((4, 5)))
    with pytest.raises(ConfigError, match=r"termination_size must be an int >= 2"):
        wl.eigh(np.eye(4), termination_size=1)
    with pytest.raises(ConfigError, match=r"max_iterations must be a positive int"):
        wl.polar(np.eye(4), max_iterations=0)
    bad = np.eye(N)
    bad[3, 4] = np.nan
    with pytest.raises(NonFiniteError, match=r"eigh: the input holds NaN"):
        wl.eigh(bad)
    with pytest.raises(NonFiniteError, match=r"polar: the input holds NaN"):
        wl.polar(bad)
