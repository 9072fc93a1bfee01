"""CSV and Parquet part bytes -> pyarrow tables of the selected columns (pyarrow parses;
this module names what is wrong: file, row, column).

A :class:`Format` reads one part's column names cheaply (the CSV header line, the Parquet
footer) and parses the selected columns. Rows are counted from 1 among the data rows (the
header is not counted); ragged rows are located by re-parsing on the error path only.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from jaxwren.errors import ConfigError, TableParseError
from jaxwren.tables.glob import Part

__all__ = ["CSV", "Format", "PARQUET", "csv_format", "resolve_columns"]


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
    parse = pacsv.ParseOptions(delimiter=parse.delimiter, invalid_row_handler=handler)
    with contextlib.suppress(pa.ArrowInvalid):
        pacsv.read_csv(pa.BufferReader(data), read_options=opts, parse_options=parse)
    return found[0] if found else None


@dataclasses.dataclass(frozen=True)
class Format:
    """How to read one kind of part file.

    Attributes:
      name: ``"csv"`` or ``"parquet"`` (the public call is ``from_<name>``).
      header: CSV only: the first line names the columns (else they are ``f0, f1, ...``).
    """

    name: str
    header: bool = True

    @property
    def op(self) -> str:
        return f"from_{self.name}"

    def open(self, data: bytes, part: Part) -> Any:
        """What :meth:`column_names` and :meth:`parse` take: the bytes of a CSV part, or
        a Parquet part with its footer read once."""
        return self._parquet(data, part) if self.name == "parquet" else data

    def column_names(self, data: Any, part: Part) -> list[str]:
        """The part's column names, from its header line or Parquet footer (``data``:
        the part's bytes or :meth:`open`'s result)."""
        if self.name == "parquet":
            return list(self._parquet(data, part).schema_arrow.names)
        end = data.find(b"\n")
        first = data if end < 0 else data[: end + 1]
        if not first.strip():
            raise TableParseError(
                f"{self.op}: the part {part.url} is empty (no header, no rows); remove it "
                "from the data set or fix the glob."
            )
        try:  # the header line alone: Python's csv module, as pyarrow's defaults read it
            fields = next(csv.reader([first.decode("utf-8-sig").rstrip("\r\n")]))
        except (UnicodeDecodeError, csv.Error, StopIteration):
            return self._csv(first, part, None).column_names
        return fields if self.header else [f"f{i}" for i in range(len(fields))]

    def parse(self, data: Any, part: Part, names: list[str]) -> pa.Table:
        """The columns ``names`` of a part, in that order (``data``: as
        :meth:`column_names`)."""
        if self.name == "parquet":
            return self._parquet(data, part).read(columns=names, use_threads=True)
        return self._csv(data, part, names)

    # ----------------------------------------------------------------- the two kinds
    def _read_options(self) -> pacsv.ReadOptions:
        return pacsv.ReadOptions(
            use_threads=True, autogenerate_column_names=not self.header, block_size=1 << 21
        )

    def _csv(self, data: bytes, part: Part, names: list[str] | None) -> pa.Table:
        read, parse = self._read_options(), pacsv.ParseOptions()
        convert = pacsv.ConvertOptions(include_columns=names, strings_can_be_null=True)
        try:
            return pacsv.read_csv(pa.BufferReader(data), read_options=read,
                                  parse_options=parse, convert_options=convert)  # fmt: skip
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


CSV = Format("csv", header=True)
PARQUET = Format("parquet")


def csv_format(header: bool) -> Format:
    if not isinstance(header, bool):
        raise ConfigError(f"from_csv: header={header!r} must be True or False.")
    return Format("csv", header=header)


def resolve_columns(
    columns: Any, names: list[str], part: Part, *, op: str, header: bool
) -> list[str]:
    """The selected column names (all of ``names`` for None; ints index ``names``).

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
        elif isinstance(c, str) and c in names:
            out.append(c)
        else:
            hint = "" if header else " (header=False: select columns by index)"
            raise ConfigError(
                f"{op}: column {c!r} is not in {part.url}; its columns are "
                f"{', '.join(map(repr, names[:20]))}{hint}."
            )
    if not out:
        raise ConfigError(f"{op}: columns=[] selects nothing; name at least one column.")
    return out
