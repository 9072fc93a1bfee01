"""A parsed part (pyarrow table of the selected columns) -> a 2-D numpy array of the
matrix dtype, refusing what would be silently wrong.

Refused, naming the part, the row (1-based among the data rows) and the column: a
non-numeric cell, an empty or NA cell (pyarrow reads ``NA``, ``nan``, ``null`` and empty
cells as missing), an infinite value or one that overflows the dtype, an integer that the
dtype cannot hold exactly (int64 ids into float32; in a CSV also an integer literal that
pyarrow read as a float, beyond int64's range or beside fractional values:
:func:`exact_integers`), a fractional value into an integer dtype, and a part with no
rows. With ``allow_nan`` (the user asked for it: ``allow_nan=True`` or ``na_values``),
missing cells and NaN values are stored as NaN instead; infinities are still refused.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jaxwren.errors import DTypeMismatchError, NonFiniteError, TableParseError
from jaxwren.tables.glob import Part

__all__ = ["check_table", "exact_integers", "fill", "to_matrix"]


def _where(op: str, part: Part, row: int, name: str) -> str:
    return f"{op}: the part {part.url}, row {row + 1}, column {name!r}"


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


def _non_numeric(col: pa.ChunkedArray, op: str, part: Part, name: str) -> Exception:
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        for row, value in enumerate(col.to_pylist()):
            if value is None:  # a missing cell (allowed by now)
                continue
            try:
                float(value)
            except (TypeError, ValueError):
                return TableParseError(
                    f"{_where(op, part, row, name)} holds {value!r}, which is not a number; "
                    "fix the cell, or leave the column out with columns=[...]."
                )
    return TableParseError(
        f"{op}: the part {part.url}, column {name!r} has type {col.type}, not a number; "
        "leave it out with columns=[...] or convert it before ingesting."
    )


def _check_column(col: pa.ChunkedArray, dtype: np.dtype, op: str, part: Part, name: str,
                  allow_nan: bool = False) -> None:  # fmt: skip
    kind = col.type
    if col.null_count and not allow_nan:
        row = _first_true(pc.is_null(col))
        raise TableParseError(
            f"{_where(op, part, row, name)} is empty or NA (a missing value); jaxwren never "
            "stores a silent NaN: fill or drop missing values before ingesting, or pass "
            "allow_nan=True (or na_values=[...], the strings that mean missing) to store "
            "them as NaN."
        )
    if pa.types.is_null(kind):  # missing cells only (allowed): all NaN
        return
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise _non_numeric(col, op, part, name)
    if pa.types.is_integer(kind) and len(col):
        _check_ints(col, dtype, op, part, name)
    if pa.types.is_floating(kind) and dtype.kind in "iu":
        raise DTypeMismatchError(
            f"{op}: the part {part.url}, column {name!r} holds floating-point numbers "
            f"({kind}) and dtype={dtype.name} is an integer type; pass dtype='float32' or "
            "'float64'."
        )


def _int_limit(dtype: np.dtype) -> int:
    """The largest integer below which a float ``dtype`` holds every integer exactly."""
    return 2 ** (np.finfo(dtype).nmant + 1)


def _int_dtype_hint(lo: int, hi: int) -> str | None:
    """The integer dtype that holds every value in ``[lo, hi]`` exactly, if any."""
    for name in ("int64", "uint64"):
        info = np.iinfo(name)
        if info.min <= lo and hi <= info.max:
            return name
    return None


def _check_ints(col: pa.ChunkedArray, dtype: np.dtype, op: str, part: Part, name: str) -> None:
    """Integers must be exact in ``dtype`` (float32 holds integers up to 2**24)."""
    chunks = [(c.drop_null() if c.null_count else c).to_numpy() for c in col.chunks]
    chunks = [c for c in chunks if len(c)]  # zero-copy without nulls
    if not chunks:
        return
    lo, hi = min(int(c.min()) for c in chunks), max(int(c.max()) for c in chunks)
    if dtype.kind == "f":
        limit = _int_limit(dtype)
        bad = lo if -lo > hi else hi
        if abs(bad) > limit:
            row = _first_true(pc.equal(col, pa.scalar(bad, col.type)))
            wide = _int_dtype_hint(lo, hi)
            fix = (f"pass dtype='float64' (integers up to {2**53}) or {wide!r}"
                   if abs(bad) <= 2**53 else f"pass dtype={wide!r}")  # fmt: skip
            raise DTypeMismatchError(
                f"{_where(op, part, row, name)} holds the integer {bad}, which {dtype.name} "
                f"cannot hold exactly (integers up to {limit}); {fix}, or leave the column "
                "out with columns=[...]."
            )
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        if lo < info.min or hi > info.max:
            bad = lo if lo < info.min else hi
            row = _first_true(pc.equal(col, pa.scalar(bad, col.type)))
            wide = _int_dtype_hint(lo, hi)
            raise DTypeMismatchError(
                f"{_where(op, part, row, name)} holds {bad}, outside {dtype.name}'s range "
                f"[{info.min}, {info.max}]; pass "
                + (f"dtype={wide!r}." if wide else "a wider dtype.")
            )


_INT_TEXT = r"^[+-]?[0-9]+$"  # an integer literal (after trimming blanks)


def _needs_texts(col: pa.ChunkedArray, dtype: np.dtype, allow_nan: bool = False) -> bool:
    """Whether a floating-point CSV column may hold an integer literal that ``dtype``
    cannot hold exactly (or, into an integer dtype, may hold integer literals only)."""
    if not pa.types.is_floating(col.type) or dtype.kind not in "fiu" or not len(col):
        return False
    if dtype.kind in "iu":
        return True  # refused as floating-point otherwise: the texts decide (rare path)
    if col.null_count and not allow_nan:
        return False  # refused by check_table
    limit = _int_limit(dtype)
    for chunk in col.chunks:  # numpy's min/max: 10x faster than pyarrow's min_max
        if len(chunk):
            x = chunk.to_numpy(zero_copy_only=False)  # nulls: NaN
            if allow_nan:
                x = x[~np.isnan(x)]
                if not len(x):
                    continue
            lo, hi = x.min(), x.max()
            if np.isnan(lo) or lo <= -limit or hi >= limit:  # 2**53 + 1 reads as 2**53
                return True
    return False


def exact_integers(
    table: pa.Table, dtype: np.dtype, part: Part, *, op: str,
    texts: Callable[[list[str]], pa.Table], allow_nan: bool = False,
) -> pa.Table:  # fmt: skip
    """CSV only: the integer literals that pyarrow read as floating-point numbers (beyond
    int64's range, or in a column that also holds floats), made exact or refused.

    ``texts(names)`` re-reads the part's columns ``names`` as strings (called only when
    a column's values reach beyond what ``dtype`` holds exactly, or into an integer
    dtype). Into a float ``dtype`` an integer literal beyond its exact range (2**53 for
    float64) is refused, as for an integer column; into an integer dtype a column of
    integer literals only is parsed exactly (e.g. ids up to 2**64 - 1 into uint64).

    Raises:
      DTypeMismatchError: an integer literal that ``dtype`` cannot hold exactly.
    """
    suspects = [n for n, c in zip(table.column_names, table.columns, strict=True)
                if _needs_texts(c, dtype, allow_nan)]  # fmt: skip
    if not suspects:
        return table
    strings = texts(suspects)
    for name in suspects:
        text = pc.utf8_trim_whitespace(strings.column(name))
        is_int = pc.match_substring_regex(text, _INT_TEXT)
        all_ints = bool(pc.all(is_int).as_py())
        if dtype.kind == "f":
            limit = _int_limit(dtype)
            col = table.column(name)
            near = pc.and_(is_int, pc.greater_equal(pc.abs(col), limit))
            for row in pc.indices_nonzero(near).to_pylist():  # the read values are rounded:
                if abs(int(text[row].as_py())) > limit:  # the text decides
                    raise _inexact(text, row, all_ints, dtype, limit, op, part, name)
        elif all_ints:
            digits = pc.replace_substring_regex(text, r"^\+", "")
            try:
                exact = pc.cast(digits, pa.from_numpy_dtype(dtype))
            except pa.ArrowInvalid:
                raise _out_of_range(digits, dtype, op, part, name) from None
            j = table.column_names.index(name)
            table = table.set_column(j, name, exact)
    return table


def _ints_of(digits: pa.ChunkedArray) -> list[int | None]:
    return [None if v is None else int(v) for v in digits.to_pylist()]


def _inexact(text: pa.ChunkedArray, row: int, all_ints: bool, dtype: np.dtype, limit: int,
             op: str, part: Part, name: str) -> DTypeMismatchError:  # fmt: skip
    value = int(text[row].as_py())
    wide = why = None
    if all_ints:
        ints = [v for v in _ints_of(text) if v is not None]
        lo, hi = min(ints), max(ints)
        wide = _int_dtype_hint(lo, hi)
        why = f"its integers run from {lo} to {hi}"
    if wide is not None:
        fix = (f"pass dtype={wide!r} (every cell of the column is an integer in its range), "
               "or leave the column out with columns=[...]")  # fmt: skip
    elif abs(value) <= 2**53:
        fix = "pass dtype='float64', or leave the column out with columns=[...]"
    else:
        why = why or "it also holds fractional numbers"
        fix = (f"no dtype holds the whole column exactly ({why}): leave it out with "
               f"columns=[...], or write the value as a float ({float(value)!r}) if rounding "
               "it is acceptable")  # fmt: skip
    return DTypeMismatchError(
        f"{_where(op, part, row, name)} holds the integer {value}, which {dtype.name} cannot "
        f"hold exactly (integers up to {limit}); {fix}."
    )


def _out_of_range(digits: pa.ChunkedArray, dtype: np.dtype, op: str, part: Part,
                  name: str) -> DTypeMismatchError:  # fmt: skip
    info = np.iinfo(dtype)
    ints = _ints_of(digits)
    row, bad = next((r, v) for r, v in enumerate(ints)
                    if v is not None and not info.min <= v <= info.max)  # fmt: skip
    present = [v for v in ints if v is not None]
    lo, hi = min(present), max(present)
    wide = _int_dtype_hint(lo, hi)
    fix = (f"pass dtype={wide!r}" if wide else
           f"no integer dtype holds the whole column (its integers run from {lo} to {hi}): "
           "leave it out with columns=[...]")  # fmt: skip
    return DTypeMismatchError(
        f"{_where(op, part, row, name)} holds {bad}, outside {dtype.name}'s range "
        f"[{info.min}, {info.max}]; {fix}."
    )


def _check_finite(out: np.ndarray, table: pa.Table, op: str, part: Part, first_row: int,
                  allow_nan: bool = False) -> None:  # fmt: skip
    if out.dtype.kind != "f" or np.isfinite(out).all():
        return
    bad = np.isinf(out) if allow_nan else ~np.isfinite(out)
    if allow_nan and not bad.any():
        return
    row, j = (int(v[0]) for v in np.nonzero(bad))
    source = table.column(j)[row].as_py()
    what = (f"{source!r}" if not np.isfinite(source) else
            f"{source!r}, which overflows {out.dtype.name}")  # fmt: skip
    fix = " or pass dtype='float64'." if np.isfinite(source) else "."
    if np.isnan(source):
        fix = " or pass allow_nan=True to store NaN."
    raise NonFiniteError(
        f"{_where(op, part, first_row + row, table.column_names[j])} holds {what}; jaxwren "
        "stores finite numbers only: fix the cell" + fix
    )


_STEP = 8192  # rows converted at once: the row-major slab stays in cache across columns


def _numbers(col: pa.Array) -> np.ndarray:
    """A column's values as numpy (missing cells, allowed by then: NaN)."""
    if col.null_count and (pa.types.is_boolean(col.type) or pa.types.is_null(col.type)):
        col = pc.cast(col, pa.float64())
    return col.to_numpy(zero_copy_only=False)


