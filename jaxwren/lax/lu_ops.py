"""The differentiable LU operations on layout-space matrices: the factorisation (the GEPP
kernel of :mod:`jaxwren.lax.lu_kernel` with its derivative rule), the row interchanges
and the solve from a factor.

* ``factor`` (``jax.custom_jvp``): with ``A = P L U``, ``X = L^-1 P^T dA U^-1``,
  ``dL = L tril(X, -1)`` and ``dU = triu(X) U`` (JAX's own rule for ``lax.linalg.lu``),
  all sharded: the interchanges applied to ``dA`` row by row (:func:`permute`), two
  substitutions and two triangular products. Reverse mode transposes it.
* ``permute``: the interchanges, linear in ``x`` (a fixed-trip loop of row moves), so JAX
  differentiates and transposes it.
* ``solve``: ``U^-1 L^-1 P^T B`` (or ``P L^-T U^-T B``), differentiable in the factor and
  ``B`` through :func:`jaxwren.lax.ops.triangular`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxwren.lax import lu_kernel as lk
from jaxwren.lax.layout import natural_index, spec
from jaxwren.lax.ops import Geometry, lower_part, product, triangular
from jaxwren.sharding.mesh import COLS, ROWS

__all__ = ["factor", "permute", "solve", "unit_lower"]


def unit_lower(lu: jax.Array, geo: Geometry) -> jax.Array:
    """``L`` of a layout-space packed factor: its strict lower triangle, ones on the
    diagonal (the substitution and product kernels read the diagonal)."""
    rows, cols = geo.square
    eye = natural_index(rows)[:, None] == natural_index(cols)[None, :]
    return jnp.where(eye, jnp.ones((), lu.dtype), lower_part(lu, rows, cols, diag=0.0))


def permute(x: jax.Array, piv: jax.Array, gx: tuple, mesh: Any, *, inverse: bool) -> jax.Array:
    """``P^T X`` (``inverse``: ``P X``) for a layout-space ``X`` of geometry ``gx`` whose
    rows are indexed like the factor's; ``piv`` padded (the identity past ``n``)."""
    body = functools.partial(lk.apply_swaps, rows=gx[0], inverse=inverse)
    return jax.shard_map(body, mesh=mesh, in_specs=(spec(*gx), P()),
                         out_specs=spec(*gx))(x, piv)  # fmt: skip


def _kernel(a: jax.Array, geo: Geometry) -> tuple[jax.Array, ...]:
    rows, cols = geo.square
    body = functools.partial(lk.factor_local, rows=rows, cols=cols, n=geo.n)
    return jax.shard_map(body, mesh=geo.mesh, in_specs=P(ROWS, COLS),
                         out_specs=(P(ROWS, COLS), P(), P()))(a)  # fmt: skip


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def factor(a: jax.Array, geo: Geometry) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(lu, piv, info)`` of a cyclic layout-space matrix (padding the identity): ``L``
    (unit, strictly lower) and ``U`` packed in ``lu``, ``piv`` padded LAPACK pivots,
    ``info`` the first exactly zero pivot's column (-1: none)."""
    return _kernel(a, geo)


@factor.defjvp
def _factor_jvp(geo: Geometry, primals: tuple, tangents: tuple) -> tuple:
    (a,), (da,) = primals, tangents
    lu, piv, info = factor(a, geo)
    g = geo.square
    kw = {"gl": g, "gb": g, "mesh": geo.mesh}
    low = unit_lower(lu, geo)
    x = permute(da, piv, g, geo.mesh, inverse=False)  # P^T dA
    x = triangular(low, x, lower=True, trans=False, **kw)  # L^-1 P^T dA
    x = triangular(lu, x, lower=False, trans=False, left=False, **kw)  # ... U^-1
    dl = product(low, lower_part(x, *g, diag=0.0), lower=True, **kw)
    du = product(lu, lower_part(x, *g, lower=False), lower=False, left=False, **kw)
    zero = np.zeros(piv.shape, jax.dtypes.float0)
    return (lu, piv, info), (dl + du, zero, np.zeros((), jax.dtypes.float0))


def solve(lu: jax.Array, piv: jax.Array, b: jax.Array, geo: Geometry, gb: tuple,
          trans: bool) -> jax.Array:  # fmt: skip
    """``A^-1 B`` (``trans``: ``A^-T B``) from the packed factor of ``A = P L U``."""
    g, mesh = geo.square, geo.mesh
    kw = {"gl": g, "gb": gb, "mesh": mesh}
    low = unit_lower(lu, geo)
    if trans:  # A^T = U^T L^T P^T
        y = triangular(lu, b, lower=False, trans=True, **kw)
        y = triangular(low, y, lower=True, trans=True, **kw)
        return permute(y, piv, gb, mesh, inverse=True)
    y = triangular(low, permute(b, piv, gb, mesh, inverse=False), lower=True, trans=False, **kw)
    return triangular(lu, y, lower=False, trans=False, **kw)
