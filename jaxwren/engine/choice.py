"""The tiling choice: each candidate's projected bytes (from its footprint, see
:mod:`jaxwren.engine.memory`), the cheapest candidate within the budget, prefetch degraded
before a run is refused, and the one budget error: the only place a run is refused for
memory."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from jaxwren.config import format_bytes
from jaxwren.engine.memory import projected
from jaxwren.engine.problem import Candidate
from jaxwren.errors import MemoryBudgetError

__all__ = ["Choice", "choose", "need", "refusal", "resumed_tiling"]


def need(c: Candidate, mesh: Any, prefetch: int, stored: bool) -> int:
    """The candidate's projected peak bytes at ``prefetch`` (``stored``: its outputs are
    written to the store)."""
    return projected(c.footprint, mesh, prefetch, stored)


@dataclasses.dataclass(frozen=True)
class Choice:
    """A tiling decision: the candidate (None: none fits), its prefetch, why, and the
    candidates considered with their projected bytes at that prefetch."""

    cand: Candidate | None
    prefetch: int
    reason: str
    considered: tuple[Candidate, ...]
    projected: tuple[int, ...]
    hint: str = ""  # what else would fit (named in the refusal)


def choose(cands: Sequence[Candidate], budget: int, prefetch: int, returned: bool,
           mesh: Any) -> Choice:  # fmt: skip
    """The cheapest candidate within ``budget`` at the requested prefetch, else without
    prefetch; ``cand=None`` when none fits even then."""
    usable = tuple(c for c in cands if c.returns or not returned)
    only = "; only tilings that return their outputs (out=None)" if len(usable) < len(cands) else ""
    proj: tuple[int, ...] = ()
    for pf in dict.fromkeys((prefetch, 0)):
        proj = tuple(need(c, mesh, pf, not returned) for c in usable)
        fits = [i for i, p in enumerate(proj) if p <= budget]
        if fits:
            best = min(fits, key=lambda i: (usable[i].cost, proj[i]))
            why = f"cheapest within budget at prefetch={pf} ({len(fits)} of {len(usable)} fit)"
            if pf != prefetch:
                why = f"prefetch degraded from {prefetch} to 0 to fit (none fits at " \
                      f"prefetch={prefetch}); {why}"  # fmt: skip
            return Choice(usable[best], pf, why + only, usable, proj)
    return Choice(None, 0, "no tiling fits the budget, even without prefetch" + only,
                   usable, proj)  # fmt: skip


def refusal(where: str, cands: Sequence[Candidate], choice: Choice, budget: int,
            returned: bool, mesh: Any) -> MemoryBudgetError:  # fmt: skip
    """The one budget error: the smallest plan's need and the budget (with a hint to
    store the result when a stored plan would fit)."""
    smallest = min(choice.projected, default=None)
    stored_min = min((need(c, mesh, 0, True) for c in cands), default=None)
    hint = ""
    if returned and stored_min is not None and (smallest is None or stored_min < smallest):
        hint = f"; or pass out=URL to store the result, which needs {format_bytes(stored_min)}"
    least = format_bytes(smallest) if smallest is not None else "more than any tiling offers"
    return MemoryBudgetError(
        f"{where}: the smallest plan (smallest tiles, no prefetch) needs {least} but "
        f"memory_budget is {format_bytes(budget)}; the smallest workable budget is {least}{hint}"
        f"{choice.hint}."
    )


def resumed_tiling(choice: Choice, recorded: str | None, budget: int, prefetch: int,
                   returned: bool, mesh: Any) -> Choice:  # fmt: skip
    """The candidate an interrupted run used (another ``prefetch`` or budget would pick
    other tiles and recompute them all), at the deepest prefetch that fits; else
    ``choice``."""
    for c in choice.considered:
        if recorded is not None and repr(c.tiling) == recorded:
            for pf in dict.fromkeys((prefetch, 0)):
                if need(c, mesh, pf, not returned) <= budget:
                    proj = (choice.projected if pf == choice.prefetch else
                            tuple(need(x, mesh, pf, not returned)
                                  for x in choice.considered))  # fmt: skip
                    why = f"the interrupted run's tiling (resume) at prefetch={pf}"
                    return Choice(c, pf, why, choice.considered, proj)
    if recorded is None:
        return choice
    why = f"{choice.reason}; the interrupted run's tiling {recorded} does not fit now"
    return dataclasses.replace(choice, reason=why)
