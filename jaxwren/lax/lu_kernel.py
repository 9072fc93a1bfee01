"""Sharded blocked LU with partial pivoting (GEPP, right-looking) on the block-cyclic layout,
and the row interchanges it records, applied to other matrices: ``shard_map`` bodies.

The matrix is in layout space (:mod:`jaxwren.lax.layout`, both axes cyclic), padded with
the identity. One ``fori_loop`` over block columns ``k`` (inside a few static *phases*
that bound the trailing window, as the Cholesky kernel's), so the program does not grow
with ``n / b``. Step ``k``, per device:

1. the panel ``A[:, k]`` is fetched (``n x b``: a ``psum`` over ``cols`` of this
   device's rows, then one over ``rows``: never the matrix), rotated so that its live
   rows ``k b ..`` come first, the finished rows zeroed, and factored redundantly by
   LAPACK ``getrf`` (``lax.linalg.lu``) on every device;
2. its ``b`` interchanges become one permutation of at most ``2b`` rows
   (:func:`swap_sets`): those rows are fetched whole (a masked ``psum`` of ``2b x
   n / C`` over ``rows``) and put in their new places by their owners — the left blocks
   too (LAPACK's layout: ``L`` stored with all later interchanges applied);
3. the factored panel is stored in block column ``k``, ``U[k, J] = L_kk^-1 A[k, J]``
   solved redundantly from the fetched rows (every device holds its columns of them) and
   stored in block row ``k``;
4. the trailing update ``A[I, J] -= L[I, k] U[k, J]``: a loop over this device's block
   rows past ``k`` (a dynamic trip count), one ``b x b x w`` GEMM each over the phase's
   column window ``w`` (finished columns subtract zeros).

Exactly zero pivots (``info``: the first such column, as LAPACK's) do not stop the
factorisation: ``getrf`` leaves the column unscaled and goes on, so the result is
scipy's for a singular matrix too.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxwren.lax.layout import Axis

__all__ = ["apply_swaps", "factor_local", "swap_sets"]

_PHASES = 4  # static trailing windows: 4 wastes ~40% of a full GEMM's columns, 1: 200%
_HIGHEST = lax.Precision.HIGHEST


def _dot(x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.matmul(x, y, precision=_HIGHEST)


def swap_sets(gp: jax.Array, k: Any, b: int) -> tuple[jax.Array, jax.Array]:
    """The interchanges ``row k b + i <-> gp[i]`` (``i = 0 .. b-1``, in order) as one
    permutation of at most ``2b`` rows: ``(pos, src)`` with ``new[pos[j]] = old[src[j]]``
    (a row may appear twice, with the same source)."""
    pos = jnp.concatenate([k * b + jnp.arange(b, dtype=gp.dtype), gp])

    def swap(i: jax.Array, src: jax.Array) -> jax.Array:
        p, q = k * b + i, gp[i]
        at_p, at_q = src[jnp.argmax(pos == p)], src[jnp.argmax(pos == q)]
        return jnp.where(pos == p, at_q, jnp.where(pos == q, at_p, src))

    return pos, lax.fori_loop(0, b, swap, pos)


def _local_rows(rows: Axis, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Whether this device holds natural rows ``g``, and where in its local array."""
    blk = g // rows.block
    return rows.owner(blk) == rows.me(), rows.offset(blk) + g % rows.block


def gather_rows(x: jax.Array, rows: Axis, src: jax.Array) -> jax.Array:
    """Natural rows ``src`` of ``x`` (this device's columns) on every device of its mesh
    column: a masked ``psum`` of ``len(src)`` rows."""
    mine, at = _local_rows(rows, src)
    got = jnp.where(mine[:, None], jnp.take(x, at, axis=0, mode="clip"), 0)
    return lax.psum(got, rows.name) if rows.name else got


