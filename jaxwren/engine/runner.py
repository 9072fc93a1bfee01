"""The runner: executes a Plan with prefetched reads and asynchronous writes.

While the devices compute step ``i`` (JAX dispatch is asynchronous), the reads of steps
``i+1 .. i+prefetch`` are in flight in TensorStore, and the finished outputs of earlier
steps are copied off the devices and written, shard by shard, under a byte window.
"""

from __future__ import annotations

import concurrent.futures
import logging
import sys
from time import perf_counter
from typing import Any

import jax

from jaxwren.compile_cache import CompileCounter
from jaxwren.engine.plan import Plan
from jaxwren.engine.stats import RunStats
from jaxwren.engine.writer import Writer, overlaps
from jaxwren.sharding import multihost
from jaxwren.sharding.lapack_threads import single_threaded_blas
from jaxwren.sharding.platform import platform_profile
from jaxwren.sharding.tiles import PendingTile, start_tile

__all__ = ["execute", "RunStats"]

log = logging.getLogger("jaxwren")


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
    """Runs ``plan`` (already chosen within ``budget`` by ``engine.choice``).

    Args:
      plan: the plan.
      budget: bytes the run may hold (sizes the write-behind window).
      prefetch: how many steps' reads are in flight ahead of the step computing; 0 also
        stores each output tile before the next step (no write-behind) unless the plan's
        projection allows some (``Plan.write_behind``).
      progress: show a progress bar (None: when the session is interactive: stderr is
        a terminal, or a Jupyter/IPython kernel).
      write_bytes: bytes of finished output in flight to the store (default: budget / 4).
      stats: the RunStats to count into (the caller's, so that a failed run's counts
        survive it); None: a new one.

    Returns:
      The outputs whose Write has ``target=None`` (in step order), and the RunStats.
    """
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
    writer = Writer(write_bytes or window, stats, behind=prefetch > 0 or plan.write_behind > 0)
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
                            and overlaps(src.base_region(*r.region), wreg)):  # fmt: skip
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
        outs = out = None  # (a stored output lives no longer than its write: the next
        # step may allocate what a settled one held)
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
