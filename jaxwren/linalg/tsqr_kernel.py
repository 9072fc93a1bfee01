"""TSQR on the device mesh: a reduction tree of local QRs, and the Q it implies.

A row tile of a tall-skinny ``(rows, n)`` matrix is sharded over every device
(``P(('rows', 'cols'), None)``). Each device cuts its rows into *leaves* of ``leaf``
rows (``leaf >= 2n``, small enough to sit in cache) and factors them one LAPACK call
after another (on CPU many times faster than one QR of the whole tall panel, which is
memory bound), then stacks all the leaves' ``R``s and factors the stack once (two levels;
``GROUP`` bounds a stack), leaving one ``R`` per device. The devices' ``R``s are gathered
through the host (D x n x n, tiny) and factored once more. Each level keeps its ``Q``
factors, so ``Q`` of the tile is the product down the tree: ``Q = Q_leaves · Q_level1 ·
... · Q_top`` applied top-down (:func:`apply_down`), one small batched GEMM per level.

Never one *batched* LAPACK call (``jnp.linalg.qr`` of a ``(b, leaf, n)`` stack): jaxlib
0.10's CPU LAPACK kernels split a batch into chunks scheduled on XLA's intra-op thread
pool and block their own pool thread until the chunks finish (``ParallelBatchMap``);
with several CPU devices running such calls at once every pool thread can end up
blocked there, waiting for chunks no thread is left to run: a deadlock at 0% CPU (seen
from 25,000 rows per device; gdb shows all ``tf_XLAEigen`` threads in
``BlockingCounter::Wait``; upstream jax commit 859992407d disables that path in
open-source builds, in no release on pip yet). :func:`_each` maps the leaves with
``lax.map`` instead: one un-batched call per leaf, run inline, as fast as the batched
calls (docs/decisions.md: TSQR leaves one LAPACK call at a time).

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
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.linalg.common import round_up
from jaxwren.sharding.mesh import COLS, ROWS
from jaxwren.sharding.multihost import to_host

__all__ = ["GROUP", "leaf_rows", "row_unit", "fold_tile", "factor_tile", "q_tile", "combine",
           "tsqr_tiles", "gathered"]  # fmt: skip

ALL = (ROWS, COLS)
GROUP = 1 << 16  # all of a device's leaf R factors in one stack: two levels
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


def _each(fn: Any, stacks: jax.Array) -> Any:
    """``fn`` on every ``stacks[i]``, one LAPACK call each (never one batched call: see
    the module docstring)."""
    return lax.map(fn, stacks)


def local_r(x: jax.Array, leaf: int) -> jax.Array:
    """``R`` (n, n) of one device's rows, by the leaf tree."""
    n = x.shape[1]
    qr_r = functools.partial(jnp.linalg.qr, mode="r")
    r = _each(qr_r, x.reshape(-1, leaf, n))
    while r.shape[0] > 1:
        r = _each(qr_r, _stack(r))
    return r[0]


def local_qr(x: jax.Array, leaf: int) -> tuple[list[Any], jax.Array]:
    """The tree's Q factors (leaves first; each upper level with its child count) and
    ``R`` (n, n) of one device's rows."""
    n = x.shape[1]
    q, r = _each(jnp.linalg.qr, x.reshape(-1, leaf, n))
    qs: list[Any] = [q]
    while r.shape[0] > 1:
        b = r.shape[0]
        q, r = _each(jnp.linalg.qr, _stack(r))
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


def _finite(x: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(x))[None]


def _columns(tiles: tuple[jax.Array, ...]) -> jax.Array:
    """The tile's operands side by side (lstsq factors ``[A | B]``)."""
    return tiles[0] if len(tiles) == 1 else jnp.concatenate(tiles, axis=1)


def _sharded(mesh: Mesh, fn: Any, ins: tuple, outs: Any) -> Any:
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=ins, out_specs=outs, check_vma=False)
    named = functools.partial(jax.tree.map, lambda p: NamedSharding(mesh, p))
    return jax.jit(mapped, in_shardings=named(ins), out_shardings=named(outs))


# The kernels below hold no collective: the devices' R factors (D x n x n, tiny) are
# gathered through the host (:func:`gathered`). (A rendezvous next to batched LAPACK calls
# deadlocked the same way as above; with un-batched calls a collective would be safe, but
# the host round trip costs ~1 ms and keeps every kernel free of cross-device waits.)


@functools.lru_cache(maxsize=32)
def local_kernel(mesh: Mesh, leaf: int, ntiles: int, nq: int) -> Any:
    """``*tiles -> (R_d stacked (D n, n), finite (D,), *tree Q factors)``: every device's
    leaf tree of its rows, side by side (no collective). ``nq``: how many Q factors to
    keep (0: R only; else :func:`tree_levels`)."""
    rows = P(ALL, None)

    def local(*tiles):  # noqa: ANN001, ANN202
        x = _columns(tiles)
        if not nq:
            return local_r(x, leaf), _finite(x)
        qs, r = local_qr(x, leaf)
        return (r, _finite(x), qs[0], *(q for q, _ in qs[1:]))

    outs = (rows, P(ALL), *(P(ALL, None, None),) * nq)
    return _sharded(mesh, local, (rows,) * ntiles, outs)


