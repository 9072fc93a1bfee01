"""Sharded blocked kernels (``shard_map`` bodies) for the traceable layer: panel fetches, a
SUMMA matrix product and a triangular solve with many right-hand sides.

Every kernel works on matrices in any :class:`~jaxwren.lax.layout.Axis` layout (natural or
block-cyclic, either mesh axis, or not split). Panels are one block wide: block column
``k`` of a matrix restricted to the rows a device needs is a masked slice on the owning
mesh column and a ``psum`` over that axis (``(local, b)`` elements); when the rows a device
needs are indexed along the *other* mesh axis (``A^T B``, ``L^T X``), the panel is
gathered along its own axis (``n x b``: never the matrix) and the needed rows taken.

:func:`matmul` uses a fixed-trip ``fori_loop`` (a ``scan``) of linear operations, so JAX can
differentiate and transpose it. :func:`solve` (forward/backward substitution) and
:func:`trmm` (triangular product) loop only over the blocks where the triangle is not zero
(dynamic trip counts), so they are neither: :mod:`jaxwren.lax.ops` reaches them through
``lax.custom_linear_solve``, which supplies derivatives and transposes from solves and
products.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxwren.lax.layout import Axis, spec

__all__ = ["matmul", "solve", "trmm"]

_HIGHEST = lax.Precision.HIGHEST  # no TF32/bf16 passes on accelerators


def _dot(x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.matmul(x, y, precision=_HIGHEST)


def _rows_at(panel: jax.Array, rows: Axis, at: Axis) -> jax.Array:
    """``panel`` (indexed along ``rows``) at the natural indices this device holds along
    ``at``: itself when the axes agree, else all-gathered along ``rows`` and taken."""
    if at == rows:
        return panel
    full = panel
    if rows.name:  # an all-gather typed invariant: each piece placed, then a psum
        full = jnp.zeros((rows.size, *panel.shape[1:]), panel.dtype)
        full = lax.psum(lax.dynamic_update_slice_in_dim(full, panel, rows.me() * rows.local, 0),
                        rows.name)  # fmt: skip
    return jnp.take(full, rows.pos(at.glob(at.me())), axis=0, mode="clip")


def fetch_col(m: jax.Array, rows: Axis, cols: Axis, k: Any, at: Axis) -> jax.Array:
    """``M[I, k]``: block column ``k`` of ``M`` at the rows ``I`` this device holds along
    ``at`` -> ``(at.local, b)``."""
    own = cols.me() == cols.owner(k)
    panel = jnp.where(own, lax.dynamic_slice_in_dim(m, cols.offset(k), cols.block, 1), 0)
    if cols.name:
        panel = lax.psum(panel, cols.name)
    return _rows_at(panel, rows, at)


def fetch_row(m: jax.Array, rows: Axis, cols: Axis, k: Any, at: Axis) -> jax.Array:
    """``M[k, J]``: block row ``k`` of ``M`` at the columns ``J`` this device holds along
    ``at`` -> ``(b, at.local)``."""
    own = rows.me() == rows.owner(k)
    panel = jnp.where(own, lax.dynamic_slice_in_dim(m, rows.offset(k), rows.block, 0), 0)
    if rows.name:
        panel = lax.psum(panel, rows.name)
    return _rows_at(panel.T, cols, at).T


def _varying_zeros(shape: tuple[int, ...], dtype: Any, names: tuple) -> jax.Array:
    names = tuple(n for n in names if n)
    z = jnp.zeros(shape, dtype)
    return lax.pcast(z, names, to="varying") if names else z


def _matmul_local(a: jax.Array, b: jax.Array, *, ga: tuple, gb: tuple, gc: tuple, ta: bool,
                  tb: bool) -> jax.Array:  # fmt: skip
    """``C = op(A) op(B)`` as a sum over block panels ``k`` of the contraction (SUMMA):
    ``C[I, J] += op(A)[I, k] op(B)[k, J]`` with ``I``/``J`` this device's rows/columns."""
    kax = ga[0] if ta else ga[1]
    rows, cols = gc

    def step(k: jax.Array, acc: jax.Array) -> jax.Array:
        ap = fetch_row(a, *ga, k, at=rows).T if ta else fetch_col(a, *ga, k, at=rows)
        bp = fetch_col(b, *gb, k, at=cols).T if tb else fetch_row(b, *gb, k, at=cols)
        return acc + _dot(ap, bp)

    acc = _varying_zeros((rows.local, cols.local), a.dtype, (rows.name, cols.name))
    return lax.fori_loop(0, kax.nblocks, step, acc)


def matmul(a: jax.Array, b: jax.Array, *, ga: tuple, gb: tuple, gc: tuple, mesh: Any,
           ta: bool = False, tb: bool = False) -> jax.Array:  # fmt: skip
    """``op(A) @ op(B)`` (``op``: transpose when ``ta``/``tb``) of layout-space matrices with
    geometries ``ga``/``gb`` (``(rows, cols)`` axes) into geometry ``gc``. Linear in each
    operand, differentiable and transposable (a fixed-trip loop)."""
    body = functools.partial(_matmul_local, ga=ga, gb=gb, gc=gc, ta=ta, tb=tb)
    return jax.shard_map(body, mesh=mesh, in_specs=(spec(*ga), spec(*gb)),
                         out_specs=spec(*gc))(a, b)  # fmt: skip


