"""What a run did, in public: :class:`RunReport`, :func:`explain` and :func:`observe`.

Every call of :func:`jaxwren.engine.run.run` (the road every operation takes) builds a
RunReport: the operation, the platform, the mesh, the candidate tilings with their
projected bytes, the one chosen and why, the outputs, the resume state, the tiles, the
steps run and skipped, the bytes read and written, the compilations and the seconds per
phase. Tests and users read these figures here, never in the logs.

* ``jw.explain(fn, *args, **kwargs)`` calls ``fn`` in a mode where the pipeline stops
  once it has chosen a plan, before any output is created, claimed, emptied or written
  and before anything runs, and returns that report.
* ``with jw.observe() as runs:`` appends the report of every run that ends inside the
  block (failed runs too, with ``error`` set) to the list ``runs``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any

from jaxwren.errors import ConfigError

__all__ = ["CandidateReport", "PhaseSeconds", "RunReport", "explain", "observe", "platform_of"]


@dataclasses.dataclass(frozen=True)
class CandidateReport:
    """One tiling the operation offered.

    Attributes:
      tiling: the operation's description of it (``repr``).
      projected_bytes: its peak bytes (devices and host staging) at the report's prefetch.
      fits: whether it fits the budget at that prefetch (and can return its outputs when
        some are returned).
      cost: the operation's sort key (``repr``), lower is better.
    """

    tiling: str
    projected_bytes: int
    fits: bool
    cost: str


@dataclasses.dataclass(frozen=True)
class PhaseSeconds:
    """Wall seconds of a run by phase (``time.perf_counter``).

    Attributes:
      plan: checking the operands, opening outputs, choosing the tiling (resume records
        included) and building the plan.
      read: waiting for (and issuing) tile reads.
      compute: kernel dispatch and waiting for the devices (ahead-of-time compiles and
        result checks included).
      write: waiting for output writes and records, creating/claiming the outputs and
        committing them.
      total: the whole call; at least the sum of the phases (the rest is bookkeeping).
    """

    plan: float = 0.0
    read: float = 0.0
    compute: float = 0.0
    write: float = 0.0
    total: float = 0.0


@dataclasses.dataclass(frozen=True)
class RunReport:
    """What one pipeline run did (or, from :func:`explain`, would do).

    Attributes:
      operation: the operation's name (``"matmul"``, ``"cholesky"`` ...).
      platform: the platform profile the run planned for (``"cpu"`` or
        ``"accelerator"``; see ``jaxwren.sharding.platform``).
      mesh_shape: the mesh's shape, e.g. ``(2, 4)``.
      mesh_axes: its axis names, ``("rows", "cols")``.
      budget: the memory budget in bytes.
      candidates: every tiling considered, with its projected bytes at ``prefetch``.
      tiling: the chosen tiling (``repr``); None when none was chosen (a refusal).
      projected_bytes: the chosen tiling's projected peak bytes at ``prefetch``.
      prefetch: the prefetch depth chosen (steps of reads in flight ahead).
      reason: why this tiling, e.g. ``"cheapest within budget at prefetch=1"``,
        ``"prefetch degraded from 1 to 0 to fit the budget"``, ``"the interrupted run's
        tiling (resume)"``, ``"the stored result is this computation's (reused)"``;
        then, where the operation gives one, its own reason for the algorithm (Cholesky:
        ``"selected tiles: CPU devices of one process ..."``).
      returned: names of the outputs handed back as device arrays.
      stored: ``{output name: URL}`` of the outputs written to a store.
      state: ``"fresh"`` (computed from scratch), ``"partial"`` (an interrupted run's
        finished tiles resumed) or ``"complete"`` (the stored result reused; nothing ran).
      tiles: the plan's description of its tiles (``""`` when no plan was built).
      steps_run: steps executed (explain: steps that would run).
      steps_skipped: steps skipped because their tiles were already stored (resume).
      bytes_read: bytes of tiles read (None in an explained report: nothing ran).
      bytes_written: bytes of output written (None when explained).
      compiles: XLA compilations during the run (None when explained).
      seconds: wall seconds per phase (explained: only ``plan`` and ``total``).
      explained: whether this report comes from :func:`explain` (planned, not run).
      error: the exception's type name when the run failed, else None.
      details: figures the operation reports about its result (``lu_factor``: the
        growth factor; a refined ``solve``: its iterations and backward error).
    """

    operation: str
    platform: str
    mesh_shape: tuple[int, ...]
    mesh_axes: tuple[str, ...]
    budget: int | None = None
    candidates: tuple[CandidateReport, ...] = ()
    tiling: str | None = None
    projected_bytes: int | None = None
    prefetch: int = 0
    reason: str = ""
    returned: tuple[str, ...] = ()
    stored: dict[str, str] = dataclasses.field(default_factory=dict)
    state: str = "fresh"
    tiles: str = ""
    steps_run: int = 0
    steps_skipped: int = 0
    bytes_read: int | None = 0
    bytes_written: int | None = 0
    compiles: int | None = 0
    seconds: PhaseSeconds = PhaseSeconds()
    explained: bool = False
    error: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def steps(self) -> int:
        """Steps in the plan: run and skipped."""
        return self.steps_run + self.steps_skipped

    def __str__(self) -> str:
        s = self.seconds
        outs = [*(f"{n} (returned)" for n in self.returned),
                *(f"{n} -> {u}" for n, u in self.stored.items())]  # fmt: skip
        lines = [
            f"{self.operation} on {self.platform}, mesh {self.mesh_shape} {self.mesh_axes}"
            + (" [explained: planned, not run]" if self.explained else "")
            + (f" [failed: {self.error}]" if self.error else ""),
            f"  tiling {self.tiling} at prefetch={self.prefetch}, projected "
            f"{self.projected_bytes} of {self.budget} bytes: {self.reason}",
            f"  {len(self.candidates)} candidate(s), "
            f"{sum(c.fits for c in self.candidates)} fitting; projected bytes: "
            + ", ".join(f"{c.tiling} {c.projected_bytes}" for c in self.candidates[:4])
            + (", ..." if len(self.candidates) > 4 else ""),
            f"  outputs: {', '.join(outs) or '-'}; state {self.state}; tiles: {self.tiles or '-'}",
            f"  steps {self.steps_run} run, {self.steps_skipped} skipped; bytes read "
            f"{self.bytes_read}, written {self.bytes_written}; compiles {self.compiles}",
            f"  seconds: plan {s.plan:.3f}, read {s.read:.3f}, compute {s.compute:.3f}, "
            f"write {s.write:.3f}, total {s.total:.3f}",
            *([f"  details: {self.details}"] if self.details else []),
        ]
        return "\n".join(lines)


def platform_of(mesh: Any) -> str:
    """The platform a run plans for, as the report names it: its platform profile's name
    (``"cpu"`` or ``"accelerator"``; see ``jaxwren.sharding.platform``)."""
    from jaxwren.sharding.platform import platform_profile

    return platform_profile(mesh).name


# ------------------------------------------------------------------------------ explain
_EXPLAINING: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxwren_explaining",
                                                                   default=False)  # fmt: skip


class Explained(BaseException):  # noqa: N818 -- a signal, not an error
    """Stops an explained call at its first run's decision (a BaseException, so that an
    ``except Exception`` in the called function does not swallow it)."""

    def __init__(self, report: RunReport) -> None:
        super().__init__(report.operation)
        self.report = report


def explaining() -> bool:
    """Whether runs in this context only plan (inside :func:`explain`)."""
    return _EXPLAINING.get()


def explain(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> RunReport:
    """Plans ``fn(*args, **kwargs)`` without running or writing anything; returns the
    report of its pipeline run.

    ``fn`` is called in a mode where the pipeline checks the operands, opens (never
    creates) the outputs, reads the resume records and chooses a tiling and a plan, then
    stops: no output is created, claimed, emptied or written and no kernel runs. The
    report's steps are the plan's (``steps_skipped``: those a resume would skip), its
    bytes the projection (``projected_bytes``); ``bytes_read``, ``bytes_written`` and
    ``compiles`` are None.

    A function that runs the pipeline several times (``cho_solve``: two triangular solves;
    ``pairwise_sq_distances`` is one run after a check pass that explain leaves out) is
    explained by its first run. Only runs in the calling context are explained: a run in
    another thread that ``fn`` starts runs for real.

    Args:
      fn: a jaxwren operation (``jw.matmul``, ``jw.cholesky`` ...) or a function that
        calls one.
      *args, **kwargs: its arguments, as for a real call.

    Returns:
      The RunReport (``explained=True``).

    Raises:
      ConfigError: ``fn`` ran no pipeline operation.
      Whatever the real call raises before it would run (ShapeMismatchError,
      MemoryBudgetError, OutputConflictError ...).
    """
    token = _EXPLAINING.set(True)
    try:
        fn(*args, **kwargs)
    except Explained as stop:
        return stop.report
    finally:
        _EXPLAINING.reset(token)
    name = getattr(fn, "__qualname__", None) or repr(fn)
    raise ConfigError(
        f"explain: {name} ran no jaxwren operation, so there is no plan to report; pass an "
        "operation such as jw.matmul or jw.cholesky (or a function that calls one)."
    )


# ------------------------------------------------------------------------------ observe
_LOCK = threading.Lock()
_SCOPES: contextvars.ContextVar[tuple[list[RunReport], ...]] = contextvars.ContextVar(
    "jaxwren_observers", default=()
)
_EVERYWHERE: dict[int, list[RunReport]] = {}  # scopes opened with all_threads=True, by id


def observe(*, all_threads: bool = False) -> contextlib.AbstractContextManager[list[RunReport]]:
    """Collects the RunReport of every pipeline run that ends inside the block.

    ``with jw.observe() as runs:`` gives a list that each run appends its report to when
    it ends (a failed run too, with ``error`` set to the exception's type name); the list
    stays as it is after the block. Explained runs (:func:`explain`) are not collected.

    Which runs a scope sees:

    * by default, the runs of its own context: the code inside the block in this thread
      (nested scopes each get the run), and threads or tasks that run in a copy of the
      context (``asyncio`` tasks, ``contextvars.copy_context().run``). Scopes opened by
      other threads at the same time never mix with it.
    * ``all_threads=True``: every run in this process, from any thread (e.g. runs in a
      ``ThreadPoolExecutor`` started inside the block), while the block is open.

    Appending is guarded by a lock, so runs in several threads can end at once.

    Raises:
      ConfigError: ``all_threads`` is not True or False.
    """
    if not isinstance(all_threads, bool):
        raise ConfigError(
            f"observe: all_threads must be True or False, got {all_threads!r}; pass "
            "all_threads=True to collect the runs of every thread in this process."
        )
    return _observe(all_threads)


@contextlib.contextmanager
def _observe(all_threads: bool) -> Iterator[list[RunReport]]:
    runs: list[RunReport] = []
    token = _SCOPES.set((*_SCOPES.get(), runs))
    if all_threads:
        with _LOCK:
            _EVERYWHERE[id(runs)] = runs
    try:
        yield runs
    finally:
        _SCOPES.reset(token)
        if all_threads:
            with _LOCK:
                del _EVERYWHERE[id(runs)]


def record(report: RunReport) -> None:
    """Appends ``report`` to every scope that sees this run (each scope once)."""
    with _LOCK:
        scopes = {id(s): s for s in (*_SCOPES.get(), *_EVERYWHERE.values())}
        for runs in scopes.values():
            runs.append(report)
