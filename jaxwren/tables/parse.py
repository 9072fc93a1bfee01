"""CSV and Parquet part bytes -> pyarrow tables of the selected columns (pyarrow parses;
this module names what is wrong: file, row, column).

A :class:`Format` reads one part's column names cheaply (the CSV header record, the
Parquet footer) and parses the selected columns. Rows are counted from 1 among the data
rows (the header is not counted); ragged rows are located by re-parsing on the error path
only. A quoted CSV field may hold newlines (in the header too): a part that may hold one
is parsed with ``newlines_in_values`` (slower; see :func:`_parse_options`). Index columns
that pandas (or dask) stored in a Parquet part (``__index_level_0__``,
``__null_dask_index__``, a named index: the ``index_columns`` of its pandas metadata) are
not data: they are left out unless named in ``columns``.

A CSV part whose name ends with ``.gz``, ``.bz2`` or ``.zst`` is decompressed (by pyarrow's
codecs) before it is parsed; the codec comes from the extension. ``delimiter`` is the
field separator; ``na_values`` the strings read as missing (pyarrow's ``null_values``:
they replace pyarrow's default list, ``""``, ``NA``, ``nan``, ``null``, ...). Missing cells
become NaN only with ``allow_nan`` (else :mod:`~jaxwren.tables.convert` refuses them).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from jaxwren.errors import ConfigError, TableParseError
from jaxwren.tables.convert import exact_integers
from jaxwren.tables.glob import Part

__all__ = [
    "CODECS",
    "CSV",
    "Format",
    "PARQUET",
    "check_nan_dtype",
    "codec_of",
    "csv_format",
    "parquet_format",
    "resolve_columns",
]

CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}  # by extension


def codec_of(key: str) -> str | None:
    """The compression codec of a part named ``key`` (by its extension), or None."""
    low = key.lower()
    return next((c for ext, c in CODECS.items() if low.endswith(ext)), None)


def _located_ragged(data: bytes, read: Any, parse: pacsv.ParseOptions) -> Any:
    """The first ragged row of a CSV (re-parsed single-threaded so rows are numbered)."""
    found: list[Any] = []

    def handler(row: Any) -> str:
        found.append(row)
        return "error"

    opts = pacsv.ReadOptions(
        use_threads=False,
        autogenerate_column_names=read.autogenerate_column_names,
        block_size=read.block_size,
    )
    parse = pacsv.ParseOptions(
        delimiter=parse.delimiter,
        newlines_in_values=parse.newlines_in_values,
        invalid_row_handler=handler,
    )
    with contextlib.suppress(pa.ArrowInvalid):
        pacsv.read_csv(pa.BufferReader(data), read_options=opts, parse_options=parse)
    return found[0] if found else None


def _header_record(data: bytes) -> bytes:
    """The CSV's first record with its line end: up to the first newline outside quotes
    (a quoted field may hold newlines; ``""`` inside quotes keeps the count even)."""
    quotes, start = 0, 0
    while (end := data.find(b"\n", start)) >= 0:
        quotes += data.count(b'"', start, end)
        if quotes % 2 == 0:
            return data[: end + 1]
        start = end + 1
    return data


def _parse_options(data: bytes, delimiter: str = ",") -> pacsv.ParseOptions:
    """pyarrow's defaults, with newlines in quoted values where a part may hold one: a
    quote after the first record, or a newline inside it (they make pyarrow's chunking
    20-40% slower; a quoted header such as R's ``"x","y"`` alone needs none)."""
    first = len(_header_record(data))
    quoted = data.find(b"\n", 0, first - 1) >= 0 or data.find(b'"', first) >= 0
    return pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=quoted)