def put_rows(x: jax.Array, rows: Axis, pos: jax.Array, vals: jax.Array) -> jax.Array:
    """``x[pos[j]] = vals[j]`` on the devices holding row ``pos[j]`` (in place, one row at
    a time: linear in ``x`` and ``vals``, so JAX transposes it)."""
    mine, at = _local_rows(rows, pos)

    def put(j: jax.Array, x: jax.Array) -> jax.Array:
        old = lax.dynamic_slice_in_dim(x, at[j], 1, 0)
        return lax.dynamic_update_slice_in_dim(x, jnp.where(mine[j], vals[j][None], old), at[j], 0)

    return lax.fori_loop(0, pos.shape[0], put, x)


def apply_swaps(x: jax.Array, piv: jax.Array, *, rows: Axis, inverse: bool) -> jax.Array:
    """``P^T X`` (the factorisation's interchanges in order: what ``getrf`` did to ``A``)
    or, ``inverse``, ``P X``; ``piv`` is the padded pivot vector (replicated). One step
    per block column: ``2b`` rows moved, never the matrix. Linear in ``x``."""
    b, nb = rows.block, rows.nblocks

    def step(i: jax.Array, x: jax.Array) -> jax.Array:
        k = nb - 1 - i if inverse else i
        pos, src = swap_sets(lax.dynamic_slice_in_dim(piv, k * b, b), k, b)
        pos, src = (src, pos) if inverse else (pos, src)
        return put_rows(x, rows, pos, gather_rows(x, rows, src))

    return lax.fori_loop(0, nb, step, x)


def _panel(a: jax.Array, rows: Axis, cols: Axis, k: jax.Array, live: int) -> jax.Array:
    """Block column ``k`` in natural order on every device (one ``psum`` over the mesh of
    each owner's rows put in place), rotated so row ``k b`` comes first, cut to the
    phase's ``live`` rows, finished (wrapped-around) rows zeroed: they are never chosen as
    pivots (a zero column picks its own first row, as LAPACK's ``idamax``)."""
    b = rows.block
    part = lax.dynamic_slice_in_dim(a, cols.offset(k), b, 1)
    part = jnp.where(cols.me() == cols.owner(k), part, 0)
    # this device's rows land at their rotated places: natural g -> (g - k b) mod size
    at = rows.glob(rows.me()) - k * b  # finished rows (at < 0) are left out
    full = jnp.zeros((live + 1, b), a.dtype).at[jnp.where(at >= 0, at, live)].set(part)
    names = tuple(x for x in (rows.name, cols.name) if x)
    return lax.psum(full[:live], names) if names else full[:live]


def _first_zero(lu_p: jax.Array, k: jax.Array, n: int, info: jax.Array) -> jax.Array:
    """``info``: the first column with an exactly zero pivot so far, else -1."""
    b = lu_p.shape[1]
    col = k * b + jnp.arange(b)
    zero = (jnp.diagonal(lu_p[:b]) == 0) & (col < n)
    first = jnp.where(jnp.any(zero), col[jnp.argmax(zero)], -1)
    return jnp.where(info >= 0, info, first).astype(jnp.int32)


def _trailing(a: jax.Array, l21: jax.Array, u12: jax.Array, rows: Axis, k: jax.Array,
              lc0: int) -> jax.Array:  # fmt: skip
    """``A[I, J] -= L[I, k] U[k, J]`` for this device's block rows past ``k`` (exact, a
    dynamic trip count) and its local columns from the phase's window ``lc0`` on."""
    b = rows.block
    u = u12[:, lc0 * b :]

    def row(lr: jax.Array, a: jax.Array) -> jax.Array:
        c0 = jnp.asarray(lc0 * b, lr.dtype)
        old = lax.dynamic_slice(a, (lr * b, c0), (b, u.shape[1]))
        lhs = lax.dynamic_slice_in_dim(l21, lr * b, b, 0)
        return lax.dynamic_update_slice(a, old - _dot(lhs, u), (lr * b, c0))

    return lax.fori_loop(rows.count_le(rows.me(), k), rows.local_blocks, row, a)


