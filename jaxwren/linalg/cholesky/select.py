"""The one Cholesky selector (after lineax's ``AutoLinearSolver``): which algorithm a run
prefers, and why.

:func:`select` returns ``(algorithm, reason)``; :func:`candidates` ranks every
algorithm's tilings by it (the preferred algorithm first, the other in-core one next,
the out-of-core plan last) and the engine takes the first that fits the budget.
:func:`reason` is what the run's report shows (``RunReport.reason``). The rule:

1. a returned factor (``out=None``): ``"kernel"``, the only algorithm that returns one;
2. ``Cholesky(plan="kernel" | "tiles")``: that one (``"tiles"`` where finished tiles
   cannot stay in host memory: the out-of-core plan's small tiles);
3. CPU devices of one process (:func:`tiles_first`): ``"tiles"``;
4. otherwise (accelerators, several processes): ``"kernel"``.
"""

from __future__ import annotations

import numpy as np
from jax.sharding import Mesh

from jaxwren.engine.problem import Candidate
from jaxwren.linalg.cholesky import incore, kernel, ooc
from jaxwren.linalg.cholesky.diagonal import backend
from jaxwren.linalg.common import chosen_reason
from jaxwren.sharding.mesh import process_local
from jaxwren.sharding.platform import platform_profile

__all__ = ["ALGORITHMS", "candidates", "reason", "select", "tiles_first"]

ALGORITHMS = (kernel.NAME, incore.NAME, ooc.NAME)


def tiles_first(mesh: Mesh) -> bool:
    """Whether a stored factor prefers the tile plan to the in-core kernel even when the
    kernel fits: on this process's CPU devices. Measured store->store on 8 CPU devices (2
    cores), best of 3, tile plan vs kernel: n = 1000 0.033 vs 0.044 s, 2000 0.13 vs 0.17
    s, 4096 0.58 vs 0.73 s, 8192 3.2-3.6 vs 4.5-4.9 s; first calls 0.27 vs 1.0 s at n =
    2000 (a few small compiles). The tiles' updates and solves are local GEMMs (no
    collective, no cyclic permutation) and the diagonal tile goes to host LAPACK; the
    kernel's per-block steps and psums cost more than they save on emulated devices.
    Accelerators and several processes keep the kernel first (not measured here)."""
    return process_local(mesh) and platform_profile(mesh).host_lapack


def select(mesh: Mesh, stored: bool, prefer: str = "auto") -> tuple[str, str]:
    """``(algorithm, reason)``: the algorithm a run prefers (one of :data:`ALGORITHMS`)."""
    if not stored:
        return kernel.NAME, "a returned factor (out=None): only the kernel returns one"
    keep = incore.available(mesh)
    diag = f"diagonal tiles on {backend(mesh)}"
    if prefer == "kernel":
        return kernel.NAME, "asked for (plan='kernel')"
    if prefer == "tiles":
        if keep:
            return incore.NAME, f"asked for (plan='tiles'); {diag}"
        return ooc.NAME, (
            "asked for a tile plan (plan='tiles'); finished tiles cannot stay "
            f"in host memory on these devices: tiles over the store; {diag}"
        )
    if tiles_first(mesh) and keep:
        return incore.NAME, (
            "CPU devices of one process: local GEMMs on tiles, no "
            f"collectives, measured faster than the kernel; {diag}"
        )
    if tiles_first(mesh):
        return ooc.NAME, f"CPU devices of one process, tiles over the store; {diag}"
    return kernel.NAME, (
        "accelerators or several processes: the block-cyclic kernel keeps every device busy"
    )


def candidates(n: int, dtype: np.dtype, mesh: Mesh, granule: int, block: tuple[int, int] | None,
               prefer: str = "auto") -> list[Candidate]:  # fmt: skip
    """Every algorithm's tilings, ranked by :func:`select`. ``granule``: the tile unit of
    the out-of-core plan (the stored blocks of ``A`` and ``L``); ``block``: the stored
    factor's blocks (None: returned)."""
    chosen, _ = select(mesh, block is not None, prefer)
    cands = [Candidate((kernel.NAME, kernel.incore_block(n, mesh)),
                       kernel.footprint(n, dtype, mesh),
                       (0 if chosen == kernel.NAME else 1,), True)]  # fmt: skip
    # the tile plans only store; offered for a returned factor too, so that a refusal
    # can name the budget a stored factor would need
    if block is not None and incore.available(mesh):
        rank = 0 if chosen == incore.NAME else 1
        cands += incore.candidates(n, dtype, mesh, block, rank)
    small = 0 if chosen == ooc.NAME else None
    return cands + ooc.candidates(n, dtype, mesh, granule, 2, small)


def reason(chosen: str, mesh: Mesh, stored: bool, prefer: str = "auto") -> str:
    """Why the run takes ``chosen``: the selector's reason, or why the budget overruled
    it."""
    return chosen_reason(chosen, *select(mesh, stored, prefer))
