"""``parent_fn``: blocks never written are produced on demand, on the one read path.

numpywren's lazy matrices: a BigMatrix with a ``parent_fn`` reads the blocks that exist
from the store and asks ``parent_fn(matrix, i, j)`` for the others. Which blocks exist is
decided by one LIST per read, nothing cached: blocks can be written between reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from jaxwren.storage.validate import check_block
from jaxwren.storage.window import Futures

if TYPE_CHECKING:
    from jaxwren.storage.bigmatrix import BigMatrix

__all__ = ["ParentFill", "parent_block"]


def parent_block(matrix: BigMatrix, i: int, j: int) -> np.ndarray:
    """Block ``(i, j)`` of ``matrix`` made by its ``parent_fn``, checked and cast.

    ``parent_fn`` always sees the stored (untransposed) matrix and its block indices; a
    transposed view transposes the result.
    """
    if matrix.transposed:
        return parent_block(matrix.T, j, i).T
    r0, r1, c0, c1 = matrix.block_bounds(i, j)
    block = np.asarray(matrix.parent_fn(matrix, i, j))  # type: ignore[misc]
    check_block(block, (r1 - r0, c1 - c0), matrix.dtype, f"{matrix!r}.parent_fn(A, {i}, {j})")
    return block.astype(matrix.dtype, copy=False)


def overlapping_blocks(matrix: BigMatrix, region: tuple[int, int, int, int]) -> list:
    """The block indices ``(i, j)`` that overlap rows ``r0:r1``, cols ``c0:c1``."""
    r0, r1, c0, c1 = region
    if r1 <= r0 or c1 <= c0:
        return []
    br, bc = matrix.block_shape
    return [(i, j) for i in range(r0 // br, -(-r1 // br)) for j in range(c0 // bc, -(-c1 // bc))]


class ParentFill(Futures):
    """A region read (of the blocks that exist) whose missing blocks are filled from
    ``parent_fn`` when its result is taken."""

    def __init__(self, matrix: BigMatrix, region: tuple[int, int, int, int], out: np.ndarray,
                 read: Any, missing: list) -> None:  # fmt: skip
        super().__init__([read] if read is not None else [])
        self._matrix, self._region, self._out, self._missing = matrix, region, out, missing

    def result(self) -> None:
        super().result()
        r0, r1, c0, c1 = self._region
        for i, j in self._missing:
            b0, b1, d0, d1 = self._matrix.block_bounds(i, j)
            a0, a1, e0, e1 = max(b0, r0), min(b1, r1), max(d0, c0), min(d1, c1)
            block = parent_block(self._matrix, i, j)
            self._out[a0 - r0 : a1 - r0, e0 - c0 : e1 - c0] = block[a0 - b0 : a1 - b0,
                                                                     e0 - d0 : e1 - d0]  # fmt: skip
        self._missing = []
