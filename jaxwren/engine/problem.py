"""What an operation tells the pipeline: its checked problem, outputs and candidate tilings.

An operation (``jaxwren.linalg.base.Op``) turns its operands into a :class:`Problem` (the
validated sources, the outputs it produces, the parameters that identify its result) and
offers :class:`Candidate` tilings with their footprints; ``engine.run.run`` does the
rest. These are plain frozen records: the engine never imports the algorithms.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxwren.engine.memory import Footprint

__all__ = ["Candidate", "Output", "Problem", "Resume"]


@dataclasses.dataclass(frozen=True)
class Output:
    """One result of an operation.

    Attributes:
      name: its name; with several outputs, a stored result lives at ``OUT/name``.
      shape: ``(rows, cols)``.
      dtype: its dtype.
      block_shape: the block shape of a newly created stored output (None: from the
        run's ``block_shape`` or 1024-square, clipped to the shape).
    """

    name: str
    shape: tuple[int, int]
    dtype: np.dtype
    block_shape: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class Problem:
    """A checked operation instance.

    Attributes:
      sources: the operands as engine sources (BigMatrix, views, host/device arrays).
      outputs: what it produces, in order.
      params: the parameters that, with the inputs' identities, determine the result
        (hashable, deterministic ``repr``); None: the result cannot be identified (e.g.
        a user function), so it is never reused from a store.
      mesh: the (Auto-typed) mesh the run uses.
      data: anything else the operation needs later (its own record type).
    """

    sources: tuple[Any, ...]
    outputs: tuple[Output, ...]
    params: tuple[Any, ...] | None
    mesh: Any
    data: Any = None


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A tiling the operation can run with.

    Attributes:
      tiling: the operation's own description (passed back to ``plan``).
      footprint: what the tiling holds (:class:`~jaxwren.engine.memory.Footprint`); the
        engine projects its bytes.
      cost: a sort key, lower is better (e.g. modelled seconds or IO bytes).
      returns: whether this tiling can hand its outputs back as device arrays (an
        out-of-core tiling that only writes to the store cannot).
    """

    tiling: Any
    footprint: Footprint
    cost: Any = 0
    returns: bool = True


@dataclasses.dataclass(frozen=True)
class Resume:
    """Completion records of one run on its stored outputs.

    ``key(tile)`` names a tile's record (None: this run keeps no records); ``done(key)``
    says whether that tile is stored by this same computation (same operation,
    parameters, input data and output generation), so the plan can skip it.
    """

    prefix: str | None = None
    finished: frozenset[str] = frozenset()

    def key(self, tile: str) -> str | None:
        return None if self.prefix is None else f"{self.prefix}-{tile}"

    def done(self, key: str | None) -> bool:
        return key is not None and key in self.finished

    @property
    def enabled(self) -> bool:
        return self.prefix is not None


NO_RESUME = Resume()
Targets = Mapping[str, Any]  # output name -> BigMatrix (stored) or None (returned)
