"""Part files named by a glob over a store's keys (``s3://bucket/csv/dev/part*.csv``).

The pattern is a storage URL (same schemes, endpoint and credentials as a BigMatrix) whose
last path components may hold ``*`` (any characters but ``/``), ``?`` (one character but
``/``), ``[...]`` / ``[!...]`` (a character class) and ``**`` as a whole component (any
number of directories, none included: ``data/**/*.csv`` matches ``data/a.csv`` and
``data/2024/01/a.csv``). A list of patterns names the union of their parts (in one store).

As pyarrow.dataset and dask do, files and directories below the pattern's literal
directory whose name starts with ``_`` or ``.`` are skipped (``_SUCCESS``,
``_common_metadata``, ``_temporary/``, ``.part-0.crc``) unless the pattern's own
component starts with that character (``data/_part*.csv`` reads them).

Matching keys are listed through the store's TensorStore kvstore and sorted: ``"natural"``
order (the default) compares runs of digits as numbers, so the ``part.0 ... part.11`` that
dask's ``to_parquet`` writes come 0, 1, 2, ..., 10, 11, as dask's ``read_parquet`` reads
them; ``"name"`` is plain lexicographic order (pyarrow.dataset's: 0, 1, 10, 11, 2, ...).
Zero-padded names (dask's ``to_csv``: ``part.00``) sort the same either way. That order
(then the list's order, for several patterns) is the row order of the data set.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Any

import tensorstore as ts

from jaxwren.config import StorageConfig
from jaxwren.errors import (
    ConfigError,
    OutputConflictError,
    PartsNotFoundError,
    UnsupportedURLError,
)
from jaxwren.storage.backend import open_kvstore, translate_errors
from jaxwren.storage.urls import Location, parse_url

__all__ = [
    "ORDERS",
    "Part",
    "Parts",
    "check_order",
    "check_output",
    "expand",
    "glob_regex",
    "natural_key",
    "pattern_list",
]

ORDERS = ("natural", "name")
_GLOB_CHARS = "*?["
_HIDDEN = ("_", ".")  # name prefixes of marker and hidden files (pyarrow's ignore_prefixes)
_SHOWN = 10  # keys shown when nothing matches


@dataclasses.dataclass(frozen=True)
class Part:
    """One part file: its key under the pattern's directory and a URL for messages."""

    key: str
    url: str


@dataclasses.dataclass(frozen=True)
class Parts:
    """The parts a pattern matched, in row order, and the kvstore that reads them.

    Attributes:
      pattern: the pattern as given (several: joined with ``", "``).
      loc: the pattern's parsed location (scheme and bucket of the store).
      directory: the literal key prefix above the first glob component (ends with ``/``;
        several patterns: the longest directory above all of them).
      kv: a kvstore opened at ``directory``.
      parts: the matching parts, in row order.
    """

    pattern: str
    loc: Location
    directory: str
    kv: ts.KvStore
    parts: tuple[Part, ...]


def natural_key(key: str) -> tuple[Any, ...]:
    """Sort key comparing runs of digits as numbers (``part.2`` before ``part.10``), then
    the key itself (``p01`` and ``p1`` keep a fixed order)."""
    runs = re.split(r"(\d+)", key)
    return (tuple(int(r) if i % 2 else r for i, r in enumerate(runs)), key)


