"""How big work is cut: plans of tiles, the memory budget, the prefetching runner."""

from jaxwren.engine.plan import Plan, Read, Step, Write, default_budget, resolve_budget
from jaxwren.engine.runner import RunStats, execute

__all__ = ["Plan", "Read", "RunStats", "Step", "Write", "default_budget", "execute",
           "resolve_budget"]  # fmt: skip
