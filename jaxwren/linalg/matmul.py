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

import dataclasses
import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.config import StorageConfig, format_bytes
from jaxwren.engine.plan import Plan, Read, Step, Write, resolve_budget
from jaxwren.engine.runner import execute
from jaxwren.errors import MemoryBudgetError, ShapeMismatchError
from jaxwren.linalg.common import (
    OutTarget,
    is_complete,
    mark_complete,
    operand,
    prepare_out,
    record_prefix,
    result_dtype,
    tile_candidates,
    trim,
)
from jaxwren.sharding.mesh import COLS, ROWS, check_mesh, default_sharding
from jaxwren.sharding.multihost import finished_records
from jaxwren.sharding.tiles import replicas_shared
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = ["matmul", "plan_matmul"]


@dataclasses.dataclass(frozen=True)
class Tiling:
    tm: int
    tn: int
    tk: int
    projected: int


def _granule(x: Any, axis: int, default: int = 512) -> int:
    return x.block_shape[axis] if isinstance(x, BigMatrix) else default


def gemm_projected_bytes(
    t: tuple[int, int, int], mesh: Mesh, sizes: tuple[int, int, int], prefetch: int, stored: bool
) -> int:
    """Peak bytes: the A and B tiles of every step in flight (replicated on accelerators:
    A over ``cols``, B over ``rows``; on CPU devices replicas share one host buffer, which
    is also the staging), the host staging of the reads in flight (accelerators), the
    accumulator, its update and the output being written."""
    (tm, tn, tk), (sa, sb, sc) = t, sizes
    panels_host = tm * tk * sa + tk * tn * sb
    if replicas_shared(NamedSharding(mesh, P())):
        panels = (prefetch + 1) * panels_host
    else:
        r, c = mesh.shape[ROWS], mesh.shape[COLS]
        panels = (prefetch + 1) * (tm * tk * sa * c + tk * tn * sb * r) + prefetch * panels_host
    return panels + tm * tn * sc * (3 if stored else 2)


