"""Public traceable LU functions: ``lu_factor``, ``lu_solve`` and ``solve`` of sharded
``jax.Array``\\ s (checks, the mesh, dtypes, layouts around :mod:`jaxwren.lax.lu_ops`)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from jaxwren.errors import ConfigError, NonFiniteError, ShapeMismatchError, SingularMatrixError
from jaxwren.lax import lu_ops
from jaxwren.lax.api import (
    _constrain,
    _place,
    _result_dtype,
    _solve_call,
    _square,
    _traced,
    _trans_flag,
    cho_solve,
    cholesky,
    resolve_mesh,
)
from jaxwren.lax.layout import from_layout, lu_block_size, to_layout
from jaxwren.lax.ops import Geometry

__all__ = ["lu_factor", "lu_solve", "solve"]


def _geometry(n: int, mesh: Any, block: int | None) -> Geometry:
    return Geometry(mesh, n, block or lu_block_size(n, mesh), True)


def _padded_piv(piv: jax.Array, geo: Geometry) -> jax.Array:
    """The pivot vector padded with the identity to the layout's size (replicated)."""
    extra = jnp.arange(piv.shape[0], geo.size, dtype=jnp.int32)
    return jnp.concatenate([piv.astype(jnp.int32), extra])


def _factor_layout(x: jax.Array, geo: Geometry) -> tuple[jax.Array, jax.Array, jax.Array]:
    x = _constrain(x, geo.mesh)
    return lu_ops.factor(to_layout(x, *geo.square, geo.mesh, eye=True), geo)


@functools.partial(jax.jit, static_argnames=("geo",))
def _lu_factor(x: jax.Array, geo: Geometry) -> tuple[jax.Array, jax.Array, jax.Array]:
    lu, piv, info = _factor_layout(x, geo)
    return from_layout(lu, *geo.square, geo.mesh, x.shape), piv[: geo.n], info


def _factor_ref(a: Any) -> Any:
    return jsl.lu_factor(a)[0]


def _raise_singular(where: str, info: int, finite: bool) -> None:
    if not finite:
        raise NonFiniteError(f"{where}: the input holds NaN or Inf; clean it first.")
    if info >= 0:
        raise SingularMatrixError(
            f"{where}: the matrix is singular: U[{info}, {info}] is exactly zero (column "
            f"{info}; LAPACK's info = {info + 1}). Inside jit the factor is returned as "
            "scipy's is; for least squares use jw.lstsq.",
            column=info,
        )


def lu_factor(a: Any, *, mesh: Any = None, block: int | None = None) -> tuple[jax.Array, ...]:
    """LU factorisation with partial pivoting of a sharded square matrix
    (``jax.scipy.linalg.lu_factor`` / ``scipy.linalg.lu_factor``), jit-able and
    differentiable in every mode (``lu``; ``piv`` is an integer), never gathered.

    Blocked right-looking GEPP on the block-cyclic layout (:mod:`jaxwren.lax.lu_kernel`):
    one ``shard_map``, a ``fori_loop`` over block columns; the collectives are
    ``n x b`` panels and ``2b`` interchanged rows, never the matrix.

    Args:
      a: ``(n, n)`` array (jax.Array, possibly sharded over a ``('rows', 'cols')`` mesh;
        numpy accepted eagerly). Integers are promoted as jnp promotes them.
      mesh: the mesh (default: the argument's, else the context mesh, else all devices).
      block: kernel block size (default: 64, smaller for small ``n``).

    Returns:
      ``(lu, piv)``: ``L`` (unit lower, diagonal implied) and ``U`` packed in ``lu``
      (sharded over the mesh), ``piv`` int32 ``(n,)``: row ``i`` was interchanged with
      row ``piv[i]`` (0-based), as scipy's.

    Raises:
      ShapeMismatchError, DTypeMismatchError, ConfigError: as :func:`cholesky`.
      SingularMatrixError: **eager calls only**, an exactly zero pivot (its ``column``
        names it, as LAPACK's ``info``); traced, the factor is returned as scipy's.
      NonFiniteError: eager calls only, NaN or Inf in the input.
    """
    where = "jaxwren.lax.lu_factor"
    n = _square(a, "a", where)
    mesh = resolve_mesh((a,), mesh, where)
    dtype = _result_dtype(_factor_ref, (a,), where)
    (xs,) = _place((a,), mesh, dtype)
    lu, piv, info = _lu_factor(xs, _geometry(n, mesh, block))
    if not _traced(a):
        _raise_singular(where, int(info), bool(jnp.all(jnp.isfinite(lu))))
    return lu, piv


@functools.partial(jax.jit, static_argnames=("geo", "trans"))
def _lu_solve(lu: jax.Array, piv: jax.Array, b: jax.Array, geo: Geometry,
              trans: bool) -> jax.Array:  # fmt: skip
    g, gb = geo.square, geo.rhs(b.shape[1])
    lm = to_layout(_constrain(lu, geo.mesh), *g, geo.mesh, eye=True)
    x = to_layout(_constrain(b, geo.mesh), *gb, geo.mesh)
    x = lu_ops.solve(lm, _padded_piv(piv, geo), x, geo, gb, trans)
    return from_layout(x, *gb, geo.mesh, b.shape)


