"""Public traceable functions: checks, the mesh, dtypes, layouts around the kernels."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding

from jaxwren.dtypes import check_representable
from jaxwren.errors import (
    ConfigError,
    DTypeMismatchError,
    NonFiniteError,
    NotPositiveDefiniteError,
    ShapeMismatchError,
)
from jaxwren.lax import ops
from jaxwren.lax.layout import block_size, from_layout, to_layout
from jaxwren.sharding.mesh import COLS, ROWS, check_mesh, default_mesh, fit_spec

__all__ = ["cho_logdet", "cho_solve", "cholesky", "solve_triangular"]

_FIX = "build one with jw.default_mesh(devices) or jax.make_mesh((r, c), ('rows', 'cols'))"


def _traced(*xs: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in xs)


def _arg_mesh(x: Any) -> Any:
    """The mesh an argument is sharded over, if it says (a jit argument's abstract mesh)."""
    if isinstance(x, jax.core.Tracer):
        m = jax.typeof(x).sharding.mesh
        return None if m.empty else m
    if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding):
        return x.sharding.mesh
    return None


def _check_names(m: Any, whose: str, where: str) -> Any:
    if not isinstance(m, Mesh | AbstractMesh) or tuple(m.axis_names) != (ROWS, COLS):
        names = getattr(m, "axis_names", None)
        raise ConfigError(
            f"{where}: {whose} must be a mesh with axes ({ROWS!r}, {COLS!r}), got "
            f"{type(m).__name__} with axes {names}; pass mesh= such a mesh ({_FIX}) and "
            "shard the arguments over it."
        )
    if any(t != AxisType.Auto for t in m.axis_types):
        if isinstance(m, Mesh):
            return check_mesh(m, where=where)  # same devices, Auto axes
        raise ConfigError(
            f"{where}: inside jit the mesh axes must be AxisType.Auto, got {m.axis_types}; "
            "build the mesh with axis_types=(AxisType.Auto,) * 2."
        )
    return m


def resolve_mesh(args: tuple, mesh: Any, where: str) -> Any:
    """``mesh=``, else the first argument's mesh, else the context mesh (``jax.set_mesh``),
    else all devices (:func:`jw.default_mesh`). Eager calls get a concrete mesh."""
    if mesh is not None:
        return _check_names(mesh, "mesh=", where)
    for x in args:
        m = _arg_mesh(x)
        if m is not None:
            return _check_names(m, "the argument's sharding", where)
    ctx = jax.sharding.get_mesh() if not _traced(*args) else jax.sharding.get_abstract_mesh()
    if not ctx.empty:
        return _check_names(ctx, "the context mesh", where)
    return default_mesh()


def _result_dtype(ref: Any, args: tuple, where: str) -> np.dtype:
    """The dtype jnp's ``ref`` returns for ``args``; refused unless float32/float64."""
    for x in args:
        if not isinstance(x, jax.Array):
            check_representable(np.asarray(x).dtype, where=where)
    specs = [jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)) for x in args]
    dt = np.dtype(jax.eval_shape(ref, *specs).dtype)
    if dt.name not in ("float32", "float64"):
        raise DTypeMismatchError(
            f"{where}: dtype {dt.name} is not supported (float32 and float64 are; jnp.linalg "
            f"refuses 16-bit floats on CPU too); convert with x.astype(jnp.float32)."
        )
    return dt


def _square(x: Any, name: str, where: str) -> int:
    shape = np.shape(x)
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0:
        raise ShapeMismatchError(
            f"{where}: {name} must be one non-empty square (n, n) matrix, got shape "
            f"{tuple(shape)}; a stack of matrices is not supported: call once per matrix."
        )
    return shape[0]


def _place(xs: tuple, mesh: Any, dtype: np.dtype) -> tuple:
    """Arguments cast to ``dtype``; concrete ones put on ``mesh``'s devices (eager calls)."""
    out = []
    for x in xs:
        if not _traced(x):  # (beside a traced argument the mesh is abstract: a constant)
            x = (jax.device_put(x, NamedSharding(mesh, fit_spec(np.shape(x), mesh)))
                 if isinstance(mesh, Mesh) else jnp.asarray(x))  # fmt: skip
        out.append(x.astype(dtype))
    return tuple(out)


def _constrain(x: jax.Array, mesh: Any) -> jax.Array:
    """``x`` sharded over as much of ``mesh`` as divides it (its cotangent too)."""
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, fit_spec(x.shape, mesh)))


@functools.partial(jax.jit, static_argnames=("geo", "sym"))
def _cholesky(x: jax.Array, geo: ops.Geometry, sym: bool) -> jax.Array:
    x = _constrain(x, geo.mesh)  # so is its cotangent, in reverse mode
    if sym:  # as jnp.linalg.cholesky(symmetrize_input=True)
        x = _constrain((x + _constrain(x.T, geo.mesh)) / 2, geo.mesh)
    g = geo.square
    low = ops.factor(to_layout(x, *g, geo.mesh), geo)
    return from_layout(low, *g, geo.mesh, x.shape)


