"""Part files named by a glob over a store's keys (``s3://bucket/csv/dev/part*.csv``).

The pattern is a storage URL (same schemes, endpoint and credentials as a BigMatrix) whose
last path components may hold ``*`` (any characters but ``/``), ``?`` (one character but
``/``) and ``[...]`` / ``[!...]`` (a character class). Matching keys are listed through the
store's TensorStore kvstore and returned in sorted (lexicographic) order: that order is the
row order of the data set.
"""

from __future__ import annotations

import dataclasses
import os
import re

import tensorstore as ts

from jaxwren.config import StorageConfig
from jaxwren.errors import OutputConflictError, PartsNotFoundError, UnsupportedURLError
from jaxwren.storage.backend import open_kvstore, translate_errors
from jaxwren.storage.urls import Location, parse_url

__all__ = ["Part", "Parts", "check_output", "expand", "glob_regex"]

_GLOB_CHARS = "*?["
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
      pattern: the pattern as given.
      loc: the pattern's parsed location (scheme and bucket of the store).
      directory: the literal key prefix above the first glob component (ends with ``/``).
      kv: a kvstore opened at ``directory``.
      parts: the matching parts, sorted by key.
    """

    pattern: str
    loc: Location
    directory: str
    kv: ts.KvStore
    parts: tuple[Part, ...]


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex matching the keys ``pattern`` names (``*``/``?`` never cross ``/``)."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            neg = body.startswith("!")
            body = body[1:] if neg else body
            out.append("[" + ("^" if neg else "") + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


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


def expand(pattern: str | os.PathLike[str], config: StorageConfig, *, op: str) -> Parts:
    """Lists the part files ``pattern`` matches, sorted by key.

    Raises:
      PartsNotFoundError: nothing matches; the message names the pattern and what the
        directory above it holds.
      UnsupportedURLError: the pattern is not a storage URL or path.
      BucketNotFoundError, CredentialsError, StorageError: the store refused the listing.
    """
    pattern = os.fspath(pattern)
    loc, directory, glob = _split(pattern, op)
    regex = glob_regex(glob)
    literal = re.split(r"[*?\[]", glob, maxsplit=1)[0]
    with translate_errors(f"{op}({pattern!r})", loc):
        kv = open_kvstore(loc, config, path=directory)
        keys = sorted(k.decode() for k in kv.list(_prefix_range(literal)).result())
        matched = [k for k in keys if regex.fullmatch(k)]
        if not matched:
            held = sorted(k.decode() for k in kv.list().result())
    if not matched:
        shown = ", ".join(held[:_SHOWN]) + (
            f", ... ({len(held)} keys)" if len(held) > _SHOWN else ""
        )
        raise PartsNotFoundError(
            f"{op}: no part file matches {pattern!r}; "
            + (f"{_url(loc, directory)!r} holds: {shown}." if held else
               f"{_url(loc, directory)!r} holds nothing (check the URL and the bucket).")
            + " Globs match keys below that directory: '*' and '?' do not cross '/'."
        )  # fmt: skip
    parts = tuple(Part(k, _url(loc, directory + k)) for k in matched)
    return Parts(pattern, loc, directory, kv, parts)


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
