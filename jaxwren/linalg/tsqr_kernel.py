"""TSQR on the device mesh: a reduction tree of local QRs, and the Q it implies.

A row tile of a tall-skinny ``(rows, n)`` matrix is sharded over every device
(``P(('rows', 'cols'), None)``). Each device cuts its rows into *leaves* of ``leaf``
rows (``leaf >= 2n``, small enough to sit in cache), factors them all at once (one
batched LAPACK call, which on CPU is many times faster than one QR of the whole tall
panel), then stacks the leaves' ``R``s ``GROUP`` at a time and factors again, until one
``R`` per device is left. The devices' ``R``s are gathered (the only collective) and
factored once more. Each level keeps its ``Q`` factors, so ``Q`` of the tile is the
product down the tree: ``Q = Q_leaves · Q_level1 · ... · Q_top`` applied top-down
(:func:`apply_down`), one small batched GEMM per level.

Zero rows (padding past the matrix edge, or zero ``R`` blocks filling a group) stay zero
through every Householder reflection, so padding never changes ``R`` and its rows of
``Q`` are exactly zero: they are dropped without touching the orthogonality of the rest.

Everything here is traced inside ``shard_map`` (per device) or on small replicated
arrays; the pipeline (``linalg/qr.py``) decides tiles, passes and outputs.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.linalg.common import round_up
from jaxwren.sharding.mesh import COLS, ROWS

__all__ = ["GROUP", "leaf_rows", "row_unit", "fold_kernel", "factor_kernel", "q_kernel",
           "combine", "incore_kernel", "orthonormal_tiles"]  # fmt: skip

ALL = (ROWS, COLS)
GROUP = 8  # R factors stacked per tree node
_HI = lax.Precision.HIGHEST  # no TF32 on accelerators: Q must stay orthonormal to 1e-13


def leaf_rows(n: int) -> int:
    """Rows per leaf: at least 2n (each leaf halves the rows), at least 256 (LAPACK
    overhead per call), a multiple of 64."""
    return max(256, round_up(2 * n, 64))


def row_unit(n: int, mesh: Mesh) -> int:
    """Tile rows are multiples of this: one leaf on every device."""
    return leaf_rows(n) * mesh.devices.size


def _stack(r: jax.Array) -> jax.Array:
    """``(b, n, n)`` R factors as ``(ceil(b / g), g n, n)`` stacks (zero blocks fill up)."""
    b, n = r.shape[0], r.shape[-1]
    g = min(GROUP, b)
    pad = -b % g
    if pad:
        r = jnp.concatenate([r, jnp.zeros((pad, n, n), r.dtype)])
    return r.reshape(-1, g * n, n)


def local_r(x: jax.Array, leaf: int) -> jax.Array:
    """``R`` (n, n) of one device's rows, by the leaf tree."""
    n = x.shape[1]
    r = jnp.linalg.qr(x.reshape(-1, leaf, n), mode="r")
    while r.shape[0] > 1:
        r = jnp.linalg.qr(_stack(r), mode="r")
    return r[0]


def local_qr(x: jax.Array, leaf: int) -> tuple[list[Any], jax.Array]:
    """The tree's Q factors (leaves first; each upper level with its child count) and
    ``R`` (n, n) of one device's rows."""
    n = x.shape[1]
    q, r = jnp.linalg.qr(x.reshape(-1, leaf, n))
    qs: list[Any] = [q]
    while r.shape[0] > 1:
        b = r.shape[0]
        q, r = jnp.linalg.qr(_stack(r))
        qs.append((q, b))
    return qs, r[0]


def apply_down(qs: list[Any], c: jax.Array) -> jax.Array:
    """``Q_leaves · ... · Q_top · c`` for one device: ``(rows, n)`` from its ``(n, n)``
    factor ``c`` (what the levels above give this device)."""
    n = c.shape[-1]
    c = c[None]
    for q, b in reversed(qs[1:]):
        c = jnp.matmul(q, c, precision=_HI).reshape(-1, n, n)[:b]
    return jnp.matmul(qs[0], c, precision=_HI).reshape(-1, n)


def _gathered(r_d: jax.Array) -> jax.Array:
    """Every device's ``R`` stacked in device order, ``(D n, n)``, on every device."""
    return lax.all_gather(r_d, ALL, tiled=True)


def _finite(x: jax.Array) -> jax.Array:
    ok = jnp.all(jnp.isfinite(x)).astype(jnp.int32)
    return lax.pmin(ok, ALL) == 1


def _columns(tiles: tuple[jax.Array, ...]) -> jax.Array:
    """The tile's operands side by side (lstsq factors ``[A | B]``)."""
    return tiles[0] if len(tiles) == 1 else jnp.concatenate(tiles, axis=1)


def _own(c: jax.Array) -> jax.Array:
    """This device's ``(n, n)`` rows of a ``(D n, n)`` replicated factor."""
    n = c.shape[-1]
    return lax.dynamic_slice_in_dim(c, lax.axis_index(ALL) * n, n)


def _sharded(mesh: Mesh, fn: Any, ins: tuple, outs: Any, **jit_kw: Any) -> Any:
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=ins, out_specs=outs, check_vma=False)
    named = functools.partial(jax.tree.map, lambda p: NamedSharding(mesh, p))
    return jax.jit(mapped, in_shardings=named(ins), out_shardings=named(outs), **jit_kw)


