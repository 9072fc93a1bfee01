"""Write-behind: output tiles copied off the devices and stored shard by shard.

The runner hands every output tile with a store target to a :class:`Writer`, which keeps
one tile queued behind the compute, writes the shards of replica 0 (or one assembled host
buffer, where shards would cut stored blocks) under a byte window, records finished tiles
off the compute loop, and orders a read of a region after the pending writes to it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import time
import weakref
from typing import Any

import jax
import numpy as np

from jaxwren.engine.plan import Write
from jaxwren.engine.stats import RunStats
from jaxwren.sharding import multihost
from jaxwren.sharding.tiles import shard_bounds, splits_blocks
from jaxwren.storage.backend import translate_errors
from jaxwren.storage.buffers import aligned_empty
from jaxwren.storage.window import Futures, Window

__all__ = ["Writer", "overlaps"]


class _OutputWrite(Futures):
    """The shard writes of one output tile, completed as one (then its record)."""

    def __init__(self, futures: list[Any], target: Any) -> None:
        super().__init__(futures)
        self._target = target

    def result(self) -> None:
        with translate_errors(f"writing {self._target!r}", self._target.location):
            super().result()


def overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


class Writer:
    """Writes output tiles shard by shard (replica 0 only), one step behind compute,
    keeping reads of a region ordered after the writes to it."""

    def __init__(self, max_bytes: int, stats: RunStats, behind: bool = True) -> None:
        self._queue: collections.deque[tuple[jax.Array, Write]] = collections.deque()
        self._window = Window(max_bytes)
        self._stats = stats
        self._behind = behind  # False: each tile is stored before the next step runs
        # tile records (stamp reads + record write) go out on a helper thread, off the
        # compute loop; drain() waits for them and raises the first failure
        self._records = concurrent.futures.ThreadPoolExecutor(1, "jaxwren-records")
        self._recording: list[concurrent.futures.Future[None]] = []
        self._settled: list[weakref.ref] = []

    def submit(self, out: jax.Array | np.ndarray, write: Write) -> None:
        spans = isinstance(out, jax.Array) and not out.is_fully_addressable
        if spans and splits_blocks(out, write.target, write.origin, write.size):  # type: ignore[arg-type]
            # shards of other processes share a stored block with this process's: gathered
            # and written whole by process 0 (a block written in parts by two processes
            # relies on a conditional read-modify-write that S3 does not make atomic). Every
            # process submits the same outputs in the same order: the gather is collective.
            out = multihost.to_host(out)
        if isinstance(out, jax.Array):
            out.copy_to_host_async()
        self._queue.append((out, write))
        del out
        while len(self._queue) > (1 if self._behind and not write.settle else 0):
            self._flush(*self._queue.popleft())
        if self._behind and not write.settle:
            self._window.reap()
        else:
            self._window.drain()
        if write.settle:
            _released(self._settled)

    def _settling(self, pieces: list[tuple[int, int, np.ndarray]]) -> None:
        """Remembers a settled output's pieces (weakly) to see them released."""
        self._settled = [weakref.ref(d) for _, _, d in pieces]

    def _tag(self, write: Write, shape: tuple[int, int]) -> tuple[str, tuple[int, int, int, int]]:
        h, w = write.size if write.size is not None else shape
        r0, c0 = write.origin
        return write.target.url, write.target.base_region(r0, r0 + h, c0, c0 + w)

    def _flush(self, out: jax.Array, write: Write) -> None:
        h, w = write.size if write.size is not None else out.shape
        r0, c0 = write.origin
        target = write.target
        host = isinstance(out, np.ndarray)  # the run's own buffer, never touched again
        if host:  # a host result: whole chunks, one write per row
            # (several processes hold the same host result: process 0 writes it)
            pieces = _host_pieces(out[:h, :w], write) if jax.process_index() == 0 else []
        else:
            pieces = []
            for shard in out.addressable_shards:
                if shard.replica_id != 0:
                    continue
                a0, a1, b0, b1 = shard_bounds(shard.index, out.shape)
                a1, b1 = min(a1, h), min(b1, w)
                if a1 > a0 and b1 > b0:
                    pieces.append((a0, b0, np.asarray(shard.data)[: a1 - a0, : b1 - b0]))
            if jax.process_count() == 1 and _cuts_blocks(pieces, target, (r0, c0)):
                pieces, host = _assembled(pieces, (h, w), out.dtype, write), True
        nbytes = sum(p[2].nbytes for p in pieces)
        self._stats.bytes_written += nbytes
        if write.settle:
            self._settling(pieces)

        def start() -> _OutputWrite:
            with translate_errors(f"writing {target!r}", target.location):
                futures = [target.write_region_async(r0 + a, c0 + b, d, handover=host)
                           for a, b, d in pieces]  # fmt: skip
                return _OutputWrite(futures, target)

        parts = [(r0 + a, c0 + b, d.shape) for a, b, d in pieces]  # (not the data: the
        # record goes out on another thread, and the data may be freed before it does)

        def record() -> None:  # the record holds what it vouches for
            keys = _chunk_keys(target, parts)
            gens = target.chunk_generations(keys)
            target.mark(multihost.record_key(write.record), json.dumps(gens))
            self._stats.stamps.setdefault(target.url, {}).update(gens)

        def done(_: Any) -> None:
            if write.record is not None:
                if self._recording:  # one record in flight: a failed one (an outage)
                    self._recording[-1].result()  # stops the run at the next tile
                self._recording.append(self._records.submit(record))

        self._window.submit(start, nbytes, done, tag=self._tag(write, out.shape))

    def before_read(self, source: Any, region: tuple[int, int, int, int]) -> None:
        """Waits for pending writes that overlap ``region`` of ``source`` (if stored)."""
        if not hasattr(source, "base_region"):
            return
        key = (source.url, source.base_region(*region))

        def hit(tag: tuple[str, tuple[int, int, int, int]]) -> bool:
            return tag[0] == key[0] and overlaps(tag[1], key[1])

        if any(hit(self._tag(w, o.shape)) for o, w in self._queue):
            while self._queue:
                self._flush(*self._queue.popleft())
        with translate_errors(f"writing {source!r}", source.location):
            self._window.wait_for(hit)

    def drain(self) -> None:
        while self._queue:
            self._flush(*self._queue.popleft())
        self._window.drain()
        recording, self._recording = self._recording, []
        for f in recording:
            f.result()

    def close(self) -> None:
        self._records.shutdown(wait=True)


