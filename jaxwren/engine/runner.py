"""The runner: executes a Plan with prefetched reads and asynchronous writes.

While the devices compute step ``i`` (JAX dispatch is asynchronous), the reads of steps
``i+1 .. i+prefetch`` are in flight in TensorStore, and the finished outputs of earlier
steps are copied off the devices and written, shard by shard, under a byte window.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import sys
from time import perf_counter
from typing import Any

import jax
import numpy as np

from jaxwren.compile_cache import CompileCounter
from jaxwren.engine.lapack_threads import single_threaded_blas
from jaxwren.engine.plan import Plan, Write
from jaxwren.sharding import multihost
from jaxwren.sharding.platform import platform_profile
from jaxwren.sharding.tiles import PendingTile, shard_bounds, splits_blocks, start_tile
from jaxwren.storage.backend import translate_errors
from jaxwren.storage.buffers import aligned_empty
from jaxwren.storage.window import Futures, Window

__all__ = ["execute", "RunStats"]

log = logging.getLogger("jaxwren")


class RunStats:
    """What a run did: steps run and skipped, bytes read and written, XLA compilations,
    the prefetch depth it ran with, wall time, and the seconds spent waiting for reads,
    for the devices (kernel dispatch and wait) and for writes and records. The pipeline
    turns them into the public :class:`jaxwren.engine.report.RunReport`."""

    def __init__(self) -> None:
        self.steps_run = 0
        self.steps_skipped = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.compiles = 0
        self.prefetch = 0
        self.seconds = 0.0
        self.read_seconds = 0.0  # issuing tile reads and waiting for them
        self.compute_seconds = 0.0  # kernel dispatch and waits for the devices
        self.write_seconds = 0.0  # waiting for output writes and their records
        # {output url: {chunk key: storage generation}} of the chunks this process wrote
        # under a completion record (what the records vouch for; checked at commit)
        self.stamps: dict[str, dict[str, str]] = {}

    def __repr__(self) -> str:
        return (
            f"RunStats(steps_run={self.steps_run}, steps_skipped={self.steps_skipped}, "
            f"bytes_read={self.bytes_read}, bytes_written={self.bytes_written}, "
            f"compiles={self.compiles}, prefetch={self.prefetch}, seconds={self.seconds:.3f}, "
            f"read={self.read_seconds:.3f}, compute={self.compute_seconds:.3f}, "
            f"write={self.write_seconds:.3f})"
        )


class _OutputWrite(Futures):
    """The shard writes of one output tile, completed as one (then its record)."""

    def __init__(self, futures: list[Any], target: Any) -> None:
        super().__init__(futures)
        self._target = target

    def result(self) -> None:
        with translate_errors(f"writing {self._target!r}", self._target.location):
            super().result()


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


class _Writer:
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
        while len(self._queue) > (1 if self._behind else 0):
            self._flush(*self._queue.popleft())
        if self._behind:
            self._window.reap()
        else:
            self._window.drain()

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

        def start() -> _OutputWrite:
            with translate_errors(f"writing {target!r}", target.location):
                futures = [target.write_region_async(r0 + a, c0 + b, d, handover=host)
                           for a, b, d in pieces]  # fmt: skip
                return _OutputWrite(futures, target)

        def record() -> None:  # the record holds what it vouches for
            keys = _chunk_keys(target, [(r0 + a, c0 + b, d.shape) for a, b, d in pieces])
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
            return tag[0] == key[0] and _overlaps(tag[1], key[1])

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
    then a read-modify-write of the whole chunk (a 512 x 512 f64 block written as 8 row
    shards: 22.8 ms, against 2.5 ms assembled and written once)."""
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


def _start_warm(steps: list[Any]) -> dict[int, concurrent.futures.Future[Any]]:
    """Starts the steps' ahead-of-time compiles on a background thread (XLA compiles
    without the GIL, so a first call compiles while its reads are in flight)."""
    warm = [(i, s.warm) for i, s in enumerate(steps) if s.warm is not None]
    if not warm:
        return {}
    pool = concurrent.futures.ThreadPoolExecutor(1, "jaxwren-warm")
    futures = {i: pool.submit(fn) for i, fn in warm}
    pool.shutdown(wait=False)  # the thread ends once the compiles are done
    return futures


def _progress(total: int, label: str, enabled: bool | None, *, unit: str = "step") -> Any:
    """A progress bar over ``total`` units, or None. ``enabled`` None: on when the session
    is interactive: stderr is a terminal, or this is a Jupyter/IPython kernel (a
    notebook's stderr is no terminal; tqdm.auto draws a widget there); off otherwise
    (batch jobs, pipes, CI logs)."""
    if enabled is None:
        isatty = getattr(sys.stderr, "isatty", None)
        enabled = bool(isatty and isatty())
        if not enabled and "ipykernel" in sys.modules:
            get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
            shell = get_ipython() if get_ipython is not None else None
            enabled = getattr(shell, "kernel", None) is not None
    if not enabled or total <= 1:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit=unit, leave=False)


