"""Polar decomposition by QDWH (Nakatsukasa, Bai and Gygi 2010) on sharded matrices.

``A = U H`` with ``U`` orthonormal columns and ``H`` symmetric positive semi-definite, by
the dynamically weighted Halley iteration ``X <- X (a I + b X^T X)(I + c X^T X)^-1``,
every step a sharded product, a sharded Cholesky factor (:func:`jaxwren.lax.cholesky`)
and two sharded substitutions (:func:`jaxwren.lax.cho_solve`): nothing gathers the matrix.

The Cholesky form of a step is stable while ``c`` is moderate (``cond(I + c X^T X) <=
1 + c``); the QR form, which Nakatsukasa-Bai-Gygi (and ``jax._src.tpu.linalg.qdwh``) use
while the lower bound ``l`` on the singular values is tiny (``c > 100``), needs a QR of the
stacked ``2n x n`` matrix, which the sharded layer does not have. Instead, while the
optimal weights would have ``c > 100``, a step takes the weights that are optimal for a
larger bound ``l' >= l`` with ``c(l') = 100``: the rational map is still increasing on
``[0, 1]`` with ``f(1) = 1``, so every step multiplies the small singular values by about
``a(l') ~ 19`` and keeps the large ones in ``[l, 1]``. From ``l = eps`` (float64) that is 15
Cholesky steps (about ``65 n^3`` flops) against 2 QR and 4 Cholesky steps (about
``55 n^3``) for the QR form. A Newton-Schulz step polishes ``U``; ``H = sym(U^T A)``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding

from jaxwren.sharding.mesh import fit_spec

__all__ = ["halley_schedule", "polar_factor", "polar_kernel"]

_HIGHEST = lax.Precision.HIGHEST
_CAP = 100.0  # largest weight c of a Cholesky step (JAX's QR/Cholesky cutoff)


def _weights(lo: float) -> tuple[float, float, float]:
    """The optimal DWH weights ``(a, b, c)`` for the lower bound ``l`` (NBG 2010, (3.8))."""
    l2 = lo * lo
    dd = (4 * (1 / l2 - 1) / l2) ** (1 / 3)
    sqd = math.sqrt(1 + dd)
    a = sqd + math.sqrt(max(2 - dd + 2 * (2 - l2) / (l2 * sqd), 0.0))
    b = (a - 1) ** 2 / 4
    return a, b, a + b - 1


def _capped(lo: float) -> float:
    """The smallest ``l' >= l`` whose weight ``c`` is at most ``_CAP`` (bisection)."""
    if _weights(lo)[2] <= _CAP:
        return lo
    bottom, top = lo, 0.5
    for _ in range(200):
        mid = math.sqrt(bottom * top)
        bottom, top = (mid, top) if _weights(mid)[2] > _CAP else (bottom, mid)
    return top


@functools.lru_cache(maxsize=8)
def halley_schedule(eps: float) -> tuple[tuple[float, float, float], ...]:
    """Per step ``(a - b/c, c, b/c)`` from ``l = eps`` until ``l`` reaches 1 (to 5 eps)."""
    out, lo = [], eps
    while lo + 5 * eps < 1 and len(out) < 60:
        a, b, c = _weights(_capped(lo))
        out.append((a - b / c, c, b / c))
        lo = min(1.0, lo * (a + b * lo * lo) / (1 + c * lo * lo))
    return tuple(out)


def _constrain(x: jax.Array, mesh: Any) -> jax.Array:
    return lax.with_sharding_constraint(x, NamedSharding(mesh, fit_spec(x.shape, mesh)))


def _mm(x: jax.Array, y: jax.Array, mesh: Any) -> jax.Array:
    return _constrain(jnp.matmul(x, y, precision=_HIGHEST), mesh)


def _step(u: jax.Array, w: jax.Array, mesh: Any, block: int) -> jax.Array:
    """One Cholesky-form DWH step with weights ``w = (a - b/c, c, b/c)``."""
    from jaxwren.lax.api import cho_solve, cholesky  # the public kernels (api imports us)

    a_e, c, e = w[0], w[1], w[2]
    n = u.shape[1]
    z = c * _mm(u.T, u, mesh) + jnp.eye(n, dtype=u.dtype)
    low = cholesky(_constrain(z, mesh), symmetrize_input=False, mesh=mesh, block=block)
    y = cho_solve(low, _constrain(u.T, mesh), mesh=mesh, block=block)  # z^-1 u^T
    return _constrain(e * u + a_e * _constrain(y.T, mesh), mesh)


def polar_factor(x: jax.Array, mesh: Any, block: int, max_iterations: int) -> tuple:
    """``(U, iterations, converged)`` of a tall (``m >= n``) traced matrix ``x``."""
    eps = float(jnp.finfo(x.dtype).eps)
    sched = halley_schedule(eps)
    norm1 = jnp.max(jnp.sum(jnp.abs(x), axis=0))
    norminf = jnp.max(jnp.sum(jnp.abs(x), axis=1))
    alpha = jnp.sqrt(norm1 * norminf)  # >= ||x||_2
    u = _constrain(x / jnp.where(alpha == 0, 1, alpha).astype(x.dtype), mesh)
    halley = (8.0 / 3.0, 3.0, 1.0 / 3.0)  # a, b, c = 3, 1, 3: Halley's iteration
    coefs = jnp.asarray(sched[:max_iterations] + (halley,), x.dtype)
    last = len(coefs) - 1
    tol = (5 * eps) ** (1 / 3)

    def more(state: tuple) -> Any:  # the schedule, then Halley steps until converged
        k, _, delta = state
        return ((k < last) | (delta > tol)) & (k < max_iterations)

    def body(state: tuple) -> tuple:  # one copy of the step in the program
        k, u, _ = state
        new = _step(u, coefs[jnp.minimum(k, last)], mesh, block)
        return k + 1, new, jnp.linalg.norm(new - u)

    start = (jnp.asarray(0, jnp.int32), u, jnp.asarray(np.inf, x.dtype))
    k, u, delta = lax.while_loop(more, body, start)
    u = _constrain(1.5 * u - 0.5 * _mm(u, _mm(u.T, u, mesh), mesh), mesh)  # Newton-Schulz
    return u, k, delta <= tol


@functools.partial(jax.jit, static_argnames=("mesh", "block", "max_iterations", "want_h"))
def polar_kernel(x: jax.Array, mesh: Any, block: int, max_iterations: int,
                 want_h: bool = True) -> tuple:  # fmt: skip
    """``(U, H, iterations, converged)`` of a tall ``x`` (``H`` None unless ``want_h``)."""
    x = _constrain(x, mesh)
    u, k, ok = polar_factor(x, mesh, block, max_iterations)
    h = None
    if want_h:
        h = _mm(u.T, x, mesh)
        h = _constrain((h + _constrain(h.T, mesh)) / 2, mesh)
    return u, h, k, ok
