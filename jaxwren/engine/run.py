"""``run(op, operands, out, spec)``: the one road every operation takes.

Written once, for every algorithm: operand conversion and checks, the dtype policy (in the
operation's ``check`` through :func:`jaxwren.dtypes.result_dtype`), the mesh, the budget
and tiling choice (prefetch degraded before a plan is refused; one budget error), the
output lifecycle (aliases refused, outputs created only once the plan is accepted,
exactly what the call created removed on failure), resume, execution and finishing.
Returned vs stored and in-core vs out-of-core are decisions made here, not in each
algorithm. Every run builds a :class:`~jaxwren.engine.report.RunReport` (on the Outcome,
and collected by ``jw.observe``); under ``jw.explain`` a run stops once its plan is
chosen, before any output is touched.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from time import perf_counter
from typing import Any

import jax
import numpy as np

from jaxwren.config import RunSpec
from jaxwren.engine import outputs as outs_mod
from jaxwren.engine.choice import Choice, choose, refusal, resumed_tiling
from jaxwren.engine.outputs import Slot
from jaxwren.engine.plan import Plan, resolve_budget
from jaxwren.engine.problem import NO_RESUME, Candidate, Problem, Resume
from jaxwren.engine.provenance import (
    COMPLETE,
    check_written,
    fresh_resume,
    identity,
    record_tiling,
    recorded_tiling,
    resume_state,
)
from jaxwren.engine.report import (
    CandidateReport,
    Explained,
    PhaseSeconds,
    RunReport,
    explaining,
    platform_of,
    record,
)
from jaxwren.engine.runner import RunStats, execute
from jaxwren.errors import JaxwrenError, ShapeMismatchError, StorageError
from jaxwren.sharding import multihost
from jaxwren.sharding.foreign import lazy_source
from jaxwren.sharding.mesh import check_mesh, on_mesh
from jaxwren.sharding.tiles import as_source
from jaxwren.storage.bigmatrix import BigMatrix, check_dtype

__all__ = ["Outcome", "run", "operand"]

log = logging.getLogger("jaxwren")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What :func:`run` gives back: the public result, the runner's statistics and the
    run's report (what ``jw.observe`` collects)."""

    value: Any
    stats: RunStats
    report: RunReport


def operand(x: Any, *, name: str, where: str, storage: Any = None) -> Any:
    """A matrix operand as an engine source: BigMatrix (checked fresh), a storage URL
    (opened as a BigMatrix with ``storage``), jax.Array, a zarr or dask array (read tile
    by tile, never whole), or a host array; 2-D, non-empty, with a supported dtype."""
    if isinstance(x, str | os.PathLike):
        x = BigMatrix.open(x, storage=storage)
    if not isinstance(x, BigMatrix | jax.Array):
        x = lazy_source(x) or np.asarray(x)
    if len(x.shape) != 2 or 0 in x.shape:
        raise ShapeMismatchError(
            f"{where}: {name} must be a non-empty 2-D matrix, got shape {tuple(x.shape)}; "
            "reshape vectors with x.reshape(-1, 1)."
        )
    check_dtype(x.dtype, where=f"{where}({name})")
    if isinstance(x, BigMatrix):
        x.check_fresh()
    return as_source(x)