def _pandas_index(schema: pa.Schema) -> list[str]:
    """The columns of a Parquet schema that hold a pandas (or dask) index: the strings
    among its pandas metadata's ``index_columns`` (a RangeIndex is a dict, not stored)."""
    try:
        meta = schema.pandas_metadata or {}
    except (ValueError, TypeError):  # metadata that is not pandas' JSON: no index
        return []
    index = meta.get("index_columns") if isinstance(meta, dict) else None
    names = set(schema.names)
    return [c for c in index or [] if isinstance(c, str) and c in names]


@dataclasses.dataclass(frozen=True)
class Format:
    """How to read one kind of part file.

    Attributes:
      name: ``"csv"`` or ``"parquet"`` (the public call is ``from_<name>``).
      header: CSV only: the first line names the columns (else they are ``f0, f1, ...``).
      delimiter: CSV only: the field separator (one character).
      na_values: CSV only: the strings read as missing (None: pyarrow's default list).
      allow_nan: missing cells (CSV: empty or ``na_values``; Parquet: nulls) and NaN
        values are stored as NaN; else they are refused (infinities are always refused).
    """

    name: str
    header: bool = True
    delimiter: str = ","
    na_values: tuple[str, ...] | None = None
    allow_nan: bool = False

    @property
    def op(self) -> str:
        return f"from_{self.name}"

    def open(self, data: bytes, part: Part) -> Any:
        """What :meth:`column_names` and :meth:`parse` take: the bytes of a CSV part, or
        a Parquet part with its footer read once, or a compressed CSV part's
        decompressed bytes."""
        if self.name == "parquet":
            return self._parquet(data, part)
        codec = codec_of(part.key)
        return data if codec is None else _decompress(data, codec, part, self.op)

    def column_names(self, data: Any, part: Part) -> list[str]:
        """The part's data column names, from its header record or Parquet footer
        (``data``: the part's bytes or :meth:`open`'s result); a Parquet part's pandas
        index columns are not among them (see :meth:`index_names`)."""
        if self.name == "parquet":
            schema = self._parquet(data, part).schema_arrow
            index = set(_pandas_index(schema))
            return [n for n in schema.names if n not in index]
        first = _header_record(data)
        if not first.strip():
            raise TableParseError(
                f"{self.op}: the part {part.url} is empty (no header, no rows); remove it "
                "from the data set or fix the glob."
            )
        if b'"' in first:  # quoted names (maybe holding newlines): as pyarrow reads them
            return self._csv(first, part, None).column_names
        try:  # the header line alone: Python's csv module, as pyarrow's defaults read it
            line = first.decode("utf-8-sig").rstrip("\r\n")
            fields = next(csv.reader([line], delimiter=self.delimiter))
        except (UnicodeDecodeError, csv.Error, StopIteration):
            return self._csv(first, part, None).column_names
        return fields if self.header else [f"f{i}" for i in range(len(fields))]

    def index_names(self, data: Any, part: Part) -> list[str]:
        """The stored index columns of a Parquet part written by pandas or dask (not
        data: selected only by name); none for a CSV part."""
        if self.name != "parquet":
            return []
        return _pandas_index(self._parquet(data, part).schema_arrow)

    def parse(
        self, data: Any, part: Part, names: list[str], dtype: np.dtype | None = None
    ) -> pa.Table:
        """The columns ``names`` of a part, in that order (``data``: as
        :meth:`column_names`). With ``dtype`` (the matrix dtype), a CSV's integer
        literals that pyarrow read as floats are made exact in it or refused
        (:func:`~jaxwren.tables.convert.exact_integers`).

        Raises:
          TableParseError: the part cannot be parsed, or lacks a column of ``names``.
          DTypeMismatchError: an integer literal that ``dtype`` cannot hold exactly.
        """
        if self.name == "parquet":
            pf = self._parquet(data, part)
            missing = [n for n in names if n not in pf.schema_arrow.names]
            if missing:
                raise TableParseError(
                    f"{self.op}: the part {part.url} has no column {missing[0]!r} (selected "
                    "with columns=[...]); every part needs the selected columns."
                )
            return pf.read(columns=names, use_threads=True)
        table = self._csv(data, part, names)
        if dtype is None:
            return table

        def texts(cols: list[str]) -> pa.Table:
            return self._csv(data, part, cols, text=True)

        return exact_integers(table, dtype, part, op=self.op, texts=texts,
                              allow_nan=self.allow_nan)  # fmt: skip

    # ----------------------------------------------------------------- the two kinds
    def _read_options(self) -> pacsv.ReadOptions:
        return pacsv.ReadOptions(
            use_threads=True, autogenerate_column_names=not self.header, block_size=1 << 21
        )

    def _csv(self, data: bytes, part: Part, names: list[str] | None, *,
             text: bool = False) -> pa.Table:  # fmt: skip
        """The columns ``names`` (None: all) of a CSV part (``text``: as strings)."""
        read, parse = self._read_options(), _parse_options(data, self.delimiter)
        types = {n: pa.string() for n in names or []} if text else None
        nulls = {} if self.na_values is None else {"null_values": list(self.na_values)}
        convert = pacsv.ConvertOptions(include_columns=names, strings_can_be_null=True,
                                       column_types=types, **nulls)  # fmt: skip
        try:
            return pacsv.read_csv(pa.BufferReader(data), read_options=read,
                                  parse_options=parse, convert_options=convert)  # fmt: skip
        except KeyError as e:  # pyarrow.ArrowKeyError: a selected column is not there
            raise TableParseError(
                f"{self.op}: the part {part.url} has no column among {names!r} as pyarrow "
                f"parses its header ({e}); check the header's quoting and delimiters."
            ) from None
        except pa.ArrowInvalid as e:
            msg = str(e)
            if "Expected" in msg and "columns, got" in msg:
                row = _located_ragged(data, read, parse)
                where = f"line {row.number}" if row is not None and row.number else "a row"
                got = (
                    f"{row.actual_columns} fields, expected {row.expected_columns}" if row else msg
                )
                text = f" ({row.text[:80]!r})" if row is not None else ""
                raise TableParseError(
                    f"{self.op}: the part {part.url} has a ragged row: {where} has {got}{text}; "
                    "every row needs one field per column (check delimiters and quoting)."
                ) from None
            if "Empty CSV file" in msg:
                raise TableParseError(
                    f"{self.op}: the part {part.url} is empty (0 bytes); remove it from the "
                    "data set or fix the glob."
                ) from None
            raise TableParseError(f"{self.op}: cannot parse the part {part.url}: {msg}") from None

    def _parquet(self, data: Any, part: Part) -> pq.ParquetFile:
        if isinstance(data, pq.ParquetFile):
            return data
        try:
            return pq.ParquetFile(pa.BufferReader(data))
        except (pa.ArrowInvalid, OSError) as e:
            raise TableParseError(
                f"{self.op}: the part {part.url} is not a Parquet file ({e}); check the glob "
                "(it should match only .parquet parts)."
            ) from None


