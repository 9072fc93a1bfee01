"""The LU algorithms, their candidates and the one selector (as Cholesky's ``select.py``).

* ``"kernel"``: in-core, the sharded block-cyclic GEPP kernel of
  :mod:`jaxwren.lax.lu_kernel` (the one ``jaxwren.lax.lu_factor`` traces).
* ``"tiles"``: in-core, the left-looking tile plan of :mod:`.lu_steps` on host BLAS
  (:mod:`.lu_host`) with the finished columns kept in host memory (CPU devices of one
  process); it stores its factor or returns it.
* ``"out-of-core"``: the same schedule over the store: the panel resident, the finished
  columns read back, each finished column, its pivots and each final fix-up written and
  recorded (a killed run resumes); it only stores. On CPU devices of one process
  (:mod:`.lu_ooc`) everything but the panel moves in pieces and the panel is factored
  and written in place; elsewhere (:func:`.lu_steps.ooc_plan`) panel by panel.

:func:`select` returns ``(algorithm, reason)``: ``LUFactor(plan=...)`` the one asked
for (out-of-core for a returned factor: the kernel); CPU devices of one process the
tile plan; otherwise (accelerators, several processes) the kernel. :func:`candidates`
ranks every algorithm's tilings by it (the out-of-core plan last) and the engine takes
the first that fits the budget.
"""

from __future__ import annotations

import math

import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.engine.memory import Buffer, Footprint
from jaxwren.engine.problem import Candidate
from jaxwren.linalg.common import chosen_reason
from jaxwren.sharding.mesh import COLS, ROWS, process_local
from jaxwren.sharding.platform import platform_profile

__all__ = [
    "ALGORITHMS",
    "candidates",
    "piece_rows",
    "reason",
    "select",
    "stripe_width",
    "work_tiles",
]

KERNEL, TILES, OOC = "kernel", "tiles", "out-of-core"
ALGORITHMS = (KERNEL, TILES, OOC)


def available(mesh: Mesh) -> bool:
    """Whether finished columns can stay in host memory as device views."""
    return process_local(mesh) and platform_profile(mesh).shares_host_memory


