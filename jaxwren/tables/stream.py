"""Part files -> checked numpy row arrays, in order: read ahead (bounded), parse, convert.

The one road shared by :func:`jaxwren.from_csv` / :func:`jaxwren.from_parquet` and
:func:`jaxwren.iter_table_batches`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from jaxwren.errors import ConfigError, TableParseError
from jaxwren.tables.convert import check_table, to_matrix
from jaxwren.tables.glob import Part, Parts
from jaxwren.tables.parse import Format, resolve_columns
from jaxwren.tables.reader import (
    PartData,
    check_unchanged,
    fits,
    issue_read,
    part_data,
    start_check,
)

__all__ = ["TableStream", "check_progress"]

# parts parsed and converted at once (pyarrow and numpy release the GIL; on a 2-core
# machine two single parts in flight keep both cores busy through the per-part steps)
WORKERS = max(2, min(4, os.cpu_count() or 1))


def check_progress(progress: Any, *, op: str) -> None:
    if progress is not None and not isinstance(progress, bool):
        raise ConfigError(f"{op}: progress={progress!r} must be True, False or None.")


def _progress_bar(total: int, label: str, enabled: bool | None) -> Any:
    """The engine's progress bar (None: on in a terminal or a notebook) over parts."""
    from jaxwren.engine.runner import _progress

    return _progress(total, label, enabled, unit="part")


class _FirstPartError(Exception):
    """A later part's job stops because the first part (which fixes the columns) failed;
    the first part's own error is the one raised, since parts are taken in order."""


