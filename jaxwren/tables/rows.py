"""Appending rows of unknown total count to a BigMatrix, each block written once.

Parts end anywhere; blocks are ``block_rows`` tall. :class:`RowWriter` writes every run of
whole block rows straight from the part's array (one write per part, aligned to blocks, so
no block is read back or written twice) and carries the rows left over into the next part.
The last, ragged block row is written by :meth:`RowWriter.finish` into the matrix at its
provisional row count (a zarr chunk on the edge is stored whole either way, so it is the
same chunk once the matrix is resized to the exact count).

The arrays written are never modified afterwards, so TensorStore references them instead
of copying each block (``can_reference_source_data_indefinitely``).
"""

from __future__ import annotations

import numpy as np
import tensorstore as ts

from jaxwren.storage.window import Window

__all__ = ["RowWriter"]


class RowWriter:
    """Writes appended rows into ``array`` (the matrix's TensorStore, ``block_rows`` tall
    blocks) through ``window`` (bounded bytes in flight)."""

    def __init__(self, array: ts.TensorStore, block_rows: int, window: Window) -> None:
        self.array, self.window = array, window
        self.block_rows = block_rows
        self.rows = 0  # rows written (whole block rows only)
        self._carry: list[np.ndarray] = []
        self._carried = 0

    @property
    def total(self) -> int:
        """Rows appended so far (written or carried)."""
        return self.rows + self._carried

    def add(self, x: np.ndarray) -> None:
        """Appends the rows of ``x`` (the matrix's columns and dtype; not modified later)."""
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
        if whole < len(x):  # a short tail is copied so that the part's array can go
            rest = x[whole:] if 2 * whole <= len(x) else x[whole:].copy()
            self._carry, self._carried = [rest], len(x) - whole

    def _write(self, rows: np.ndarray) -> None:
        region = self.array[self.rows : self.rows + len(rows), :]
        self.window.submit(
            lambda: region.write(rows, can_reference_source_data_indefinitely=True), rows.nbytes
        )
        self.rows += len(rows)

    def finish(self) -> None:
        """Writes the carried rows (the last, ragged block row)."""
        if self._carried:
            rows = self._carry[0] if len(self._carry) == 1 else np.concatenate(self._carry)
            self._write(rows)
            self._carry, self._carried = [], 0
