"""The out-of-core plan (``"out-of-core"``): the left-looking schedule of :mod:`.tiles`
over the store, for any budget down to a few tiles.

Tiles are multiples of the stored blocks of ``A`` and ``L`` (and of the device count):
every finished tile is written once as whole chunks, then recorded; the K panels are
read back from the store, as wide as the budget allows. A rerun with the same input and
``out`` skips the finished tiles.
"""

from __future__ import annotations

import math

import numpy as np
from jax.sharding import Mesh

from jaxwren.engine.plan import Plan
from jaxwren.engine.problem import Candidate
from jaxwren.linalg.cholesky.setup import Setup
from jaxwren.linalg.cholesky.tiles import schedule, tile_footprint, update_steps
from jaxwren.linalg.common import round_up

__all__ = ["NAME", "candidates", "ooc_plan"]

NAME = "out-of-core"
_SMALL = 1024  # the largest tile of the plan ranked like an in-core algorithm when the
# selector asks for a tile plan that cannot keep its tiles (see candidates)


def candidates(n: int, dtype: np.dtype, mesh: Mesh, granule: int, rank: int,
               small_rank: int | None = None) -> list[Candidate]:  # fmt: skip
    """``("out-of-core", t, kt)``: tiles ``t`` of a multiple of ``granule`` (the stored
    blocks) and the device count, ``kt`` K tiles per GEMM step; fewest steps first, then
    least memory. ``small_rank``: the rank of the tiles up to 1024 with at least two a
    side and K panels of at most 2 tiles (a tile plan ranked before other algorithms)."""
    unit = math.lcm(granule, mesh.devices.size)  # tiles are sharded by rows over all
    small = max(_SMALL, unit) if small_rank is not None else 0
    out = []
    for t in range(unit, round_up(n, unit) + unit, unit):
        nt = -(-n // t)
        for kt in range(1, max(nt - 1, 1) + 1):
            r = small_rank if t <= small and nt >= 2 and kt <= 2 else rank
            steps = update_steps(nt, kt) + nt * (nt + 1) // 2
            out.append(Candidate((NAME, t, kt), tile_footprint(t, kt * t, dtype, mesh),
                                 (r, steps, -t), False))  # fmt: skip
    return out


def ooc_plan(s: Setup, tiling: tuple) -> Plan:
    """The plan of ``("out-of-core", t, kt)``."""
    _, t, kt = tiling
    nt = -(-s.n // t)
    steps = schedule(s, t, kt, None)
    desc = f"{NAME}: tile plan over the store, {nt}x{nt} lower tiles of {t}, K panels of {kt * t}"
    return Plan("cholesky", steps, lambda: (None, None), tiles=desc,
                write_behind=t * t * s.dtype.itemsize, reason=s.why)  # fmt: skip
