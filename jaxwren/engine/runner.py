"""The runner: executes a Plan with prefetched reads and asynchronous writes.

While the devices compute step ``i`` (JAX dispatch is asynchronous), the reads of steps
``i+1 .. i+prefetch`` are in flight in TensorStore, and the finished outputs of earlier
steps are copied off the devices and written, shard by shard, under a byte window.
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from typing import Any

import jax
import numpy as np

from jaxwren.engine.plan import Plan, Write
from jaxwren.sharding.tiles import PendingTile, shard_bounds, start_tile
from jaxwren.storage.backend import translate_errors
from jaxwren.storage.window import Window

__all__ = ["execute", "RunStats"]

log = logging.getLogger("jaxwren")


class RunStats:
    """What a run did: steps run and skipped, bytes read and written, wall time."""

    def __init__(self) -> None:
        self.steps_run = 0
        self.steps_skipped = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.seconds = 0.0

    def __repr__(self) -> str:
        return (
            f"RunStats(steps_run={self.steps_run}, steps_skipped={self.steps_skipped}, "
            f"bytes_read={self.bytes_read}, bytes_written={self.bytes_written}, "
            f"seconds={self.seconds:.3f})"
        )


class _Writer:
    """Writes output tiles shard by shard (replica 0 only), one step behind compute."""

    def __init__(self, max_bytes: int, stats: RunStats) -> None:
        self._queue: collections.deque[tuple[jax.Array, Write]] = collections.deque()
        self._window = Window(max_bytes)
        self._stats = stats

    def submit(self, out: jax.Array, write: Write) -> None:
        out.copy_to_host_async()
        self._queue.append((out, write))
        while len(self._queue) > 1:
            self._flush(*self._queue.popleft())

    def _flush(self, out: jax.Array, write: Write) -> None:
        h, w = write.size if write.size is not None else out.shape
        r0, c0 = write.origin
        target = write.target
        with translate_errors(f"writing {target!r}", target.location):
            for shard in out.addressable_shards:
                if shard.replica_id != 0:
                    continue
                a0, a1, b0, b1 = shard_bounds(shard.index, out.shape)
                a1, b1 = min(a1, h), min(b1, w)
                if a1 <= a0 or b1 <= b0:
                    continue
                data = np.asarray(shard.data)[: a1 - a0, : b1 - b0]
                self._window.submit(
                    lambda d=data, a=a0, b=b0: target.write_region_async(r0 + a, c0 + b, d),
                    data.nbytes,
                )
                self._stats.bytes_written += data.nbytes

    def drain(self) -> None:
        while self._queue:
            self._flush(*self._queue.popleft())
        self._window.drain()


def _progress(total: int, label: str, enabled: bool | None) -> Any:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled or total <= 1:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="step", leave=False)


def execute(
    plan: Plan,
    *,
    budget: int,
    prefetch: int = 1,
    progress: bool | None = None,
    write_bytes: int | None = None,
) -> tuple[list[jax.Array], RunStats]:
    """Runs ``plan`` after checking it against ``budget``.

    Args:
      plan: the plan.
      budget: bytes the run may hold; a plan projected over it is refused before it runs.
      prefetch: how many steps' reads are in flight ahead of the step computing.
      progress: show a progress bar (None: when stderr is a terminal).
      write_bytes: bytes of finished output in flight to the store (default: budget / 4).

    Returns:
      The outputs whose Write has ``target=None`` (in step order), and the RunStats.
    """
    plan.check(budget)
    stats = RunStats()
    t0 = time.perf_counter()
    steps = [s for s in plan.steps if not s.skip]
    stats.steps_skipped = len(plan.steps) - len(steps)
    log.info("%s: %d steps (%d already stored), %s", plan.name, len(steps),
             stats.steps_skipped, plan.tiles)  # fmt: skip
    carry = plan.init() if plan.init is not None else None
    writer = _Writer(write_bytes or max(budget // 4, 1), stats)
    returned: list[jax.Array] = []
    inflight: collections.deque[list[PendingTile]] = collections.deque()
    bar = _progress(len(steps), plan.name, progress)

    def issue(k: int) -> None:
        if k < len(steps):
            tiles = [
                start_tile(r.source, r.region, r.sharding, r.shape, r.dtype) for r in steps[k].reads
            ]
            stats.bytes_read += sum(t.nbytes for t in tiles)
            inflight.append(tiles)

    for k in range(prefetch + 1):
        issue(k)
    for i, step in enumerate(steps):
        arrays = [t.result() for t in inflight.popleft()]
        issue(i + prefetch + 1)
        carry, outs = step.kernel(carry, *arrays)
        del arrays
        for out, write in zip(outs, step.writes, strict=True):
            if write.target is None:
                returned.append(out)
            else:
                writer.submit(out, write)
        stats.steps_run += 1
        if bar is not None:
            bar.update(1)
    writer.drain()
    if bar is not None:
        bar.close()
    stats.seconds = time.perf_counter() - t0
    log.info("%s: done %s", plan.name, stats)
    return returned, stats