def work_tiles(n: int, mesh: Mesh) -> list[int]:
    """The in-core plan's column tiles, best first: 512, then 256, 1024, 128; each a
    multiple of the device count (the panel is sharded by columns) and at most ``n``
    rounded up to it. Measured quiet (load 3-5, f64 file store, 8 CPU devices, best of 3,
    ``benchmarks.lu --plans``): n = 4096 on blocks of 1024, tiles of 256/512/1024/2048
    1.51/1.24-1.32/1.46/1.47 s; on blocks of 512, 256/512/1024 1.57/1.42/1.17 s; n = 2048
    on blocks of 512, 256/512/1024 0.28/0.27/0.30 s (256 was chosen under load 9-24)."""
    unit = mesh.devices.size
    top = -(-n // unit) * unit
    sizes = [max(unit, s // unit * unit) for s in (512, 256, 1024, 128, 64)]
    return list(dict.fromkeys(min(s, top) for s in sizes))


def select(mesh: Mesh, stored: bool, prefer: str = "auto") -> tuple[str, str]:
    """``(algorithm, reason)``: the algorithm a run prefers."""
    if not stored and prefer == OOC:
        return KERNEL, ("a returned factor (out=None): the out-of-core plan only stores; "
                        "the kernel")  # fmt: skip
    if prefer == KERNEL:
        return KERNEL, "asked for (plan='kernel')"
    if prefer == OOC:
        return OOC, "asked for (plan='out-of-core')"
    keep = available(mesh)
    if prefer == TILES:
        if keep:
            return TILES, "asked for (plan='tiles'); panels on host LAPACK getrf"
        return OOC, ("asked for a tile plan (plan='tiles'); finished columns cannot stay in "
                     "host memory on these devices: columns over the store")  # fmt: skip
    if keep and platform_profile(mesh).host_lapack:
        return TILES, ("CPU devices of one process: column tiles on host BLAS/LAPACK "
                       "(gemm, trsm, getrf), nothing compiled; measured faster than the "
                       "kernel")  # fmt: skip
    return KERNEL, "accelerators or several processes: the block-cyclic kernel"


def reason(chosen: str, mesh: Mesh, stored: bool, prefer: str = "auto") -> str:
    return chosen_reason(chosen, *select(mesh, stored, prefer))


def _panels(n: int, t: int, dtype: np.dtype, mesh: Mesh) -> tuple[Buffer, Buffer, int]:
    n_pad = -(-n // t) * t
    col = Buffer((n_pad, t), dtype, NamedSharding(mesh, P(None, (ROWS, COLS))))
    rep = Buffer((n_pad, t), dtype, NamedSharding(mesh, P()))
    return col, rep, n_pad


def stripe_width(n: int, t: int, block_cols: int) -> int:
    """The in-core plan writes its factor in stripes of whole stored chunks and whole
    column tiles: ``lcm(t, block_cols)`` columns, at most ``n`` rounded up to ``t``."""
    return min(math.lcm(t, block_cols), -(-n // t) * t)


def incore_footprint(n: int, t: int, dtype: np.dtype, mesh: Mesh,
                     block_cols: int | None = None) -> Footprint:  # fmt: skip
    """Reads: the A panel (one shared host buffer); the carry: the panel being swept
    (a host copy); held: the kept columns (``n_pad^2``, host); writes: a stripe of the
    factor (:func:`stripe_width`; ``block_cols`` None: returned, the whole factor and
    its sharded copy on the devices) and the pivots; extra: a panel (more than getrf's
    leaf copies and the row moves' temporaries, :func:`host_ooc_footprint`, need)."""
    col, rep, n_pad = _panels(n, t, dtype, mesh)
    if block_cols:
        writes = (Buffer((n, stripe_width(n, t, block_cols)), dtype),)
    else:
        writes = (Buffer((n, n), dtype), Buffer((n, n), dtype, NamedSharding(mesh, P(ROWS, COLS))))
    return Footprint(reads=(rep,), accumulators=(col,),
                     held=(Buffer((n_pad, n_pad), dtype),),
                     writes=(*writes, Buffer((n, 1), np.int32)), extra=col.nbytes)  # fmt: skip


def ooc_footprint(n: int, t: int, dtype: np.dtype, mesh: Mesh) -> Footprint:
    """The device sweep's out-of-core plan (:func:`.lu_steps.ooc_plan`: accelerators;
    CPU devices of one process take :func:`host_ooc_footprint`). Reads: one panel (A's,
    or a finished column's rows from its diagonal tile, replicated; a fix-up's rows
    below it); the carry: the panel; writes: a finished column (its host copy,
    factored) and its pivots; extra: getrf's Fortran-ordered copy of the panel or, while
    a column sweeps it, the GEMM's product (at most a panel; never both)."""
    col, rep, _ = _panels(n, t, dtype, mesh)
    return Footprint(reads=(rep,), accumulators=(col,),
                     writes=(Buffer(col.shape, dtype), Buffer((t, 1), np.int32)),
                     extra=col.nbytes)  # fmt: skip


def piece_rows(n: int, t: int) -> int:
    """Rows of one piece read or written: whole tiles, about an eighth of the panel."""
    return t * max(1, -(-n // t) // 8)


def host_ooc_footprint(n: int, t: int, dtype: np.dtype, mesh: Mesh) -> Footprint:
    """The host sweep's out-of-core plan (:mod:`.lu_ooc`). Reads: a piece (a host tile;
    or the stored pivots, when more); the carry: the panel (then the column written from
    it, settled: ``Write.settle``) or a fix-up's rows; writes: a fix-up piece and a
    column's pivots; extra: a row interchange's temporary (an eighth of the panel,
    :func:`.lu_host.permute_rows`) or getrf's leaf (64 columns of the panel,
    :func:`.host_blas.getrf_rows`), never both, and getrf's check of 64 rows of its
    diagonal tile."""
    n_pad = -(-n // t) * t
    h, size = piece_rows(n, t), np.dtype(dtype).itemsize
    piece = Buffer((h, t), dtype)  # (host tiles)
    pivots = Buffer((n, 1), np.int32, NamedSharding(mesh, P()))
    return Footprint(reads=(max(piece, pivots, key=lambda b: b.nbytes),),
                     accumulators=(Buffer((n_pad, t), dtype),),
                     writes=(Buffer((h, t), dtype), Buffer((t, 1), np.int32)),
                     extra=n_pad * max(64, t // 8) * size + 2 * 64 * t * size)  # fmt: skip


def ooc_tiles(n: int, mesh: Mesh, blocks: tuple[int, ...]) -> list[int]:
    """The out-of-core plan's column tiles, largest first: multiples of the stored
    factor's blocks (and of the pivots' block rows and of the device count), so every
    column, fix-up and pivots write is whole chunks and its record stays intact."""
    unit = math.lcm(mesh.devices.size, *blocks)
    top = -(-n // unit) * unit
    return list(range(top, 0, -unit))


def candidates(n: int, dtype: np.dtype, mesh: Mesh, stored: bool, prefer: str,
               kernel_fp: Footprint, kernel_block: int,
               tile: int | None = None,
               blocks: tuple[int, ...] = (1,)) -> list[Candidate]:  # fmt: skip
    """Every algorithm's tilings ranked by :func:`select` (``tile``: the tile plans' only
    column tile). The tile plans only store; they are offered for a returned factor too
    so a refusal names what a stored factor would need. ``blocks``: the stored factor's
    block shape and the pivots' block rows (the out-of-core tiles are multiples)."""
    chosen, _ = select(mesh, stored, prefer)
    out = [Candidate((KERNEL, kernel_block), kernel_fp, (0 if chosen == KERNEL else 1,), True)]
    if not process_local(mesh):
        return out
    if available(mesh):
        rank = 0 if chosen == TILES else 1
        out += [Candidate((TILES, t), incore_footprint(n, t, dtype, mesh, stored and blocks[1]),
                          (rank, i))
                for i, t in enumerate([tile] if tile else work_tiles(n, mesh))]  # fmt: skip
    rank = 0 if chosen == OOC else 2
    footprint = host_ooc_footprint if available(mesh) else ooc_footprint  # (.lu_ooc: host)
    out += [Candidate((OOC, t), footprint(n, t, dtype, mesh), (rank, i), False)
            for i, t in enumerate([tile] if tile else ooc_tiles(n, mesh, blocks))]  # fmt: skip
    return out
