"""The tile plans' left-looking schedule, shared by the in-core tile plan (``"tiles"``,
:mod:`.incore`) and the out-of-core plan (``"out-of-core"``, :mod:`.ooc`).

Tile ``L[I, J]`` (``I >= J``) is ``A[I, J] - sum_K L[I, K] L[J, K]^T`` (one GEMM step per
chunk of K tiles, as wide as the tiling allows), then the diagonal tile is factored (a
backend of :mod:`.diagonal`) and the others multiplied by the inverse of ``L[J, J]``,
carried through the column. Tiles are sharded by rows over all devices with the
right-hand panels replicated: no collectives. The K panels come from the store (the
out-of-core plan) or from the finished tiles kept in host memory (:class:`Resident`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.engine.memory import Buffer, Footprint
from jaxwren.engine.plan import Read, Step, Write
from jaxwren.linalg.cholesky.checks import check_factor
from jaxwren.linalg.cholesky.diagonal import diagonal_kernel
from jaxwren.linalg.cholesky.setup import Setup
from jaxwren.sharding.mesh import COLS, ROWS
from jaxwren.sharding.platform import platform_profile
from jaxwren.sharding.tiles import host_copy, replicate

__all__ = ["Resident", "k_chunks", "schedule", "tile_footprint", "update_steps"]


def tile_footprint(t: int, kw: int, dtype: np.dtype, mesh: Mesh, held: tuple[Buffer, ...] = (),
                   strip: Buffer | None = None) -> Footprint:  # fmt: skip
    """What a tile plan holds: reads, the first GEMM step of a tile (the A tile and the
    K panels ``L[I, K]`` by rows and ``L[J, K]`` replicated, ``kw`` wide; the engine
    counts them in flight, replicated and staged); writes, the factor tile (or, when the
    plan writes strips of ``L`` instead, ``strip``: the most one step emits);
    accumulators, the carry: the tile being updated (donated: updated in place) and the
    column's ``L[J, J]^-1`` (replicated; one shared host buffer where device buffers are
    host memory, as the diagonal backend adopts it); ``held``: finished tiles kept.
    Extra: one tile, the GEMM's product (or, once the accumulator is freed, the diagonal
    step's gathered tile for LAPACK)."""
    srow = NamedSharding(mesh, P((ROWS, COLS), None))
    rep = NamedSharding(mesh, P())
    one = Buffer((t, t), dtype, srow)
    inv = Buffer((t, t), dtype, None if platform_profile(mesh).shares_host_memory else rep)
    return Footprint(reads=(one, Buffer((t, kw), dtype, srow), Buffer((t, kw), dtype, rep)),
                     writes=(one if strip is None else strip,),
                     accumulators=(one, inv), held=held, extra=one.nbytes)  # fmt: skip


def k_chunks(jj: int, kt: int) -> list[int]:
    """Widths (in tiles) of the GEMM steps of a tile in column ``jj``: greedily the widest
    of ``kt`` and the powers of two below it, so no step multiplies zero padding and at
    most ``1 + log2(kt)`` widths are compiled."""
    widths = sorted({kt} | {1 << i for i in range(kt.bit_length()) if 1 << i < kt}, reverse=True)
    chunks, left = [], jj
    while left:
        w = next(w for w in widths if w <= left)
        chunks.append(w)
        left -= w
    return chunks


