"""Part files -> checked numpy row arrays, in order: read ahead (bounded), parse, convert.

The one road shared by :func:`jaxwren.from_csv` / :func:`jaxwren.from_parquet` and
:func:`jaxwren.iter_table_batches`.
"""

from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from jaxwren.errors import ConfigError, TableParseError
from jaxwren.tables.convert import to_matrix
from jaxwren.tables.glob import Part, Parts
from jaxwren.tables.parse import Format, resolve_columns
from jaxwren.tables.reader import check_unchanged, read_parts

__all__ = ["TableStream", "check_progress"]


def check_progress(progress: Any, *, op: str) -> None:
    if progress is not None and not isinstance(progress, bool):
        raise ConfigError(f"{op}: progress={progress!r} must be True, False or None.")


def _progress_bar(total: int, label: str, enabled: bool | None) -> Any:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled or total <= 1:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="part", leave=False)


class TableStream:
    """Yields each part's rows as a ``(rows, columns)`` array of ``dtype``.

    The first part fixes the column names; every later part must have the same set
    (any order), and the selected columns are taken by name. After iterating,
    :meth:`check_unchanged` verifies no part changed since it was read.
    """

    def __init__(self, parts: Parts, fmt: Format, columns: Any, dtype: np.dtype, *,
                 window_bytes: int, order: list[int] | None = None,
                 progress: bool | None = None) -> None:  # fmt: skip
        self.parts, self.fmt, self.columns, self.dtype = parts, fmt, columns, dtype
        self.window_bytes = window_bytes
        self.order = list(range(len(parts.parts))) if order is None else order
        self.progress = progress
        self.names: list[str] | None = None  # the first part's columns
        self.selected: list[str] | None = None
        self.first: Part | None = None
        self.seen: list[tuple[Part, bytes]] = []
        self.nbytes = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        """Parts are read and parsed one ahead on a worker thread (pyarrow releases the
        GIL) while this thread converts and checks the previous one."""
        op = self.fmt.op
        bar = _progress_bar(len(self.order), f"{op}: {self.parts.pattern}", self.progress)
        tables = self._tables()
        try:
            with concurrent.futures.ThreadPoolExecutor(1, "jaxwren-parse") as pool:
                ahead = pool.submit(next, tables, None)
                while (item := ahead.result()) is not None:
                    ahead = pool.submit(next, tables, None)
                    part, table = item
                    x = to_matrix(table, self.dtype, part, op=op)
                    del item, table
                    if bar is not None:
                        bar.update(1)
                    yield x
        finally:
            if bar is not None:
                bar.close()

    def _tables(self) -> Iterator[tuple[Part, Any]]:
        for got in read_parts(self.parts, self.order, self.window_bytes, op=self.fmt.op):
            selected = self._columns(self.fmt.column_names(got.data, got.part), got.part)
            table = self.fmt.parse(got.data, got.part, selected)
            self.seen.append((got.part, got.generation))
            self.nbytes += len(got.data)
            part = got.part
            del got
            yield part, table

    def _columns(self, names: list[str], part: Part) -> list[str]:
        if self.names is None:
            self.selected = resolve_columns(self.columns, names, part, op=self.fmt.op,
                                            header=self.fmt.header)  # fmt: skip
            self.names, self.first = names, part
        elif sorted(names) != sorted(self.names):
            missing = [n for n in self.names if n not in names]
            extra = [n for n in names if n not in self.names]
            raise TableParseError(
                f"{self.fmt.op}: the part {part.url} has other columns than the first part "
                f"{self.first.url if self.first else ''}: missing {missing}, extra {extra} "
                f"({len(names)} columns vs {len(self.names)}); every part needs the same "
                "columns. Fix or remove the odd part, or narrow the glob."
            )
        return self.selected  # type: ignore[return-value]

    def check_unchanged(self) -> None:
        """Raises StorageError when a part read by this stream has changed since."""
        check_unchanged(self.parts, self.seen, op=self.fmt.op)