def _decompress(data: bytes, codec: str, part: Part, op: str) -> bytes:
    """A compressed part's bytes, decompressed by pyarrow (several gzip members too)."""
    try:
        return pa.CompressedInputStream(pa.BufferReader(data), codec).read()
    except (OSError, pa.ArrowException) as e:
        raise TableParseError(
            f"{op}: the part {part.url} is not valid {codec} data ({e}); the codec comes "
            "from the extension (.gz, .bz2, .zst): fix or rename the file, or narrow the glob."
        ) from None


CSV = Format("csv", header=True)
PARQUET = Format("parquet")


def _allow_nan(allow_nan: Any, na_values: Any, op: str) -> bool:
    if allow_nan is not None and not isinstance(allow_nan, bool):
        raise ConfigError(f"{op}: allow_nan={allow_nan!r} must be True, False or None.")
    if allow_nan is False and na_values is not None:
        raise ConfigError(
            f"{op}: na_values={na_values!r} asks for those cells to be read as NaN, which "
            "allow_nan=False refuses; drop one of the two."
        )
    return na_values is not None if allow_nan is None else allow_nan


def csv_format(header: bool, *, delimiter: str = ",", na_values: Any = None,
               allow_nan: bool | None = None, op: str = "from_csv") -> Format:  # fmt: skip
    """A checked CSV :class:`Format`. ``allow_nan`` None: True when ``na_values`` is
    given (the user named what is missing), else False.

    Raises:
      ConfigError: a bad ``header``, ``delimiter``, ``na_values`` or ``allow_nan``.
    """
    if not isinstance(header, bool):
        raise ConfigError(f"{op}: header={header!r} must be True or False.")
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '\r\n"':
        raise ConfigError(
            f"{op}: delimiter={delimiter!r} must be one character other than a quote or a "
            "line end, e.g. ',' or '\\t' or ';'."
        )
    if na_values is not None:
        if (
            isinstance(na_values, str)
            or not isinstance(na_values, list | tuple)
            or not all(isinstance(v, str) for v in na_values)
        ):
            raise ConfigError(
                f"{op}: na_values={na_values!r} must be a list of strings, e.g. "
                "na_values=['', 'NA', '-999']."
            )
        na_values = tuple(na_values)
    nan = _allow_nan(allow_nan, na_values, op)
    return Format("csv", header=header, delimiter=delimiter, na_values=na_values, allow_nan=nan)


