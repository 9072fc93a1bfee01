"""Blocked matmul C = A @ B on the device mesh, in-core or streamed through it.

Every case is one plan on the engine: output tiles C[I, J] accumulated over K panels.
In-core is the plan with one step (the whole matrices as one tile each); out-of-core plans
take the largest tiles the memory budget allows (block-aligned, so every read is whole
blocks), and every tile is padded to one shape so one compiled kernel serves them all.

Shardings (mesh axes ``rows`` x ``cols``): A tiles ``P('rows', None)``, B tiles
``P(None, 'cols')``, C tiles ``P('rows', 'cols')`` — XLA SPMD then computes each device's
C block locally with no collective (measured faster here than a SUMMA ``shard_map``).
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.config import RunSpec, StorageConfig, run_spec
from jaxwren.dtypes import is_float, result_dtype
from jaxwren.engine.memory import Buffer, Footprint
from jaxwren.engine.plan import Plan, Read, Step, Write
from jaxwren.engine.problem import Candidate, Output, Problem, Resume, Targets
from jaxwren.engine.run import run
from jaxwren.errors import ShapeMismatchError
from jaxwren.linalg.base import Op
from jaxwren.linalg.common import tile_candidates
from jaxwren.sharding.mesh import COLS, ROWS
from jaxwren.storage import device_io
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = ["Matmul", "gemm_footprint", "matmul"]


def _granule(x: Any, axis: int, default: int = 512) -> int:
    return x.block_shape[axis] if isinstance(x, BigMatrix) else default


def gemm_footprint(t: tuple[int, int, int], mesh: Mesh, dtypes: tuple[Any, Any, Any],
                   out_dtype: Any, extra: int = 0) -> Footprint:  # fmt: skip
    """A GEMM step's footprint: the A tile ``P('rows', None)`` and the B tile
    ``P(None, 'cols')`` it reads, the accumulator (``dtypes[2]``) it carries and the
    output tile it emits, all ``P('rows', 'cols')`` as the kernel lays them out."""
    (tm, tn, tk), (da, db, dc) = t, dtypes
    sa, sb = NamedSharding(mesh, P(ROWS, None)), NamedSharding(mesh, P(None, COLS))
    sc = NamedSharding(mesh, P(ROWS, COLS))
    return Footprint(reads=(Buffer((tm, tk), da, sa), Buffer((tk, tn), db, sb)),
                     writes=(Buffer((tm, tn), out_dtype, sc),),
                     accumulators=(Buffer((tm, tn), dc, sc),), extra=extra)  # fmt: skip


def _acc_dtype(dtype: np.dtype) -> np.dtype:
    """16-bit floats accumulate in float32; everything else in its own type (integer
    products are exact, wrapping like numpy's)."""
    return np.dtype(np.float32) if is_float(dtype) and dtype.itemsize < 4 else dtype


@functools.cache
def _kernel(first: bool, last: bool, acc_dtype: Any, out_dtype: Any, sa: Any, sb: Any, sc: Any):
    """One compiled step per (first, last, dtypes, shardings); shapes key jit's own cache."""

    def step(acc: jax.Array | None, a: jax.Array, b: jax.Array) -> tuple[jax.Array, tuple]:
        prod = jnp.matmul(a, b, preferred_element_type=acc_dtype)
        acc = prod if first else acc + prod
        return acc, ((acc.astype(out_dtype),) if last else ())

    outs = (sc, (sc,) if last else ())
    if not first:
        return jax.jit(step, in_shardings=(sc, sa, sb), out_shardings=outs, donate_argnums=0)
    jitted = jax.jit(lambda a, b: step(None, a, b), in_shardings=(sa, sb), out_shardings=outs)
    # the first K panel starts a new accumulator: whatever is carried is not an input
    return lambda _carry, a, b: jitted(a, b)


class Matmul(Op):
    """``C = A @ B``: output tiles accumulated over K panels (one step each)."""

    name = "matmul"
    operand_names = ("a", "b")

    def check(self, operands: Any, mesh: Mesh) -> Problem:
        a, b = operands
        if a.shape[1] != b.shape[0]:
            raise ShapeMismatchError(
                f"matmul: inner dimensions differ: a has shape {tuple(a.shape)} and b has "
                f"shape {tuple(b.shape)} ({a.shape[1]} != {b.shape[0]}); did you mean b.T?"
            )
        dtype = result_dtype(a.dtype, b.dtype, where="matmul")
        shape = (a.shape[0], b.shape[1])
        block = (_granule(a, 0, 1024), _granule(b, 1, 1024))
        return Problem((a, b), (Output("C", shape, dtype, block),), (), mesh)

    def tilings(self, problem: Problem, targets: Targets) -> list[Candidate]:
        a, b = problem.sources
        mesh, dtype, stored = problem.mesh, problem.outputs[0].dtype, targets["C"]
        (m, k), n = a.shape, b.shape[1]
        gm, gn = stored if stored is not None else (_granule(a, 0), _granule(b, 1))
        cand_m = tile_candidates(m, _granule(a, 0, gm), mesh.shape[ROWS])
        cand_n = tile_candidates(n, _granule(b, 1, gn), mesh.shape[COLS])
        cand_k = tile_candidates(k, _granule(a, 1, _granule(b, 0)), 1)
        dtypes = (dtype, dtype, _acc_dtype(dtype))
        s = dtype.itemsize
        out = []
        for t in itertools.product(cand_m, cand_n, cand_k):
            gi, gj, gk = -(-m // t[0]), -(-n // t[1]), -(-k // t[2])
            io = m * k * s * gj + k * n * s * gi
            out.append(Candidate(t, gemm_footprint(t, mesh, dtypes, dtype),
                                 io + gi * gj * gk * (4 << 20), gi == gj == 1))  # fmt: skip
        return out

    def plan(self, problem: Problem, tiling: Any, targets: Targets, resume: Resume,
             prefetch: int) -> Plan:  # fmt: skip
        """For each output tile (I, J), K panels accumulate; the last writes C (with a
        record when resumable; recorded tiles are skipped)."""
        a, b = problem.sources
        (m, k), n = a.shape, b.shape[1]
        (tm, tn, tk), mesh = tiling, problem.mesh
        out_dtype = problem.outputs[0].dtype
        out = targets["C"]
        sa, sb = NamedSharding(mesh, P(ROWS, None)), NamedSharding(mesh, P(None, COLS))
        sc = NamedSharding(mesh, P(ROWS, COLS))
        gk = -(-k // tk)
        steps = []
        for i0, j0 in itertools.product(range(0, m, tm), range(0, n, tn)):
            rec = resume.key(f"{tm}x{tn}-{i0}-{j0}")  # the output tile: any K panel width
            for kk, k0 in enumerate(range(0, k, tk)):
                first, last = kk == 0, kk == gk - 1
                reads = (Read(a, (i0, i0 + tm, k0, k0 + tk), (tm, tk), sa, out_dtype),
                         Read(b, (k0, k0 + tk, j0, j0 + tn), (tk, tn), sb, out_dtype))  # fmt: skip
                size = (min(tm, m - i0), min(tn, n - j0))
                writes = (Write(out, (i0, j0), size, record=rec),) if last else ()
                kernel = _kernel(first, last, _acc_dtype(out_dtype), out_dtype, sa, sb, sc)
                steps.append(Step(reads, kernel, writes, skip=resume.done(rec),
                                  label=f"C[{i0}:, {j0}:] += A @ B [{k0}:]"))  # fmt: skip
        tiles = f"{-(-m // tm)}x{-(-n // tn)} output tiles of {tm}x{tn}, {gk} K panels of {tk}"
        return Plan("matmul", steps, None, tiles=tiles)


def matmul(
    a: Any,
    b: Any,
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
    """Matrix product ``a @ b`` (matches ``numpy.matmul`` for 2-D inputs).

    Args:
      a: ``(m, k)`` BigMatrix (a lazy ``.T`` view works), jax.Array or numpy array.
      b: ``(k, n)`` likewise.
      out: None to return a ``jax.Array`` sharded ``P('rows', 'cols')`` over the mesh
        (as far as the mesh divides ``(m, n)``); a URL or BigMatrix to store the result.
        With stored inputs, every stored tile is recorded: a rerun after an interruption
        skips finished tiles, and a result recorded complete for the same inputs (same
        data: any write to an input or to ``out`` voids the records) is returned as it is.
      mesh: a 2-D mesh with axes ``('rows', 'cols')``; None: all devices.
      memory_budget: bytes (or ``"2GiB"``) the run may hold on the devices and in host
        staging; None: from the devices' memory (40% of RAM on CPU).
      block_shape: block shape of a newly created ``out`` (default from the inputs).
      storage: StorageConfig for an ``out`` URL.
      progress: progress bar for multi-step runs (None: when the session is
        interactive: stderr is a terminal, or a Jupyter/IPython kernel).
      prefetch: steps of reads in flight ahead of the computing step (None: 1).
      spec: a :class:`jaxwren.RunSpec` holding these settings, for a configuration
        reused across calls. The keywords above are copies of its fields: a keyword
        fills a field the spec leaves at its default; both set differently raise
        ConfigError.

    Returns:
      The product: a sharded jax.Array, or the BigMatrix ``out``. The dtype is what
      ``jnp.matmul`` gives under the x64 setting (integer products are exact: int64 with
      x64; 16-bit floats accumulate in float32).

    Raises:
      ConfigError: a bad run setting, or a keyword and ``spec`` that disagree.
      ShapeMismatchError: non-2-D inputs, inner dimensions differ, ``out`` of the wrong
        shape/dtype.
      OutputConflictError: ``out`` is, contains or lies inside an input or another matrix.
      DTypeMismatchError: 64-bit inputs while JAX runs 32-bit.
      MemoryBudgetError: no tiling fits ``memory_budget`` (checked before anything runs).
    """
    spec = run_spec("matmul", spec, mesh=mesh, memory_budget=memory_budget,
                    storage=storage, progress=progress, prefetch=prefetch,
                    block_shape=block_shape)  # fmt: skip
    return run(Matmul(), (a, b), out, spec).value


device_io.register("matmul", matmul)  # A @ B on a BigMatrix
