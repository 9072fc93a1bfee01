"""CSV and Parquet part files in a store -> one BigMatrix (``jw.from_csv``, ``jw.from_parquet``).

The row count is learned as the parts are parsed, so the matrix is created with a
provisional row count (blocks beyond the data are never written) and resized, metadata
only, to the exact count at the end (the last, ragged block row is written before, as a
whole chunk, like every zarr edge chunk).
Everything that can be checked before writing is: the arguments, the pattern (something
matches), the output (not among the parts, not an existing matrix unless ``overwrite``),
and the whole first part. A later error removes exactly the matrix this call created.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
from typing import Any

import numpy as np

from jaxwren.config import StorageConfig, parse_bytes
from jaxwren.errors import MatrixExistsError
from jaxwren.sharding import multihost
from jaxwren.storage import backend, lifecycle, records
from jaxwren.storage.backend import translate_errors
from jaxwren.storage.bigmatrix import BigMatrix
from jaxwren.storage.urls import Location
from jaxwren.storage.validate import check_dtype, check_shape, resolve_storage
from jaxwren.storage.window import Window
from jaxwren.tables.convert import fill
from jaxwren.tables.glob import check_output, expand
from jaxwren.tables.parse import Format, check_nan_dtype, csv_format, parquet_format
from jaxwren.tables.rows import RowWriter
from jaxwren.tables.stream import TableStream, check_progress

__all__ = ["DEFAULT_WINDOW", "default_block_shape", "from_csv", "from_parquet"]

DEFAULT_WINDOW = 128 << 20
PROVISIONAL_ROWS = 1 << 40  # the row count while parts are still being parsed
_BLOCK_BYTES = 16 << 20


def default_block_shape(n_cols: int, dtype: np.dtype) -> tuple[int, int]:
    """Blocks of about 16 MiB: all columns (up to 4096), a power-of-two row count."""
    cols = min(n_cols, 4096)
    rows = max(1, _BLOCK_BYTES // (cols * dtype.itemsize))
    return 1 << (rows.bit_length() - 1), cols


Pattern = str | os.PathLike[str] | list[str | os.PathLike[str]] | tuple[str, ...]


def from_csv(
    pattern: Pattern,
    url: str | os.PathLike[str],
    *,
    block_shape: tuple[int, int] | None = None,
    columns: list[str | int] | None = None,
    dtype: Any = "float32",
    header: bool = True,
    delimiter: str = ",",
    na_values: list[str] | None = None,
    allow_nan: bool | None = None,
    order: str = "natural",
    storage: StorageConfig | None = None,
    overwrite: bool = False,
    window_bytes: int | str = DEFAULT_WINDOW,
    progress: bool | None = None,
) -> BigMatrix:
    """Ingests CSV part files matching ``pattern`` into one BigMatrix at ``url``.

    Rows follow the parts in ``order`` (natural by default: ``part.2`` before
    ``part.10``, as dask's read_parquet reads its own output), then the rows within each part (as
    ``np.concatenate([pd.read_csv(p)[columns] for p in parts])``). Parts are read
    whole, ahead, under ``window_bytes`` and parsed by pyarrow, several at once on worker
    threads; every block is written once.
    In a multi-process run process 0 ingests and the others wait and open the result (an
    error on process 0 is raised on every process).

    Args:
      pattern: a storage URL or path whose last components may hold ``*``, ``?``,
        ``[...]`` and ``**`` as a whole component (any depth: ``s3://bucket/csv/**/*.csv``),
        or a list of them in one store (their parts in the list's order); the same
        endpoint and credentials as a BigMatrix (``storage``). Files and directories
        whose name starts with ``_`` or ``.`` (``_SUCCESS``, ``_common_metadata``,
        ``.crc``) are skipped, as pyarrow.dataset and dask do, unless the pattern's own
        name starts with that character. Parts ending in ``.gz``, ``.bz2`` or ``.zst``
        are decompressed (the codec comes from the extension).
      url: where to store the matrix.
      block_shape: ``(rows, cols)`` of a block; None: about 16 MiB blocks holding all
        columns (up to 4096).
      columns: names (or indices) of the columns to keep, in that order; None: all, in
        the first part's order. Every part must have the same set of columns.
      dtype: the matrix dtype. Integer columns must be exact in it (float32 holds
        integers up to 2**24: pass float64 for larger ids), floats into an integer dtype
        are refused.
      header: the first line of each part names the columns (False: they are indexed).
      delimiter: the field separator, one character (``"\t"`` for TSV, ``";"``).
      na_values: the strings that mean a missing cell, e.g. ``["", "NA", "-999"]``
        (exactly these, as pyarrow's ``null_values``; unlike pandas they replace the
        default list: ``""``, ``NA``, ``NaN``, ``nan``, ``null``, ``N/A``, ...). Giving
        them asks for NaN: those cells are stored as NaN.
      allow_nan: store missing cells (and ``nan`` values) as NaN. None (default): only
        when ``na_values`` is given; False: a missing cell or NaN is refused
        (TableParseError / NonFiniteError naming the cell). Needs a float ``dtype``;
        infinities are always refused.
      order: ``"natural"`` (default; digit runs compared as numbers, so dask's
        ``part.0 ... part.11`` come 0, 1, 2, ..., 10, 11, as dask's read_parquet reads
        them) or ``"name"`` (plain lexicographic key order, pyarrow.dataset's: 0, 1, 10,
        11, 2, ...). A list of patterns: each pattern's parts in this order, the
        patterns in the list's order.
      storage: StorageConfig for both the parts and the matrix; None: the environment.
      overwrite: replace a matrix stored at ``url`` (it is deleted when the first part
        has been checked, so a later error leaves nothing there).
      window_bytes: bytes of part files in flight, read ahead and parsed on worker
        threads (bytes or ``"128MiB"``; a part counts as the larger of its bytes and its
        parsed table, at the largest seen); writes in flight are held to the same bound.
        A part larger than it is read alone.
      progress: a progress bar over the parts (None: in a terminal or a notebook).

    Returns:
      The BigMatrix, of shape ``(total rows, selected columns)`` exactly.

    Raises:
      PartsNotFoundError: nothing matches (the message lists what the directory holds),
        or only marker/hidden files do (the message names them).
      ConfigError: a bad argument (``delimiter``, ``na_values``, ``order``, ...), NaN
        asked for with an integer ``dtype``, patterns in different stores or matching
        the same part.
      TableParseError: a ragged row, an empty/NA or non-numeric cell (the message names
        the part, row and column), an empty part, parts with different columns.
      NonFiniteError, DTypeMismatchError: a value ``dtype`` cannot hold exactly.
      MatrixExistsError: a matrix is stored at ``url`` and ``overwrite`` is False
        (checked before any part is read). OutputConflictError: ``url`` would contain
        parts. StorageError: a part changed while the ingest ran, or the store failed.
    """
    fmt = csv_format(header, delimiter=delimiter, na_values=na_values, allow_nan=allow_nan)
    return _shared(fmt, pattern, url, block_shape=block_shape, columns=columns, dtype=dtype,
                   storage=storage, overwrite=overwrite, window_bytes=window_bytes,
                   progress=progress, order=order)  # fmt: skip


def from_parquet(
    pattern: Pattern,
    url: str | os.PathLike[str],
    *,
    block_shape: tuple[int, int] | None = None,
    columns: list[str | int] | None = None,
    dtype: Any = "float32",
    allow_nan: bool = False,
    order: str = "natural",
    storage: StorageConfig | None = None,
    overwrite: bool = False,
    window_bytes: int | str = DEFAULT_WINDOW,
    progress: bool | None = None,
) -> BigMatrix:
    """Ingests Parquet part files matching ``pattern`` into one BigMatrix at ``url``:
    as :func:`from_csv` (same arguments but the CSV-only ``header``, ``delimiter`` and
    ``na_values``; only the selected columns are decoded). Missing values (nulls) and
    NaN are refused like empty CSV cells unless ``allow_nan=True`` (stored as NaN)."""
    fmt = parquet_format(allow_nan=allow_nan)
    return _shared(fmt, pattern, url, block_shape=block_shape, columns=columns,
                   dtype=dtype, storage=storage, overwrite=overwrite,
                   window_bytes=window_bytes, progress=progress, order=order)  # fmt: skip


def _shared(fmt: Format, pattern: Any, url: Any, **kw: Any) -> BigMatrix:
    """In a multi-process run process 0 ingests and the others open the result (or raise
    process 0's error): the parts are read once and the matrix created once."""
    storage = kw["storage"]
    return multihost.once_shared(
        fmt.op,
        lambda: _ingest(fmt, pattern, url, **kw),
        lambda: BigMatrix.open(url, storage=resolve_storage(storage)),
    )


def _refuse_existing(out: Location, config: StorageConfig, op: str) -> None:
    """MatrixExistsError before any part is read (BigMatrix.create would say it later)."""
    backend.probe_bucket(out, config, op)
    with translate_errors(op, out):
        got = backend.open_kvstore(out, config).read("zarr.json").result()
    if got.state == "value" and not unfinished(out, config, op):
        raise MatrixExistsError(
            f"{op}: a matrix already exists at {out.url}; pass overwrite=True to replace it "
            "or choose another URL."
        )


def _ingest(fmt: Format, pattern: Any, url: Any, *, block_shape: Any, columns: Any,
            dtype: Any, storage: StorageConfig | None, overwrite: bool, window_bytes: Any,
            progress: bool | None, order: str) -> BigMatrix:  # fmt: skip
    op = fmt.op
    dt = check_dtype(dtype, where=op)
    check_nan_dtype(fmt, dt)
    window = parse_bytes(window_bytes, what=f"{op}: window_bytes")
    if block_shape is not None:
        block_shape = check_shape(block_shape, where=op, name="block_shape")
    check_progress(progress, op=op)
    config = resolve_storage(storage)
    parts = expand(pattern, config, op=op, order=order)
    out = check_output(url, parts, op=op)
    if not overwrite:
        _refuse_existing(out, config, op)
    stream = TableStream(parts, fmt, columns, dt, window_bytes=window, progress=progress)
    tables = stream.tables()
    try:
        part, table = next(tables)
        # the whole first part is checked (and converted) before anything is written
        first = np.empty((table.num_rows, table.num_columns), dt)
        fill(first, table, part, op=op, allow_nan=fmt.allow_nan)
        del part, table
        n_cols = first.shape[1]
        block_shape = block_shape or default_block_shape(n_cols, dt)
        created = _create_async(url, (PROVISIONAL_ROWS, n_cols), block_shape, dt, config,
                                overwrite, op)  # fmt: skip
    except BaseException:
        stream.close()
        raise
    writer: RowWriter | None = None
    try:
        with translate_errors(op, out), Window(window) as w:
            # the blocks are converted while the matrix is being created; the first
            # write waits for it
            writer = RowWriter(lambda: created.result()[1], block_shape[0], n_cols, dt, w)
            writer.add_rows(first)
            del first
            while True:
                try:
                    item = next(tables, None)
                except Exception:  # a part's error: an earlier part's conversion error
                    writer.raise_pending()  # comes first
                    raise
                if item is None:
                    break
                writer.add_table(*item, op=op, allow_nan=fmt.allow_nan)
                del item
            writer.finish()  # the last, ragged block row, in flight with the others
            check = stream.start_check()  # the parts' re-check overlaps the writes
        writer.close()
        stream.check_unchanged(check)
        matrix, array, claim = created.result()
        return _finish(matrix, array, writer.total, op, claim)
    except BaseException:
        stream.close()
        if writer is not None:
            writer.close()
        with contextlib.suppress(Exception):  # the first error is the one to raise
            made, _, claim = created.result()  # (nothing when creating failed)
            if made.owns(claim):  # (not when another writer took the place over)
                made.destroy()
        raise


def _create_async(url: Any, shape: tuple[int, int], block_shape: tuple[int, int],
                  dt: np.dtype, config: StorageConfig, overwrite: bool, op: str
                  ) -> concurrent.futures.Future[tuple[BigMatrix, Any, str]]:  # fmt: skip
    """``BigMatrix.create`` and a TensorStore handle on the new matrix, on a helper
    thread (its header and generation token writes overlap the conversion of the
    first blocks)."""

    def create() -> tuple[BigMatrix, Any, str]:
        matrix, claim = BigMatrix.create_uncommitted(
            url, shape, block_shape, dt, writer=op, storage=config, overwrite=overwrite
        )
        return matrix, backend.open_array(matrix.location, config), claim

    pool = concurrent.futures.ThreadPoolExecutor(1, "jaxwren-create")
    try:
        return pool.submit(create)
    finally:
        pool.shutdown(wait=False)


def _finish(matrix: BigMatrix, array: Any, rows: int, op: str, claim: str) -> BigMatrix:
    """The matrix's header resized (metadata only) to ``rows`` rows and a fresh
    generation token (both writes in flight together), then committed (until then the
    provisional 2**40 rows refuse to be read); a handle on the result."""
    loc = matrix.location
    with translate_errors(op, loc):
        resized = array.resize(exclusive_max=[rows, matrix.shape[1]], resize_metadata_only=True)
        _, token = records.write_generation_async(array.kvstore)
        resized.result()
        token.result()
    result = BigMatrix.open(loc.url, storage=matrix.storage)
    result.commit_writing(claim, op)
    return result


def unfinished(out: Location, config: StorageConfig, op: str) -> bool:
    """Whether the matrix at ``out`` was left uncommitted by an interrupted writer (a
    rerun replaces it without ``overwrite``)."""
    with translate_errors(op, out):
        kv = backend.open_kvstore(out, config)
        return lifecycle.parse_state(lifecycle.read_state_async(kv).result()) is not None