def _check_piv(piv: Any, n: int, where: str) -> None:
    if np.shape(piv) != (n,) or not jnp.issubdtype(jnp.result_type(piv), jnp.integer):
        raise ShapeMismatchError(
            f"{where}: piv must be the (n,) integer pivots lu_factor returned, n = {n}; got "
            f"shape {tuple(np.shape(piv))}, dtype {jnp.result_type(piv)}."
        )


def lu_solve(lu_and_piv: tuple, b: Any, trans: Any = 0, *, mesh: Any = None,
             block: int | None = None) -> jax.Array:  # fmt: skip
    """Solves ``A x = b`` (``trans``: ``A^T x = b``) from :func:`lu_factor`'s ``(lu, piv)``
    (``jax.scipy.linalg.lu_solve``), differentiable in ``lu`` and ``b`` in every mode:
    the interchanges (``2b`` rows moved per block column) and two sharded substitutions.

    Args:
      lu_and_piv: ``(lu, piv)`` from :func:`lu_factor` (or scipy's ``lu_factor``).
      b: ``(n,)`` or ``(n, k)``.
      trans: 0 / 'N' (``A x = b``), 1 / 2 / 'T' / 'C' (``A^T x = b``).
      mesh, block: as for :func:`lu_factor`.

    Returns:
      ``x`` with ``b``'s shape.

    Raises:
      ShapeMismatchError: ``lu`` not square, ``piv`` not ``(n,)`` integers, ``b`` rows.
      DTypeMismatchError, ConfigError: as :func:`lu_factor`.
      NonFiniteError: eager calls only, a non-finite solution (singular factor).
    """
    where = "jaxwren.lax.lu_solve"
    if not isinstance(lu_and_piv, tuple | list) or len(lu_and_piv) != 2:
        raise ConfigError(f"{where}: pass lu_and_piv as the pair (lu, piv) lu_factor returns.")
    lu, piv = lu_and_piv
    _check_piv(piv, _square(lu, "lu", where), where)
    t = _trans_flag(trans, where)

    def call(ls: jax.Array, bs: jax.Array, geo: Geometry) -> jax.Array:
        return _lu_solve(ls, piv, bs, geo, t)

    return _solve_call(lu, b, mesh, block, where, _lu_ref, call=call, cyclic=True, what="LU factor")


def _lu_ref(lu: Any, b: Any) -> Any:
    return jsl.lu_solve((lu, jnp.zeros(lu.shape[0], jnp.int32)), b)


@functools.partial(jax.jit, static_argnames=("geo",))
def _solve(a: jax.Array, b: jax.Array, geo: Geometry) -> jax.Array:
    lu, piv, _ = _factor_layout(a, geo)
    gb = geo.rhs(b.shape[1])
    x = to_layout(_constrain(b, geo.mesh), *gb, geo.mesh)
    return from_layout(lu_ops.solve(lu, piv, x, geo, gb, False), *gb, geo.mesh, b.shape)


def solve(a: Any, b: Any, *, assume_a: str = "gen", mesh: Any = None,
          block: int | None = None) -> jax.Array:  # fmt: skip
    """Solves ``a x = b`` (``jnp.linalg.solve`` / ``jax.scipy.linalg.solve``), jit-able and
    differentiable in ``a`` and ``b`` in every mode, never gathered.

    Args:
      a: ``(n, n)``; b: ``(n,)`` or ``(n, k)``.
      assume_a: ``"gen"`` (LU with partial pivoting, one program with the solve) or
        ``"pos"`` (symmetric positive definite: :func:`cholesky` and :func:`cho_solve`).
      mesh, block: as for :func:`lu_factor`.

    Raises:
      ShapeMismatchError, DTypeMismatchError, ConfigError: as :func:`lu_solve`;
        ``assume_a`` other than "gen"/"pos".
      NonFiniteError: eager calls only, a non-finite solution (singular ``a``).
      NotPositiveDefiniteError: eager, ``assume_a="pos"`` and ``a`` not SPD.
    """
    where = "jaxwren.lax.solve"
    if assume_a not in ("gen", "pos"):
        raise ConfigError(f"{where}: assume_a must be 'gen' or 'pos', got {assume_a!r}.")
    n = _square(a, "a", where)
    if assume_a == "pos":
        return cho_solve(cholesky(a, mesh=mesh, block=block), b, mesh=mesh, block=block)
    block = block or lu_block_size(n, resolve_mesh((a, b), mesh, where))  # as lu_factor's
    return _solve_call(a, b, mesh, block, where, jsl.solve, call=_solve, cyclic=True, what="matrix")
