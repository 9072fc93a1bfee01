"""The jitted pieces of the spectral divide and conquer (:mod:`jaxwren.lax.divide_conquer`).

Every piece works on a sub-problem padded with zeros to a bucket size ``B`` (its true size
``b`` is a traced scalar), so each compiles once per bucket, never per split:

* :func:`divide`: the split of ``H`` at the median of its diagonal ``sigma``: ``U`` = the
  polar factor of ``H - sigma I`` (:mod:`jaxwren.lax.qdwh`; the zero padding stays zero),
  ``P_- = (I - U) / 2`` the projector on the eigenvalues below ``sigma``, its rank ``r =
  trace(P_-)``; then one ``B x B`` orthogonal ``Q`` whose first ``r`` columns span
  ``range(P_-)`` and the next ``b - r`` span ``range(P_+)``: a randomised rank-revealing
  step, ``X = [P_- G_r, P_+ G_{b-r}, e_b..]`` with ``G`` Gaussian, orthonormalised by a
  shifted CholeskyQR3 (Fukaya et al. 2020; nested column spans, so the two subspaces stay
  apart), once refined by a subspace iteration (CholeskyQR2: its sketch is well
  conditioned). Returns ``Q^T H Q`` (block diagonal).
* :func:`child`: a diagonal block of ``Q^T H Q`` and its columns of ``V Q``, cut by
  products with a 0/1 selection matrix (exact; offsets are traced, so no dynamic slice of
  a sharded array and no recompilation).
* :func:`leaf`: a block of at most the termination size solved on one device by
  ``jnp.linalg.eigh`` (or a nearly diagonal block sorted), placed into the result.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.lax.qdwh import _constrain, _mm, polar_factor

__all__ = ["child", "divide", "leaf"]

ROUNDS = (3, 2)  # CholeskyQR rounds of a split's two sketch passes (the second refines)


def _iota(shape: tuple, dim: int) -> jax.Array:
    return lax.broadcasted_iota(jnp.int32, shape, dim)


def _diag(h: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(_iota(h.shape, 0) == _iota(h.shape, 1), h, 0), axis=1)


def _eye_b(shape: tuple, b: Any, dtype: Any) -> jax.Array:
    i, j = _iota(shape, 0), _iota(shape, 1)
    return jnp.where((i == j) & (i < b), jnp.ones((), dtype), jnp.zeros((), dtype))


def _cholqr(x: jax.Array, shift: Any, mesh: Any, block: int) -> jax.Array:
    """``Q`` of ``x = Q R`` by one CholeskyQR round, shifted when ``shift`` is 1 (Fukaya et
    al.: ``s = 11 (mn + n(n+1)) u ||x||_2^2``, the norm by power iteration on ``x^T x``);
    the columns keep nested spans."""
    from jaxwren.lax.api import cholesky, solve_triangular

    m, n = x.shape
    g = _mm(x.T, x, mesh)
    v = jnp.ones((n,), x.dtype)
    for _ in range(8):
        v = g @ v
        v = v / jnp.linalg.norm(v)
    norm2 = 2 * jnp.vdot(v, g @ v)  # twice the estimate: a safe margin
    s = shift * 11 * (m * n + n * (n + 1)) * jnp.finfo(x.dtype).eps * norm2
    g = g + s * jnp.eye(n, dtype=x.dtype)
    low = cholesky(_constrain(g, mesh), symmetrize_input=False, mesh=mesh, block=block)
    qt = solve_triangular(low, _constrain(x.T, mesh), lower=True, mesh=mesh, block=block)
    return _constrain(qt.T, mesh)


def _subspace(sketch: Any, g: jax.Array, mesh: Any, block: int) -> jax.Array:
    """Two sketch passes, one loop over CholeskyQR rounds (one copy in the program): the
    first pass ``sketch(g)`` (ill-conditioned: Gaussian blocks) by shifted CholeskyQR3 (a
    round with a shift, two without), the second ``sketch(q)`` (a subspace iteration on a
    well-conditioned ``q``: ``range(P q) = range(q)``, refining the two subspaces' split)
    by CholeskyQR2 (two rounds without a shift): 5 rounds, not 6."""
    starts = (0, ROUNDS[0])  # the rounds that begin a pass with a sketch

    def body(i: Any, x: jax.Array) -> jax.Array:
        x = lax.cond((i == starts[0]) | (i == starts[1]), sketch, lambda x: x, x)
        return _cholqr(x, (i == 0).astype(x.dtype), mesh, block)

    return lax.fori_loop(0, sum(ROUNDS), body, g)


@functools.partial(jax.jit, static_argnames=("mesh", "block", "max_iterations"))
def divide(h: jax.Array, b: Any, key: jax.Array, mesh: Any, block: int,
           max_iterations: int) -> tuple:  # fmt: skip
    """``(Q, Q^T H Q, r, sigma)`` of a ``B x B`` block ``h`` of true size ``b``."""
    shape, dt = h.shape, h.dtype
    h = _constrain(h, mesh)
    d = _diag(h)
    sigma = jnp.nanmedian(jnp.where(jnp.arange(shape[0]) < b, d, jnp.nan))
    eye = _eye_b(shape, b, dt)
    u, _, _ = polar_factor(_constrain(h - sigma * eye, mesh), mesh, block, max_iterations)
    r = jnp.round(jnp.sum(_diag(eye - u)) / 2).astype(jnp.int32)
    col = _iota(shape, 1)
    sign = jnp.where(col < r, -1.0, 1.0).astype(dt)  # P_- for the first r columns, P_+ after
    pad = jnp.where((col >= b) & (_iota(shape, 0) == col), 1.0, 0.0).astype(dt)

    def sketch(g: jax.Array) -> jax.Array:
        proj = (jnp.where(_iota(shape, 0) < b, g, 0) + sign * _mm(u, g, mesh)) / 2
        return _constrain(jnp.where(col < b, proj, pad), mesh)

    g = _constrain(jax.random.normal(key, shape, dt), mesh)
    q = _subspace(sketch, g, mesh, block)
    hq = _mm(q.T, _mm(h, q, mesh), mesh)
    return q, _constrain((hq + _constrain(hq.T, mesh)) / 2, mesh), r, sigma


def _select(rows: int, cols: int, off: Any, size: Any, dt: Any) -> jax.Array:
    """``rows x cols`` 0/1 matrix with ones at ``(off + j, j)`` for ``j < size``."""
    i, j = _iota((rows, cols), 0), _iota((rows, cols), 1)
    return jnp.where((i == off + j) & (j < size), 1.0, 0.0).astype(dt)


@functools.partial(jax.jit, static_argnames=("mesh", "width"))
def child(q: jax.Array, hq: jax.Array, v: Any, off: Any, size: Any, mesh: Any,
          width: int) -> tuple:  # fmt: skip
    """The diagonal block ``[off, off + size)`` of ``hq`` padded to ``width`` and the
    matching columns of ``v q`` (``v`` None: of ``q``)."""
    s = _select(q.shape[0], width, off, size, q.dtype)
    hc = _mm(s.T, _mm(hq, s, mesh), mesh)
    qs = _mm(q, s, mesh)
    return _constrain(hc, mesh), qs if v is None else _mm(v, qs, mesh)


@functools.partial(jax.jit, static_argnames=("mesh", "diagonal"), donate_argnums=(4, 5))
def leaf(h: jax.Array, v: Any, off: Any, size: Any, w_out: jax.Array, v_out: jax.Array,
         mesh: Any, diagonal: bool) -> tuple:  # fmt: skip
    """Eigenpairs of the block ``h`` (true size ``size``) on one device, sorted, written to
    ``w_out[off:off + size]`` and the columns ``v_out[:, off:off + size]``."""
    k, dt = h.shape[0], h.dtype
    live = jnp.arange(k) < size
    big = 2 * jnp.linalg.norm(h) + 1  # padding eigenvalues sort after the true ones
    if diagonal:  # the diagonal only: no gather
        d = jnp.where(live, _diag(h), big)
        order = jnp.argsort(d)
        w, z = d[order], _constrain(jax.nn.one_hot(order, k, dtype=dt).T, mesh)
    else:  # at most the termination size: solved on one device
        whole = lax.with_sharding_constraint(h, NamedSharding(mesh, P()))
        whole = whole + jnp.diag(jnp.where(live, 0, big).astype(dt))
        w, z = jnp.linalg.eigh(whole)
    z = jnp.where(live[None, :] & live[:, None], z, 0)
    vz = _mm(_eye_b(h.shape, k, dt) if v is None else v, z, mesh)
    n = v_out.shape[0]
    place = _select(n, k, off, size, dt)  # n x k
    v_out = v_out + _mm(vz, place.T, mesh)
    idx = jnp.arange(n) - off
    hit = (idx >= 0) & (idx < size)
    w_out = jnp.where(hit, w[jnp.clip(idx, 0, k - 1)], w_out)
    return w_out, _constrain(v_out, mesh)