def _fill_rows(out: np.ndarray, table: pa.Table) -> None:
    """``out[:] = table`` (row-major, cast to ``out.dtype``) in slabs of rows, so that
    the strided writes of each column land in cache (~25% faster than column by column
    over the whole part)."""
    r = 0
    for batch in table.to_batches():
        cols = [_numbers(c) for c in batch.columns]
        n = batch.num_rows
        for s in range(0, n, _STEP):
            slab = out[r + s : r + min(n, s + _STEP)]
            for j, c in enumerate(cols):
                slab[:, j] = c[s : s + _STEP]
        r += n


def check_table(table: pa.Table, dtype: np.dtype, part: Part, *, op: str,
                allow_nan: bool = False) -> None:  # fmt: skip
    """Everything :func:`to_matrix` refuses that can be seen before converting.

    Raises:
      TableParseError: no rows, a non-numeric cell, a missing one (unless ``allow_nan``).
      DTypeMismatchError: an integer ``dtype`` cannot hold exactly.
    """
    if table.num_rows == 0:
        raise TableParseError(
            f"{op}: the part {part.url} has no data rows; remove it from the data set or "
            "fix the glob."
        )
    for name, col in zip(table.column_names, table.columns, strict=True):
        _check_column(col, dtype, op, part, name, allow_nan)


