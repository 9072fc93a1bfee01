"""Appending rows of unknown total count to a BigMatrix, each block written once.

Parts end anywhere; blocks are ``block_rows`` tall. :class:`RowWriter` writes every run of
whole block rows straight from the part's array (one write per part, aligned to blocks, so
no block is read back or written twice) and carries the rows left over into the next part.
The last, ragged block row is written by :meth:`RowWriter.finish` once the total is known.
"""

from __future__ import annotations

import numpy as np

from jaxwren.storage.bigmatrix import BigMatrix
from jaxwren.storage.window import Window

__all__ = ["RowWriter"]


class RowWriter:
    """Writes appended rows into ``matrix`` through ``window`` (bounded bytes in flight)."""

    def __init__(self, matrix: BigMatrix, window: Window) -> None:
        self.matrix, self.window = matrix, window
        self.block_rows = matrix.block_shape[0]
        self.rows = 0  # rows written (whole block rows only)
        self._carry: list[np.ndarray] = []
        self._carried = 0

    @property
    def total(self) -> int:
        """Rows appended so far (written or carried)."""
        return self.rows + self._carried

    def add(self, x: np.ndarray) -> None:
        """Appends the rows of ``x`` (the matrix's columns and dtype)."""
        br = self.block_rows
        if self._carried:
            take = x[: br - self._carried]
            self._carry.append(take)
            self._carried += len(take)
            x = x[len(take) :]
            if self._carried < br:
                return
            self._write(np.concatenate(self._carry))
            self._carry, self._carried = [], 0
        whole = len(x) // br * br
        if whole:
            self._write(x[:whole])
        if whole < len(x):
            self._carry, self._carried = [x[whole:].copy()], len(x) - whole

    def _write(self, rows: np.ndarray, matrix: BigMatrix | None = None) -> None:
        target, r0 = matrix or self.matrix, self.rows
        self.window.submit(lambda: target.write_region_async(r0, 0, rows), rows.nbytes)
        self.rows += len(rows)

    def finish(self, matrix: BigMatrix) -> None:
        """Writes the carried rows (the last, ragged block row) into ``matrix``: a handle
        on the same matrix opened at its final shape."""
        if self._carried:
            self._write(np.concatenate(self._carry), matrix)
            self._carry, self._carried = [], 0
