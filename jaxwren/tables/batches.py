"""Streaming batches straight from CSV/Parquet part files onto the devices (no matrix in
between): the ObjectStorageDataset workflow for JAX training loops."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from jaxwren.config import StorageConfig, parse_bytes
from jaxwren.dtypes import check_representable
from jaxwren.errors import ConfigError, ShapeMismatchError
from jaxwren.sharding.batches import _is_int, _sharding_for
from jaxwren.sharding.io import check_sharding
from jaxwren.storage.validate import check_dtype, resolve_storage
from jaxwren.tables.glob import expand, pattern_list
from jaxwren.tables.ingest import DEFAULT_WINDOW, Pattern
from jaxwren.tables.parse import (
    CODECS,
    Format,
    check_nan_dtype,
    csv_format,
    parquet_format,
)
from jaxwren.tables.stream import TableStream

__all__ = ["iter_table_batches"]

_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def _suffix_format(pattern: str) -> str | None:
    """``csv`` or ``parquet`` from a pattern's suffix (a compression suffix after
    ``.csv`` counts: ``part*.csv.gz``)."""
    low = pattern.lower()
    for ext in CODECS:
        if low.endswith(ext):
            low = low[: -len(ext)]
            break
    return next((v for k, v in _SUFFIXES.items() if low.endswith(k)), None)


def _format(patterns: list[str], fmt: str | None, header: bool, csv_kw: dict[str, Any],
            allow_nan: bool | None) -> Format:  # fmt: skip
    where = "iter_table_batches"
    if fmt is None:
        found = {p: _suffix_format(p) for p in patterns}
        kinds = set(found.values())
        if None in kinds or len(kinds) != 1:
            odd = next((p for p, f in found.items() if f is None), None)
            raise ConfigError(
                f"{where}: cannot tell the format of {odd!r} from its suffix; pass "
                "format='csv' or format='parquet'."
                if odd is not None else
                f"{where}: the patterns mix CSV and Parquet ({patterns!r}); read them "
                "separately."
            )  # fmt: skip
        fmt = kinds.pop()
    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"{where}: format={fmt!r} must be 'csv' or 'parquet'.")
    if fmt == "csv":
        return csv_format(header, allow_nan=allow_nan, op=where, **csv_kw)
    given = [k for k, default in (("delimiter", ","), ("na_values", None))
             if csv_kw[k] != default]  # fmt: skip
    if given:
        raise ConfigError(
            f"{where}: {given[0]}= is for CSV parts; Parquet parts store their own types "
            "and missing values as nulls (pass allow_nan=True to read nulls as NaN)."
        )
    return parquet_format(allow_nan=allow_nan, op=where)


def iter_table_batches(
    pattern: Pattern,
    batch_size: int,
    *,
    columns: list[str | int] | None = None,
    dtype: Any = "float32",
    format: str | None = None,  # noqa: A002 - the natural name
    header: bool = True,
    delimiter: str = ",",
    na_values: list[str] | None = None,
    allow_nan: bool | None = None,
    order: str = "natural",
    shuffle: bool = False,
    seed: int | None = 0,
    prefetch: int = 2,
    sharding: jax.sharding.Sharding | None = None,
    drop_remainder: bool = False,
    storage: StorageConfig | None = None,
    window_bytes: int | str = DEFAULT_WINDOW,
) -> Iterator[jax.Array]:
    """Yields ``(batch_size, columns)`` batches of the part files' rows as sharded
    jax.Arrays, one epoch: parts read ahead under ``window_bytes``, parsed and checked as
    :func:`jaxwren.from_csv` does, ``prefetch`` batches on their way to the devices ahead
    of the one yielded. Batches run across part boundaries; the last may be shorter.

    Args:
      pattern: part files, one pattern or a list (see :func:`jaxwren.from_csv`).
      batch_size: rows per batch.
      columns, dtype, header, delimiter, na_values, allow_nan, order, storage: as
        :func:`jaxwren.from_csv` (``delimiter`` and ``na_values``: CSV only).
      format: ``"csv"`` or ``"parquet"``; None: from the pattern's suffix (``.csv``,
        ``.csv.gz``, ``.csv.bz2``, ``.csv.zst``, ``.parquet``, ``.pq``).
      shuffle: visit the parts in a random order and shuffle the rows within each part
        (a shuffle buffer of one part); the order comes from ``seed``.
      seed: seed of the shuffle (pass the epoch number for a new order each epoch; None:
        fresh randomness).
      prefetch: batches transferred ahead of the one yielded.
      sharding: the batches' sharding (None: rows over the default mesh as far as it
        divides them); a ragged last batch it does not divide gets the default sharding.
      drop_remainder: skip a last batch shorter than ``batch_size``.
      window_bytes: bytes of part files in flight (read ahead, parsed on worker
        threads; a part counts as the larger of its bytes and its parsed table).

    In a multi-process run each process reads only its own parts (``parts[i::n]`` of
    the ordered list) and contributes ``batch_size / n`` rows to each global batch; the
    processes must hold the same number of rows (e.g. equal parts): every batch's local
    row counts are compared across processes, and a difference raises
    ShapeMismatchError on every process (never global arrays of different shapes).

    Raises (at the call, before any part is read, except parse errors):
      ConfigError: bad ``batch_size``, ``prefetch``, ``format``, ``window_bytes``,
        ``delimiter``, ``na_values``, ``order``; NaN asked for with an integer dtype.
      PartsNotFoundError: nothing matches (or only marker/hidden files).
      TableParseError, NonFiniteError, DTypeMismatchError: while iterating, as
      :func:`jaxwren.from_csv`.
    """
    where = "iter_table_batches"
    if not _is_int(batch_size) or batch_size < 1:
        raise ConfigError(f"{where}: batch_size={batch_size!r} must be an int >= 1.")
    if not _is_int(prefetch) or prefetch < 0:
        raise ConfigError(f"{where}: prefetch={prefetch!r} must be an int >= 0.")
    n_proc = jax.process_count()
    if batch_size % n_proc:
        raise ConfigError(
            f"{where}: batch_size={batch_size} is not divisible by the {n_proc} processes."
        )
    csv_kw = {"delimiter": delimiter, "na_values": na_values}
    fmt = _format(pattern_list(pattern, op=where), format, header, csv_kw, allow_nan)
    dt = check_dtype(dtype, where=where)
    check_representable(dt, where=where)
    check_nan_dtype(fmt, dt)
    window = parse_bytes(window_bytes, what=f"{where}: window_bytes")
    parts = expand(pattern, resolve_storage(storage), op=where, order=order)
    order = list(range(len(parts.parts)))[jax.process_index() :: n_proc]
    rng = np.random.default_rng(seed) if shuffle else None
    if rng is not None:
        order = [order[i] for i in rng.permutation(len(order))]
    stream = TableStream(parts, fmt, columns, dt, window_bytes=window, order=order)
    return _batches(stream, batch_size // n_proc, n_proc, rng, prefetch, sharding,
                    drop_remainder)  # fmt: skip


def _local_batches(stream: TableStream, rows: int, rng: Any, drop_remainder: bool
                   ) -> Iterator[np.ndarray]:  # fmt: skip
    carry: list[np.ndarray] = []
    held = 0
    for x in stream:
        if rng is not None:
            x = x[rng.permutation(len(x))]
        carry.append(x)
        held += len(x)
        if held < rows:
            continue
        rows_all = np.concatenate(carry) if len(carry) > 1 else carry[0]
        whole = len(rows_all) // rows * rows
        for r0 in range(0, whole, rows):
            yield rows_all[r0 : r0 + rows]
        carry, held = [rows_all[whole:]], len(rows_all) - whole
    if held and not drop_remainder:
        yield np.concatenate(carry)


def _agreed(local: Iterator[np.ndarray], n_proc: int) -> Iterator[np.ndarray]:
    """The local batches, checked batch by batch to have the same row count on every
    process (one small all-gather each): otherwise the processes would build global
    arrays of different shapes, or one would stop while the others wait."""
    if n_proc == 1:
        yield from local
        return
    from jax.experimental import multihost_utils  # noqa: PLC0415

    for i in itertools.count():
        x = next(local, None)
        n = np.array([-1 if x is None else len(x)], np.int64)
        counts = np.asarray(multihost_utils.process_allgather(n)).ravel()
        if (counts == n[0]).all():
            if x is None:
                return
            yield x
            continue
        said = ", ".join(f"process {p}: {'none' if c < 0 else c}" for p, c in enumerate(counts))
        raise ShapeMismatchError(
            f"iter_table_batches: batch {i} has different local row counts ({said}); in a "
            "multi-process run every process must hold the same number of rows (each "
            "reads parts[process_index::process_count]): split the data into parts of "
            "equal rows, as many parts as a multiple of the process count."
        )


def _batches(stream: TableStream, local_rows: int, n_proc: int, rng: Any, prefetch: int,
             sharding: Any, drop_remainder: bool) -> Iterator[jax.Array]:  # fmt: skip
    pending: collections.deque[jax.Array] = collections.deque()
    local = _local_batches(stream, local_rows, rng, drop_remainder)
    for x in _agreed(local, n_proc):
        shape = (len(x) * n_proc, x.shape[1])
        if sharding is not None and len(x) == local_rows:
            check_sharding(shape, sharding, where="iter_table_batches")
        target = _sharding_for(shape, sharding)
        if n_proc == 1:
            pending.append(jax.device_put(x, target))
        else:
            pending.append(jax.make_array_from_process_local_data(target, x, shape))
        if len(pending) > prefetch:
            yield pending.popleft()
    while pending:
        yield pending.popleft()
