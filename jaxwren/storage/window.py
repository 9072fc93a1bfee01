"""A bounded window of in-flight TensorStore operations (bytes and count).

Every bulk IO path (ingest, sharded load/save, the engine's prefetch and write-back) pushes
its futures through a Window so that memory in flight stays under a byte budget while all
requests that fit are issued before any is waited on.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

__all__ = ["Futures", "Window"]


class Window:
    """Keeps at most ``max_bytes`` (and ``max_ops``) of operations in flight.

    ``submit(start, nbytes, done)`` waits for the oldest operations until the new one
    fits (a single operation larger than the budget still runs, alone), then calls
    ``start()`` to issue it; when it completes (on a later ``submit`` or ``drain``),
    ``done(result)`` is called in submission order.
    """

    def __init__(self, max_bytes: int, max_ops: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self.max_ops = max_ops
        self._pending: collections.deque[tuple[Any, int, Callable[[Any], None] | None, Any]] = (
            collections.deque()
        )
        self._inflight = 0
        self.peak_bytes = 0

    def submit(
        self,
        start: Callable[[], Any],
        nbytes: int,
        done: Callable[[Any], None] | None = None,
        tag: Any = None,
    ) -> None:
        """Issues ``start()`` once it fits; ``tag`` labels it for :meth:`wait_for`."""
        while self._pending and (
            len(self._pending) >= self.max_ops or self._inflight + nbytes > self.max_bytes
        ):
            self._finish_oldest()
        self._pending.append((start(), nbytes, done, tag))
        self._inflight += nbytes
        self.peak_bytes = max(self.peak_bytes, self._inflight)

    def _finish_oldest(self) -> None:
        fut, nbytes, done, _ = self._pending.popleft()
        result = fut.result()
        self._inflight -= nbytes
        if done is not None:
            done(result)

    def reap(self) -> None:
        """Finishes (in order) the operations at the front that have already completed."""
        while self._pending and self._pending[0][0].done():
            self._finish_oldest()

    def wait_for(self, predicate: Callable[[Any], bool]) -> None:
        """Finishes operations, oldest first, until none left has a tag matching
        ``predicate`` (read-after-write ordering)."""
        while any(predicate(p[3]) for p in self._pending if p[3] is not None):
            self._finish_oldest()

    def drain(self) -> None:
        """Waits for everything in flight (calling each ``done`` in order)."""
        while self._pending:
            self._finish_oldest()

    def __enter__(self) -> Window:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.drain()
        else:  # let the operations settle, but do not hide the original error
            for fut, *_ in self._pending:
                try:
                    fut.result()
                except Exception:  # noqa: BLE001, S112 - the first error is being raised
                    continue
            self._pending.clear()


class Futures:
    """Many TensorStore futures (or none: already finished) awaited as one; ``result()``
    returns ``value`` once they all finished."""

    def __init__(self, futures: list[Any] | None = None, value: Any = None) -> None:
        self._futures = futures or []
        self._value = value

    def done(self) -> bool:
        return all(f.done() for f in self._futures)

    def result(self) -> Any:
        for f in self._futures:
            f.result()
        return self._value
