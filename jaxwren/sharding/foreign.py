"""Operands that are neither BigMatrix, jax.Array nor numpy: read tile by tile.

``zarr.Array`` (zarr-python, any store) and dask arrays are accepted by every operation
as they are: the engine reads each tile's region from them (``z[r0:r1, c0:c1]``,
``x[r0:r1, c0:c1].compute()``) when it needs it, so such an input is never loaded whole
(before, ``np.asarray`` read it entirely). A URL string is opened as a BigMatrix by the
engine (see ``engine.run.operand``). Results computed from these inputs are not resumable
(jaxwren cannot stamp another library's data).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxwren.storage.window import Futures

__all__ = ["LazySource", "lazy_source"]


def _kind(x: Any) -> str | None:
    module = type(x).__module__.split(".")[0]
    if module == "zarr" and hasattr(x, "shape") and hasattr(x, "dtype"):
        return "zarr"
    if module == "dask" and hasattr(x, "compute") and hasattr(x, "shape"):
        return "dask"
    return None


def lazy_source(x: Any) -> LazySource | None:
    """A LazySource for a zarr or dask array, else None."""
    kind = _kind(x)
    return None if kind is None else LazySource(x, kind)


@dataclasses.dataclass(frozen=True)
class LazySource:
    """A zarr or dask array as an engine source, read one region at a time."""

    array: Any
    kind: str
    transposed: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        s = tuple(int(d) for d in self.array.shape)
        return (s[1], s[0]) if self.transposed and len(s) == 2 else s  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def T(self) -> LazySource:  # noqa: N802
        return dataclasses.replace(self, transposed=not self.transposed)

    def _region(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        if self.transposed:
            return self._region_base(c0, c1, r0, r1).T
        return self._region_base(r0, r1, c0, c1)

    def _region_base(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        part = self.array[r0:r1, c0:c1]
        return np.asarray(part.compute() if self.kind == "dask" else part)

    def read_region_into_async(
        self, r0: int, r1: int, c0: int, c1: int, out: np.ndarray
    ) -> Futures:
        out[...] = self._region(r0, r1, c0, c1)
        return Futures()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        m, n = self.shape
        out = self._region(0, m, 0, n)
        return out if dtype is None else out.astype(dtype, copy=False)
