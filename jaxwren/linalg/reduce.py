"""Argmin-reduce of a matrix along an axis, tile by tile on the device mesh.

Tiles ``P('rows', 'cols')`` stream through the devices; each step folds its tile into a
running (min, argmin, saw-NaN) of the kept axis, sharded over the mesh axis along it. The
results are returned as device arrays, never stored. Ties go to the lowest index, as in
numpy: a later tile replaces the carried minimum only when strictly smaller.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.config import RunSpec, run_spec
from jaxwren.dtypes import is_float, result_dtype
from jaxwren.engine.memory import Buffer, Footprint
from jaxwren.engine.plan import Plan, Read, Step, Write
from jaxwren.engine.problem import Candidate, Output, Problem, Resume, Targets
from jaxwren.engine.run import run
from jaxwren.errors import ConfigError, NonFiniteError
from jaxwren.linalg.base import Op
from jaxwren.linalg.common import tile_candidates
from jaxwren.linalg.distances import BIG, granule, with_args
from jaxwren.sharding.mesh import COLS, ROWS, default_sharding
from jaxwren.sharding.multihost import to_host

__all__ = ["Argmin", "argmin"]


@functools.lru_cache(maxsize=64)
def _argmin_kernel(first: bool, last: bool, axis: int, shape: tuple[int, int], dtype: Any,
                   st: Any, sv: Any, rep: Any) -> Callable:  # fmt: skip
    """Folds one tile into the running (min, argmin, saw-NaN) of the kept axis."""
    dtype = np.dtype(dtype)
    floating = is_float(dtype)
    high = jnp.inf if floating else np.iinfo(dtype).max

    def step(carry, t, r0, c0):  # noqa: ANN001, ANN202
        rows = r0 + lax.broadcasted_iota(jnp.int32, t.shape, 0)
        cols = c0 + lax.broadcasted_iota(jnp.int32, t.shape, 1)
        valid = (rows < shape[0]) & (cols < shape[1])
        v = jnp.where(valid, t, jnp.asarray(high, t.dtype))
        mn = jnp.min(v, axis=axis)
        g = rows if axis == 0 else cols
        idx = jnp.min(jnp.where(v == jnp.expand_dims(mn, axis), g, BIG), axis=axis)
        nan = jnp.any(jnp.isnan(t) & valid, axis=axis) if floating else mn < mn
        if not first:  # a later tile wins only when strictly smaller: ties keep the lower index
            cm, ci, cn = carry
            better = mn < cm
            mn, idx, nan = jnp.where(better, mn, cm), jnp.where(better, idx, ci), nan | cn
        return (mn, idx, nan), ((mn, idx, nan) if last else ())

    outs = ((sv,) * 3, (sv,) * 3 if last else ())
    if first:
        jitted = jax.jit(lambda *a: step(None, *a), in_shardings=(st, rep, rep),
                         out_shardings=outs)  # fmt: skip
        return lambda _carry, *a: jitted(*a)
    return jax.jit(step, in_shardings=((sv,) * 3, st, rep, rep), out_shardings=outs,
                   donate_argnums=0)  # fmt: skip


def _argmin_footprint(t: tuple[int, int], axis: int, kept: int, dtype: Any,
                      mesh: Mesh) -> Footprint:  # fmt: skip
    """A tile ``P('rows', 'cols')`` read; (min, argmin, saw-NaN) of the running slice of
    the kept axis carried (and emitted as it is: the result is the carry), sharded along
    the mesh axis of the kept axis; the finished slices' results held until the end
    (returned). Extra: two tiles of the kernel's temporaries (the masked tile and the
    operand of the index reduction, whose iota XLA fuses)."""
    st = NamedSharding(mesh, P(ROWS, COLS))
    sv = NamedSharding(mesh, P(COLS if axis == 0 else ROWS))

    def vectors(n: int) -> tuple[Buffer, ...]:
        return tuple(Buffer((n,), d, sv) for d in (dtype, np.int32, np.bool_))

    line = t[1 - axis]
    done = -(-kept // line) * line - line
    return Footprint(reads=(Buffer(t, dtype, st),), accumulators=vectors(line),
                     held=vectors(done) if done else (),
                     extra=2 * Buffer(t, dtype).nbytes)  # fmt: skip


def _gather(parts: list[jax.Array], length: int, sharding: NamedSharding) -> jax.Array:
    whole = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
    return jax.device_put(whole[:length], sharding)


def _axis(axis: Any) -> int:
    ok = isinstance(axis, int | np.integer) and not isinstance(axis, bool)
    if not ok or axis not in (0, 1, -1, -2):
        raise ConfigError(
            f"argmin: axis must be 0 (the minimum of each column) or 1 (of each row), "
            f"got {axis!r}; for the minimum of the whole matrix reduce the result again."
        )
    return int(axis) % 2


class Argmin(Op):
    """``(argmin, min)`` along an axis: a running reduce over tiles ``P('rows', 'cols')``.
    Its outputs are always returned (device arrays), never stored."""

    name = "argmin"
    operand_names = ("a",)

    def __init__(self, axis: Any = 0) -> None:
        self.axis = axis

    def check(self, operands: Any, mesh: Mesh) -> Problem:
        (a,), axis = operands, _axis(self.axis)
        dtype = result_dtype(a.dtype, where="argmin")  # the input's own dtype
        kept = a.shape[1 - axis]
        outs = (
            Output("indices", (kept, 1), np.dtype(np.int32)),
            Output("values", (kept, 1), dtype),
        )
        return Problem((a,), outs, (axis,), mesh, data=axis)

    def tilings(self, problem: Problem, targets: Targets) -> list[Candidate]:
        if any(t is not None for t in targets.values()):
            raise ConfigError("argmin: the result is returned as device arrays, never stored; "
                              "call it without out.")  # fmt: skip
        (a,), axis, mesh = problem.sources, problem.data, problem.mesh
        m, n = a.shape
        dtype = problem.outputs[1].dtype
        cands = []
        cand_m = tile_candidates(m, granule(a, 0), mesh.shape[ROWS])
        cand_n = tile_candidates(n, granule(a, 1), mesh.shape[COLS])
        for t in itertools.product(cand_m, cand_n):
            fp = _argmin_footprint(t, axis, a.shape[1 - axis], dtype, mesh)
            cands.append(Candidate(t, fp, -(-m // t[0]) * -(-n // t[1])))
        return cands

    def plan(self, problem: Problem, tiling: Any, targets: Targets, resume: Resume,
             prefetch: int) -> Plan:  # fmt: skip
        """For each slice of the kept axis, the tiles along the reduced axis in order; the
        last returns (min, argmin, saw-NaN) of the slice."""
        (a,), axis, mesh, (tm, tn) = problem.sources, problem.data, problem.mesh, tiling
        m, n = a.shape
        dtype = problem.outputs[1].dtype
        dtype = np.dtype(np.uint8) if dtype.kind == "b" else dtype  # min of bools: as bytes
        st, rep = NamedSharding(mesh, P(ROWS, COLS)), NamedSharding(mesh, P())
        sv = NamedSharding(mesh, P(COLS if axis == 0 else ROWS))
        rows, cols = range(0, m, tm), range(0, n, tn)
        outer, inner = (cols, rows) if axis == 0 else (rows, cols)
        steps = []
        for o, (kk, i) in itertools.product(outer, enumerate(inner)):
            r0, c0 = (i, o) if axis == 0 else (o, i)
            last = kk == len(inner) - 1
            kern = _argmin_kernel(kk == 0, last, axis, (m, n), dtype, st, sv, rep)
            reads = (Read(a, (r0, r0 + tm, c0, c0 + tn), (tm, tn), st, dtype),)
            steps.append(Step(reads, with_args(kern, np.int32(r0), np.int32(c0)),
                              (Write(None),) * 3 if last else ()))  # fmt: skip
        return Plan(self.name, steps, None, tiles=f"{len(rows)}x{len(cols)} tiles of {tm}x{tn}")

    def finish(self, problem: Problem, returned: list, targets: Targets) -> Any:
        kept, dtype = problem.outputs[1].shape[0], problem.outputs[1].dtype
        nan = np.flatnonzero(np.concatenate([to_host(o) for o in returned[2::3]])[:kept])
        if nan.size:
            line = "column" if problem.data == 0 else "row"
            raise NonFiniteError(
                f"argmin: a holds NaN (first in {line} {int(nan[0])}), and NaN has no order; "
                "replace it first (np.nan_to_num, or +inf to ignore the entry)."
            )
        sharding = default_sharding((kept,), problem.mesh)
        idx, vals = (_gather(returned[i::3], kept, sharding) for i in (1, 0))
        return idx, vals.astype(dtype)


def argmin(
    a: Any,
    axis: int = 0,
    *,
    mesh: Mesh | None = None,
    memory_budget: int | str | None = None,
    progress: bool | None = None,
    prefetch: int | None = None,
    spec: RunSpec | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Argmin-reduce of a matrix along ``axis``: ``(numpy.argmin(a, axis), numpy.min(a, axis))``.

    Tiles ``P('rows', 'cols')`` stream through the devices; each gives its per-tile (min,
    argmin) and a running reduce carries them across tiles. Ties go to the lowest index,
    as in numpy (a later tile replaces the carried minimum only when strictly smaller).

    Args:
      a: ``(m, n)`` BigMatrix (a ``.T`` view works), jax.Array or numpy array; numeric
        (16-bit floats included) or bool.
      axis: 0 for the minimum of each column (result length n), 1 for each row (length
        m); -2 and -1 are accepted too.
      mesh, memory_budget, progress, prefetch, spec: as in :func:`jaxwren.matmul`.

    Returns:
      ``(indices, values)``: jax.Arrays (not numpy), 1-D, sharded over the mesh as far as
      it divides their length; indices are int32 (numpy gives intp), values have a's dtype.

    Raises:
      ConfigError: ``axis`` is not 0, 1, -1 or -2.
      ShapeMismatchError: ``a`` is empty or not 2-D.
      NonFiniteError: ``a`` holds NaN, which has no order (raised after the reduce; argmin
        writes nothing).
      MemoryBudgetError: no tiling fits ``memory_budget`` (checked before anything runs).
    """
    spec = run_spec("argmin", spec, mesh=mesh, memory_budget=memory_budget,
                    progress=progress, prefetch=prefetch)  # fmt: skip
    return run(Argmin(axis), (a,), None, spec).value