def _released(refs: list[weakref.ref], seconds: float = 1.0) -> None:
    """Waits (at most ``seconds``) until the store has dropped a settled output's pieces:
    TensorStore may hold the data of a handed-over write a moment past its commit, and
    the step after a settled write allocates what the output held."""
    deadline = time.monotonic() + seconds
    while any(r() is not None for r in refs) and time.monotonic() < deadline:
        time.sleep(0.0005)


def _chunk_keys(target: Any, parts: list[tuple[int, int, tuple[int, ...]]]) -> list[str]:
    """The stored chunks that pieces written at ``(row, col)`` with ``shape`` touch."""
    keys: dict[str, None] = {}
    for r, c, (h, w) in parts:
        keys.update(
            dict.fromkeys(target.region_chunk_keys(*target.base_region(r, r + h, c, c + w)))
        )
    return list(keys)


def _cuts_blocks(pieces: list[tuple[int, int, np.ndarray]], target: Any,
                 origin: tuple[int, int]) -> bool:  # fmt: skip
    """Whether a stored block would receive parts of two pieces (shards): each part is
    then a read-modify-write of the whole chunk (docs/decisions.md: assembled writes)."""
    if len(pieces) < 2:
        return False
    (m, n), (br, bc) = target.shape, target.block_shape
    for a, b, d in pieces:
        r0, c0 = origin[0] + a, origin[1] + b
        r1, c1 = r0 + d.shape[0], c0 + d.shape[1]
        if r0 % br or c0 % bc or (r1 % br and r1 != m) or (c1 % bc and c1 != n):
            return True
    return False


def _assembled(pieces: list[tuple[int, int, np.ndarray]], size: tuple[int, int], dtype: Any,
               write: Write) -> list[tuple[int, int, np.ndarray]]:  # fmt: skip
    """The shards of an output tile copied into one host buffer of the run's own (written
    without a further copy), cut as a host result."""
    full = aligned_empty(size, dtype)
    for a, b, d in pieces:
        full[a : a + d.shape[0], b : b + d.shape[1]] = d
    return _host_pieces(full, write)


def _host_pieces(out: np.ndarray, write: Write) -> list[tuple[int, int, np.ndarray]]:
    """A host result as write pieces: all of it, or with ``write.lower`` (and a target
    without parent_fn, whose absent blocks read as zeros) one piece per block row of the
    target, up to the block holding the matrix's diagonal (a tile anywhere: e.g. the
    diagonal tiles of a tile plan)."""
    target = write.target
    if (not write.lower or not getattr(target, "absent_reads_zero", False)
            or getattr(target, "transposed", False)):  # fmt: skip
        return [(0, 0, out)]
    br, bc = target.block_shape
    (o_r, o_c), (h, w) = write.origin, out.shape
    pieces, r0 = [], 0
    while r0 < h:
        r1 = min((o_r + r0) // br * br + br - o_r, h)  # the end of this block row
        c1 = min(-(-(o_r + r1) // bc) * bc - o_c, w)  # through the block of row r1 - 1
        if c1 > 0:
            pieces.append((r0, 0, out[r0:r1, :c1]))
        r0 = r1
    return pieces