def cholesky(x: Any, *, symmetrize_input: bool = True, mesh: Any = None,
             block: int | None = None) -> jax.Array:  # fmt: skip
    """Lower Cholesky factor of a sharded SPD matrix (``jnp.linalg.cholesky``), jit-able
    and differentiable in every mode, never gathered.

    The matrix is padded and permuted to a block-cyclic layout on the devices, factored by
    the sharded kernel of :mod:`jaxwren.lax.cholesky_kernel` (one ``shard_map``, a
    ``fori_loop`` over block columns: the program does not grow with ``n / block``) and
    put back: the collectives are all-to-alls of the matrix and ``psum``s of ``n x b``
    panels, never an all-gather of it. Per device: the input, the output and two
    matrix-sized temporaries (``4 n^2 / p`` elements).
    Derivatives: ``dL = L Phi(L^-1 dA L^-T)`` by sharded solves and products; reverse mode
    is Murray's adjoint ``Abar = L^-T Phi(L^T Lbar) L^-1`` (see :mod:`jaxwren.lax.ops`).

    Args:
      x: ``(n, n)`` symmetric positive definite array (jax.Array, possibly sharded over a
        ``('rows', 'cols')`` mesh; numpy accepted eagerly). Integers are promoted as jnp
        promotes them.
      symmetrize_input: factor ``(x + x^T) / 2`` (jnp's default); False reads only the
        lower triangle (saves a transpose; the derivative then assumes a symmetric
        tangent, as ``lax.linalg.cholesky(symmetrize_input=False)``).
      mesh: the mesh (default: the argument's, else the context mesh, else all devices).
      block: kernel block size (default: 128, smaller for small ``n``).

    Returns:
      ``L`` (``n x n``, lower triangular, zero above), sharded over the mesh
      (``P('rows', 'cols')`` when it divides ``n``).

    Raises:
      ShapeMismatchError: not one square matrix.
      DTypeMismatchError: 16-bit or complex dtypes.
      ConfigError: a mesh without the axes ``('rows', 'cols')``.
      NotPositiveDefiniteError / NonFiniteError: **eager calls only** (concrete input),
        when the factorisation fails. Traced (inside ``jit``, ``grad``, ``vmap``), a
        failed factorisation returns NaN on and below the diagonal (zero above), exactly
        as ``jnp.linalg.cholesky`` does; check ``jnp.isnan(L[0, 0])``.
    """
    where = "jaxwren.lax.cholesky"
    n = _square(x, "x", where)
    mesh = resolve_mesh((x,), mesh, where)
    dtype = _result_dtype(jnp.linalg.cholesky, (x,), where)
    (xs,) = _place((x,), mesh, dtype)
    geo = ops.Geometry(mesh, n, block or block_size(n, mesh), True)
    low = _cholesky(xs, geo, bool(symmetrize_input))
    if not _traced(x) and not bool(jnp.isfinite(low[0, 0])):  # a failure fills it with NaN
        part = xs if symmetrize_input else jnp.tril(xs)
        if not bool(jnp.all(jnp.isfinite(part))):
            raise NonFiniteError(f"{where}: the input holds NaN or Inf; clean it first.")
        raise NotPositiveDefiniteError(
            f"{where}: the matrix is not positive definite (a non-positive pivot); check "
            "symmetry and conditioning (adding a small multiple of the identity regularises "
            "it). Inside jit the factor is NaN instead, as jnp.linalg.cholesky's."
        )
    return low


@functools.partial(jax.jit, static_argnames=("geo", "lower", "trans", "cho"))
def sharded_solve(low: jax.Array, b: jax.Array, geo: ops.Geometry, lower: bool, trans: bool,
                  cho: bool) -> jax.Array:  # fmt: skip
    """``op(L) X = B`` (``cho``: ``L L^T X = B``) on the substitution kernel, natural layout
    in and out: also the in-core plan of the store-backed ``jw.solve_triangular``."""
    gl, gb = geo.square, geo.rhs(b.shape[1])
    lm = to_layout(_constrain(low, geo.mesh), *gl, geo.mesh, eye=True)
    x = to_layout(_constrain(b, geo.mesh), *gb, geo.mesh)
    kw = {"gl": gl, "gb": gb, "mesh": geo.mesh}
    if cho:  # A = L L^T: L y = b, then L^T x = y
        x = ops.triangular(lm, x, lower=True, trans=False, **kw)
        x = ops.triangular(lm, x, lower=True, trans=True, **kw)
    else:
        x = ops.triangular(lm, x, lower=lower, trans=trans, **kw)
    return from_layout(x, *gb, geo.mesh, b.shape)


def _trans_flag(trans: Any, where: str) -> bool:
    if trans in (0, 1, 2, False, True, "N", "T", "C"):
        return trans in (1, 2, True, "T", "C")  # real matrices: "C" is "T"
    raise ConfigError(f"{where}: trans must be a bool, 0/1/2 or 'N'/'T'/'C', got {trans!r}.")


