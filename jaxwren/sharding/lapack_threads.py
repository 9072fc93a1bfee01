"""LAPACK calls on emulated CPU devices run single-threaded while a plan executes.

On CPU, JAX's LAPACK kernels (QR, Cholesky, SVD, triangular solves) call SciPy's
OpenBLAS from the device threads. With several CPU devices in one process every device
thread already runs its own LAPACK call, and OpenBLAS's own thread pool on top of that
oversubscribes the cores (the figures are in docs/decisions.md: BLAS/LAPACK
single-threaded during runs). The limit applies only during a
run and is restored after it (``threadpoolctl``); accelerators are not affected.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from jaxwren.sharding.platform import platform_profile

__all__ = ["all_threads_blas", "single_threaded_blas"]


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS/LAPACK libraries limited to one thread when this process drives several CPU
    devices (the platform profile's ``emulated_devices``); a no-op otherwise (or without
    threadpoolctl)."""
    if not platform_profile().emulated_devices:
        yield
        return
    try:
        import scipy.linalg.cython_lapack  # noqa: F401  (loads the OpenBLAS JAX will call,

        # so that the limit finds it: JAX loads it lazily, at its first LAPACK kernel)
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - declared dependencies (scipy: of jax)
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@contextlib.contextmanager
def all_threads_blas() -> Iterator[None]:
    """BLAS/LAPACK on every core of this process for one host call made while
    :func:`single_threaded_blas` holds (nothing else runs during it: the spectral host
    route's ``syevd``/``gesdd``)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - declared dependency
        yield
        return
    with threadpool_limits(limits=len(os.sched_getaffinity(0)), user_api="blas"):
        yield
