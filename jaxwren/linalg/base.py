"""The abstract tiled operation: what every algorithm implements, and nothing more.

An operation has four duties (lineax's solver objects, Cubed's primitives): ``check``
the operands into a :class:`~jaxwren.engine.problem.Problem`, offer candidate
``tilings`` with their footprints (what each holds; the engine projects the bytes), build
the ``plan`` for one tiling and the targets ``run`` chose, and ``finish`` the outputs.
Operand conversion, the dtype policy, the mesh, the budget and tiling choice, the output
lifecycle, resume, execution and cleanup all belong to :func:`jaxwren.engine.run.run`; a
public function is a short call.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from jaxwren.engine.plan import Plan
from jaxwren.engine.problem import Candidate, Problem, Resume, Targets
from jaxwren.linalg.common import trim
from jaxwren.sharding.mesh import default_sharding

__all__ = ["Op"]


class Op(abc.ABC):
    """A tiled operation run by :func:`jaxwren.engine.run.run`.

    Attributes:
      name: the public function's name (messages, records, logs).
      operand_names: the operands' names, in order (messages).

    With several outputs, ``out`` names a prefix holding ``OUT/<output name>``; with one
    output ``out`` is the output itself.
    """

    name: str = "op"
    operand_names: tuple[str, ...] = ()

    @abc.abstractmethod
    def check(self, operands: Sequence[Any], mesh: Any) -> Problem:
        """Validates the (already converted, 2-D, supported-dtype) operands and the
        operation's parameters; returns the problem. Raises typed JaxwrenErrors; writes
        nothing."""

    @abc.abstractmethod
    def tilings(self, problem: Problem, targets: Targets) -> Sequence[Candidate]:
        """Candidate tilings, each with its :class:`~jaxwren.engine.memory.Footprint`
        (buffers read, emitted, carried and held; ``extra`` only for what the engine
        cannot see). ``targets`` maps each output to its stored block shape
        (a tuple) or None (returned on the devices). This is the last place an operation
        may refuse its inputs: after it, ``run`` starts writing (an existing ``out`` is
        emptied before ``plan``)."""

    @abc.abstractmethod
    def plan(
        self, problem: Problem, tiling: Any, targets: Targets, resume: Resume, prefetch: int
    ) -> Plan:
        """The plan for ``tiling``; ``targets`` maps each output to its BigMatrix or None
        (returned). Tiles written with ``resume.key(...)`` records are skipped when
        ``resume.done(key)``."""

    def finish(self, problem: Problem, returned: list[Any], targets: Targets) -> Any:
        """The public result from the returned device arrays (in step order) and the
        stored targets. Default: the single output, stored, or returned trimmed to its
        shape and sharded ``default_sharding`` over the mesh."""
        (out,) = problem.outputs
        stored = targets.get(out.name)
        if stored is not None:
            return stored
        return trim(returned[0], out.shape, default_sharding(out.shape, problem.mesh))
