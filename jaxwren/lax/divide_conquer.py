"""Symmetric eigendecomposition by QDWH-eig spectral divide and conquer (Nakatsukasa and
Higham 2013) on sharded matrices.

The driver keeps a stack of sub-problems. Each is split at the median of its diagonal
through the polar factor of ``H - sigma I`` (:func:`jaxwren.lax.eigh_kernels.divide`) into
the invariant subspaces below and above ``sigma``; the two diagonal blocks of ``Q^T H Q``
become sub-problems, each padded with zeros to the smallest size on a fixed ladder
(``N, ~N/2, ~N/4, ...``), so every kernel compiles once per rung, not per split. A block
of at most ``termination_size`` is solved on one device by ``jnp.linalg.eigh``; a nearly
diagonal (or negligible) block is sorted. Each split reads one integer back (its rank),
which is why :func:`eigh` runs eagerly: inside ``jit`` the sizes of the halves would be
traced.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from jaxwren.errors import ConfigError, NonFiniteError, ShapeMismatchError
from jaxwren.lax import eigh_kernels as ek
from jaxwren.sharding.mesh import COLS, ROWS, fit_spec

__all__ = ["eigh_sharded", "ladder"]


def _unit(mesh: Any) -> int:
    return math.lcm(mesh.shape[ROWS], mesh.shape[COLS])


def ladder(n: int, mesh: Any, termination: int) -> tuple[int, ...]:
    """Bucket sizes: ``n`` rounded up to ``32 lcm(R, C)``, then ``~/1.98`` each, down to
    the termination size (as ``jax._src.tpu.linalg.eigh``)."""
    g = 32 * _unit(mesh)
    top = -(-n // g) * g
    out, i = [top], int(n / 1.98)
    while i > termination // 2 and len(out) < 40:
        out.append(-(-i // g) * g)
        i = int(i / 1.98)
    return tuple(sorted(set(out), reverse=True))


def _bucket(size: int, rungs: tuple[int, ...]) -> int:
    return min(r for r in rungs if r >= size)


def _kernel_block(size: int, mesh: Any) -> int:
    """The largest Cholesky block (<= 128) that tiles ``size`` on the mesh exactly."""
    unit = _unit(mesh)
    return next(b for b in (128, 64, 32, 16, 8, 4, 2, 1) if size % (b * unit) == 0)


@jax.jit
def _measure(h: jax.Array) -> tuple:
    """``(||offdiag(h)||_F, ||h||_F, all finite)``."""
    i = jax.lax.broadcasted_iota(jnp.int32, h.shape, 0)
    j = jax.lax.broadcasted_iota(jnp.int32, h.shape, 1)
    off = jnp.linalg.norm(jnp.where(i == j, 0, h))
    return off, jnp.linalg.norm(h), jnp.all(jnp.isfinite(h))


def _prepare(x: jax.Array, n: int, size: int, mesh: Any, symmetrize: bool) -> jax.Array:
    def prep(x: jax.Array) -> jax.Array:
        x = x[:n, :n]
        if symmetrize:
            x = (x + x.T) / 2
        else:  # numpy's convention: only the lower triangle is read
            low = jnp.tril(x)
            x = low + jnp.tril(x, -1).T
        pad = size - x.shape[0]
        return jnp.pad(x, ((0, pad), (0, pad)))

    sh = NamedSharding(mesh, fit_spec((size, size), mesh))
    return jax.jit(prep, out_shardings=sh)(x)


def eigh_sharded(x: jax.Array, mesh: Any, *, symmetrize: bool, termination: int,
                 max_iterations: int, seed: int = 0, n: int | None = None,
                 where: str = "jaxwren.lax.eigh") -> tuple:  # fmt: skip
    """``(w, V)`` of the concrete sharded symmetric ``x`` (its top-left ``n x n``; see
    :func:`jaxwren.lax.eigh`), and the number of splits."""
    n = x.shape[0] if n is None else n
    rungs = ladder(n, mesh, termination)
    top = rungs[0]
    h = _prepare(x, n, top, mesh, symmetrize)
    off0, norm0, finite = (float(t) if t.dtype != bool else bool(t) for t in _measure(h))
    if not finite:
        raise NonFiniteError(f"{where}: the input holds NaN or Inf; clean it first.")
    eps = float(jnp.finfo(h.dtype).eps)
    sh = NamedSharding(mesh, fit_spec((top, top), mesh))
    w_out = jnp.zeros((top,), h.dtype)
    v_out = jax.device_put(jnp.zeros((top, top), h.dtype), sh)
    key, splits = jax.random.key(seed), 0
    stack: list[tuple] = [(h, None, 0, n)]
    while stack:
        h, v, off, b = stack.pop()
        hoff, hnorm = (off0, norm0) if v is None else (float(t) for t in _measure(h)[:2])
        diagonal = hoff <= 5 * eps * hnorm or hnorm <= eps * norm0
        if diagonal or b <= termination:
            w_out, v_out = ek.leaf(h, v, off, b, w_out, v_out, mesh, diagonal)
            continue
        key, sub = jax.random.split(key)
        blk = _kernel_block(h.shape[0], mesh)
        q, hq, r, _ = ek.divide(h, b, sub, mesh, blk, max_iterations)
        r, splits = int(r), splits + 1
        if not 0 < r < b:
            raise ConfigError(  # cannot happen unless the median is an end of the spectrum
                f"jaxwren.lax.eigh: a split of a {b} x {b} block found rank {r}; lower "
                "termination_size or report this matrix."
            )
        for o, s in ((r, b - r), (0, r)):
            hc, vc = ek.child(q, hq, v, o, s, mesh, _bucket(s, rungs))
            stack.append((hc, vc, off + o, s))
    return w_out[:n], v_out[:n, :n], splits


def check_square(x: Any, where: str) -> int:
    shape = np.shape(x)
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0:
        raise ShapeMismatchError(
            f"{where}: x must be one non-empty square (n, n) matrix, got shape "
            f"{tuple(shape)}; a stack of matrices is not supported: call once per matrix."
        )
    return shape[0]
