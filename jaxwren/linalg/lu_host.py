"""The LU tile plans' sweep on host BLAS (CPU devices of one process).

The same schedule as :class:`jaxwren.linalg.lu_tiles.Sweep` (left-looking by column
tiles, pivots applied lazily: the panel is moved into each finished column's row order
before that column's sweep), with the panel a writable C-ordered host array and each
update one BLAS call in place (:mod:`.host_blas`, which takes leading dimensions):
``U[K, J] = L[K, K]^-1 P[K]`` by ``trsm`` and ``P[R] -= L[R, K] U[K, J]`` by one
``gemm`` over the rows ``R`` below (all of them, or the rows of one piece read back;
``beta = 1``, no temporary). The panel is factored in place by a recursive ``getrf``
(:func:`.host_blas.getrf_rows`, from :func:`.lu_tiles.factor_panel`): no copy of a
panel (a C-ordered panel measured faster than a Fortran-ordered one: the reads, the
row moves and the final row order all copy whole rows).

Why the host and not the devices here: on CPU devices the devices' memory is the host's
and their cores are the same cores, so the only difference is the GEMM kernel. Measured
on the 2-core box (f64, ``(2048 x 512) @ (512 x 512)``, ``perf`` and ``process_time``):
XLA's CPU dot (YNNPACK ``dot_fp64_6x8``) sharded over 8 devices reached 23 GFLOP per
CPU-second against OpenBLAS's 30.5, and the device sweep spent another ~12% of its
CPU in the fused slice/subtract/update and row-move loops that the in-place BLAS calls
do not need. Nothing compiles, so a first call costs what a later one does.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxwren.linalg import host_blas
from jaxwren.linalg.lu_tiles import Pivots
from jaxwren.sharding.lapack_threads import all_threads_blas

__all__ = ["HostSweep"]


def host_panel(x: Any, dtype: np.dtype) -> np.ndarray:
    """A read tile (replicated: on CPU devices one shared host buffer) as a fresh,
    writable C-ordered host array in ``dtype``."""
    if isinstance(x, jax.Array):
        x = np.asarray(x.addressable_shards[0].data)
    return np.array(x, dtype=dtype, order="C")


def permute_rows(p: np.ndarray, idx: np.ndarray) -> None:
    """``p := p[idx]`` in place, moving only the rows that change, an eighth of the
    columns at a time (the temporary is at most an eighth of ``p``)."""
    cols = max(8, p.shape[1] // 8)
    dst = np.flatnonzero(idx != np.arange(len(idx)))
    if len(dst):
        src = idx[dst]
        for c in range(0, p.shape[1], cols):
            p[dst, c : c + cols] = p[src, c : c + cols]


class HostSweep:
    """One column's panel on the host and the sweep of the finished ``L`` columns over
    it (each a host array of its rows from its diagonal tile down, C-ordered, in its
    stored row order ``state``). Interface of :class:`.lu_tiles.Sweep`."""

    host = True

    def __init__(self, t: int, nt: int, piv: Pivots) -> None:
        self.t, self.nt, self.piv = t, nt, piv

    def warm(self, n_pad: int, dtype: np.dtype) -> None:
        """Nothing to compile."""

    @staticmethod
    def threads() -> Any:
        """BLAS on every core for a step (the runner holds it to one thread on CPU
        devices, where the devices' own threads would compete; here none run)."""
        return all_threads_blas()

    def start(self, p: Any, dtype: np.dtype) -> np.ndarray:
        return host_panel(p, dtype)

    @staticmethod
    def absmax(p: np.ndarray, rows: int) -> float:
        """``max |p[:rows]|`` without a temporary (NaN propagates)."""
        part = p[:rows]
        return float(max(part.max(), -part.min())) if part.size else 0.0

    @staticmethod
    def column(p: np.ndarray) -> np.ndarray:
        return p

    def to_state(self, p: np.ndarray, cur: int, want: int) -> np.ndarray:
        if cur != want:
            permute_rows(p, self.piv.between(cur, want))
        return p

    def apply(self, p: np.ndarray, cur: int, k: int, low: np.ndarray, state: int,
              row: int | None = None) -> np.ndarray:  # fmt: skip
        """Sweeps column ``k`` (``low``: its rows from ``row``, default ``k t``, in row
        order ``state``) over ``p`` (in row order ``cur``), in place; returns ``p`` in
        order ``state``. ``low`` from the diagonal tile solves ``U[K, J]`` first; a piece
        further down only updates its rows (``U[K, J]`` solved by an earlier piece)."""
        t = self.t
        row = k * t if row is None else row
        p = self.to_state(p, cur, state)
        pk = p[k * t : (k + 1) * t]
        if row == k * t:  # U[K, J] := L[K, K]^-1 P[K]
            host_blas.trsm_unit_lower(low[:t], pk)
            low, row = low[t:], row + t
        rest = p[row : row + len(low)]
        host_blas.gemm(-1.0, low[: len(rest)], pk, 1.0, rest)  # P[R] -= L[R, K] U[K, J]
        return p
