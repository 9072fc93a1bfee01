"""LU factorisation with partial pivoting of a stored or in-memory matrix, on the engine.

One :class:`LUFactor` over three algorithms, ranked by the selector of
:mod:`.lu_plans` (its reason is in ``RunReport.reason``); the engine takes the first
that fits the budget:

* ``"kernel"``: in-core, one step. The matrix is read from the host (store or memory)
  straight into the 2-D block-cyclic layout (:class:`CyclicSource`: the permutation is a
  host memcpy), factored by the sharded GEPP kernel of :mod:`jaxwren.lax.lu_kernel`
  (compiled once: a ``fori_loop`` over panels; ``n x b`` panels and ``2b`` interchanged
  rows move between devices, never the matrix), and put back in natural order on the
  host. The one for accelerators and several processes.
* ``"tiles"``: in-core, left-looking by column tiles on host BLAS/LAPACK with the
  finished columns kept in host memory (CPU devices of one process: the default there,
  stored or returned); :mod:`.lu_host`, :mod:`.lu_tiles` and :mod:`.lu_steps`.
* ``"out-of-core"``: the same schedule over the store, the panel resident, every finished
  column, its pivots and its final fix-up recorded (a killed run resumes); column tiles
  are multiples of the stored factor's blocks.

Every algorithm reports the growth factor ``max |U| / max |A|`` (``RunReport.details``)
and raises ``SingularMatrixError`` (``.column``) for an exactly zero pivot and
``NonFiniteError`` for NaN/Inf before the run commits anything.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.config import RunSpec, StorageConfig, run_spec
from jaxwren.dtypes import result_dtype
from jaxwren.engine.memory import Buffer, Footprint
from jaxwren.engine.plan import Plan, Read, Step, Write
from jaxwren.engine.problem import Candidate, Output, Problem, Resume, Targets
from jaxwren.engine.run import run
from jaxwren.errors import ConfigError, NonFiniteError, ShapeMismatchError, SingularMatrixError
from jaxwren.lax.layout import lu_block_size, natural_index
from jaxwren.linalg import lu_plans
from jaxwren.linalg.base import Op
from jaxwren.linalg.lu_ooc import host_ooc_plan
from jaxwren.linalg.lu_steps import Setup, incore_plan, ooc_plan
from jaxwren.sharding.cyclic import CyclicSource, natural_from_cyclic, padded_size, to_cyclic
from jaxwren.sharding.mesh import COLS, ROWS, default_sharding
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = ["LUFactor", "check_square", "cyclic_read", "footprint", "lu_factor", "prepare"]


def check_square(a: Any, where: str) -> int:
    if a.shape[0] != a.shape[1]:
        raise ShapeMismatchError(
            f"{where}: a must be square, got shape {tuple(a.shape)}; for a rectangular "
            "system use jw.lstsq."
        )
    return a.shape[0]


def footprint(n: int, dtype: np.dtype, mesh: Mesh, copies: int = 4, extra: int = 0
              ) -> Footprint:  # fmt: skip
    """The in-core kernel: the padded cyclic input read whole and the natural result
    emitted, both ``P('rows', 'cols')``; extra: the other ``copies - 2`` matrices at the
    peak (the input's host buffer, a temporary), the kernel's panels and ``extra``."""
    kb = lu_block_size(n, mesh)
    n_pad = padded_size(n, kb, mesh)
    whole = Buffer((n_pad, n_pad), dtype, NamedSharding(mesh, P(ROWS, COLS)))
    panels = 8 * n_pad * kb * np.dtype(dtype).itemsize
    return Footprint(reads=(whole,), writes=(whole,),
                     extra=(copies - 2) * whole.nbytes + panels + extra)  # fmt: skip


def cyclic_read(src: Any, n: int, dtype: np.dtype, mesh: Mesh) -> tuple[Read, Any, int]:
    """The read of ``src`` into the padded block-cyclic layout: from the host by a memcpy
    (:class:`CyclicSource`), or permuted on the devices for a device array."""
    kb = lu_block_size(n, mesh)
    n_pad = padded_size(n, kb, mesh)
    sharding = NamedSharding(mesh, P(ROWS, COLS))
    if isinstance(src, jax.Array):
        return Read(src, (0, n, 0, n), (n_pad, n_pad), sharding, dtype), None, kb
    cyc = CyclicSource(src, kb, mesh)
    return Read(cyc, (0, n_pad, 0, n_pad), (n_pad, n_pad), sharding, dtype), cyc, kb


def prepare(a: jax.Array, geo: Any, device_array: bool) -> tuple[jax.Array, jax.Array]:
    """The kernel's input (in the caller's jit): cyclic, the padded diagonal one; and
    ``max |A|`` (the padding left out)."""
    if device_array:  # a device array's natural tile, permuted on the devices
        a = to_cyclic(a, geo.block, geo.mesh)
    rows, cols = geo.square
    i, j = natural_index(rows)[:, None], natural_index(cols)[None, :]
    a = jnp.where((i == j) & (i >= geo.n), jnp.ones((), a.dtype), a)
    return a, jnp.max(jnp.where((i < geo.n) & (j < geo.n), jnp.abs(a), 0))


@functools.cache
def _factor_fn(n: int, kb: int, mesh: Mesh, device_array: bool) -> Any:
    """``a -> (lu cyclic, piv, info, max|A|, max|U|)``, jitted once per geometry."""
    from jaxwren.lax import lu_ops  # (jaxwren.lax imports jaxwren.linalg's kernels)
    from jaxwren.lax.ops import Geometry

    geo = Geometry(mesh, n, kb, True)
    sh, rep = NamedSharding(mesh, P(ROWS, COLS)), NamedSharding(mesh, P())

    def fn(a: jax.Array) -> tuple[jax.Array, ...]:
        a, maxa = prepare(a, geo, device_array)
        lu, piv, info = lu_ops._kernel(a, geo)
        rows, cols = geo.square
        i, j = natural_index(rows)[:, None], natural_index(cols)[None, :]
        maxu = jnp.max(jnp.where((i <= j) & (j < n), jnp.abs(lu), 0))
        return lu, piv[:n], info, maxa, maxu

    return jax.jit(fn, in_shardings=sh, out_shardings=(sh, rep, rep, rep, rep),
                   donate_argnums=0)  # fmt: skip


def raise_failed(where: str, info: int, maxu: float) -> None:
    """The typed error of a failed factorisation: NaN/Inf, or an exactly zero pivot."""
    if not np.isfinite(maxu):
        raise NonFiniteError(
            f"{where}: the factor is not finite: the matrix holds NaN or Inf; clean it "
            "(e.g. np.nan_to_num) first."
        )
    if info >= 0:
        raise SingularMatrixError(
            f"{where}: the matrix is singular: U[{info}, {info}] is exactly zero (column "
            f"{info}; LAPACK's info = {info + 1}); nothing was stored. For a least-squares "
            "solution use jw.lstsq.",
            column=info,
        )


class LUFactor(Op):
    """``(lu, piv)`` with ``A = P L U`` (the algorithms: module docstring)."""

    name = "lu_factor"
    operand_names = ("a",)

    def __init__(
        self, allow_singular: bool = False, plan: str = "auto", tile: int | None = None
    ) -> None:
        """``allow_singular``: an exactly zero pivot is no error (``slogdet``); ``plan``:
        ``"auto"`` (the selector's rule, :mod:`.lu_plans`), or ``"kernel"`` / ``"tiles"``
        / ``"out-of-core"`` ranked first for a stored factor (benchmarks and tests compare
        them; the budget still decides); ``tile``: only tile plans of this column tile."""
        if plan not in ("auto", *lu_plans.ALGORITHMS):
            raise ConfigError(
                f"lu_factor: plan={plan!r} must be 'auto', 'kernel', 'tiles' or 'out-of-core'."
            )
        self.allow_singular = allow_singular
        self.prefer, self.tile = plan, tile
        self.details: dict[str, Any] = {}

    def check(self, operands: Any, mesh: Mesh) -> Problem:
        (a,) = operands
        n = check_square(a, self.name)
        dtype = result_dtype(a.dtype, where=self.name, policy="factor")
        block = a.block_shape if isinstance(a, BigMatrix) else None
        # the pivots in blocks of the factor's block rows: the out-of-core plan writes a
        # column's pivots as whole blocks (its record stays intact)
        piv_block = None if block is None else (block[0], 1)
        outs = (Output("lu", (n, n), dtype, block),
                Output("piv", (n, 1), np.dtype(np.int32), piv_block))  # fmt: skip
        return Problem((a,), outs, (), mesh)

    def fallback_blocks(self, problem: Problem) -> list[dict[str, tuple[int, int]]]:
        """Smaller blocks for a factor the run creates, when no tiling fits the default
        ones (the out-of-core tiles are whole blocks): 512, 256, 128 (measured at n =
        4096, a quarter of the bytes: 512 took 2.3 s, 128 3.9 s; BUILD_NOTES)."""
        n = problem.outputs[0].shape[0]
        block = problem.outputs[0].block_shape or (min(n, 1024), min(n, 1024))
        return [{"lu": (b, b), "piv": (b, 1)} for b in (512, 256, 128) if b < max(block)]

    def tilings(self, problem: Problem, targets: Targets) -> list[Candidate]:
        n, dtype, mesh = problem.outputs[0].shape[0], problem.outputs[0].dtype, problem.mesh
        fp = footprint(n, dtype, mesh)
        lu, piv = targets["lu"], targets["piv"]  # the stored outputs' block shapes
        block = problem.outputs[0].block_shape or (min(n, 1024), min(n, 1024))
        blocks = (*(lu or block), (piv or block)[0])
        return lu_plans.candidates(n, dtype, mesh, lu is not None, self.prefer, fp,
                                   lu_block_size(n, mesh), self.tile, blocks)  # fmt: skip

    def plan(self, problem: Problem, tiling: Any, targets: Targets, resume: Resume,
             prefetch: int) -> Plan:  # fmt: skip
        (src,), mesh = problem.sources, problem.mesh
        n, dtype = problem.outputs[0].shape[0], problem.outputs[0].dtype
        algorithm = tiling[0]
        why = lu_plans.reason(algorithm, mesh, targets["lu"] is not None, self.prefer)
        if algorithm != lu_plans.KERNEL:
            self.details = {}
            s = Setup(src, n, dtype, mesh, targets["lu"], targets["piv"], resume, why,
                      self.name, self.allow_singular, self.details)  # fmt: skip
            if algorithm == lu_plans.TILES:
                build = incore_plan
            else:  # CPU devices of one process: the host sweep, in pieces
                build = host_ooc_plan if lu_plans.available(mesh) else ooc_plan
            return build(s, tiling[1])
        read, cyc, kb = cyclic_read(src, n, dtype, mesh)
        stored = targets["lu"] is not None
        fn = _factor_fn(n, kb, mesh, cyc is None)

        def kernel(_carry: Any, a: jax.Array) -> tuple[None, tuple]:
            lu, piv, info, maxa, maxu = fn(a)
            buffer = None if cyc is None else cyc.take_buffer()
            lu = natural_from_cyclic(lu, kb, mesh, n, buffer=buffer, host=stored)
            return None, (lu, piv[:, None], jnp.stack([info.astype(maxa.dtype), maxa, maxu]))

        def check(outs: tuple) -> None:
            info, maxa, maxu = (float(v) for v in np.asarray(outs[2]))
            raise_failed(self.name, -1 if self.allow_singular else int(info), maxu)
            self.details = {"growth_factor": maxu / maxa if maxa else 1.0, "kernel_block": kb}

        writes = (Write(targets["lu"], (0, 0), (n, n)), Write(targets["piv"], (0, 0), (n, 1)),
                  Write(None))  # fmt: skip
        step = Step((read,), kernel, writes, label="factor", check=check)
        return Plan(self.name, [step], None, f"kernel: in-core, kernel block {kb}", reason=why)

    def finish(self, problem: Problem, returned: list, targets: Targets) -> Any:
        if targets["lu"] is not None:
            return targets["lu"], targets["piv"]
        n, mesh = problem.outputs[0].shape[0], problem.mesh
        lu, piv = returned[0], returned[1][:, 0]
        if isinstance(lu, np.ndarray) or lu.sharding != default_sharding((n, n), mesh):
            lu = jax.device_put(lu, default_sharding((n, n), mesh))
        if isinstance(piv, np.ndarray):  # the tile plan's host pivots
            piv = jax.device_put(piv, NamedSharding(mesh, P()))
        return lu, piv


def lu_factor(
    a: Any,
    out: Any = None,
    *,
    mesh: Mesh | None = None,
    memory_budget: int | str | None = None,
    block_shape: tuple[int, int] | None = None,
    storage: StorageConfig | None = None,
    progress: bool | None = None,
    spec: RunSpec | None = None,
) -> tuple[Any, Any]:
    """LU factorisation with partial pivoting, ``A = P L U`` (``scipy.linalg.lu_factor``).

    Partial pivoting, backward stable as LAPACK's ``getrf`` (the same pivots where no
    ties occur). On CPU devices of one process the factor is computed by the
    left-looking tile plan on host BLAS/LAPACK (``trsm``/``gemm`` updates, ``getrf``
    panels; nothing compiles); accelerators and several processes use the blocked
    GEPP kernel on the devices' 2-D block-cyclic layout; above the in-core budget a
    stored factor is computed out-of-core, resumably (``RunReport.reason`` says which
    and why). The growth factor ``max |U| / max |A|`` is in the run's report
    (``jw.observe``: ``report.details["growth_factor"]``).

    Args:
      a: ``(n, n)`` BigMatrix, URL, jax.Array or numpy array; integers factor in jnp's
        default float, 16-bit floats in float32.
      out: None returns ``(lu, piv)`` as jax.Arrays (``lu`` sharded ``P('rows',
        'cols')`` as far as the mesh divides ``n``, ``piv`` int32 ``(n,)``); a URL
        prefix stores them at ``OUT/lu`` and ``OUT/piv`` (``(n, 1)`` int32) and returns
        the two BigMatrix.
      mesh, memory_budget, block_shape, storage, progress, spec: as for
        :func:`jaxwren.matmul`.

    Returns:
      ``(lu, piv)``: ``L`` (unit lower, diagonal implied) and ``U`` packed in ``lu``;
      row ``i`` was interchanged with row ``piv[i]`` (0-based), as scipy's.

    Raises:
      ShapeMismatchError: ``a`` not square.
      DTypeMismatchError: an unsupported dtype.
      SingularMatrixError: an exactly zero pivot (``.column``: the first one, as
        LAPACK's ``info``); nothing is stored.
      NonFiniteError: NaN or Inf in ``a``.
      MemoryBudgetError: not even the smallest out-of-core plan fits the budget (a
        returned factor: the in-core kernel does not fit).
    """
    spec = run_spec("lu_factor", spec, mesh=mesh, memory_budget=memory_budget,
                    storage=storage, progress=progress, block_shape=block_shape)  # fmt: skip
    return run(LUFactor(), (a,), out, spec).value