class _Draft:
    """The report of a run while it runs: fields as they become known, phase times."""

    def __init__(self, name: str) -> None:
        self.t0 = perf_counter()
        self.explained = explaining()
        self.fields: dict[str, Any] = {"operation": name, "platform": "", "mesh_shape": (),
                                       "mesh_axes": ()}  # fmt: skip
        self.plan_s: float | None = None  # None: still planning
        self.write_s = 0.0  # output lifecycle (create, claim, commit, records)
        self.stats: RunStats | None = None

    def set(self, **fields: Any) -> None:
        self.fields.update(fields)

    def choice(self, choice: Choice, budget: int) -> None:
        pairs = list(zip(choice.considered, choice.projected, strict=True))
        cands = tuple(CandidateReport(repr(c.tiling), p, p <= budget, repr(c.cost))
                      for c, p in pairs)  # fmt: skip
        chosen, pf = choice.cand, choice.prefetch
        need = next((p for c, p in pairs if c is chosen), None)
        self.set(
            budget=budget,
            candidates=cands,
            prefetch=pf,
            reason=choice.reason,
            tiling=None if chosen is None else repr(chosen.tiling),
            projected_bytes=need,
        )

    def plan(self, plan: Plan) -> None:
        """The plan's tiles, and its operation's reason for its algorithm after the
        engine's reason for the tiling."""
        self.set(tiles=plan.tiles)
        if plan.reason:
            self.set(reason="; ".join(r for r in (self.fields.get("reason"), plan.reason) if r))

    def planned(self) -> None:
        self.plan_s = perf_counter() - self.t0

    def report(self, error: str | None = None) -> RunReport:
        total = perf_counter() - self.t0
        st, fields = self.stats, dict(self.fields)
        read = compute = write = 0.0
        if st is not None:
            read, compute, write = st.read_seconds, st.compute_seconds, st.write_seconds
            fields.update(steps_run=st.steps_run, steps_skipped=st.steps_skipped,
                          bytes_read=st.bytes_read, bytes_written=st.bytes_written,
                          compiles=st.compiles)  # fmt: skip
        if self.explained:
            fields.update(bytes_read=None, bytes_written=None, compiles=None)
        plan = total if self.plan_s is None else self.plan_s
        seconds = PhaseSeconds(plan, read, compute, write + self.write_s, total)
        return RunReport(**fields, seconds=seconds, explained=self.explained, error=error)


def run(op: Any, operands: Sequence[Any], out: Any = None, spec: RunSpec | None = None) -> Outcome:
    """Checks, plans and runs ``op`` on ``operands``; stores or returns its outputs.

    Args:
      op: a :class:`jaxwren.linalg.base.Op`.
      operands: its matrices (BigMatrix, jax.Array, numpy); non-matrix parameters live
        on the op itself.
      out: None (return device arrays), a URL or BigMatrix (one output), or a URL prefix
        (several outputs, stored at ``OUT/<name>``).
      spec: the RunSpec (None: defaults).

    Returns:
      The Outcome: ``op.finish(...)``'s value, the RunStats and the RunReport (also
      handed to every ``jw.observe`` scope that sees the run; a failed run's report,
      with ``error`` set, too). Under ``jw.explain`` the run stops once its plan is
      chosen and raises ``Explained`` with the report instead.
    """
    spec = spec or RunSpec()
    draft = _Draft(op.name)
    try:
        outcome = _run(op, operands, out, spec, draft)
    except Explained:
        raise
    except BaseException as exc:
        if not draft.explained:
            record(draft.report(error=type(exc).__name__))
        raise
    if not draft.explained:  # (explained: a skipped check pass)
        record(outcome.report)
    return outcome