def _panel(lm: jax.Array, gl: tuple, rows: Axis, k: Any, trans: bool) -> jax.Array:
    """``op(L)[I, k]``: block column ``k`` of ``op(L)`` at the rows ``I`` this device holds."""
    return fetch_row(lm, *gl, k, at=rows).T if trans else fetch_col(lm, *gl, k, at=rows)


def _axpy_blocks(x: jax.Array, panel: jax.Array, xk: jax.Array, rows: Axis, k: Any,
                 fwd: bool, sign: float) -> jax.Array:  # fmt: skip
    """``x[i] += sign * panel[i] @ xk`` for this device's block rows ``i`` past ``k`` in
    the sweep's order (after it when ``fwd``, else before): one ``b x b x m`` GEMM each,
    no flops on the blocks where ``op(L)`` is zero."""
    b, me = rows.block, rows.me()
    lo, hi = (rows.count_le(me, k), rows.local_blocks) if fwd else (0, rows.count_le(me, k - 1))

    def update(lb: jax.Array, x: jax.Array) -> jax.Array:
        old = lax.dynamic_slice_in_dim(x, lb * b, b, 0)
        new = old + sign * _dot(lax.dynamic_slice_in_dim(panel, lb * b, b, 0), xk)
        return lax.dynamic_update_slice_in_dim(x, new, lb * b, 0)

    return lax.fori_loop(lo, hi, update, x)


def _solve_local(lm: jax.Array, x: jax.Array, *, gl: tuple, gx: tuple, lower: bool,
                 trans: bool) -> jax.Array:  # fmt: skip
    """``op(L) X = B`` in place (``x`` holds ``B``): forward substitution when ``op(L)`` is
    lower triangular, else backward. Step ``k``: the panel ``op(L)[I, k]`` at this device's
    rows; the owner of block row ``k`` solves its diagonal block for its columns of
    ``X[k]``, a ``psum`` shares it down the mesh column, and every device updates only its
    block rows still to be solved."""
    rows = gx[0]
    fwd = lower != trans  # op(L) lower triangular
    b, nb, me = rows.block, rows.nblocks, rows.me()

    def step(i: jax.Array, x: jax.Array) -> jax.Array:
        k = i if fwd else nb - 1 - i
        panel = _panel(lm, gl, rows, k, trans)
        own, off = me == rows.owner(k), rows.offset(k)
        bk = lax.dynamic_slice_in_dim(x, off, b, 0)

        def diag(bk: jax.Array) -> jax.Array:
            dkk = lax.dynamic_slice_in_dim(panel, off, b, 0)
            return lax.linalg.triangular_solve(dkk, bk, left_side=True, lower=fwd)

        xk = lax.cond(own, diag, jnp.zeros_like, bk)
        if rows.name:
            xk = lax.psum(xk, rows.name)
        x = lax.dynamic_update_slice_in_dim(x, jnp.where(own, xk, bk), off, 0)
        return _axpy_blocks(x, panel, xk, rows, k, fwd, -1.0)

    return lax.fori_loop(0, nb, step, x)


def _owned(m: jax.Array, ax: Axis, k: Any, dim: int) -> jax.Array:
    """Block ``k`` along ``dim`` (indexed by ``ax``) of the local ``m`` where this device
    holds it, zeros elsewhere."""
    part = lax.dynamic_slice_in_dim(m, ax.offset(k), ax.block, dim)
    return jnp.where(ax.me() == ax.owner(k), part, 0)


def _solve_narrow_local(lm: jax.Array, x: jax.Array, *, gl: tuple, gx: tuple, lower: bool,
                        trans: bool) -> jax.Array:  # fmt: skip
    """:func:`_solve_local` for a few right-hand sides held whole by every device (``m <
    b``): the products ``op(L)[I, k] X[k]`` are formed where the block column of ``op(L)``
    lives and their ``(n, m)`` sums shared, instead of sharing ``n x b`` panels."""
    rows, (lr, lc) = gx[0], gl
    fwd = lower != trans
    b, nb, me = rows.block, rows.nblocks, rows.me()
    blk = rows.glob(me) // b

    def step(i: jax.Array, x: jax.Array) -> jax.Array:
        k = i if fwd else nb - 1 - i
        own, off = me == rows.owner(k), rows.offset(k)
        held = (lr.me() == lr.owner(k)) & (lc.me() == lc.owner(k))
        dkk = jnp.where(held, lax.dynamic_slice(lm, (lr.offset(k), lc.offset(k)), (b, b)), 0)
        dkk = lax.psum(dkk, tuple(a for a in (lr.name, lc.name) if a))  # L[k, k] everywhere
        bk = lax.dynamic_slice_in_dim(x, off, b, 0)

        def diag(bk: jax.Array) -> jax.Array:
            return lax.linalg.triangular_solve(dkk, bk, left_side=True, lower=lower,
                                               transpose_a=trans)  # fmt: skip

        xk = lax.cond(own, diag, jnp.zeros_like, bk)
        if rows.name:
            xk = lax.psum(xk, rows.name)
        x = lax.dynamic_update_slice_in_dim(x, jnp.where(own, xk, bk), off, 0)
        if trans:  # op(L)[:, k] = L[k, :]^T: on L's mesh row of block row k, by columns
            c = _dot(_owned(lm, lr, k, 0).T, xk)
            c = _rows_at(lax.psum(c, lr.name) if lr.name else c, lc, rows)
        else:  # L[:, k]: on L's mesh column of block column k, by rows
            c = _dot(_owned(lm, lc, k, 1), xk)
            c = _rows_at(lax.psum(c, lc.name) if lc.name else c, lr, rows)
        return x - jnp.where(((blk > k) if fwd else (blk < k))[:, None], c, 0)

    return lax.fori_loop(0, nb, step, x)