def choose_tiling(
    a: Any, b: Any, target: OutTarget, mesh: Mesh, budget: int, acc_size: int, prefetch: int
) -> Tiling:
    """The tiling with the least IO (then fewest steps) that fits ``budget``."""
    (m, k), n = a.shape, b.shape[1]
    r, c = mesh.shape[ROWS], mesh.shape[COLS]
    gm = target.block_shape[0] if not target.returned else _granule(a, 0)
    gn = target.block_shape[1] if not target.returned else _granule(b, 1)
    cand_m = tile_candidates(m, _granule(a, 0, gm), r)
    cand_n = tile_candidates(n, _granule(b, 1, gn), c)
    cand_k = tile_candidates(k, _granule(a, 1, _granule(b, 0)), 1)
    if target.returned:  # the result stays on the devices: it must be one tile
        cand_m, cand_n = cand_m[-1:], cand_n[-1:]
    sizes = (a.dtype.itemsize, b.dtype.itemsize, acc_size)
    best, smallest = None, None
    for tm, tn, tk in itertools.product(cand_m, cand_n, cand_k):
        proj = gemm_projected_bytes((tm, tn, tk), mesh, sizes, prefetch, not target.returned)
        smallest = proj if smallest is None else min(smallest, proj)
        if proj > budget:
            continue
        gi, gj, gk = -(-m // tm), -(-n // tn), -(-k // tk)
        io = m * k * sizes[0] * gj + k * n * sizes[1] * gi
        cost = (io + gi * gj * gk * (4 << 20), proj)  # ~4 MiB of IO per step of overhead
        if best is None or cost < best[0]:
            best = (cost, Tiling(tm, tn, tk, proj))
    if best is None:
        hint = "" if not target.returned else " (or store the result with out=URL)"
        raise MemoryBudgetError(
            f"matmul: ({m}, {k}) @ ({k}, {n}) needs at least {format_bytes(smallest)} with "
            f"the smallest block-aligned tiles, but memory_budget is {format_bytes(budget)}; "
            f"the smallest workable budget is {format_bytes(smallest)}{hint}."
        )
    return best[1]


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


def plan_matmul(
    a: Any,
    b: Any,
    target: OutTarget,
    out_matrix: BigMatrix | None,
    mesh: Mesh,
    tiling: Tiling,
    out_dtype: np.dtype,
    record: str | None = None,
) -> Plan:
    """The steps: for each output tile (I, J), K panels accumulate; the last writes C.

    With a ``record`` prefix each stored tile gets a completion record, and tiles already
    recorded in ``out_matrix`` (an interrupted run on the same inputs) are skipped."""
    (m, k), n = a.shape, b.shape[1]
    tm, tn, tk = tiling.tm, tiling.tn, tiling.tk
    acc_dtype = jnp.float32 if out_dtype == jnp.bfloat16 else out_dtype
    sa = NamedSharding(mesh, P(ROWS, None))
    sb = NamedSharding(mesh, P(None, COLS))
    sc = NamedSharding(mesh, P(ROWS, COLS))
    gk = -(-k // tk)
    tiles = list(itertools.product(range(0, m, tm), range(0, n, tn)))
    key = {t: f"{record}-{tm}x{tn}x{tk}-{t[0]}-{t[1]}" for t in tiles} if record else {}
    done = finished_records(out_matrix.marks(), key.values()) if record else set()
    steps = []
    for i0, j0 in tiles:
        rec = key.get((i0, j0))
        for kk, k0 in enumerate(range(0, k, tk)):
            first, last = kk == 0, kk == gk - 1
            reads = (
                Read(a, (i0, i0 + tm, k0, k0 + tk), (tm, tk), sa, out_dtype),
                Read(b, (k0, k0 + tk, j0, j0 + tn), (tk, tn), sb, out_dtype),
            )
            size = (min(tm, m - i0), min(tn, n - j0))
            writes = (Write(out_matrix, (i0, j0), size, record=rec),) if last else ()
            kernel = _kernel(first, last, np.dtype(acc_dtype), out_dtype, sa, sb, sc)
            steps.append(Step(reads, kernel, writes, label=f"C[{i0}:, {j0}:] += A @ B [{k0}:]",
                              skip=rec in done))  # fmt: skip
    gi, gj = -(-m // tm), -(-n // tn)
    return Plan(
        name="matmul",
        steps=steps,
        init=None,
        projected_bytes=tiling.projected,
        min_budget=tiling.projected,
        tiles=f"{gi}x{gj} output tiles of {tm}x{tn}, {gk} K panels of {tk}",
    )


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
    prefetch: int = 1,
) -> jax.Array | BigMatrix:
    """Matrix product ``a @ b`` (matches ``numpy.matmul`` for 2-D inputs).

    Args:
      a: ``(m, k)`` BigMatrix (a lazy ``.T`` view works), jax.Array or numpy array.
      b: ``(k, n)`` likewise.
      out: None to return a ``jax.Array`` sharded ``P('rows', 'cols')`` over the mesh
        (as far as the mesh divides ``(m, n)``); a URL or BigMatrix to store the result.
        With stored inputs, every stored tile is recorded: a rerun after an interruption
        skips finished tiles, and a result recorded complete for the same input URLs is
        returned as it is (``out.free()`` forces a recomputation).
      mesh: a 2-D mesh with axes ``('rows', 'cols')``; None: all devices.
      memory_budget: bytes (or ``"2GiB"``) the run may hold on the devices and in host
        staging; None: from the devices' memory (40% of RAM on CPU).
      block_shape: block shape of a newly created ``out`` (default from the inputs).
      storage: StorageConfig for an ``out`` URL.
      progress: progress bar for multi-step runs (None: when stderr is a terminal).
      prefetch: steps of reads in flight ahead of the computing step.

    Returns:
      The product: a sharded jax.Array, or the BigMatrix ``out``. The dtype is what
      ``jnp.matmul`` gives (bfloat16 inputs accumulate in float32).

    Raises:
      ShapeMismatchError: non-2-D inputs, inner dimensions differ, ``out`` of the wrong
        shape/dtype or aliasing an input.
      MemoryBudgetError: no tiling fits ``memory_budget`` (checked before anything runs).
    """
    a = operand(a, name="a", where="matmul")
    b = operand(b, name="b", where="matmul")
    if a.shape[1] != b.shape[0]:
        raise ShapeMismatchError(
            f"matmul: inner dimensions differ: a has shape {tuple(a.shape)} and b has shape "
            f"{tuple(b.shape)} ({a.shape[1]} != {b.shape[0]}); did you mean b.T?"
        )
    out_dtype = result_dtype(a.dtype, b.dtype, where="matmul")
    mesh = check_mesh(mesh, where="matmul")
    budget = resolve_budget(memory_budget, list(mesh.devices.flat))
    shape = (a.shape[0], b.shape[1])
    target = prepare_out(out, shape=shape, dtype=out_dtype, block_shape=block_shape,
                         inputs=(a, b), where="matmul", storage=storage)  # fmt: skip
    acc_size = 4 if out_dtype == jnp.bfloat16 else out_dtype.itemsize
    tiling = choose_tiling(a, b, target, mesh, budget, acc_size, prefetch)
    record = record_prefix("mm", a, b) if not target.returned else None
    if is_complete(target.matrix, record):
        return target.matrix  # finished by an earlier run on the same inputs
    out_matrix = target.materialize()
    plan = plan_matmul(a, b, target, out_matrix, mesh, tiling, out_dtype, record)
    outs, _ = execute(plan, budget=budget, prefetch=prefetch, progress=progress)
    if out_matrix is not None:
        mark_complete(out_matrix, record)
        return out_matrix
    return trim(outs[0], shape, default_sharding(shape, mesh))