def _run(op: Any, operands: Sequence[Any], out: Any, spec: RunSpec, draft: _Draft) -> Outcome:
    where = op.name
    user_mesh = spec.mesh
    mesh = check_mesh(user_mesh, where=where)
    draft.set(platform=platform_of(mesh), mesh_shape=tuple(mesh.devices.shape),
              mesh_axes=tuple(mesh.axis_names))  # fmt: skip
    if draft.explained and getattr(op, "prepass", False):
        # a check pass whose value the caller ignores: explain goes on to the real run
        return Outcome(None, RunStats(), draft.report())
    sources = [operand(x, name=n, where=where, storage=spec.storage)
               for x, n in zip(operands, op.operand_names,
                                                                strict=True)]  # fmt: skip
    problem: Problem = op.check(sources, mesh)
    slots = outs_mod.resolve_outputs(where, out, problem.outputs, sources, storage=spec.storage,
                                     block_shape=spec.block_shape,
                                     prefix_out=len(problem.outputs) > 1)  # fmt: skip
    draft.set(returned=tuple(s.output.name for s in slots if not s.stored),
              stored={s.output.name: s.url for s in slots if s.stored})  # fmt: skip
    budget = resolve_budget(spec.memory_budget, list(mesh.devices.flat))
    returned = not all(s.stored for s in slots)
    slots, cands, choice = _choose_blocks(op, problem, slots, spec, budget, returned, mesh)
    draft.choice(choice, budget)
    if choice.cand is None:
        raise refusal(where, cands, choice, budget, returned, mesh)
    tokens = _input_tokens(sources)  # a read of the inputs is validated at the end
    ident = identity(where, problem, sources, slots)
    resume, state = resume_state(where, ident, slots)
    draft.set(state=state)
    if state == "partial":  # the interrupted run's tiling, if it fits: its tiles resume
        choice = resumed_tiling(choice, recorded_tiling(slots, resume), budget, spec.prefetch,
                                returned, mesh)  # fmt: skip
        draft.choice(choice, budget)
    cand, prefetch = choice.cand, choice.prefetch
    assert cand is not None
    if state == COMPLETE:
        draft.set(reason="the stored result is this computation's (complete reuse): nothing runs")
    if draft.explained:  # jw.explain: the plan as it would run; nothing touched
        _explain(op, problem, cand, prefetch, slots, resume if state == "partial" else NO_RESUME,
                 state, draft)  # fmt: skip
    draft.planned()
    multihost.sync(f"{where} decided")  # every process has looked before anything changes
    if state == COMPLETE:  # this very computation is stored already
        value = on_mesh(op.finish(problem, [], _targets(slots)), user_mesh)
        return Outcome(value, RunStats(), draft.report())
    stats = RunStats()
    try:
        t0 = perf_counter()
        resume = _prepare(where, ident, slots, resume, state, spec)
        record_tiling(slots, resume, cand.tiling)
        t1 = perf_counter()
        plan = op.plan(problem, cand.tiling, _targets(slots), resume, prefetch)
        t2 = perf_counter()
        draft.write_s += t1 - t0
        draft.plan_s = (draft.plan_s or 0.0) + t2 - t1
        draft.plan(plan)
        draft.stats = stats
        returned_arrays, stats = execute(plan, budget=budget, prefetch=prefetch,
                                         progress=spec.progress, stats=stats)  # fmt: skip
        _check_inputs(where, tokens)
        t0 = perf_counter()
        _commit(where, slots, stats)
        draft.write_s += perf_counter() - t0
        value = op.finish(problem, returned_arrays, _targets(slots))  # may still refuse it
        draft.set(details=dict(getattr(op, "details", None) or {}))  # e.g. growth factor
    except BaseException as exc:
        # a wrong input (not positive definite, NaN ...) leaves no trace; an outage or an
        # interruption of a resumable run keeps its finished tiles for the rerun
        data_error = isinstance(exc, JaxwrenError) and not isinstance(exc, StorageError)
        if data_error or not resume.enabled:
            outs_mod.discard(slots, where)
        raise
    t0 = perf_counter()
    _record_complete(slots, resume)
    draft.write_s += perf_counter() - t0
    value = on_mesh(value, user_mesh)
    return Outcome(value, stats, draft.report())


def _choose_blocks(op: Any, problem: Problem, slots: list[Slot], spec: RunSpec, budget: int,
                   returned: bool, mesh: Any) -> tuple[list[Slot], list[Any], Choice]:  # fmt: skip
    """The candidates and the choice for the stored outputs' block shapes; when none fits
    and the run creates its outputs with blocks of no one's asking (no ``block_shape``),
    the op's smaller blocks (``op.fallback_blocks(problem)``: ``{output: block_shape}``
    each, in order) until one does: an out-of-core plan whose tiles are whole blocks
    needs blocks that fit the budget."""

    def tried(trial: list[Slot]) -> tuple[list[Any], Choice]:
        cands = op.tilings(problem, {s.output.name: s.block_shape if s.stored else None
                                     for s in trial})  # fmt: skip
        return cands, choose(cands, budget, spec.prefetch, returned, mesh)

    cands, choice = tried(slots)
    free = spec.block_shape is None and all(s.matrix is None for s in slots if s.stored)
    options = getattr(op, "fallback_blocks", None)
    for alt in options(problem) if choice.cand is None and options else ():
        trial = [dataclasses.replace(s, block_shape=alt.get(s.output.name, s.block_shape))
                 if s.stored and s.matrix is None else s for s in slots]  # fmt: skip
        got, pick = tried(trial)
        if pick.cand is None:
            continue
        if free:
            why = f"{pick.reason}; stored in blocks {alt} (no tiling fits the default blocks)"
            return trial, got, dataclasses.replace(pick, reason=why)
        first = next(iter(alt.values()))  # the user's blocks (or an existing out's)
        hint = f"; a new out stored in smaller blocks would fit (block_shape={first})"
        return slots, cands, dataclasses.replace(choice, hint=hint)
    return slots, cands, choice


