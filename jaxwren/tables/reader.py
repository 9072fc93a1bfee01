"""Reading whole part files ahead, in order, under a byte window.

A kvstore cannot say how big an object is before reading it, so the window is kept with
the largest part seen so far as the estimate of each part in flight: one part is read
first; then as many further parts are in flight as fit in ``window_bytes`` together with
the part being parsed. A part larger than the window is read alone. Each part is one read
(an atomic snapshot of the object); :func:`check_unchanged` verifies at the end that no
part changed (grew, was rewritten) while the ingest ran.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

from jaxwren.errors import PartsNotFoundError, StorageError
from jaxwren.storage.backend import translate_errors
from jaxwren.tables.glob import Part, Parts

__all__ = ["PartData", "check_unchanged", "read_parts"]


class PartData:
    """A part's bytes and the storage generation they were read at."""

    __slots__ = ("data", "generation", "part")

    def __init__(self, part: Part, data: bytes, generation: bytes) -> None:
        self.part, self.data, self.generation = part, data, generation


def _result(parts: Parts, part: Part, fut: object, op: str) -> PartData:
    with translate_errors(f"{op}: reading {part.url}", parts.loc):
        got = fut.result()  # type: ignore[attr-defined]
    if got.state != "value":
        raise PartsNotFoundError(
            f"{op}: the part {part.url} was listed but is gone; it was deleted while the "
            "ingest ran. Rerun once the data set is complete."
        )
    return PartData(part, got.value, got.stamp.generation)


def read_parts(parts: Parts, order: list[int], window_bytes: int, *, op: str) -> Iterator[PartData]:
    """Yields the parts ``order`` names, in that order, reading ahead within the window."""
    pending: collections.deque[tuple[Part, object]] = collections.deque()
    nxt, largest = 0, 0
    while nxt < len(order) or pending:
        # in flight: pending + the new one, and the one the caller is parsing
        while nxt < len(order) and (
            not pending or (largest and (len(pending) + 2) * largest <= window_bytes)
        ):
            part = parts.parts[order[nxt]]
            with translate_errors(f"{op}: reading {part.url}", parts.loc):
                pending.append((part, parts.kv.read(part.key)))
            nxt += 1
        part, fut = pending.popleft()
        got = _result(parts, part, fut, op)
        largest = max(largest, len(got.data))
        yield got


def check_unchanged(parts: Parts, seen: list[tuple[Part, bytes]], *, op: str) -> None:
    """Verifies that every part still has the generation it was read at (one
    conditional read each, all in flight together; no data moves when unchanged).

    Raises:
      StorageError: a part changed (grew, was rewritten or deleted) during the ingest.
    """
    with translate_errors(f"{op}: re-checking the parts", parts.loc):
        futs = [(p, parts.kv.read(p.key, if_not_equal=g)) for p, g in seen]
        changed = [p for p, f in futs if f.result().state != "unspecified"]
    if changed:
        raise StorageError(
            f"{op}: {len(changed)} part(s) changed while the ingest ran, first "
            f"{changed[0].url}; the result would mix old and new data, so it was removed. "
            "Rerun once the data set is no longer being written."
        )