def tree_levels(tile_rows: int, mesh: Mesh, leaf: int) -> int:
    """How many Q factors a device's tree of ``tile_rows / D`` rows has."""
    return len(_level_sizes(tile_rows // mesh.devices.size // leaf))


def _level_sizes(leaves: int) -> list[int]:
    """Child counts of the tree's levels above the leaves (leaves first)."""
    sizes, b = [leaves], leaves
    while b > 1:
        b = -(-b // min(GROUP, b))
        sizes.append(b)
    return sizes


@functools.lru_cache(maxsize=32)
def apply_kernel(mesh: Mesh, leaf: int, nlevels: int) -> Any:
    """``c (D n, n) sharded by rows, tree Q factors -> Q tile``: each device multiplies
    its ``(n, n)`` rows of ``c`` down its tree (no collective, no LAPACK)."""
    rows = P(ALL, None)

    def down(c, q0, *upper):  # noqa: ANN001, ANN202
        sizes = _level_sizes(q0.shape[0])
        qs = [q0, *((q, b) for q, b in zip(upper, sizes[:-1], strict=True))]
        return apply_down(qs, c)

    ins = (rows, P(ALL, None, None), *(P(ALL, None, None),) * nlevels)
    return _sharded(mesh, down, ins, rows)


def gathered(x: jax.Array, mesh: Mesh) -> jax.Array:
    """A small device array (the devices' R factors, flags) replicated on every device,
    through the host (all processes' shards in a multi-process run)."""
    return jax.device_put(to_host(x), NamedSharding(mesh, P()))


@functools.lru_cache(maxsize=32)
def _fold(mesh: Mesh) -> Any:
    rep = NamedSharding(mesh, P())

    def fold(r, ok, stack, oks):  # noqa: ANN001, ANN202
        return jnp.linalg.qr(jnp.concatenate([r, stack]), mode="r"), ok & jnp.all(oks)

    return jax.jit(fold, in_shardings=(rep,) * 4, out_shardings=(rep, rep), donate_argnums=0)


def fold_tile(carry: tuple, tiles: tuple, mesh: Mesh, leaf: int) -> tuple:
    """``(R, finite)`` with a row tile folded in (R only: lstsq, ``mode="r"``, values)."""
    stack, oks = local_kernel(mesh, leaf, len(tiles), 0)(*tiles)
    return _fold(mesh)(*carry, gathered(stack, mesh), gathered(oks, mesh))


@functools.lru_cache(maxsize=32)
def _top_of_tile(mesh: Mesh) -> Any:
    rep = NamedSharding(mesh, P())
    return jax.jit(lambda stack: tuple(jnp.linalg.qr(stack)), in_shardings=rep,
                   out_shardings=(rep, rep))  # fmt: skip


def _factor(x: jax.Array, mesh: Mesh, leaf: int, nq: int) -> tuple:
    """``(Qg, R_t, finite, leaves' Q factors (nq of them))`` of a tile."""
    stack, oks, *qs = local_kernel(mesh, leaf, 1, nq)(x)
    qg, r = _top_of_tile(mesh)(gathered(stack, mesh))
    return qg, r, bool(np.all(to_host(oks))), qs


def factor_tile(x: jax.Array, mesh: Mesh, leaf: int) -> tuple:
    """``(Qg, R_t, finite)``: a tile's ``R`` and the ``(D n, n)`` Q of its devices' stacked
    ``R``s (the first pass of Q; the leaves are recomputed by :func:`q_tile`)."""
    return _factor(x, mesh, leaf, 0)[:3]


def _apply(c: jax.Array, qs: list[jax.Array], mesh: Mesh, leaf: int) -> jax.Array:
    rows = NamedSharding(mesh, P(ALL, None))
    return apply_kernel(mesh, leaf, len(qs) - 1)(jax.device_put(c, rows), *qs)


def q_tile(x: jax.Array, c: jax.Array, mesh: Mesh, leaf: int) -> jax.Array:
    """The tile's rows of Q: its leaves again, times its devices' rows of ``c``."""
    _, _, *qs = local_kernel(mesh, leaf, 1, tree_levels(x.shape[0], mesh, leaf))(x)
    return _apply(c, qs, mesh, leaf)


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
    """:func:`finalize` jitted on replicated arrays (no collective)."""
    rep = NamedSharding(mesh, P())
    return jax.jit(lambda qgs, rts: finalize(qgs, rts, svd), in_shardings=(rep, rep),
                   out_shardings=(rep, (rep, rep) if svd else (rep,)))  # fmt: skip


def tsqr_tiles(tiles: list[jax.Array], mesh: Mesh, leaf: int, svd: bool = False,
               keep_q: bool = False) -> tuple:  # fmt: skip
    """``(Q tiles, outputs, finite)`` of the tall matrix whose row tiles (on the devices,
    ``P(ALL, None)``) are ``tiles``: both passes, for tiles already resident.
    ``keep_q``: keep the leaves' Q factors from the first pass instead of factoring the
    leaves again (one more tile-sized array held, one factorisation fewer; see
    docs/decisions.md)."""
    nq = [tree_levels(x.shape[0], mesh, leaf) if keep_q else 0 for x in tiles]
    parts = [_factor(x, mesh, leaf, k) for x, k in zip(tiles, nq, strict=True)]
    cs, outs = combine(mesh, svd)(jnp.stack([p[0] for p in parts]),
                                  jnp.stack([p[1] for p in parts]))  # fmt: skip
    qs = [_apply(cs[i], p[3], mesh, leaf) if keep_q else q_tile(x, cs[i], mesh, leaf)
          for i, (x, p) in enumerate(zip(tiles, parts, strict=True))]  # fmt: skip
    return qs, outs, all(p[2] for p in parts)