def _explain(op: Any, problem: Problem, cand: Candidate, prefetch: int, slots: Sequence[Slot],
             resume: Resume, state: str, draft: _Draft) -> None:  # fmt: skip
    """Stops an explained run with its report: the plan's tiles and steps (those a resume
    would skip counted apart), built against the outputs that exist (new ones as
    returned); nothing is created, claimed, written or run."""
    if state != COMPLETE:
        plan = op.plan(problem, cand.tiling, _targets(slots), resume, prefetch)
        skipped = sum(1 for st in plan.steps if st.skip)
        draft.plan(plan)
        draft.set(steps_run=len(plan.steps) - skipped, steps_skipped=skipped)
    draft.planned()
    raise Explained(draft.report())


def _input_tokens(sources: Sequence[Any]) -> list[tuple[Any, Any]]:
    """Starts reading each stored input's generation token and writing state."""
    return [(x, x.read_token_async()) for x in sources if isinstance(x, BigMatrix)]


def _check_inputs(where: str, tokens: list[tuple[Any, Any]]) -> None:
    """No jaxwren writer changed an input while the run read it (torn data)."""
    for x, before in tokens:
        x.check_unchanged(before, x.read_token_async(), where)


def _targets(slots: Sequence[Slot]) -> dict[str, BigMatrix | None]:
    return {s.output.name: s.matrix for s in slots}


def _prepare(where: str, ident: str | None, slots: Sequence[Slot], resume: Resume,
             state: str, spec: RunSpec) -> Resume:  # fmt: skip
    """Claims every stored output for this run (uncommitted until the end); creates
    missing ones; a fresh run empties existing ones and gives them a new generation
    (their old records and anything computed from them become unusable)."""
    for s in slots:
        if s.stored and s.matrix is not None:
            outs_mod.claim(s, where)  # an earlier writer's claim is taken over
    if state == "partial":
        log.info("%s: resuming, %d tiles already stored", where, len(resume.finished))
        return resume
    for s in slots:
        if not s.stored:
            continue
        if s.matrix is None:
            outs_mod.materialize(s, spec.storage, where)
        else:
            m = s.matrix
            multihost.once(f"free {m.url}", lambda m=m: (m.free(), m.new_generation()))
    multihost.sync(f"{where} prepared")
    return fresh_resume(where, ident, slots)


def _commit(where: str, slots: Sequence[Slot], stats: RunStats) -> None:
    """Completes every stored output: zero blocks where a fill value would show, the
    chunks this run recorded still its own, the claim still its own (then committed)."""
    for s in slots:
        if s.matrix is None:
            continue
        outs_mod.fill_absent(s)
        written = stats.stamps.get(s.matrix.url, {})
        multihost.once(f"check {s.matrix.url}",
                       lambda m=s.matrix, w=written: check_written(where, m, w))  # fmt: skip
        multihost.once(f"commit {s.matrix.url}", lambda s=s: outs_mod.commit(s, where))


def _record_complete(slots: Sequence[Slot], resume: Resume) -> None:
    """Records the finished result on every stored output (once, by process 0)."""
    key = resume.key(COMPLETE)
    if key is None:
        return
    for s in slots:
        if s.matrix is not None:
            # the record holds the result's data stamp: a reuse checks that no other
            # tool has written the result since (such writes leave the token alone)
            multihost.once(f"complete {s.matrix.url}",
                           lambda m=s.matrix: m.mark(key, m.data_stamp()))  # fmt: skip
