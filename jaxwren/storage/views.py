"""Lazy views of a stored matrix: transposed, a rectangular region, a dtype cast.

A view is a :class:`~jaxwren.storage.bigmatrix.BigMatrix` handle over the same stored
array: ``A.T``, ``A[i:j, k:l]`` and ``A.astype(dtype)`` (and any composition) copy
nothing; every read of the view (``numpy()``, ``get_block``, ``to_jax``, an operation's
tiles) reads only the chunks under its region and casts per tile. A view is described
by a :class:`View` in the coordinates of the stored matrix, applied in the order
region -> transpose -> cast.

Region and cast views are read-only (an ``out`` or a ``put_block`` on one raises
:class:`~jaxwren.errors.OutputConflictError`): a result is written to a whole matrix,
and ``jw.copy`` materialises a view. Transposed views stay writable.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorstore as ts

from jaxwren.errors import BlockIndexError, DTypeMismatchError, OutputConflictError

__all__ = ["View", "apply", "cast_view", "slice_view"]

_CASTINGS = ("no", "equiv", "safe", "same_kind", "unsafe")


@dataclasses.dataclass(frozen=True)
class View:
    """How a handle sees its stored matrix.

    Attributes:
      region: ``(r0, r1, c0, c1)`` of the stored (untransposed) matrix, or None (all).
      transposed: the region is seen transposed.
      dtype: the dtype reads are cast to, or None (the stored dtype).
    """

    region: tuple[int, int, int, int] | None = None
    transposed: bool = False
    dtype: np.dtype | None = None

    @property
    def read_only(self) -> bool:
        return self.region is not None or self.dtype is not None

    def key(self) -> str:
        """The view's part of a run's identity (two views of one matrix differ)."""
        return f"{int(self.transposed)}|{self.region}|{self.dtype}"

    def to_base(self, r0: int, r1: int, c0: int, c1: int) -> tuple[int, int, int, int]:
        """A region of the view in the coordinates of the stored matrix."""
        a0, a1, b0, b1 = (c0, c1, r0, r1) if self.transposed else (r0, r1, c0, c1)
        if self.region is not None:
            a0, a1, b0, b1 = (a0 + self.region[0], a1 + self.region[0],
                              b0 + self.region[2], b1 + self.region[2])  # fmt: skip
        return a0, a1, b0, b1


def apply(array: ts.TensorStore, view: View) -> ts.TensorStore:
    """The TensorStore view (origin at 0, 0) of ``array`` seen through ``view``."""
    out = array
    if view.region is not None:
        r0, r1, c0, c1 = view.region
        out = out[r0:r1, c0:c1].translate_to[0, 0]
    if view.transposed:
        out = out.T
    if view.dtype is not None and view.dtype != np.dtype(array.dtype.numpy_dtype):
        out = ts.cast(out, ts.dtype(view.dtype))
    return out


def slice_view(view: View, shape: tuple[int, int], key: Any, what: str) -> View:
    """``view`` narrowed by ``key`` (two basic slices of the view's ``shape``)."""
    if not isinstance(key, tuple):
        key = (key, slice(None))
    if len(key) != 2 or not all(isinstance(k, slice) for k in key):
        raise BlockIndexError(
            f"{what}[{key!r}]: only two basic slices select a view (A[i:j, k:l]); for single "
            "entries, steps or fancy indexing read the data first (A.numpy()[...], "
            "A.read_region(r0, r1, c0, c1) or A.get_block(i, j))."
        )
    bounds = []
    for k, n in zip(key, shape, strict=True):
        if k.step not in (None, 1):
            raise BlockIndexError(
                f"{what}[...]: slice step {k.step} is not supported by a lazy view; read the "
                "region first (A.numpy()[...] or A.read_region(...)) and step through it."
            )
        start, stop, _ = k.indices(n)
        if stop <= start:
            raise BlockIndexError(
                f"{what}[...]: the slice {k.start}:{k.stop} selects nothing of {n}; a view "
                "must hold at least one row and one column."
            )
        bounds.append((start, stop))
    (r0, r1), (c0, c1) = bounds
    a0, a1, b0, b1 = view.to_base(r0, r1, c0, c1)
    return dataclasses.replace(view, region=(a0, a1, b0, b1))


def cast_view(view: View, src: np.dtype, dtype: Any, casting: str, what: str) -> View:
    """``view`` cast to ``dtype`` under numpy's ``casting`` rule (checked here)."""
    dt = np.dtype(dtype)
    if casting not in _CASTINGS:
        raise DTypeMismatchError(
            f"{what}.astype({dt.name}, casting={casting!r}): casting must be one of {_CASTINGS}."
        )
    if not np.can_cast(src, dt, casting=casting):
        raise DTypeMismatchError(
            f"{what}.astype({dt.name}): casting {src.name} to {dt.name} can lose data under "
            f"casting={casting!r}; pass casting='unsafe' to allow it."
        )
    return dataclasses.replace(view, dtype=dt)


def refuse_write(view: View, what: str) -> None:
    """Region and cast views are read-only."""
    if view.read_only:
        raise OutputConflictError(
            f"{what}: a region or cast view (A[i:j, k:l], A.astype(...)) is read-only; write "
            "to the whole matrix, or materialise the view first with jw.copy(view, url)."
        )
