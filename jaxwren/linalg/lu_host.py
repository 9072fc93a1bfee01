"""The in-core LU tile plan's sweep on host BLAS (CPU devices of one process).

The same schedule as :class:`jaxwren.linalg.lu_tiles.Sweep` (left-looking by column
tiles, pivots applied lazily: the panel is moved into each finished column's row order
before that column's sweep), with the panel a writable C-ordered host array and each
update one BLAS call in place: ``U[K, J] = L[K, K]^-1 P[K]`` by ``trsm`` and
``P[K+1:] -= L[K+1:, K] U[K, J]`` by one ``gemm`` over every row below (``beta = 1``,
no temporary). Both run on the transposed views, which are Fortran-contiguous because
every panel and kept column is a C-ordered ``n_pad x t`` array, so nothing is copied.

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
from scipy.linalg import blas

from jaxwren.linalg.lu_tiles import Pivots
from jaxwren.sharding.lapack_threads import all_threads_blas

__all__ = ["HostSweep"]


def host_panel(x: Any, dtype: np.dtype) -> np.ndarray:
    """A read tile (replicated: on CPU devices one shared host buffer) as a fresh,
    writable C-ordered host array in ``dtype``."""
    if isinstance(x, jax.Array):
        x = np.asarray(x.addressable_shards[0].data)
    return np.array(x, dtype=dtype, order="C")


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
            idx = self.piv.between(cur, want)
            dst = np.flatnonzero(idx != np.arange(len(idx)))
            p[dst] = p[idx[dst]]
        return p

    def apply(self, p: np.ndarray, cur: int, k: int, low: np.ndarray, state: int) -> np.ndarray:
        """Sweeps column ``k`` (``low``: its rows from ``k t``, in row order ``state``)
        over ``p`` (in row order ``cur``), in place; returns ``p`` in order ``state``."""
        t = self.t
        p = self.to_state(p, cur, state)
        trsm, gemm = blas.get_blas_funcs(("trsm", "gemm"), (p,))
        pk, rest = p[k * t : (k + 1) * t], p[(k + 1) * t :]
        # pk^T := pk^T L^-T: L^T is the unit upper triangle of diag^T
        got = trsm(1.0, low[:t].T, pk.T, side=1, lower=0, trans_a=0, diag=1, overwrite_b=1)
        _in_place(got, pk.T)
        if len(rest):  # rest^T -= pk^T L[k+1:, k]^T
            got = gemm(-1.0, pk.T, low[t:].T, beta=1.0, c=rest.T, overwrite_c=1)
            _in_place(got, rest.T)
        return p


def _in_place(got: np.ndarray, view: np.ndarray) -> None:
    """BLAS wrote ``view`` in place unless the wrapper had to copy (it does not for
    these Fortran-contiguous views; kept as a guard, not a path)."""
    if not np.shares_memory(got, view):  # pragma: no cover - never for contiguous views
        view[...] = got
