"""Why a factorisation failed: a NaN or Inf in the input, or a non-positive pivot.

No algorithm makes a pass of its own over the input: a NaN or Inf anywhere in the lower
triangle fails the factor (the cyclic kernel's diagonal blocks, or a diagonal tile's
LAPACK factor), and only then is the input read again to name the cause.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxwren.errors import NonFiniteError, NotPositiveDefiniteError
from jaxwren.sharding.multihost import to_host
from jaxwren.storage.buffers import aligned_empty

__all__ = ["check_factor", "raise_failed"]


def check_factor(outs: tuple, *, kb: int, src: Any, n: int, offset: int = 0,
                 at: int = 1) -> None:  # fmt: skip
    """Raises when a factor step says it failed: its output ``info`` (``outs[at]``) is the
    failed block column counted from ``offset`` in blocks of ``kb``, or -1. The input is
    checked for NaN/Inf only then (a separate pass on every call cost ~20 ms at n = 4096)."""
    k = int(outs[at])
    if k >= 0:
        raise_failed(_lower_finite(src, n), k, kb=kb, offset=offset)


def raise_failed(finite: bool, k: int, *, kb: int, offset: int = 0) -> None:
    """The typed error of a failed factor: NonFiniteError when the input's lower triangle
    is not finite, else NotPositiveDefiniteError naming the block column."""
    if not finite:
        raise NonFiniteError(
            "cholesky: the input holds NaN or Inf on or below the diagonal; clean the "
            "matrix (e.g. np.nan_to_num) before factoring."
        )
    if k >= 0:
        col = offset + k * kb
        raise NotPositiveDefiniteError(
            f"cholesky: the matrix is not positive definite: the factorisation failed in "
            f"block column {offset // kb + k if kb else k} (columns {col}:{col + kb}); the "
            "leading minor there has a non-positive pivot. Check symmetry and conditioning "
            "(adding a small multiple of the identity regularises it)."
        )


@jax.jit
def _tril_finite(x: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(jnp.tril(x)))


def _lower_finite(src: Any, n: int) -> bool:
    """Whether the input's lower triangle is finite: a device array at once, a host or
    stored source by strips of rows (at most ~64 MiB read at a time)."""
    if isinstance(src, jax.Array):
        return bool(to_host(_tril_finite(src)))
    rows = max(1, (64 << 20) // (n * np.dtype(src.dtype).itemsize))
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        strip = aligned_empty((r1 - r0, r1), src.dtype)
        src.read_region_into_async(r0, r1, 0, r1, strip).result()
        lower = np.arange(r1)[None, :] <= np.arange(r0, r1)[:, None]
        if not np.isfinite(strip[lower]).all():
            return False
    return True