def update_steps(nt: int, kt: int) -> int:
    """GEMM steps of a tile plan with ``nt`` tiles a side: ``len(k_chunks(jj, kt))`` in
    closed form (``jj // kt`` full steps, then one per set bit of the rest), as the
    selector costs every work tile down to 8 (n = 4096: nt = 512; counting the chunks
    took 0.1 s of every call)."""
    return sum((nt - jj) * (jj // kt + bin(jj % kt).count("1")) for jj in range(nt))


def _minus_products(acc: jax.Array, lis: tuple, ljs: tuple) -> jax.Array:
    """``acc - sum_q lis[q] ljs[q]^T``: the update of every tile plan step."""
    for li, lj in zip(lis, ljs, strict=True):
        acc = acc - lax.dot_general(li, lj, (((1,), (1,)), ((), ())),
                                    precision=lax.Precision.HIGHEST)  # fmt: skip
    return acc


@functools.cache
def _gemm_kernel(kind: str, first: bool, mesh: Mesh) -> Any:
    """``"update"``: acc (or the A tile, ``first``: not donated) -= L[I, K] L[J, K]^T;
    ``"solve"``: L[I, J] = acc L[J, J]^-T, a GEMM with the carried inverse. Tiles by rows,
    right-hand panels replicated: local GEMMs, no collective (XLA's emulated CPU
    collectives cost more than the GEMMs at these sizes)."""
    srow = NamedSharding(mesh, P((ROWS, COLS), None))
    rep = NamedSharding(mesh, P())
    if kind == "update":

        def update(acc: jax.Array, li: jax.Array, lj: jax.Array) -> jax.Array:
            return _minus_products(acc, (li,), (lj,))

        return jax.jit(update, in_shardings=(srow, srow, rep), out_shardings=srow,
                       donate_argnums=() if first else (0,))  # fmt: skip

    def solve(acc: jax.Array, inv: jax.Array) -> jax.Array:
        return lax.dot_general(acc, inv, (((1,), (1,)), ((), ())),
                               precision=lax.Precision.HIGHEST)  # fmt: skip

    return jax.jit(solve, in_shardings=(srow, rep), out_shardings=srow)


@functools.cache
def _resident_update(first: bool, mesh: Mesh) -> Any:
    """``acc -= sum_q L[I, q] L[J, q]^T`` over K tiles given one by one (row-sharded and
    replicated views of host tiles); ``first``: acc is the A tile (not donated)."""
    srow = NamedSharding(mesh, P((ROWS, COLS), None))
    return jax.jit(_minus_products, out_shardings=srow, donate_argnums=() if first else (0,))


class Resident:
    """Finished ``L`` tiles kept in host memory (CPU devices, one process, a budget that
    holds the lower triangle): a K panel is a zero-copy view of them, by rows or
    replicated, instead of a read of the store. Re-reading the panels cost 0.55 CPU-s
    per GiB on this VM (memmap copy into fresh buffers): 1.6 GiB at n = 8192."""

    def __init__(self, mesh: Mesh, t: int) -> None:
        self.srow = NamedSharding(mesh, P((ROWS, COLS), None))
        self.rep = NamedSharding(mesh, P())
        self.t = t
        self.tiles: dict[tuple[int, int], np.ndarray] = {}
        self.views: dict[tuple[int, int, bool], jax.Array] = {}

    def view(self, key: tuple[int, int], rows: bool) -> jax.Array:
        got = self.views.get((*key, rows))
        if got is None:
            host = self.tiles[key]
            got = (jax.make_array_from_callback(host.shape, self.srow, lambda idx: host[idx])
                   if rows else replicate(host, self.rep, adopt=True))  # fmt: skip
            self.views[(*key, rows)] = got
        return got

    def update(self, carry: Any, *tiles: jax.Array, fn: Any, ii: int, jj: int,
               ks: range) -> tuple[tuple, tuple]:  # fmt: skip
        acc = tiles[0] if tiles else carry[0]
        lis = tuple(self.view((ii, k), True) for k in ks)
        ljs = tuple(self.view((jj, k), False) for k in ks)
        return (fn(acc, lis, ljs), carry[1]), ()

    def finished(self, kernel: Any, carry: Any, *tiles: jax.Array, key: tuple[int, int],
                 strips: tuple = (), write: bool = True) -> tuple[Any, tuple]:  # fmt: skip
        """A diagonal or solve step whose ``L`` tile is kept (a host array: the runner
        writes it as one region, as it is; not at all when not ``write``), followed by the
        ``strips`` of ``L`` it completes (see :meth:`strip`)."""
        carry, outs = kernel(carry, *tiles)
        low = outs[0]
        if not isinstance(low, np.ndarray):
            low, dev = host_copy(low), low
            dev.delete()
        self.tiles[key] = low
        mine = (low,) if write else ()
        return carry, (*mine, *outs[1:], *(self.strip(*st) for st in strips))

    def strip(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """``L[r0:r1, c0:c1]`` (finished columns) assembled from the kept tiles; the tiles
        above the diagonal are zero."""
        t = self.t
        out = np.zeros((r1 - r0, c1 - c0), next(iter(self.tiles.values())).dtype)
        for ii in range(r0 // t, -(-r1 // t)):
            for jj in range(c0 // t, min(-(-c1 // t), ii + 1)):
                a0, a1 = max(ii * t, r0), min(ii * t + t, r1)
                b0, b1 = max(jj * t, c0), min(jj * t + t, c1)
                tile = self.tiles[(ii, jj)]
                out[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = \
                    tile[a0 - ii * t : a1 - ii * t, b0 - jj * t : b1 - jj * t]  # fmt: skip
        return out


def _reg(i: int, j: int, t: int) -> tuple[int, int, int, int]:
    return (i * t, (i + 1) * t, j * t, (j + 1) * t)


Strips = Callable[[int], list[tuple[int, int, int, int]]]


def schedule(s: Setup, t: int, kt: int, keep: Resident | None,
             strips: Strips | None = None) -> list[Step]:  # fmt: skip
    """Left-looking over lower tiles of ``t``, column by column; each GEMM step takes up
    to ``kt`` K tiles. The carry is ``(acc, inv)``: the tile being updated and ``L[J,
    J]^-1`` of the current column (from its diagonal step, or, when a resumed run skips
    that step, from the stored ``L[J, J]``). ``keep``: the K panels are views of the kept
    tiles, else reads of the store. ``strips`` (with ``keep``; tiles not aligned with the
    stored blocks): ``strips(jj)`` are the regions of ``L`` complete once column ``jj``
    is, written from the kept tiles instead of tile by tile (no records: no resume)."""
    nt = -(-s.n // t)
    srow = NamedSharding(s.mesh, P((ROWS, COLS), None))
    rep = NamedSharding(s.mesh, P())
    steps: list[Step] = []
    for jj in range(nt):
        have_inv = False  # whether the carry holds L[J, J]^-1 when the next solve runs
        for ii in range(jj, nt):
            key = s.resume.key(f"t{t}-{ii}-{jj}") if strips is None else None
            skip = key is not None and s.resume.done(key)
            a_read = Read(s.src, _reg(ii, jj, t), (t, t), srow, s.dtype)
            k0 = 0
            for q, width in enumerate(k_chunks(jj, kt)):  # acc -= L[I, K] L[J, K]^T
                k1, kwq = k0 + width * t, width * t
                label = f"L[{ii},{jj}] -= L[{ii},{k0}:{k1}] L[{jj},{k0}:{k1}]^T"
                if keep is not None:  # the K tiles from memory: no reads but A's
                    kern = functools.partial(keep.update, fn=_resident_update(q == 0, s.mesh),
                                             ii=ii, jj=jj, ks=range(k0 // t, k1 // t))  # fmt: skip
                    steps.append(Step((a_read,) if q == 0 else (), kern, label=label))
                    k0 = k1
                    continue
                li = Read(s.out, (ii * t, ii * t + t, k0, k1), (t, kwq), srow, s.dtype)
                reads = (li, Read(s.out, (jj * t, jj * t + t, k0, k1), (t, kwq), rep, s.dtype))
                fn = _gemm_kernel("update", q == 0, s.mesh)
                kern = (lambda c, a, li, lj, fn=fn: ((fn(a, li, lj), c[1]), ())) if q == 0 else \
                       (lambda c, li, lj, fn=fn: ((fn(c[0], li, lj), c[1]), ()))  # fmt: skip
                steps.append(Step((a_read, *reads) if q == 0 else reads, kern, skip=skip,
                                  label=label))  # fmt: skip
                k0 = k1
            size = (min(t, s.n - ii * t), min(t, s.n - jj * t))
            write = Write(s.out, (ii * t, jj * t), size, record=key, lower=ii == jj)
            from_a = jj == 0  # no update steps: the tile is A itself
            if ii == jj:
                steps.append(_diag_step(jj, t, s, a_read if from_a else None, write, skip))
                have_inv = not skip
            else:
                ljj = None if have_inv else Read(s.out, _reg(jj, jj, t), (t, t), rep, s.dtype)
                steps.append(_solve_step(ii, jj, s, a_read if from_a else None, ljj, write,
                                         skip))  # fmt: skip
                have_inv = have_inv or not skip
            if keep is not None:  # the finished tile stays in memory for later panels
                steps[-1] = _kept(steps[-1], keep, (ii, jj), strips(jj) if strips and
                                  ii == nt - 1 else None, s, strips is None)  # fmt: skip
    return steps


def _kept(step: Step, keep: Resident, key: tuple[int, int], strips: list | None, s: Setup,
          write: bool) -> Step:  # fmt: skip
    """``step`` with its finished tile kept; without ``write`` the tile is not written
    itself, and the ``strips`` it completes are written instead."""
    kern = functools.partial(keep.finished, step.kernel, key=key, strips=tuple(strips or ()),
                             write=write)  # fmt: skip
    writes = step.writes if write else step.writes[1:]
    writes += tuple(Write(s.out, (r0, c0), (r1 - r0, c1 - c0), lower=True)
                    for r0, r1, c0, c1 in strips or ())  # fmt: skip
    check = step.check
    if check is not None and not write:  # info is the first output now
        check = functools.partial(check.func, **{**check.keywords, "at": 0})
    return Step(step.reads, kern, writes, step.label, step.skip, check, step.warm)


def _diag_step(jj: int, t: int, s: Setup, a_read: Read | None, write: Write,
               skip: bool) -> Step:  # fmt: skip
    """``L[J, J] = chol(acc)``; its inverse goes into the carry for the column's solves."""
    diag = diagonal_kernel("diag", s.mesh)
    valid = jnp.int32(min(t, s.n - jj * t))

    def kern(carry: Any, *tiles: jax.Array) -> tuple[tuple, tuple]:
        low, inv, info = diag(tiles[0] if tiles else carry[0], valid)
        return (None, inv), (low, info)

    check = functools.partial(check_factor, kb=t, offset=jj * t, src=s.src, n=s.n)
    reads = (a_read,) if a_read is not None else ()
    return Step(reads, kern, (write, Write(None)), label=f"L[{jj},{jj}] = chol", skip=skip,
                check=check)  # fmt: skip


def _solve_step(ii: int, jj: int, s: Setup, a_read: Read | None, ljj: Read | None,
                write: Write, skip: bool) -> Step:  # fmt: skip
    """``L[I, J] = acc L[J, J]^-T``: a GEMM with the inverse in the carry, or, when this
    run skipped the column's diagonal step, with the inverse of the stored ``L[J, J]``."""
    solve = _gemm_kernel("solve", False, s.mesh)
    inverse = diagonal_kernel("inverse", s.mesh)
    reads = tuple(r for r in (a_read, ljj) if r is not None)

    def kern(carry: Any, *tiles: jax.Array) -> tuple[tuple, tuple]:
        acc = tiles[0] if a_read is not None else carry[0]
        inv = inverse(tiles[-1]) if ljj is not None else carry[1]
        return (None, inv), (solve(acc, inv),)

    return Step(reads, kern, (write,), label=f"L[{ii},{jj}] = A L[{jj},{jj}]^-T", skip=skip)
