"""The spectral selector: QDWH on the devices or LAPACK on the host, and why.

:func:`select` returns ``(algorithm, reason)`` for :func:`jaxwren.eigh` and the general
:func:`jaxwren.svd` (``RunReport.reason`` shows the reason). The rule:

1. ``algorithm="qdwh"`` or ``"host"``: that one;
2. CPU devices of one process (the platform profile's ``host_lapack`` and
   ``shares_host_memory``): the host's LAPACK, ``syevd`` (numpy/scipy ``eigh``, driver
   ``"evd"``: a tridiagonal reduction and divide and conquer, about ``9 n^3`` flops) or
   ``gesdd`` for the SVD, on all host cores. The devices are host memory, so handing the
   matrix to LAPACK is one copy, and QDWH-eig's products and Cholesky solves (tens of
   ``n^3`` flops: one polar decomposition of the full size is about 30, the subspace step
   of a split as much again) run on the same cores: it cannot catch up there;
3. otherwise (accelerators, several processes): QDWH, whose every step is a sharded
   product or Cholesky solve.

:func:`jaxwren.polar` has no host route: scipy's polar (an SVD) measured slower than QDWH
on CPU devices. ``jaxwren.lax.eigh`` (inside ``jit``) is always QDWH.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxwren.errors import ConfigError
from jaxwren.linalg.common import chosen_reason
from jaxwren.sharding.lapack_threads import all_threads_blas
from jaxwren.sharding.mesh import process_local
from jaxwren.sharding.platform import platform_profile

__all__ = ["HOST", "QDWH", "check_algorithm", "host_kernel", "select"]

QDWH = "qdwh"
HOST = {"eigh": "host-evd", "svd": "host-gesdd"}  # the host candidate per operation
_CHOICES = (None, "qdwh", "host")
HOST_WORK = {"eigh": 4, "svd": 8}  # matrix-sized host arrays of the LAPACK call


def check_algorithm(value: Any, where: str) -> str | None:
    """``value`` if it is None, ``"qdwh"`` or ``"host"``; else ConfigError."""
    if not (value is None or isinstance(value, str)) or value not in _CHOICES:
        raise ConfigError(
            f"{where}: algorithm must be None (automatic), 'qdwh' or 'host', got {value!r}."
        )
    return value


def host_available(mesh: Mesh) -> bool:
    """Whether the automatic choice is the host: CPU devices of this one process."""
    profile = platform_profile(mesh)
    return process_local(mesh) and profile.host_lapack and profile.shares_host_memory


def select(kind: str, mesh: Mesh, prefer: str | None) -> tuple[str, str]:
    """``(algorithm, reason)``: ``"qdwh"`` or ``HOST[kind]``."""
    host = HOST[kind]
    routine = "syevd" if kind == "eigh" else "gesdd"
    if prefer == "qdwh":
        return QDWH, "asked for (algorithm='qdwh')"
    if prefer == "host":
        return host, f"asked for (algorithm='host'): LAPACK {routine} on the host"
    if host_available(mesh):
        return host, (
            f"CPU devices of one process share host memory: LAPACK {routine} on all host "
            f"cores (about {9 if kind == 'eigh' else 22} n^3 flops) against QDWH's tens "
            "of n^3 in products and Cholesky solves on the same cores"
        )
    return QDWH, "accelerators or several processes: QDWH keeps the matrix sharded"


def reason(kind: str, chosen: str, mesh: Mesh, prefer: str | None) -> str:
    """Why the run takes ``chosen``: the selector's reason, or why the budget overruled
    it."""
    return chosen_reason(chosen, *select(kind, mesh, prefer))


def host_kernel(kind: str, x: jax.Array, shape: tuple[int, int], dtype: np.dtype,
                params: dict, finite: Any) -> tuple:  # fmt: skip
    """The host LAPACK call on the top-left ``shape`` of ``x`` (``finite`` checks the host
    copy first): ``eigh``: ``(w[None, :], V)``; ``svd``: ``(U, S[None, :], Vt)`` or
    ``(S[None, :],)``; host arrays."""
    import scipy.linalg as sl

    m, n = shape
    a = np.array(np.asarray(x)[:m, :n], dtype=dtype, order="F")
    finite((a,))
    with all_threads_blas():
        if kind == "eigh":
            if params.get("symmetrize", True):
                a = (a + a.T) / 2
                a = np.asfortranarray(a)
            w, v = sl.eigh(a, lower=True, driver="evd", overwrite_a=True, check_finite=False)
            return w[None, :], np.ascontiguousarray(v)
        if not params.get("compute_uv", True):
            s = sl.svd(a, compute_uv=False, overwrite_a=True, check_finite=False)
            return (s[None, :],)
        u, s, vt = sl.svd(a, full_matrices=False, overwrite_a=True, check_finite=False,
                          lapack_driver="gesdd")  # fmt: skip
        return np.ascontiguousarray(u), s[None, :], np.ascontiguousarray(vt)