def execute(
    plan: Plan,
    *,
    budget: int,
    prefetch: int = 1,
    progress: bool | None = None,
    write_bytes: int | None = None,
    stats: RunStats | None = None,
) -> tuple[list[jax.Array], RunStats]:
    """Runs ``plan`` after checking it against ``budget``.

    Args:
      plan: the plan.
      budget: bytes the run may hold; a plan projected over it is refused before it runs.
      prefetch: how many steps' reads are in flight ahead of the step computing; 0 also
        stores each output tile before the next step (no write-behind) unless the plan's
        projection allows some (``Plan.write_behind``).
      progress: show a progress bar (None: when stderr is a terminal).
      write_bytes: bytes of finished output in flight to the store (default: budget / 4).
      stats: the RunStats to count into (the caller's, so that a failed run's counts
        survive it); None: a new one.

    Returns:
      The outputs whose Write has ``target=None`` (in step order), and the RunStats.
    """
    plan.check(budget)
    stats = RunStats() if stats is None else stats
    stats.prefetch = prefetch
    with CompileCounter() as compiles, single_threaded_blas():
        try:
            returned = _execute(plan, budget, prefetch, progress, write_bytes, stats)
            t0 = perf_counter()
            jax.block_until_ready(returned)  # the kernels finish under the thread limit
            stats.compute_seconds += perf_counter() - t0
        finally:
            stats.compiles = compiles.count
    log.info("%s: done %s", plan.name, stats)
    return returned, stats


def _execute(plan: Plan, budget: int, prefetch: int, progress: bool | None,
             write_bytes: int | None, stats: RunStats) -> list[jax.Array]:  # fmt: skip
    t0 = perf_counter()
    steps = [s for s in plan.steps if not s.skip]
    stats.steps_skipped = len(plan.steps) - len(steps)
    log.info("%s: %d steps (%d already stored), %s", plan.name, len(steps),
             stats.steps_skipped, plan.tiles)  # fmt: skip
    carry = plan.init() if plan.init is not None else None
    window = max(budget // 4, 1) if prefetch > 0 else plan.write_behind
    writer = _Writer(write_bytes or window, stats, behind=prefetch > 0 or plan.write_behind > 0)
    returned: list[jax.Array] = []
    bar = _progress(len(steps), plan.name, progress)

    issued: dict[int, list[PendingTile]] = {}
    # On several CPU devices each step's programs finish before the next step dispatches
    # its own: XLA's CPU client was seen to deadlock (an all-reduce waiting for devices
    # whose launches sat behind their full in-flight semaphores) with a few hundred
    # programs queued ahead; reads and writes still overlap the compute.
    pace = platform_profile().emulated_devices

    def depends(k: int, submitted: int) -> bool:
        """Whether step k reads what a step not yet submitted (submitted <= j < k) writes."""
        for j in range(submitted, k):
            for w in steps[j].writes:
                if w.target is None or not hasattr(w.target, "base_region"):
                    continue
                h, wd = w.size if w.size is not None else (1 << 62, 1 << 62)
                wreg = w.target.base_region(w.origin[0], w.origin[0] + h, w.origin[1],
                                            w.origin[1] + wd)  # fmt: skip
                for r in steps[k].reads:
                    src = r.source
                    if (getattr(src, "url", None) == w.target.url
                            and _overlaps(src.base_region(*r.region), wreg)):  # fmt: skip
                        return True
        return False

    multi = jax.process_count() > 1

    def issue(k: int) -> None:
        t1 = perf_counter()
        for r in steps[k].reads:
            writer.before_read(r.source, r.region)
        t2 = perf_counter()
        stats.write_seconds += t2 - t1
        if multi and depends(k, 0):
            # this step reads what earlier steps wrote, and other processes wrote their
            # shards of it: each waited for its own writes just now; meet before reading
            multihost.sync(f"{plan.name}: reads of step {k}")
        tiles = [start_tile(r.source, r.region, r.sharding, r.shape, r.dtype, share_replicas=True)
                 for r in steps[k].reads]  # fmt: skip
        stats.bytes_read += sum(t.nbytes for t in tiles)
        issued[k] = tiles
        stats.read_seconds += perf_counter() - t2

    warming = _start_warm(steps)
    for i, step in enumerate(steps):
        # prefetch: reads of the next steps go out now unless they read this plan's own
        # output that earlier, not yet computed steps will write (then they wait)
        for k in range(i, min(i + prefetch + 1, len(steps))):
            if k not in issued:
                if depends(k, i):
                    break
                issue(k)
        t1 = perf_counter()
        arrays = [t.result() for t in issued.pop(i)]
        t2 = perf_counter()
        stats.read_seconds += t2 - t1
        if i in warming:
            warming.pop(i).result()
        carry, outs = step.kernel(carry, *arrays)
        if pace:
            jax.block_until_ready((carry, outs))
        del arrays
        if step.check is not None:
            try:
                step.check(outs)
            except Exception:
                writer.drain()  # what earlier steps computed is valid: store it first
                raise
        t3 = perf_counter()
        stats.compute_seconds += t3 - t2
        for out, write in zip(outs, step.writes, strict=True):
            if write.target is None:
                returned.append(out)
            else:
                writer.submit(out, write)
        stats.write_seconds += perf_counter() - t3
        stats.steps_run += 1
        if bar is not None:
            bar.update(1)
    t1 = perf_counter()
    writer.drain()
    writer.close()
    multihost.sync(f"{plan.name} done")  # every process's writes are stored
    stats.write_seconds += perf_counter() - t1
    if bar is not None:
        bar.close()
    stats.seconds = perf_counter() - t0
    return returned
