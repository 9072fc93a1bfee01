"""What every Cholesky algorithm plans from: the checked problem, the target, the reason."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from jax.sharding import Mesh

from jaxwren.engine.problem import Resume
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = ["Setup"]


@dataclasses.dataclass(frozen=True)
class Setup:
    """One planned run.

    Attributes:
      src: what to read ``A`` from (a LowerTriangle for stored matrices).
      n: the size.
      dtype: the factor's dtype.
      mesh: the run's mesh.
      out: the stored factor, or None (returned).
      resume: the run's completion records.
      why: the selector's reason for this algorithm (the plan's ``reason``: the run's
        report shows it).
      block: the stored factor's block shape (None: returned).
    """

    src: Any
    n: int
    dtype: np.dtype
    mesh: Mesh
    out: BigMatrix | None
    resume: Resume
    why: str = ""
    block: tuple[int, int] | None = None
