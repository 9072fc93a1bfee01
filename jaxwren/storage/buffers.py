"""Aligned host buffers: reads land in memory XLA's CPU backend adopts without a copy."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["aligned_empty"]

_ALIGN = 64  # XLA's CPU backend adopts 64-byte-aligned host buffers without a copy


def aligned_empty(shape: tuple[int, ...], dtype: Any, *, zero: bool = False) -> np.ndarray:
    """An uninitialised (or zeroed) C-order array whose data is 64-byte aligned."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = (np.zeros if zero else np.empty)(nbytes + _ALIGN, np.uint8)
    off = -raw.ctypes.data % _ALIGN
    return raw[off : off + nbytes].view(dtype).reshape(shape)