def _step(k: jax.Array, state: tuple, *, rows: Axis, cols: Axis, n: int, lc0: int,
          live: int) -> tuple:  # fmt: skip
    a, piv, info = state
    b = rows.block
    lu_p, ip = _factor_panel(_panel(a, rows, cols, k, live), (rows.name, cols.name))
    gp = k * b + ip.astype(jnp.int32)
    piv = lax.dynamic_update_slice_in_dim(piv, gp, k * b, 0)
    info = _first_zero(lu_p, k, n, info)

    # 2. the interchanges: <= 2b whole rows fetched and put back in their new places
    pos, src = swap_sets(gp, k, b)
    moved = gather_rows(a, rows, src)
    a = put_rows(a, rows, pos, moved)

    # 3. the factored panel into block column k (rows from k b down), U[k, J] into row k
    gr, gc = rows.glob(rows.me()), cols.glob(cols.me())
    lnat = jnp.roll(jnp.pad(lu_p, ((0, rows.size - live), (0, 0))), k * b, axis=0)
    mine = jnp.take(lnat, gr, axis=0)
    off, old = cols.offset(k), lax.dynamic_slice_in_dim(a, cols.offset(k), b, 1)
    new = jnp.where(((gr >= k * b) & (cols.me() == cols.owner(k)))[:, None], mine, old)
    a = lax.dynamic_update_slice_in_dim(a, new, off, 1)
    right = (gc // b > k)[None, :]
    u12 = lax.linalg.triangular_solve(lu_p[:b], moved[:b], left_side=True, lower=True,
                                      unit_diagonal=True)  # fmt: skip
    u12 = jnp.where(right, u12, 0)
    off, old = rows.offset(k), lax.dynamic_slice_in_dim(a, rows.offset(k), b, 0)
    new = jnp.where(right & (rows.me() == rows.owner(k)), u12, old)
    a = lax.dynamic_update_slice_in_dim(a, new, off, 0)

    # 4. the trailing update over this device's block rows past k
    l21 = jnp.where((gr // b > k)[:, None], mine, 0)
    return _trailing(a, l21, u12, rows, k, lc0), piv, info


def _factor_panel(panel: jax.Array, names: tuple) -> tuple[jax.Array, jax.Array]:
    """``getrf`` of the panel on the first device only, shared by one ``psum`` (the pivots
    ride along as a last row, exact in floating point): the other devices would repeat it
    (emulated CPU devices share the cores: 8 copies of the panel factorisation cost ~30%
    of the whole at n = 4096)."""
    names = tuple(x for x in names if x)
    if not names:
        return lax.linalg.lu(panel)[:2]
    first = functools.reduce(jnp.logical_and, [lax.axis_index(x) == 0 for x in names])

    def run(p: jax.Array) -> jax.Array:
        lu_p, ip, _ = lax.linalg.lu(p)
        return lax.pcast(jnp.concatenate([lu_p, ip[None].astype(p.dtype)]), names, to="varying")

    def skip(p: jax.Array) -> jax.Array:
        return lax.pcast(jnp.zeros((p.shape[0] + 1, p.shape[1]), p.dtype), names, to="varying")

    both = lax.psum(lax.cond(first, run, skip, panel), names)
    return both[:-1], both[-1].astype(jnp.int32)


def _phases(nb: int) -> list[tuple[int, int]]:
    p = 1 if nb <= 16 else min(nb, _PHASES)
    bounds = [nb * i // p for i in range(p + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def factor_local(a: jax.Array, *, rows: Axis, cols: Axis, n: int) -> tuple[jax.Array, ...]:
    """The per-device program: ``(lu, piv, info)``; ``piv`` (padded, replicated) as
    LAPACK's (0-based), ``info`` the first exactly zero pivot's column or -1."""
    b = rows.block
    piv = jnp.arange(rows.size, dtype=jnp.int32)
    info = jnp.int32(-1)
    state = (a, piv, info)
    for k0, k1 in _phases(rows.nblocks):
        body = functools.partial(_step, rows=rows, cols=cols, n=n, lc0=k0 // cols.parts,
                                 live=rows.size - k0 * b)  # fmt: skip
        state = lax.fori_loop(k0, k1, body, state)
    return state
