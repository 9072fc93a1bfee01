"""Reading whole part files ahead, in order, under a byte window.

A kvstore cannot say how big an object is before reading it, so the window is kept with
the largest part seen so far as the estimate of each part in flight: one part is read
first; once a size is known, as many parts are in flight (being read, parsed or waiting
to be taken) as fit in ``window_bytes`` together with the one about to be issued. A part
larger than the window is read alone. Each part is one read (an atomic snapshot of the
object); :func:`check_unchanged` verifies at the end that no part changed (grew, was
rewritten) while the ingest ran.
"""

from __future__ import annotations

import os
from typing import Any

from jaxwren.errors import PartsNotFoundError, StorageError
from jaxwren.storage.backend import translate_errors
from jaxwren.tables.glob import Part, Parts

__all__ = ["PartData", "check_unchanged", "fits", "issue_read", "part_data", "start_check"]


class PartData:
    """A part's bytes and the storage generation they were read at."""

    __slots__ = ("data", "generation", "part")

    def __init__(self, part: Part, data: bytes, generation: bytes) -> None:
        self.part, self.data, self.generation = part, data, generation


def fits(in_flight: int, largest: int, window_bytes: int) -> bool:
    """Whether one more part may be issued with ``in_flight`` parts already holding
    (or about to hold) their bytes: always the first one; further ones once a size is
    known and all of them, at the largest size seen, fit in the window."""
    return in_flight == 0 or (largest > 0 and (in_flight + 1) * largest <= window_bytes)


def issue_read(parts: Parts, part: Part, *, op: str) -> Any:
    """Starts reading a whole part (a TensorStore future of its ReadResult). On a file
    store only its generation is read here; :func:`part_data` then reads the file."""
    with translate_errors(f"{op}: reading {part.url}", parts.loc):
        if parts.loc.scheme == "file":
            return parts.kv.read(part.key, byte_range=slice(0, 0))
        return parts.kv.read(part.key)


def part_data(parts: Parts, part: Part, fut: Any, *, op: str) -> PartData:
    """The finished read of :func:`issue_read` (on any thread).

    A local part is read with one ``read`` of the file *after* its generation was taken:
    TensorStore's default file reads cost 6x the CPU of a plain read (118 MB of CSV:
    165-726 against 27 CPU-ms), a third of a whole CSV ingest on 2 cores; its ``memmap``
    mode (``StorageConfig.file_memmap``) is nearly as cheap, but part files are often
    rewritten in place by other tools, and a file truncated while mapped ends the process
    (SIGBUS) where a plain read only sees other bytes. A part rewritten in between has a
    new generation, which :func:`check_unchanged` catches at the end, as for a part
    rewritten after its read.

    Raises:
      PartsNotFoundError: the part was deleted after it was listed.
      StorageError: the store failed.
    """
    with translate_errors(f"{op}: reading {part.url}", parts.loc):
        got = fut.result()
        data = got.value
        if got.state == "value" and parts.loc.scheme == "file":
            try:
                with open(os.path.join(parts.directory, part.key), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                got = None
            except OSError as e:
                raise StorageError(
                    f"{op}: cannot read the part {part.url}: {e.strerror}; check that this "
                    "process may read it."
                ) from None
    if got is None or got.state != "value":
        raise PartsNotFoundError(
            f"{op}: the part {part.url} was listed but is gone; it was deleted while the "
            "ingest ran. Rerun once the data set is complete."
        )
    return PartData(part, data, got.stamp.generation)


def start_check(parts: Parts, seen: list[tuple[Part, bytes]], *, op: str) -> list[Any]:
    """Issues :func:`check_unchanged`'s conditional reads (to overlap them with writes)."""
    with translate_errors(f"{op}: re-checking the parts", parts.loc):
        return [(p, parts.kv.read(p.key, if_not_equal=g)) for p, g in seen]


def check_unchanged(parts: Parts, seen: list[tuple[Part, bytes]] | None = None, *, op: str,
                    started: list[Any] | None = None) -> None:  # fmt: skip
    """Verifies that every part still has the generation it was read at (one
    conditional read each, all in flight together; no data moves when unchanged).
    ``started``: the reads of :func:`start_check`, else they are issued here.

    Raises:
      StorageError: a part changed (grew, was rewritten or deleted) during the ingest.
    """
    futs = started if started is not None else start_check(parts, seen or [], op=op)
    with translate_errors(f"{op}: re-checking the parts", parts.loc):
        changed = [p for p, f in futs if f.result().state != "unspecified"]
    if changed:
        raise StorageError(
            f"{op}: {len(changed)} part(s) changed while the ingest ran, first "
            f"{changed[0].url}; the result would mix old and new data, so it was removed. "
            "Rerun once the data set is no longer being written."
        )