def _solve_call(low: Any, b: Any, mesh: Any, block: Any, where: str, ref: Any, *,
                call: Any = None, cyclic: bool = False, what: str = "triangular matrix",
                **kw: Any) -> Any:  # fmt: skip
    """A solve with a square ``low`` (``call(low, b2d, geo)``, default the triangular
    :func:`_solve` with ``kw``): checks, mesh, dtype, placement, a vector ``b``."""
    n = _square(low, "the factor", where)
    if np.ndim(b) not in (1, 2) or np.shape(b)[0] != n:
        raise ShapeMismatchError(
            f"{where}: b must be an (n,) vector or (n, k) matrix with n = {n} rows (as the "
            f"{what}), got shape {tuple(np.shape(b))}."
        )
    mesh = resolve_mesh((low, b), mesh, where)
    dtype = _result_dtype(ref, (low, b), where)
    ls, bs = _place((low, b), mesh, dtype)
    vector = bs.ndim == 1
    geo = ops.Geometry(mesh, n, block or block_size(n, mesh), cyclic)
    x = (call or functools.partial(sharded_solve, **kw))(ls, bs[:, None] if vector else bs, geo)
    x = x[:, 0] if vector else x
    if not _traced(low, b) and not bool(jnp.all(jnp.isfinite(x))):
        raise NonFiniteError(
            f"{where}: the solution has NaN or Inf: the {what} is singular (a zero on its "
            "diagonal) or the inputs hold NaN/Inf. Inside jit the result carries them "
            "instead, as jax.scipy.linalg's."
        )
    return x


def solve_triangular(l: Any, b: Any, *, lower: bool = True, trans: Any = False,  # noqa: E741
                     mesh: Any = None, block: int | None = None) -> jax.Array:  # fmt: skip
    """Solves ``op(l) x = b`` (``jax.scipy.linalg.solve_triangular``), jit-able and
    differentiable in ``l`` and ``b`` in every mode, never gathered.

    A blocked substitution over block columns on the devices (the panel of ``l`` shared
    one ``n x b`` block column at a time); derivatives by ``lax.custom_linear_solve``
    (transposes: the opposite substitution; ``lbar = -tril(bbar x^T)``: a sharded product).

    Args:
      l: ``(n, n)`` triangular; only its ``lower`` (or upper) triangle is read.
      b: ``(n,)`` or ``(n, k)``.
      lower: ``l`` is lower (else upper) triangular.
      trans: solve ``l^T x = b`` (True, 1, 'T'; 'C'/2 is the same for real matrices).
      mesh, block: as for :func:`cholesky`.

    Returns:
      ``x`` with ``b``'s shape, the dtype jnp's solve returns.

    Raises:
      ShapeMismatchError, DTypeMismatchError, ConfigError: as for :func:`cholesky`.
      NonFiniteError: eager calls only, when the solution is not finite (singular ``l``);
        traced, the result carries Inf/NaN as jax.scipy's does.
    """
    where = "jaxwren.lax.solve_triangular"
    t = _trans_flag(trans, where)
    return _solve_call(l, b, mesh, block, where, jsl.solve_triangular, lower=bool(lower),
                       trans=t, cho=False)  # fmt: skip


def _cho_ref(c: Any, b: Any) -> Any:
    return jsl.cho_solve((c, True), b)


def cho_solve(l: Any, b: Any, *, mesh: Any = None, block: int | None = None) -> jax.Array:  # noqa: E741
    """Solves ``A x = b`` from ``A``'s lower Cholesky factor ``l``
    (``jax.scipy.linalg.cho_solve((l, True), b)``): ``l y = b``, then ``l^T x = y``, both
    sharded substitutions; differentiable in ``l`` and ``b`` in every mode.

    Args and errors as for :func:`solve_triangular` (``l`` lower triangular).
    """
    return _solve_call(l, b, mesh, block, "jaxwren.lax.cho_solve", _cho_ref, lower=True,
                       trans=False, cho=True)  # fmt: skip


@jax.jit
def _logdet(low: jax.Array) -> jax.Array:
    i = jax.lax.broadcasted_iota(jnp.int32, low.shape, 0)
    j = jax.lax.broadcasted_iota(jnp.int32, low.shape, 1)
    diag = jnp.sum(jnp.where(i == j, low, 0), axis=1)  # a masked row sum: no gather
    return 2 * jnp.sum(jnp.log(diag))


def cho_logdet(l: Any) -> jax.Array:  # noqa: E741
    """``log det A = 2 sum(log(diag(l)))`` from ``A``'s Cholesky factor ``l``, jit-able and
    differentiable (``lbar = diag(2 / diag(l))``: composed with :func:`cholesky`, reverse
    mode gives ``Abar = A^-1`` through two sharded substitutions, no explicit inverse).

    Elementwise work and a sum on ``l``'s own sharding (any mesh). A non-positive diagonal
    gives NaN (or -Inf), as jnp's ``log`` does.

    Raises:
      ShapeMismatchError: not one square matrix.
      DTypeMismatchError: 16-bit or complex dtypes.
    """
    where = "jaxwren.lax.cho_logdet"
    _square(l, "l", where)
    dtype = _result_dtype(jnp.linalg.cholesky, (l,), where)
    low = l if _traced(l) else jnp.asarray(l)
    return _logdet(low.astype(dtype))