def _component_regex(comp: str) -> str:
    """One path component of a glob (``*``/``?`` never cross ``/``)."""
    out, i = [], 0
    while i < len(comp):
        c = comp[i]
        if c == "*":
            out.append("[^/]*")
            while i + 1 < len(comp) and comp[i + 1] == "*":  # ``**`` inside a name: ``*``
                i += 1
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := comp.find("]", i + 2)) != -1:
            body = comp[i + 1 : end]
            neg = body.startswith("!")
            body = body[1:] if neg else body
            out.append("[" + ("^" if neg else "") + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex matching the keys ``pattern`` names: ``*``/``?`` never cross ``/``; a
    whole ``**`` component matches any number of directories (none included). Group
    ``c<k>`` holds what component ``k`` matched."""
    comps = pattern.split("/")
    out = []
    for k, comp in enumerate(comps):
        last = k == len(comps) - 1
        if comp == "**":
            out.append(f"(?P<c{k}>.*)" if last else f"(?P<c{k}>(?:[^/]+/)*)")
        else:
            out.append(f"(?P<c{k}>{_component_regex(comp)})" + ("" if last else "/"))
    return re.compile("".join(out))


def _hidden(match: re.Match[str], comps: list[str]) -> bool:
    """Whether a matched key passes through a name starting with ``_`` or ``.`` that the
    pattern's component does not itself start with (a marker or hidden file or
    directory, skipped as pyarrow.dataset and dask skip them)."""
    for k, comp in enumerate(comps):
        names = [n for n in match.group(f"c{k}").split("/") if n]
        if any(n.startswith(_HIDDEN) and not comp.startswith(n[0]) for n in names):
            return True
    return False


def _split(pattern: str, op: str) -> tuple[Location, str, str]:
    """``(location, directory, glob)``: the literal directory above the first component
    holding a glob character, and the rest of the pattern below it."""
    loc = parse_url(pattern)
    comps = loc.path.rstrip("/").split("/")
    first = next((k for k, c in enumerate(comps) if any(g in c for g in _GLOB_CHARS)), None)
    if first is None:
        first = len(comps) - 1  # no glob: the pattern names one part
    if loc.scheme == "memory" and first == 0:
        raise UnsupportedURLError(
            f"{op}: pattern {pattern!r} puts a glob in the memory store's name; use "
            "memory://name/part*.csv."
        )
    directory = "/".join(comps[:first]) + "/" if first else ""
    return loc, directory, "/".join(comps[first:])


def _prefix_range(prefix: str) -> ts.KvStore.KeyRange:
    """The keys starting with ``prefix``."""
    raw = prefix.encode()
    while raw and raw[-1] == 0xFF:
        raw = raw[:-1]
    if not raw:
        return ts.KvStore.KeyRange()
    return ts.KvStore.KeyRange(prefix.encode(), raw[:-1] + bytes([raw[-1] + 1]))


def _url(loc: Location, path: str) -> str:
    if loc.scheme == "file":
        return path
    if loc.scheme == "memory":
        return f"memory://{path}"
    return f"{loc.scheme}://{loc.bucket}/{path}"


def _shown(keys: list[str]) -> str:
    return ", ".join(keys[:_SHOWN]) + (f", ... ({len(keys)} keys)" if len(keys) > _SHOWN else "")


def pattern_list(pattern: Any, *, op: str) -> list[str]:
    """The patterns of ``pattern`` (a str, a path, or a non-empty list/tuple of them).

    Raises:
      ConfigError: an empty list, or an item that is neither a str nor a path.
    """
    if isinstance(pattern, str | os.PathLike):
        return [os.fspath(pattern)]
    if isinstance(pattern, Sequence) and not isinstance(pattern, bytes):
        items = list(pattern)
        bad = [p for p in items if not isinstance(p, str | os.PathLike)]
        if not items or bad:
            raise ConfigError(
                f"{op}: pattern must be a URL, a path, or a non-empty list of them; got "
                + ("an empty list." if not items else f"{bad[0]!r} in the list.")
            )
        return [os.fspath(p) for p in items]
    raise ConfigError(
        f"{op}: pattern={pattern!r} must be a URL or path (or a list of them), such as "
        "'s3://bucket/csv/part*.csv'."
    )


def check_order(order: Any, *, op: str) -> str:
    if order not in ORDERS:
        raise ConfigError(
            f"{op}: order={order!r} must be 'natural' (digits compared as numbers: part.2 "
            "before part.10, as dask reads) or 'name' (plain lexicographic order)."
        )
    return order


def _matches(pattern: str, config: StorageConfig, op: str, order: str
             ) -> tuple[Location, str, list[str], ts.KvStore]:  # fmt: skip
    """``(location, directory, keys, kv)``: the keys below ``directory`` that ``pattern``
    matches, hidden ones skipped, sorted in ``order``, and the kvstore at ``directory``."""
    loc, directory, glob = _split(pattern, op)
    regex, comps = glob_regex(glob), glob.split("/")
    literal = re.split(r"[*?\[]", glob, maxsplit=1)[0]
    with translate_errors(f"{op}({pattern!r})", loc):
        kv = open_kvstore(loc, config, path=directory)
        keys = [k.decode() for k in kv.list(_prefix_range(literal)).result()]
        found = [(k, m) for k in keys if k and not k.endswith("/") and (m := regex.fullmatch(k))]
        matched = [k for k, m in found if not _hidden(m, comps)]
        skipped = sorted(k for k, m in found if _hidden(m, comps))
        held = sorted(k.decode() for k in kv.list().result()) if not matched else []
    where = _url(loc, directory)
    if not matched and skipped:
        raise PartsNotFoundError(
            f"{op}: {pattern!r} matches only marker or hidden files, which are skipped "
            f"(names starting with '_' or '.', as pyarrow and dask skip them): "
            f"{_shown(skipped)} in {where!r}. Point the pattern at the data files; to read "
            "such a file, start the pattern's own name with that character (e.g. '_part*.csv')."
        )
    if not matched:
        raise PartsNotFoundError(
            f"{op}: no part file matches {pattern!r}; "
            + (f"{where!r} holds: {_shown(held)}." if held else
               f"{where!r} holds nothing (check the URL and the bucket).")
            + " Globs match keys below that directory: '*' and '?' do not cross '/'; "
            "'**' as a whole component matches any depth."
        )  # fmt: skip
    matched.sort(key=natural_key if order == "natural" else None)
    return loc, directory, matched, kv


def _common_directory(dirs: list[str]) -> str:
    """The longest directory (``/``-terminated, or ``""``) above every one of ``dirs``."""
    common = os.path.commonprefix(dirs)
    return common[: common.rfind("/") + 1]


def expand(pattern: Any, config: StorageConfig, *, op: str, order: str = "natural") -> Parts:
    """Lists the part files ``pattern`` (one pattern or a list) matches, in row order:
    each pattern's parts sorted in ``order`` (see the module docstring), patterns in the
    list's order.

    Raises:
      PartsNotFoundError: a pattern matches nothing, or only marker/hidden files; the
        message names the pattern and what the directory holds (or what was skipped).
      ConfigError: a bad ``pattern`` or ``order``; patterns in different stores; a part
        matched by two patterns of the list.
      UnsupportedURLError: a pattern is not a storage URL or path.
      BucketNotFoundError, CredentialsError, StorageError: the store refused the listing.
    """
    patterns = pattern_list(pattern, op=op)
    order = check_order(order, op=op)
    loc = _split(patterns[0], op)[0]
    for p in patterns[1:]:  # before any listing
        other = _split(p, op)[0]
        if (other.scheme, other.bucket) != (loc.scheme, loc.bucket):
            raise ConfigError(
                f"{op}: the patterns {patterns[0]!r} and {p!r} are in different stores; "
                "a list of patterns must share one store (scheme and bucket). Ingest each "
                "store separately."
            )
    found = [_matches(p, config, op, order) for p in patterns]
    directory = _common_directory([f[1] for f in found])
    keys: list[str] = []
    by_pattern: dict[str, str] = {}
    for p, (_, d, matched, _) in zip(patterns, found, strict=True):
        for k in matched:
            key = (d + k)[len(directory) :]
            if key in by_pattern:
                raise ConfigError(
                    f"{op}: the part {_url(loc, d + k)!r} is matched by both {by_pattern[key]!r} "
                    f"and {p!r}; it would be read twice. Make the patterns disjoint."
                )
            by_pattern[key] = p
            keys.append(key)
    kv = found[0][3]
    if directory != found[0][1]:  # several patterns: a kvstore above all of them
        with translate_errors(f"{op}({patterns[0]!r})", loc):
            kv = open_kvstore(loc, config, path=directory)
    parts = tuple(Part(k, _url(loc, directory + k)) for k in keys)
    shown = patterns[0] if len(patterns) == 1 else ", ".join(patterns)
    return Parts(shown, loc, directory, kv, parts)


def check_output(url: str | os.PathLike[str], parts: Parts, *, op: str) -> Location:
    """Refuses an output matrix whose keys would hold any of the parts (its chunks or
    header could be read back as parts, or overwrite would delete them)."""
    out = parse_url(url)
    same_store = (out.scheme, out.bucket) == (parts.loc.scheme, parts.loc.bucket)
    inside = [p for p in parts.parts if (parts.directory + p.key).startswith(out.path)]
    if same_store and inside:
        raise OutputConflictError(
            f"{op}: the output {out.url!r} would contain the part {inside[0].url!r} "
            f"({len(inside)} of the parts lie under it); write the matrix to a URL outside "
            "the parts' directory, e.g. a sibling prefix."
        )
    return out