@functools.lru_cache(maxsize=32)
def fold_kernel(mesh: Mesh, leaf: int, ntiles: int) -> Any:
    """``(r, finite), tiles -> (r, finite)``: folds a row tile into the running ``R``
    (R only: lstsq, ``mode="r"``, singular values)."""
    rows, rep = P(ALL, None), P()

    def fold(r, ok, *tiles):  # noqa: ANN001, ANN202
        x = _columns(tiles)
        stack = jnp.concatenate([r, _gathered(local_r(x, leaf))])
        return jnp.linalg.qr(stack, mode="r"), ok & _finite(x)

    return _sharded(mesh, fold, (rep, rep) + (rows,) * ntiles, (rep, rep), donate_argnums=(0,))


@functools.lru_cache(maxsize=32)
def factor_kernel(mesh: Mesh, leaf: int) -> Any:
    """``tile -> (Qg, R_t, finite)``: a tile's ``R`` and the ``(D n, n)`` Q of its devices'
    stacked ``R``s (the first pass of Q; the leaves are recomputed by :func:`q_kernel`)."""
    rows, rep = P(ALL, None), P()

    def factor(x):  # noqa: ANN001, ANN202
        qg, r = jnp.linalg.qr(_gathered(local_r(x, leaf)))
        return qg, r, _finite(x)

    return _sharded(mesh, factor, (rows,), (rep, rep, rep))


@functools.lru_cache(maxsize=32)
def q_kernel(mesh: Mesh, leaf: int) -> Any:
    """``tile, cs, t -> Q tile``: the tile's leaves again, times its devices' rows of
    ``cs[t]`` (``cs`` ``(T, D n, n)`` from :func:`combine`)."""
    rows = P(ALL, None)

    def q_tile(x, cs, t):  # noqa: ANN001, ANN202
        qs, _ = local_qr(x, leaf)
        return apply_down(qs, lax.dynamic_index_in_dim(cs, t, keepdims=False))

    return _sharded(mesh, q_tile, (rows, P(None, ALL, None), P()), rows)


def finalize(qgs: jax.Array, rts: jax.Array, svd: bool) -> tuple[jax.Array, tuple]:
    """The top of the tree over tiles: ``R`` with a non-negative diagonal (or the SVD of
    ``R``), and for every tile the ``(D n, n)`` factor its devices' leaves multiply.

    Args:
      qgs: ``(T, D n, n)`` each tile's Q of its devices' stacked R factors.
      rts: ``(T, n, n)`` each tile's R.
      svd: also factor ``R = U_r S V^T`` (then Q's columns are rotated by ``U_r``).

    Returns:
      ``(cs, outputs)``: ``cs`` ``(T, D n, n)``; outputs ``(R,)`` or ``(S, Vt)``.
    """
    t, n = rts.shape[0], rts.shape[-1]
    qtop, r = jnp.linalg.qr(rts.reshape(t * n, n))
    if svd:
        u, s, vt = jnp.linalg.svd(r)
        rot, outs = u, (s[None, :], vt)
    else:
        sign = jnp.where(jnp.diagonal(r) < 0, -1, 1).astype(r.dtype)
        rot, outs = jnp.diag(sign), (sign[:, None] * r,)
    c = jnp.matmul(qtop.reshape(t, n, n), rot, precision=_HI)
    return jnp.matmul(qgs, c, precision=_HI), outs


@functools.lru_cache(maxsize=32)
def combine(mesh: Mesh, svd: bool) -> Any:
    """:func:`finalize` jitted for the tile plan: ``cs`` split over the devices as
    :func:`q_kernel` takes it, the outputs replicated."""
    rep = NamedSharding(mesh, P())
    outs = (NamedSharding(mesh, P(None, ALL, None)), (rep, rep) if svd else (rep,))
    return jax.jit(lambda qgs, rts: finalize(qgs, rts, svd), out_shardings=outs)


@functools.lru_cache(maxsize=32)
def incore_kernel(mesh: Mesh, leaf: int, svd: bool) -> Any:
    """``tile -> (Q, outputs..., finite)``: the whole tall-skinny QR (or SVD) of one
    resident tile, read once."""
    rows, rep = P(ALL, None), P()

    def whole(x):  # noqa: ANN001, ANN202
        qs, r_d = local_qr(x, leaf)
        qg, r = jnp.linalg.qr(_gathered(r_d))
        cs, outs = finalize(qg[None], r[None], svd)
        return (apply_down(qs, _own(cs[0])), *outs, _finite(x))

    outs = (rows, rep, rep, rep) if svd else (rows, rep, rep)
    return _sharded(mesh, whole, (rows,), outs)


def orthonormal_tiles(tiles: list[jax.Array], mesh: Mesh, leaf: int) -> list[jax.Array]:
    """Q of the tall matrix whose row tiles (on the devices, ``P(ALL, None)``, rows a
    multiple of ``leaf`` per device) are ``tiles``: TSQR over the tiles, tile by tile."""
    parts = [factor_kernel(mesh, leaf)(x) for x in tiles]
    cs, _ = combine(mesh, False)(jnp.stack([p[0] for p in parts]), jnp.stack([p[1] for p in parts]))
    qk = q_kernel(mesh, leaf)
    return [qk(x, cs, jnp.int32(i)) for i, x in enumerate(tiles)]