def parquet_format(*, allow_nan: bool | None = None, op: str = "from_parquet") -> Format:
    """A checked Parquet :class:`Format` (``allow_nan``: nulls and NaN stored as NaN)."""
    nan = _allow_nan(allow_nan, None, op)
    return PARQUET if not nan else Format("parquet", allow_nan=True)


def check_nan_dtype(fmt: Format, dtype: np.dtype) -> None:
    """NaN needs a floating-point dtype.

    Raises:
      ConfigError: ``allow_nan`` (or ``na_values``) with an integer or bool dtype.
    """
    if fmt.allow_nan and dtype.kind != "f":
        raise ConfigError(
            f"{fmt.op}: allow_nan (or na_values) stores missing cells as NaN, which "
            f"dtype={dtype.name} cannot hold; pass dtype='float32' or 'float64'."
        )


def resolve_columns(
    columns: Any, names: list[str], part: Part, *, op: str, header: bool,
    index: Sequence[str] = (),
) -> list[str]:  # fmt: skip
    """The selected column names (all of ``names`` for None; ints index ``names``;
    a Parquet part's pandas ``index`` columns only by name).

    Raises:
      ConfigError: a name or index that the first part does not have, or a bad value.
    """
    if columns is None:
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise TableParseError(
                f"{op}: the part {part.url} has the column {dup!r} twice; name every column "
                "once, or pass header=False and select columns by index."
            )
        return list(names)
    if isinstance(columns, str | int) or not hasattr(columns, "__iter__"):
        raise ConfigError(f"{op}: columns={columns!r} must be a list of names or indices.")
    out = []
    for c in columns:
        if isinstance(c, int) and not isinstance(c, bool):
            if not -len(names) <= c < len(names):
                raise ConfigError(
                    f"{op}: column index {c} is out of range: {part.url} has {len(names)} columns."
                )
            out.append(names[c])
        elif isinstance(c, str) and (c in names or c in index):
            out.append(c)
        else:
            hint = "" if header else " (header=False: select columns by index)"
            if index:
                hint += f" (and the pandas index {', '.join(map(repr, index))})"
            raise ConfigError(
                f"{op}: column {c!r} is not in {part.url}; its columns are "
                f"{', '.join(map(repr, names[:20]))}{hint}."
            )
    if not out:
        raise ConfigError(f"{op}: columns=[] selects nothing; name at least one column.")
    return out
