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
import functools
import os
from collections.abc import Iterator
from typing import Any

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


@functools.cache
def _controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, made once: making one scans
    every loaded library (``threadpool_limits`` does at each call; a profile of the
    out-of-core LU, one call per step, spent 13% of its time there), setting a limit on
    it does not."""
    import scipy.linalg.cython_lapack  # noqa: F401  (scipy's OpenBLAS, loaded first)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def all_threads_blas() -> Iterator[None]:
    """BLAS/LAPACK on every core of this process for host calls made while
    :func:`single_threaded_blas` holds and nothing else computes (the spectral host
    route's ``syevd``/``gesdd``, the LU tile plan's host sweep)."""
    try:
        limiter = _controller().limit(limits=len(os.sched_getaffinity(0)), user_api="blas")
    except ImportError:  # pragma: no cover - declared dependency
        yield
        return
    with limiter:
        yield
