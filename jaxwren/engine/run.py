"""``run(op, operands, out, spec)``: the one road every operation takes.

Written once, for every algorithm: operand conversion and checks, the dtype policy (in the
operation's ``check`` through :func:`jaxwren.dtypes.result_dtype`), the mesh, the budget
and tiling choice (prefetch degraded before a plan is refused; one budget error), the
output lifecycle (aliases refused, outputs created only once the plan is accepted,
exactly what the call created removed on failure), resume, execution and finishing.
Returned vs stored and in-core vs out-of-core are decisions made here, not in each
algorithm.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxwren.config import RunSpec, format_bytes
from jaxwren.engine import outputs as outs_mod
from jaxwren.engine.outputs import Slot
from jaxwren.engine.plan import resolve_budget
from jaxwren.engine.problem import Candidate, Problem, Resume
from jaxwren.engine.provenance import (
    COMPLETE,
    check_written,
    fresh_resume,
    identity,
    record_tiling,
    recorded_tiling,
    resume_state,
)
from jaxwren.engine.runner import RunStats, execute
from jaxwren.errors import JaxwrenError, MemoryBudgetError, ShapeMismatchError, StorageError
from jaxwren.sharding import multihost
from jaxwren.sharding.mesh import check_mesh, on_mesh
from jaxwren.sharding.tiles import as_source
from jaxwren.storage.bigmatrix import BigMatrix, check_dtype

__all__ = ["Outcome", "run", "operand"]

log = logging.getLogger("jaxwren")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What :func:`run` gives back: the public result and the run's statistics."""

    value: Any
    stats: RunStats


def operand(x: Any, *, name: str, where: str) -> Any:
    """A matrix operand as an engine source: BigMatrix (checked fresh), jax.Array, or a
    host array; 2-D, non-empty, with a supported dtype."""
    if not isinstance(x, BigMatrix | jax.Array):
        x = np.asarray(x)
    if len(x.shape) != 2 or 0 in x.shape:
        raise ShapeMismatchError(
            f"{where}: {name} must be a non-empty 2-D matrix, got shape {tuple(x.shape)}; "
            "reshape vectors with x.reshape(-1, 1)."
        )
    check_dtype(x.dtype, where=f"{where}({name})")
    if isinstance(x, BigMatrix):
        x.check_fresh()
    return as_source(x)


def choose(where: str, cands: Sequence[Candidate], budget: int, prefetch: int,
           returned: bool) -> tuple[Candidate, int]:  # fmt: skip
    """The cheapest candidate within ``budget`` at the requested prefetch, else without
    prefetch (no reads ahead, no write-behind); refuses only below the bare minimum."""
    usable = [c for c in cands if c.returns or not returned]
    for pf in dict.fromkeys((prefetch, 0)):
        fits = [c for c in usable if c.projected(pf) <= budget]
        if fits:
            return min(fits, key=lambda c: (c.cost, c.projected(pf))), pf
    smallest = min((c.projected(0) for c in usable), default=None)
    stored_min = min((c.projected(0) for c in cands), default=None)
    hint = ""
    if returned and stored_min is not None and (smallest is None or stored_min < smallest):
        hint = f"; or pass out=URL to store the result, which needs {format_bytes(stored_min)}"
    need = format_bytes(smallest) if smallest is not None else "more than any tiling offers"
    raise MemoryBudgetError(
        f"{where}: the smallest plan (smallest tiles, no prefetch) needs {need} but "
        f"memory_budget is {format_bytes(budget)}; the smallest workable budget is {need}{hint}."
    )


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
      The Outcome: ``op.finish(...)``'s value and the RunStats.
    """
    spec = spec or RunSpec()
    where = op.name
    user_mesh = spec.mesh
    mesh = check_mesh(user_mesh, where=where)
    sources = [operand(x, name=n, where=where) for x, n in zip(operands, op.operand_names,
                                                                strict=True)]  # fmt: skip
    problem: Problem = op.check(sources, mesh)
    slots = outs_mod.resolve_outputs(where, out, problem.outputs, sources, storage=spec.storage,
                                     block_shape=spec.block_shape,
                                     prefix_out=len(problem.outputs) > 1)  # fmt: skip
    budget = resolve_budget(spec.memory_budget, list(mesh.devices.flat))
    blocks = {s.output.name: (s.block_shape if s.stored else None) for s in slots}
    cands = op.tilings(problem, blocks)
    cand, prefetch = choose(where, cands, budget, spec.prefetch,
                            returned=not all(s.stored for s in slots))  # fmt: skip
    tokens = _input_tokens(sources)  # a read of the inputs is validated at the end
    ident = identity(where, problem, sources, slots)
    resume, state = resume_state(where, ident, slots)
    if state == "partial":  # the interrupted run's tiling, if it fits: its tiles resume
        cand, prefetch = _resumed_tiling(cands, recorded_tiling(slots, resume), budget,
                                         (cand, prefetch), spec.prefetch)  # fmt: skip
    multihost.sync(f"{where} decided")  # every process has looked before anything changes
    if state == COMPLETE:  # this very computation is stored already
        stats = RunStats()
        return Outcome(on_mesh(op.finish(problem, [], _targets(slots)), user_mesh), stats)
    try:
        resume = _prepare(where, ident, slots, resume, state, spec)
        record_tiling(slots, resume, cand.tiling)
        plan = op.plan(problem, cand.tiling, _targets(slots), resume, prefetch)
        plan = dataclasses.replace(plan, projected_bytes=cand.projected(prefetch))
        returned, stats = execute(plan, budget=budget, prefetch=prefetch,
                                  progress=spec.progress)  # fmt: skip
        _check_inputs(where, tokens)
        _commit(where, slots, stats)
        value = op.finish(problem, returned, _targets(slots))  # may still refuse it
    except BaseException as exc:
        # a wrong input (not positive definite, NaN ...) leaves no trace; an outage or an
        # interruption of a resumable run keeps its finished tiles for the rerun
        data_error = isinstance(exc, JaxwrenError) and not isinstance(exc, StorageError)
        if data_error or not resume.enabled:
            outs_mod.discard(slots, where)
        raise
    _record_complete(slots, resume)
    return Outcome(on_mesh(value, user_mesh), stats)


def _resumed_tiling(
    cands: Sequence[Candidate],
    recorded: str | None,
    budget: int,
    chosen: tuple[Candidate, int],
    prefetch: int,
) -> tuple[Candidate, int]:
    """The candidate an interrupted run used (another ``prefetch`` or budget would pick
    other tiles and recompute them all), at the deepest prefetch that fits; else
    ``chosen``."""
    for c in cands:
        if recorded is not None and repr(c.tiling) == recorded:
            for pf in dict.fromkeys((prefetch, 0)):
                if c.projected(pf) <= budget:
                    return c, pf
    return chosen


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
