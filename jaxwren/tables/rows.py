"""Appending rows of unknown total count to a BigMatrix, each block written once.

Parts end anywhere; blocks are ``block_rows`` tall. :class:`RowWriter` converts each
part's table straight into whole-block buffers (a part may fill the end of one block and
the start of the next) and writes every block once, when it is full. The last, ragged
block row is written by :meth:`RowWriter.finish` into the matrix at its provisional row
count (a zarr chunk on the edge is stored whole either way, so it is the same chunk once
the matrix is resized to the exact count).

Block buffers come from pyarrow's memory pool, which keeps freed memory for the next
ones (fresh pages from the system cost a page fault each), and are never modified once
written, so TensorStore references them instead of copying each block
(``can_reference_source_data_indefinitely``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import tensorstore as ts

from jaxwren.storage.window import Window
from jaxwren.tables.convert import fill
from jaxwren.tables.glob import Part

__all__ = ["RowWriter"]


def _block_buffer(rows: int, cols: int, dtype: np.dtype) -> np.ndarray:
    buf = pa.allocate_buffer(rows * cols * dtype.itemsize)
    return np.frombuffer(buf, dtype).reshape(rows, cols)


class RowWriter:
    """Writes appended rows into the matrix's TensorStore (``block_rows`` tall blocks of
    ``dtype``, ``cols`` columns) through ``window`` (bounded bytes in flight).
    ``array_of()`` gives the TensorStore; it is first called for the first write."""

    def __init__(self, array_of: Callable[[], ts.TensorStore], block_rows: int, cols: int,
                 dtype: np.dtype, window: Window) -> None:  # fmt: skip
        self.array_of, self.window = array_of, window
        self.block_rows, self.cols, self.dtype = block_rows, cols, dtype
        self.rows = 0  # rows written (whole block rows only)
        self._buf: np.ndarray | None = None  # the block row being filled
        self._filled = 0

    @property
    def total(self) -> int:
        """Rows appended so far (written or buffered)."""
        return self.rows + self._filled

    def add_table(self, part: Part, table: pa.Table, *, op: str) -> None:
        """Appends a part's checked table (its columns in the matrix's order), converting
        it into the block buffers.

        Raises:
          NonFiniteError: a value the dtype cannot hold (named by part, row and column).
        """

        def put(region: np.ndarray, r: int) -> None:
            fill(region, table.slice(r, len(region)), part, op=op, first_row=r)

        self._append(table.num_rows, put)

    def add_rows(self, x: np.ndarray) -> None:
        """Appends rows already converted (the matrix's columns and dtype)."""
        self._append(len(x), lambda region, r: np.copyto(region, x[r : r + len(region)]))

    def _append(self, n: int, put: Callable[[np.ndarray, int], None]) -> None:
        r = 0
        while r < n:
            if self._buf is None:
                self._buf = _block_buffer(self.block_rows, self.cols, self.dtype)
            take = min(n - r, self.block_rows - self._filled)
            put(self._buf[self._filled : self._filled + take], r)
            self._filled += take
            r += take
            if self._filled == self.block_rows:
                self._write(self._buf)
                self._buf, self._filled = None, 0

    def _write(self, rows: np.ndarray) -> None:
        region = self.array_of()[self.rows : self.rows + len(rows), :]
        self.window.submit(
            lambda: region.write(rows, can_reference_source_data_indefinitely=True), rows.nbytes
        )
        self.rows += len(rows)

    def finish(self) -> None:
        """Writes the buffered rows (the last, ragged block row)."""
        if self._filled:
            assert self._buf is not None
            self._write(self._buf[: self._filled])
            self._buf, self._filled = None, 0