def _trmm_local(lm: jax.Array, x: jax.Array, *, gl: tuple, gx: tuple, lower: bool,
                trans: bool) -> jax.Array:  # fmt: skip
    """``op(L) X`` for triangular ``L``: a sum over block columns ``k`` of ``op(L)[I, k]
    X[k]`` (``X[k]`` shared by a ``psum`` down the mesh column), only on the blocks where
    ``op(L)`` is not zero (the diagonal block masked to its triangle)."""
    rows = gx[0]
    fwd = lower != trans
    b, me = rows.block, rows.me()
    tri = jnp.arange(b)[:, None] >= jnp.arange(b)[None, :]
    tri = tri if fwd else tri.T

    def step(k: jax.Array, acc: jax.Array) -> jax.Array:
        panel = _panel(lm, gl, rows, k, trans)
        xk = fetch_row(x, *gx, k, at=gx[1])
        own, off = me == rows.owner(k), rows.offset(k)
        dkk = jnp.where(own & tri, lax.dynamic_slice_in_dim(panel, off, b, 0), 0)
        old = lax.dynamic_slice_in_dim(acc, off, b, 0)
        acc = lax.dynamic_update_slice_in_dim(acc, old + _dot(dkk, xk), off, 0)
        return _axpy_blocks(acc, panel, xk, rows, k, fwd, 1.0)

    acc = _varying_zeros((rows.local, gx[1].local), x.dtype, (rows.name, gx[1].name))
    return lax.fori_loop(0, rows.nblocks, step, acc)


def _sweep(local: Any, lm: jax.Array, x: jax.Array, gl: tuple, gx: tuple, mesh: Any,
           lower: bool, trans: bool, left: bool) -> jax.Array:  # fmt: skip
    """``local`` (a left-side sweep) as a ``shard_map``; a right-side operation is the
    left-side one of the transposed problem, run on the local blocks transposed with the
    roles of the mesh axes swapped (``X op(L)`` is ``(op(L)^T X^T)^T``)."""
    if left:
        body = functools.partial(local, gl=gl, gx=gx, lower=lower, trans=trans)
    else:
        inner = functools.partial(local, gl=gl[::-1], gx=gx[::-1], lower=not lower, trans=trans)

        def body(lm: jax.Array, x: jax.Array) -> jax.Array:
            return inner(lm.T, x.T).T

    return jax.shard_map(body, mesh=mesh, in_specs=(spec(*gl), spec(*gx)),
                         out_specs=spec(*gx))(lm, x)  # fmt: skip


def solve(lm: jax.Array, x: jax.Array, *, gl: tuple, gx: tuple, mesh: Any, lower: bool,
          trans: bool, left: bool = True) -> jax.Array:  # fmt: skip
    """``op(L) X = B`` (``left``) or ``X op(L) = B`` for a triangular layout-space ``L``
    (only its ``lower`` / upper triangle is read; padding must be identity) and ``B`` of
    geometry ``gx`` (its rows, resp. columns, indexed like ``L``'s). Not differentiable:
    see :func:`jaxwren.lax.ops.triangular` for the differentiable solve."""
    narrow = left and gx[1].name is None and gx[1].local < gx[0].block
    return _sweep(_solve_narrow_local if narrow else _solve_local, lm, x, gl, gx, mesh, lower,
                  trans, left)  # fmt: skip


def trmm(lm: jax.Array, x: jax.Array, *, gl: tuple, gx: tuple, mesh: Any, lower: bool,
         trans: bool, left: bool = True) -> jax.Array:  # fmt: skip
    """``op(L) X`` (``left``) or ``X op(L)`` for a triangular layout-space ``L`` (only its
    ``lower`` / upper triangle is read): half the flops of :func:`matmul`. Not
    differentiable: see :func:`jaxwren.lax.ops.product`."""
    return _sweep(_trmm_local, lm, x, gl, gx, mesh, lower, trans, left)
