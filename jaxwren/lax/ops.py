"""The differentiable operations on layout-space matrices: the Cholesky factor (the block-
cyclic kernel of :mod:`jaxwren.lax.cholesky_kernel`, with its derivative rule) and
triangular solves (the substitution kernel, with derivatives and transposes by
``lax.custom_linear_solve``).

Derivatives, in every mode and to any order, come from linear pieces JAX can transpose:

* ``triangular``: ``lax.custom_linear_solve`` with the sharded substitution as ``solve``,
  the opposite substitution as ``transpose_solve``, and the sharded SUMMA product
  ``op(tril(L)) @ x`` as the linear map (used only to differentiate with respect to ``L``:
  ``d(op(L)^-1 B) = -op(L)^-1 op(dL) X``; its transpose gives ``Lbar = -tril(Bbar X^T)``).
* ``product``: the triangular product kernel the same way, with the inverse (a
  ``triangular``) as the linear map: its transpose is the product with ``op(L)^T``.
* ``factor`` (``jax.custom_jvp``): ``dL = L Phi(L^-1 dA L^-T)`` with ``Phi`` the lower
  triangle with halved diagonal (JAX's own rule). Reverse mode transposes it into Murray's
  adjoint (arXiv 1602.07527) ``Abar = L^-T Phi(L^T Lbar) L^-1``: a triangular product
  ``L^T Lbar`` and two sharded substitutions, each skipping the zero blocks (``3 n^3``
  flops in all); the caller's symmetrisation of the input makes it symmetric.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.lax import cholesky_kernel as ck
from jaxwren.lax import kernels
from jaxwren.lax.layout import Axis, natural_index, padded, spec
from jaxwren.sharding.mesh import COLS, ROWS

__all__ = ["Geometry", "factor", "lower_part", "product", "triangular"]


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Static geometry of one call: the mesh, the size ``n``, the block and the order."""

    mesh: Any
    n: int
    block: int
    cyclic: bool

    @property
    def size(self) -> int:
        return padded(self.n, self.block, self.mesh)

    @property
    def square(self) -> tuple[Axis, Axis]:
        """``(rows, cols)`` axes of an ``n x n`` matrix."""
        r, c = self.mesh.shape[ROWS], self.mesh.shape[COLS]
        return (Axis(ROWS, r, self.size, self.block, self.cyclic),
                Axis(COLS, c, self.size, self.block, self.cyclic))  # fmt: skip

    def rhs(self, m: int) -> tuple[Axis, Axis]:
        """Axes of an ``n x m`` right-hand side: rows as the square's, columns split over
        ``'cols'`` (padded to a multiple of its size) when there are enough of them, else
        held whole by every device."""
        c = self.mesh.shape[COLS]
        if m >= c and c > 1:
            size = -(-m // c) * c
            cols = Axis(COLS, c, size, size // c)
        else:
            cols = Axis(None, 1, m, m)
        return self.square[0], cols


def lower_part(x: jax.Array, rows: Axis, cols: Axis, *, lower: bool = True,
               diag: float = 1.0) -> jax.Array:  # fmt: skip
    """The lower (or upper) triangle of a layout-space matrix, its diagonal times ``diag``."""
    i, j = natural_index(rows)[:, None], natural_index(cols)[None, :]
    keep = (i > j) if lower else (i < j)
    return jnp.where(keep, x, jnp.where(i == j, x * diag, 0))


def triangular(lm: jax.Array, b: jax.Array, *, gl: tuple, gb: tuple, mesh: Any, lower: bool,
               trans: bool, left: bool = True) -> jax.Array:  # fmt: skip
    """``op(L)^-1 B`` (``left``) or ``B op(L)^-1`` for layout-space ``L`` (its ``lower`` /
    upper triangle; padding identity) and ``B`` of geometry ``gb``; differentiable in
    ``L`` and ``B`` in every mode (see the module docstring)."""
    tl = lower_part(lm, *gl, lower=lower)
    if left and gb[1].name is None and not gl[0].cyclic:  # a few columns, natural order

        def matvec(x: jax.Array) -> jax.Array:  # XLA's product moves only n x m pieces
            y = jnp.matmul(tl.T if trans else tl, x, precision=lax.Precision.HIGHEST)
            return lax.with_sharding_constraint(y, NamedSharding(mesh, spec(*gb)))
    elif left:

        def matvec(x: jax.Array) -> jax.Array:
            return kernels.matmul(tl, x, ga=gl, gb=gb, gc=gb, mesh=mesh, ta=trans)
    else:

        def matvec(x: jax.Array) -> jax.Array:
            return kernels.matmul(x, tl, ga=gb, gb=gl, gc=gb, mesh=mesh, tb=trans)

    def run(t: bool, _: Any, rhs: jax.Array) -> jax.Array:
        return kernels.solve(lm, rhs, gl=gl, gx=gb, mesh=mesh, lower=lower, trans=t, left=left)

    return lax.custom_linear_solve(matvec, b, functools.partial(run, trans),
                                   functools.partial(run, not trans))  # fmt: skip


def product(lm: jax.Array, t: jax.Array, *, gl: tuple, gb: tuple, mesh: Any, lower: bool,
            trans: bool = False, left: bool = True) -> jax.Array:  # fmt: skip
    """``op(L) T`` (``left``) or ``T op(L)`` for layout-space triangular ``L`` by the
    triangular product kernel, differentiable in every mode: a ``custom_linear_solve``
    whose linear map is the inverse, ``y -> op(L)^-1 y`` (:func:`triangular`), so that its
    transpose is the product with ``op(L)^T`` and its derivative in ``L`` is ``op(dL) T``."""

    def matvec(y: jax.Array) -> jax.Array:
        return triangular(lm, y, gl=gl, gb=gb, mesh=mesh, lower=lower, trans=trans, left=left)

    def run(t_: bool, _: Any, rhs: jax.Array) -> jax.Array:
        return kernels.trmm(lm, rhs, gl=gl, gx=gb, mesh=mesh, lower=lower, trans=t_, left=left)

    return lax.custom_linear_solve(matvec, t, functools.partial(run, trans),
                                   functools.partial(run, not trans))  # fmt: skip


def _kernel(a: jax.Array, geo: Geometry) -> tuple[jax.Array, jax.Array]:
    """The block-cyclic factorisation kernel, not donating (inside the caller's jit)."""
    g = ck._Grid(geo.n, geo.size, geo.block, geo.mesh.shape[ROWS], geo.mesh.shape[COLS])
    body = functools.partial(ck._factor_local, g=g)
    out = (P(ROWS, COLS), P())
    return jax.shard_map(body, mesh=geo.mesh, in_specs=P(ROWS, COLS), out_specs=out)(a)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def factor(a: jax.Array, geo: Geometry) -> jax.Array:
    """Lower Cholesky factor of a cyclic layout-space matrix (its lower triangle is read;
    padding is treated as identity and comes back as identity). When the factorisation
    fails (not positive definite, NaN/Inf input): NaN on and below the diagonal, zero
    above, as ``jnp.linalg.cholesky``'s."""
    low, info = _kernel(a, geo)
    i, j = (natural_index(ax) for ax in geo.square)
    return jnp.where(info < 0, low, jnp.where(i[:, None] >= j[None, :], jnp.nan, 0))


@factor.defjvp
def _factor_jvp(geo: Geometry, primals: tuple, tangents: tuple) -> tuple:
    (a,), (da,) = primals, tangents
    low = factor(a, geo)
    g = geo.square
    kw = {"gl": g, "gb": g, "mesh": geo.mesh, "lower": True}
    t = triangular(low, da, trans=False, **kw)  # L^-1 dA
    t = triangular(low, t, trans=True, left=False, **kw)  # L^-1 dA L^-T
    return low, product(low, lower_part(t, *g, diag=0.5), **kw)  # L Phi(...)
