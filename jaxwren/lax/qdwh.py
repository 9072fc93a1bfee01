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

__all__ = ["polar_factor", "polar_kernel", "weights"]

_HIGHEST = lax.Precision.HIGHEST
_CAP = 100.0  # largest weight c of a Cholesky step (JAX's QR/Cholesky cutoff)


def weights(lo: Any) -> tuple[Any, Any, Any]:
    """The DWH weights ``(a, b, c)`` for the lower bound ``l`` (NBG 2010, (3.8)), capped at
    ``c = _CAP``: those of the larger bound whose ``c`` is the cap (``b = (a - 1)^2 / 4``
    and ``c = a + b - 1`` make ``a = 2 sqrt(1 + c) - 1`` there). Traceable."""
    l2 = lo * lo
    dd = jnp.cbrt(4 * (1 / l2 - 1) / l2)
    sqd = jnp.sqrt(1 + dd)
    a = sqd + jnp.sqrt(jnp.maximum(2 - dd + 2 * (2 - l2) / (l2 * sqd), 0))
    a = jnp.minimum(a, 2 * math.sqrt(1 + _CAP) - 1)
    b = (a - 1) ** 2 / 4
    return a, b, a + b - 1


def _lower_bound(u: jax.Array, mesh: Any, block: int, eps: float) -> jax.Array:
    """A lower bound on ``sigma_min(u)`` (``||u||_2 <= 1``): ``sqrt(lambda_min(u^T u))`` by
    6 steps of inverse iteration on the Cholesky factor of ``u^T u`` (which overestimate
    ``lambda_min`` by a small factor: halved), or ``eps`` when that is below ``1e3 eps``
    or the factor fails (a nearly singular ``u``): then the iteration starts from the
    worst case, as JAX's QDWH always does."""
    from jaxwren.lax.api import cho_solve, cholesky

    n = u.shape[1]
    low = cholesky(_mm(u.T, u, mesh), symmetrize_input=False, mesh=mesh, block=block)
    v = jax.random.normal(jax.random.key(7), (n,), u.dtype)
    mu = jnp.ones((), u.dtype)
    for _ in range(6):
        v = cho_solve(low, v / jnp.linalg.norm(v), mesh=mesh, block=block)
        mu = jnp.linalg.norm(v)  # -> 1 / lambda_min
    lam = 1 / mu
    ok = jnp.isfinite(lam) & (lam > 1e3 * eps)
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, lam, 1) / 4), eps).astype(u.dtype)


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


def polar_factor(x: jax.Array, mesh: Any, block: int, max_iterations: int,
                 estimate: bool = True) -> tuple:  # fmt: skip
    """``(U, iterations, converged)`` of a tall (``m >= n``) traced matrix ``x``; the
    weights follow the lower bound ``l`` on the singular values (``estimate``: from
    :func:`_lower_bound`, else ``eps``) until it reaches 1, then Halley steps until the
    iterates settle."""
    eps = float(jnp.finfo(x.dtype).eps)
    norm1 = jnp.max(jnp.sum(jnp.abs(x), axis=0))
    norminf = jnp.max(jnp.sum(jnp.abs(x), axis=1))
    alpha = jnp.sqrt(norm1 * norminf)  # >= ||x||_2
    u = _constrain(x / jnp.where(alpha == 0, 1, alpha).astype(x.dtype), mesh)
    lo = _lower_bound(u, mesh, block, eps) if estimate else jnp.asarray(eps, x.dtype)
    tol = (5 * eps) ** (1 / 3)

    def more(state: tuple) -> Any:
        k, _, lo, delta = state
        return ((lo < 1 - 5 * eps) | (delta > tol)) & (k < max_iterations)

    def body(state: tuple) -> tuple:  # one copy of the step in the program
        k, u, lo, _ = state
        a, b, c = weights(lo)
        new = _step(u, jnp.stack([a - b / c, c, b / c]), mesh, block)
        lo = jnp.minimum(1, lo * (a + b * lo * lo) / (1 + c * lo * lo))
        return k + 1, new, lo, jnp.linalg.norm(new - u)

    start = (jnp.asarray(0, jnp.int32), u, lo, jnp.asarray(np.inf, x.dtype))
    k, u, _, delta = lax.while_loop(more, body, start)
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
