"""Appending rows of unknown total count to a BigMatrix, each block written once.

Parts end anywhere; blocks are ``block_rows`` tall. :class:`RowWriter` converts each
part's table straight into whole-block buffers (a part may fill the end of one block and
the start of the next) and writes every block once, when all its rows are converted. The
conversions run on worker threads (numpy releases the GIL), several regions at once,
while the caller takes the next part. The last, ragged block row is written by
:meth:`RowWriter.finish` into the matrix at its provisional row count (a zarr chunk on the
edge is stored whole either way, so it is the same chunk once the matrix is resized to
the exact count).

Block buffers come from pyarrow's memory pool, which keeps freed memory for the next
ones (fresh pages from the system cost a page fault each), and are never modified once
written, so TensorStore references them instead of copying each block
(``can_reference_source_data_indefinitely``).
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import tensorstore as ts

from jaxwren.storage.window import Window
from jaxwren.tables.convert import fill
from jaxwren.tables.glob import Part

__all__ = ["RowWriter"]

_SEALED = 2  # full blocks whose conversions may still run before the caller waits


def _block_buffer(rows: int, cols: int, dtype: np.dtype) -> np.ndarray:
    buf = pa.allocate_buffer(rows * cols * dtype.itemsize)
    return np.frombuffer(buf, dtype).reshape(rows, cols)


class _Block:
    """A block row's buffer, its first row, and the conversions filling it (in part
    order, so the first error among them is the earliest part's)."""

    __slots__ = ("buf", "fills", "r0", "rows")

    def __init__(self, buf: np.ndarray, r0: int) -> None:
        self.buf, self.r0, self.rows = buf, r0, 0
        self.fills: list[concurrent.futures.Future[None]] = []


class RowWriter:
    """Writes appended rows into the matrix's TensorStore (``block_rows`` tall blocks of
    ``dtype``, ``cols`` columns) through ``window`` (bounded bytes in flight).
    ``array_of()`` gives the TensorStore; it is first called for the first write.
    ``workers`` threads convert tables; :meth:`close` stops them (also on errors)."""

    def __init__(self, array_of: Callable[[], ts.TensorStore], block_rows: int, cols: int,
                 dtype: np.dtype, window: Window, *, workers: int = 2) -> None:  # fmt: skip
        self.array_of, self.window = array_of, window
        self.block_rows, self.cols, self.dtype = block_rows, cols, dtype
        self.total = 0  # rows appended so far
        self._block: _Block | None = None  # the block row being filled
        self._sealed: collections.deque[_Block] = collections.deque()  # full, not written
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "jaxwren-convert")

    def add_table(self, part: Part, table: pa.Table, *, op: str, allow_nan: bool = False) -> None:
        """Appends a part's checked table (its columns in the matrix's order); its
        conversion into the block buffers is started on the workers.

        Raises (here or from a later call, in part order):
          NonFiniteError: a value the dtype cannot hold (named by part, row and column).
        """

        def put(region: np.ndarray, r: int) -> concurrent.futures.Future[None]:
            piece = table.slice(r, len(region))
            return self._pool.submit(fill, region, piece, part, op=op, first_row=r,
                                     allow_nan=allow_nan)  # fmt: skip

        self._append(table.num_rows, put)

    def add_rows(self, x: np.ndarray) -> None:
        """Appends rows already converted (the matrix's columns and dtype)."""

        def put(region: np.ndarray, r: int) -> None:
            np.copyto(region, x[r : r + len(region)])

        self._append(len(x), put)

    def _append(self, n: int, put: Callable[[np.ndarray, int], Any]) -> None:
        r = 0
        while r < n:
            block = self._block
            if block is None:
                buf = _block_buffer(self.block_rows, self.cols, self.dtype)
                block = self._block = _Block(buf, self.total)
            take = min(n - r, self.block_rows - block.rows)
            fut = put(block.buf[block.rows : block.rows + take], r)
            if fut is not None:
                block.fills.append(fut)
            block.rows += take
            self.total += take
            r += take
            if block.rows == self.block_rows:
                self._sealed.append(block)
                self._block = None
        self._write_ready(wait=False)

    def _write_ready(self, wait: bool) -> None:
        """Writes the full blocks, oldest first, whose conversions are done (all of them
        with ``wait``; also waits while more than ``_SEALED`` are held)."""
        while self._sealed and (
            wait or len(self._sealed) > _SEALED or all(f.done() for f in self._sealed[0].fills)
        ):
            block = self._sealed.popleft()
            for f in block.fills:
                f.result()  # the conversion's error, if any
            self._write(block.buf[: block.rows], block.r0)

    def _write(self, rows: np.ndarray, r0: int) -> None:
        region = self.array_of()[r0 : r0 + len(rows), :]
        self.window.submit(
            lambda: region.write(rows, can_reference_source_data_indefinitely=True), rows.nbytes
        )

    def finish(self) -> None:
        """Writes every block left, the last, ragged block row included."""
        if self._block is not None and self._block.rows:
            self._sealed.append(self._block)
        self._block = None
        self._write_ready(wait=True)

    def raise_pending(self) -> None:
        """Waits for the conversions started and raises the first one's error, if any
        (before an error of a later part, so that the earliest bad part is named)."""
        blocks = [*self._sealed, *([self._block] if self._block is not None else [])]
        for block in blocks:
            for f in block.fills:
                f.result()

    def close(self) -> None:
        """Stops the conversions (those not started are dropped); safe to call twice."""
        self._pool.shutdown(wait=True, cancel_futures=True)