class TableStream:
    """Yields each part's rows as a ``(rows, columns)`` array of ``dtype``, in order.

    Parts are read, parsed and converted on worker threads, several at once, while the
    caller takes the finished ones in order; the parts in flight (being read, parsed or
    waiting to be taken) fit in ``window_bytes`` at the largest size seen of a part's
    bytes or of its parsed table. The first
    part fixes the column names; every later part must have the same set (any order;
    a Parquet part's pandas index columns are not counted), and the selected columns
    are taken by name. After iterating, :meth:`check_unchanged`
    verifies no part changed since it was read.
    """

    def __init__(self, parts: Parts, fmt: Format, columns: Any, dtype: np.dtype, *,
                 window_bytes: int, order: list[int] | None = None,
                 progress: bool | None = None, workers: int = WORKERS) -> None:  # fmt: skip
        self.parts, self.fmt, self.columns, self.dtype = parts, fmt, columns, dtype
        self.window_bytes = window_bytes
        self.order = list(range(len(parts.parts))) if order is None else order
        self.progress = progress
        self.workers = workers
        self.names: list[str] | None = None  # the first part's columns
        self.selected: list[str] = []  # set by the first part's job
        self.first: Part | None = None
        self.seen: list[tuple[Part, bytes]] = []
        self.nbytes = 0
        self.peak_in_flight = 0  # most parts in flight at once (tests)
        self._named = threading.Event()  # the first part's columns are known (or failed)
        self._lock = threading.Lock()
        self._largest = 0
        self._sized: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._iter: Iterator[np.ndarray] | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        self._iter = self._rows(convert=True)
        return self._iter

    def tables(self) -> Iterator[tuple[Part, pa.Table]]:
        """Each part and its table, checked by :func:`~jaxwren.tables.convert.check_table`
        but not converted (the caller converts it with :func:`~jaxwren.tables.convert.fill`
        wherever the rows belong)."""
        self._iter = self._rows(convert=False)
        return self._iter

    def close(self) -> None:
        """Stops the workers (parts not yet started are dropped); safe to call twice."""
        if self._iter is not None:
            self._iter.close()  # type: ignore[attr-defined]

    def _rows(self, convert: bool) -> Iterator[Any]:
        op, n = self.fmt.op, len(self.order)
        bar = _progress_bar(n, f"{op}: {self.parts.pattern}", self.progress)
        in_flight: collections.deque[tuple[Part, concurrent.futures.Future[Any]]] = (
            collections.deque()
        )
        pool = concurrent.futures.ThreadPoolExecutor(self.workers, "jaxwren-parse")
        nxt = 0
        try:
            while True:
                largest = self._largest if self._sized.done() else 0
                while nxt < n and fits(len(in_flight), largest, self.window_bytes):
                    part = self.parts.parts[self.order[nxt]]
                    read = issue_read(self.parts, part, op=op)
                    in_flight.append((part, pool.submit(self._job, nxt, part, read, convert)))
                    nxt += 1
                self.peak_in_flight = max(self.peak_in_flight, len(in_flight))
                if not in_flight:
                    return
                part, job = in_flight[0]
                if nxt < n and not self._sized.done():  # a size known lets more parts in
                    concurrent.futures.wait(
                        [job, self._sized], return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    if not job.done():
                        continue
                in_flight.popleft()
                x, generation, nbytes = job.result()
                del job
                self.seen.append((part, generation))
                self.nbytes += nbytes
                if bar is not None:
                    bar.update(1)
                yield x if convert else (part, x)
                del x
        finally:
            self._named.set()  # no job waits for a first part that will not come
            pool.shutdown(wait=True, cancel_futures=True)
            if bar is not None:
                bar.close()

    def _job(self, pos: int, part: Part, read: Any, convert: bool) -> tuple[Any, bytes, int]:
        """One part on a worker thread: its bytes, columns, parse, checks, conversion."""
        if pos == 0:
            try:
                got, nbytes = self._read(part, read)
                source = self._open(got, part)
                self._first_columns(self.fmt.column_names(source, part),
                                    self.fmt.index_names(source, part), part)  # fmt: skip
            finally:  # the later parts' jobs wait for this, even when it failed
                self._named.set()
        else:
            got, nbytes = self._read(part, read)
            source = self._open(got, part)
            names = self.fmt.column_names(source, part)
            self._named.wait()
            if not self.selected:
                raise _FirstPartError
            self._same_columns(names, part)
        generation = got.generation
        del got
        table = self.fmt.parse(source, part, self.selected, self.dtype)
        del source
        self._grow(table.nbytes, sized=True)  # a part in flight may hold its table
        if convert:
            matrix = to_matrix(table, self.dtype, part, op=self.fmt.op,
                               allow_nan=self.fmt.allow_nan)  # fmt: skip
            return matrix, generation, nbytes
        check_table(table, self.dtype, part, op=self.fmt.op, allow_nan=self.fmt.allow_nan)
        return table, generation, nbytes

    def _read(self, part: Part, read: Any) -> tuple[PartData, int]:
        got = part_data(self.parts, part, read, op=self.fmt.op)
        nbytes = len(got.data)
        self._grow(nbytes)
        return got, nbytes

    def _open(self, got: PartData, part: Part) -> Any:
        """:meth:`Format.open` of a part's bytes; a decompressed part counts (in the
        window) at its decompressed size."""
        source = self.fmt.open(got.data, part)
        if source is not got.data and isinstance(source, bytes):
            got.data = b""  # the compressed bytes are no longer needed
            self._grow(len(source))
        return source

    def _grow(self, nbytes: int, sized: bool = False) -> None:
        """The size estimate of a part in flight: the largest part or table seen (a
        table of small integers takes several times the bytes of its text). The caller
        reads further ahead once the first table is known (``sized``)."""
        with self._lock:
            self._largest = max(self._largest, nbytes)
            if sized and not self._sized.done():
                self._sized.set_result(None)

    def _first_columns(self, names: list[str], index: list[str], part: Part) -> None:
        selected = resolve_columns(self.columns, names, part, op=self.fmt.op,
                                   header=self.fmt.header, index=index)  # fmt: skip
        self.names, self.first = names, part
        self.selected = selected

    def _same_columns(self, names: list[str], part: Part) -> None:
        assert self.names is not None
        if sorted(names) != sorted(self.names):
            missing = [n for n in self.names if n not in names]
            extra = [n for n in names if n not in self.names]
            raise TableParseError(
                f"{self.fmt.op}: the part {part.url} has other columns than the first part "
                f"{self.first.url if self.first else ''}: missing {missing}, extra {extra} "
                f"({len(names)} columns vs {len(self.names)}); every part needs the same "
                "columns. Fix or remove the odd part, or narrow the glob."
            )

    def start_check(self) -> list[Any]:
        """Issues the re-check of :meth:`check_unchanged` (to overlap it with writes)."""
        return start_check(self.parts, self.seen, op=self.fmt.op)

    def check_unchanged(self, started: list[Any] | None = None) -> None:
        """Raises StorageError when a part read by this stream has changed since."""
        check_unchanged(self.parts, self.seen, op=self.fmt.op, started=started)