def fill(out: np.ndarray, table: pa.Table, part: Part, *, op: str, first_row: int = 0,
         allow_nan: bool = False) -> None:  # fmt: skip
    """Converts a table passed by :func:`check_table` (the rows of ``part`` from
    ``first_row`` on) into ``out`` (``(table rows, columns)`` of the matrix dtype).

    Raises:
      NonFiniteError: an infinite cell, a value that overflows ``out.dtype``, a NaN
        (unless ``allow_nan``).
    """
    with np.errstate(over="ignore", invalid="ignore"):  # found (and named) below
        _fill_rows(out, table)
    _check_finite(out, table, op, part, first_row, allow_nan)


def to_matrix(table: pa.Table, dtype: np.dtype, part: Part, *, op: str,
              allow_nan: bool = False) -> np.ndarray:  # fmt: skip
    """The table as a ``(rows, columns)`` array of ``dtype`` (see the module docstring).

    Raises:
      TableParseError: no rows, a non-numeric or missing cell.
      DTypeMismatchError: an integer ``dtype`` cannot hold exactly.
      NonFiniteError: an infinite cell, or a value that overflows ``dtype``.
    """
    check_table(table, dtype, part, op=op, allow_nan=allow_nan)
    out = np.empty((table.num_rows, table.num_columns), dtype)
    fill(out, table, part, op=op, allow_nan=allow_nan)
    return out
