"""The in-core tile plan (``"tiles"``): the left-looking schedule of :mod:`.tiles` with
every finished tile kept in host memory, on a work tile of its own.

Where device buffers are host memory (CPU devices of one process) and the budget holds
the lower triangle, the K panels are views of the kept tiles and only ``A``'s lower tiles
are read. The work tile is independent of the stored blocks: ``A`` is read at any
alignment (a region of a chunk costs what it holds), and when the tile does not cut the
stored factor's blocks (a multiple of them) every finished tile is written and recorded
(a rerun resumes), else ``L`` is written by columns of stored blocks as they complete,
assembled from the kept tiles (such a run is not resumable, as the kernel's). Tiles of
2048 on stored blocks of 2048 (n = 4096) spent most of their time in the two serial
diagonal factors; see :func:`work_tiles` for the tile chosen.
"""

from __future__ import annotations

import functools

import numpy as np
from jax.sharding import Mesh

from jaxwren.engine.memory import Buffer, Footprint
from jaxwren.engine.plan import Plan
from jaxwren.engine.problem import Candidate
from jaxwren.linalg.cholesky.setup import Setup
from jaxwren.linalg.cholesky.tiles import Resident, schedule, tile_footprint, update_steps
from jaxwren.sharding.mesh import process_local
from jaxwren.sharding.platform import platform_profile

__all__ = ["NAME", "available", "candidates", "tiles_plan", "work_tiles"]

NAME = "tiles"
_PANEL_TILES = (2, 1)  # K tiles per GEMM step (n = 8192 in tiles of 1024: 2 tiles 2.95-3.1
# s, against 3.1-3.6 s with 4-7 tile panels)


def available(mesh: Mesh) -> bool:
    """Whether the finished tiles can stay in host memory as device views: the devices'
    buffers are host memory, all in this process."""
    return process_local(mesh) and platform_profile(mesh).shares_host_memory


def work_tiles(n: int, mesh: Mesh) -> list[int]:
    """Work tiles, best first: 512 up to n = 12288, then 1024 (small n: the largest power
    of two up to n / 2), then the others up to n / 2; each a multiple of the device count
    (tiles are sharded by rows over all devices). The serial diagonal factors cost ``2 n
    t^2 / 3`` flops on one core, the per-step overhead grows with ``(n / t)^2``. Measured
    store->store f64 on 8 CPU devices (2 cores, loaded), best of 4-5 interleaved: n = 4096
    on stored blocks of 2048, tiles of 512 (K panels of 2) 1.09-1.20 s, 256 1.14 s, 1024
    1.68 s, 2048 (the stored block, before) 1.23 s in another run; n = 8192 on blocks of
    2048, tiles of 512 6.9 s, 1024 8.0 s, 2048 13.0 s."""
    unit = mesh.devices.size
    best = 512 if n <= 12288 else 1024
    if best > n // 2:  # small n: at least two tiles a side
        best = 1 << max(n // 2, 1).bit_length() - 1
    sizes = (best, 256, 1024, 512, 2048, 128, 64, 32, 16, 8)
    fit = [max(unit, s // unit * unit) for s in sizes if s <= max(n // 2, unit)]
    return list(dict.fromkeys(fit))


def _footprint(n: int, t: int, kt: int, dtype: np.dtype, mesh: Mesh,
               block: tuple[int, int]) -> Footprint:  # fmt: skip
    """The tile plan's footprint (:func:`.tiles.tile_footprint`; the K panels counted as
    reads: a resumed run reads them back) with the finished tiles kept, the lower triangle
    in tiles, one host copy. Tiles that cut the stored blocks write strips instead: one
    step completes the stored block columns ending within its work column, at most ``t +
    block[1]`` columns of at most ``n`` rows."""
    nt = -(-n // t)
    kept = Buffer((nt * (nt + 1) // 2 * t, t), dtype)
    strip = None if _aligned(t, block) else Buffer((n, t + block[1]), dtype)
    return tile_footprint(t, kt * t, dtype, mesh, (kept,), strip)


def _aligned(t: int, block: tuple[int, int]) -> bool:
    return t % block[0] == 0 and t % block[1] == 0


def candidates(n: int, dtype: np.dtype, mesh: Mesh, block: tuple[int, int],
               rank: int) -> list[Candidate]:  # fmt: skip
    """``("tiles", t, kt)`` for each work tile (:func:`work_tiles` order) and panel width;
    ``block``: the stored factor's blocks."""
    out = []
    for order, t in enumerate(work_tiles(n, mesh)):
        nt = -(-n // t)
        for kt in _PANEL_TILES:
            kt = min(kt, max(nt - 1, 1))
            steps = update_steps(nt, kt) + nt * (nt + 1) // 2
            out.append(Candidate((NAME, t, kt), _footprint(n, t, kt, dtype, mesh, block),
                                 (rank, order, steps), False))  # fmt: skip
    return list({c.tiling: c for c in out}.values())


def tiles_plan(s: Setup, tiling: tuple) -> Plan:
    """The plan of ``("tiles", t, kt)``. A resumed run (finished tiles in the store, not in
    memory) reads its K panels back from the store."""
    _, t, kt = tiling
    block = s.block
    assert block is not None  # a tile plan only stores
    aligned = _aligned(t, block)
    resumed = aligned and bool(s.resume.finished)
    keep = None if resumed else Resident(s.mesh, t)
    strips = None if aligned else functools.partial(_strips, n=s.n, t=t, block=block)
    steps = schedule(s, t, kt, keep, strips)
    nt = -(-s.n // t)
    how = ("finished tiles read back from the store (resumed)" if resumed else
           "finished tiles kept in memory" + ("" if aligned else
           f", L written by columns of stored blocks {block[1]}"))  # fmt: skip
    desc = (
        f"{NAME}: in-core tile plan, {nt}x{nt} lower tiles of {t} (stored blocks "
        f"{block[0]}x{block[1]}), K panels of {kt * t}, {how}"
    )
    return Plan("cholesky", steps, lambda: (None, None), tiles=desc,
                write_behind=t * t * s.dtype.itemsize, reason=s.why)  # fmt: skip


def _strips(jj: int, *, n: int, t: int, block: tuple[int, int]) -> list[tuple[int, ...]]:
    """Regions ``(r0, r1, c0, c1)`` of ``L``, one per column of stored blocks, that are
    complete once work column ``jj`` is and were not before; each from the block row
    holding its first diagonal entry down to ``n``."""
    br, bc = block
    done, before = min((jj + 1) * t, n), min(jj * t, n)
    out = []
    for j in range(before // bc, -(-done // bc)):
        c0, c1 = j * bc, min((j + 1) * bc, n)
        if before < c1 <= done:
            out.append((c0 // br * br, n, c0, c1))
    return out
