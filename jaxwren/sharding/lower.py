"""A stored square matrix seen through its lower triangle of blocks.

Symmetric algorithms (Cholesky) read only the blocks on and below the diagonal: the upper
triangle of a stored symmetric matrix may be absent (numpywren's BigSymmetricMatrix) or
hold anything. Reads of any region fetch just the lower blocks it meets; the rest is zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxwren.storage.window import Futures

__all__ = ["LowerTriangle"]


class LowerTriangle:
    """A read-only Source over the blocks ``(i, j)`` with ``j <= i`` of a square matrix."""

    def __init__(self, matrix: Any) -> None:
        self.matrix = matrix
        self.shape = matrix.shape
        self.dtype = matrix.dtype
        self.url = matrix.url
        self.location = matrix.location

    def __repr__(self) -> str:
        return f"LowerTriangle({self.matrix!r})"

    def base_region(self, r0: int, r1: int, c0: int, c1: int) -> tuple[int, int, int, int]:
        return self.matrix.base_region(r0, r1, c0, c1)

    def read_region_into_async(
        self, r0: int, r1: int, c0: int, c1: int, out: np.ndarray
    ) -> Futures:
        br, bc = self.matrix.block_shape
        n = self.shape[0]
        pieces, upper = [], False
        for i in range(r0 // br, -(-r1 // br)):
            a0, a1 = max(i * br, r0), min((i + 1) * br, r1)
            for j in range(c0 // bc, -(-c1 // bc)):
                b0, b1 = max(j * bc, c0), min((j + 1) * bc, c1)
                if j * bc > min((i + 1) * br, n) - 1:  # wholly above the diagonal: skip
                    upper = True
                else:
                    pieces.append((a0, a1, b0, b1))
        if upper:
            out[...] = 0
        return Futures(
            [
                self.matrix.read_region_into_async(
                    a0, a1, b0, b1, out[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0]
                )
                for a0, a1, b0, b1 in pieces
            ]
        )
