"""How big work is cut: plans of tiles, their memory footprints and the budget, the
prefetching runner."""

from jaxwren.engine.memory import Buffer, Footprint
from jaxwren.engine.plan import Plan, Read, Step, Write, default_budget, resolve_budget
from jaxwren.engine.runner import RunStats, execute

__all__ = ["Buffer", "Footprint", "Plan", "Read", "RunStats", "Step", "Write", "default_budget",
           "execute", "resolve_budget"]  # fmt: skip
