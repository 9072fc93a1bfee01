"""Cholesky factorisation as named algorithms, one selector, never a gathered matrix.

Three first-class algorithms (each a module: its candidates with projected bytes, its
plan) and one selector (:mod:`.select`, after lineax's ``AutoLinearSolver``) that ranks
them and says why; the engine takes the first that fits the budget:

* ``"kernel"`` (:mod:`.kernel`): in-core, the block-cyclic ``shard_map`` kernel of
  :mod:`jaxwren.lax.cholesky_kernel` (the one ``jaxwren.lax.cholesky`` traces); the only
  one that returns its factor as a device array.
* ``"tiles"`` (:mod:`.incore`): in-core, the left-looking tile plan with the finished
  tiles kept in host memory, on a work tile independent of the stored blocks.
* ``"out-of-core"`` (:mod:`.ooc`): the tile plan over the store, resumable, for budgets
  down to a few tiles.

The tile plans share one schedule (:mod:`.tiles`); their diagonal tiles run on one of
the backends of :mod:`.diagonal` (host LAPACK, one device, replicated). The run's report
names the algorithm (``RunReport.tiling``) and the selector's reason (after the engine's,
in ``RunReport.reason``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.sharding import Mesh

from jaxwren.config import RunSpec, StorageConfig, run_spec
from jaxwren.dtypes import result_dtype
from jaxwren.engine.plan import Plan
from jaxwren.engine.problem import Candidate, Output, Problem, Resume, Targets
from jaxwren.engine.run import run
from jaxwren.errors import ConfigError, ShapeMismatchError
from jaxwren.linalg.base import Op
from jaxwren.linalg.cholesky import incore, kernel, ooc, select
from jaxwren.linalg.cholesky.setup import Setup
from jaxwren.sharding.lower import LowerTriangle
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = ["Cholesky", "cholesky"]


class Cholesky(Op):
    """``L`` with ``A = L L^T`` by the algorithm :mod:`.select` ranks first among those
    that fit the budget."""

    name = "cholesky"
    operand_names = ("a",)

    def __init__(self, plan: str = "auto") -> None:
        """``plan``: ``"auto"`` (the selector's rule), or ``"kernel"`` / ``"tiles"`` to
        rank the in-core kernel or a tile plan first for a stored factor whatever the
        devices (benchmarks and tests compare them; the budget still decides)."""
        if plan not in ("auto", "kernel", "tiles"):
            raise ConfigError(f"cholesky: plan={plan!r} must be 'auto', 'kernel' or 'tiles'.")
        self.prefer = plan
        self._block: tuple[int, int] | None = None

    def check(self, operands: Any, mesh: Mesh) -> Problem:
        (a,) = operands
        if a.shape[0] != a.shape[1]:
            raise ShapeMismatchError(
                f"cholesky: a must be square, got shape {tuple(a.shape)}; the factorisation "
                "is defined for symmetric positive-definite (n, n) matrices."
            )
        dtype = result_dtype(a.dtype, where="cholesky", policy="factor")
        n = a.shape[0]
        stored = isinstance(a, BigMatrix)
        block = a.block_shape if stored else None
        src = LowerTriangle(a) if stored else a  # the upper triangle is never read
        return Problem((src,), (Output("L", (n, n), dtype, block),), (), mesh, data=a)

    def tilings(self, problem: Problem, targets: Targets) -> list[Candidate]:
        n, dtype, mesh = problem.outputs[0].shape[0], problem.outputs[0].dtype, problem.mesh
        a, block = problem.data, targets["L"]
        out_block = block or problem.outputs[0].block_shape or (min(n, 1024),)
        granule = math.lcm(a.block_shape[0] if isinstance(a, BigMatrix) else 1, out_block[0])
        self._block = block  # the stored factor's blocks, for plan (explain: no out yet)
        return select.candidates(n, dtype, mesh, granule, block, self.prefer)

    def plan(self, problem: Problem, tiling: Any, targets: Targets, resume: Resume,
             prefetch: int) -> Plan:  # fmt: skip
        out = problem.outputs[0]
        block = self._block
        why = select.reason(tiling[0], problem.mesh, block is not None, self.prefer)
        setup = Setup(problem.sources[0], out.shape[0], out.dtype, problem.mesh, targets["L"],
                      resume, why, block)  # fmt: skip
        algorithm = tiling[0]
        if algorithm == kernel.NAME:
            return kernel.kernel_plan(setup, tiling)
        if algorithm == incore.NAME:
            return incore.tiles_plan(setup, tiling)
        return ooc.ooc_plan(setup, tiling)


def cholesky(
    a: Any,
    out: Any = None,
    *,
    mesh: Mesh | None = None,
    memory_budget: int | str | None = None,
    block_shape: tuple[int, int] | None = None,
    storage: StorageConfig | None = None,
    progress: bool | None = None,
    prefetch: int | None = None,
    spec: RunSpec | None = None,
) -> jax.Array | BigMatrix:
    """Lower Cholesky factor ``L`` of a symmetric positive-definite matrix (``A = L L^T``).

    Matches ``numpy.linalg.cholesky`` / ``scipy.linalg.cholesky(lower=True)``. Only the
    blocks on and below the diagonal of a stored ``a`` are read (the upper triangle may be
    absent); the strictly upper part of ``L`` is zero.

    Args:
      a: ``(n, n)`` BigMatrix, jax.Array or numpy array; float32 or float64 (integers
        are factored in jnp's default float type, 16-bit floats in float32).
      out: None to return a jax.Array sharded ``P('rows', 'cols')`` (as far as the mesh
        divides n); a URL or BigMatrix to store ``L``. A stored out-of-core run records
        each finished tile: a rerun after an interruption on the same input data skips
        them (any write to ``a`` or ``out`` voids the records).
      mesh: a 2-D mesh with axes ``('rows', 'cols')``; None: all devices.
      memory_budget: bytes (or ``"2GiB"``) the run may hold; None: from the devices.
        Below what the in-core factorisation needs, the out-of-core tile plan runs.
      block_shape: block shape of a newly created ``out`` (default: ``a``'s or 1024).
      storage: StorageConfig for an ``out`` URL.
      progress: progress bar for multi-step runs (None: when the session is
        interactive: stderr is a terminal, or a Jupyter/IPython kernel).
      prefetch: steps of reads in flight ahead of the computing step (None: 1).
      spec: a :class:`jaxwren.RunSpec` holding these settings, for a configuration
        reused across calls. The keywords above are copies of its fields: a keyword
        fills a field the spec leaves at its default; both set differently raise
        ConfigError.

    Returns:
      ``L``: a sharded jax.Array, or the BigMatrix ``out``.

    Raises:
      ConfigError: a bad run setting, or a keyword and ``spec`` that disagree.
      ShapeMismatchError: ``a`` is not square, or ``out`` has the wrong shape/dtype.
      OutputConflictError: ``out`` is, contains or lies inside an input or another matrix.
      DTypeMismatchError: unsupported dtype.
      NonFiniteError: NaN or Inf in the lower triangle.
      NotPositiveDefiniteError: the factorisation hit a non-positive pivot (names the
        block column); an ``out`` created by the call is removed again.
      MemoryBudgetError: not even the smallest tile plan fits ``memory_budget``.
    """
    spec = run_spec("cholesky", spec, mesh=mesh, memory_budget=memory_budget,
                    storage=storage, progress=progress, prefetch=prefetch,
                    block_shape=block_shape)  # fmt: skip
    return run(Cholesky(), (a,), out, spec).value
