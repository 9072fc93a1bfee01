"""Squared Euclidean distances between row sets, tile by tile on the device mesh.

``pairwise_sq_distances(x, y)`` is the PyWren notebook's ``D_sharded``:
``D[i, j] = ||x_i||^2 - 2 x_i . y_j + ||y_j||^2`` clamped at 0. It is an Op on the
pipeline, like matmul: output tiles D[I, J] accumulate, feature panel by feature panel,
``||x_p||^2 + ||y_p||^2 - 2 x_p . y_p`` (the whole feature dimension per tile when it
fits). A pre-pass (:class:`RowNormCheck`, its result returned, never stored) first looks
for rows whose squared norm is NaN/Inf, so a bad input is refused before ``out`` is
created or written.

Shardings (mesh axes ``rows`` x ``cols``): x tiles ``P('rows', None)``, y tiles
``P('cols', None)``, D tiles ``P('rows', 'cols')`` — each device computes its D block
locally, with no collective. Also here: what the neighbour search and argmin share (the
row-set check, the tile granule, the NaN error).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.config import RunSpec, StorageConfig, run_spec
from jaxwren.dtypes import result_dtype
from jaxwren.engine.memory import Buffer, Footprint
from jaxwren.engine.plan import Plan, Read, Step, Write
from jaxwren.engine.problem import Candidate, Output, Problem, Resume, Targets
from jaxwren.engine.run import run
from jaxwren.errors import NonFiniteError, ShapeMismatchError
from jaxwren.linalg.base import Op
from jaxwren.linalg.common import round_up, tile_candidates
from jaxwren.sharding.mesh import COLS, ROWS
from jaxwren.sharding.multihost import to_host
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = [
    "PairwiseSqDistances",
    "RowNormCheck",
    "check_row_sets",
    "granule",
    "non_finite_error",
    "pairwise_sq_distances",
]

ALL = (ROWS, COLS)  # both mesh axes flattened: one shard per device
HIGHEST = jax.lax.Precision.HIGHEST  # no reduced-precision passes on accelerators
BIG = np.iinfo(np.int32).max  # "no row": the index of nothing found
_STEP_COST = 4 << 20  # ~4 MiB of IO per step of overhead, as in matmul's tiling


def granule(x: Any, axis: int, default: int = 512) -> int:
    """Tiles along ``axis`` are multiples of the stored block (whole-block reads)."""
    return x.block_shape[axis] if isinstance(x, BigMatrix) else default


def check_row_sets(operands: Sequence[Any], names: Sequence[str], where: str) -> None:
    """Row sets ``(m_i, d)`` must share ``d``."""
    a = operands[0]
    for b, name in zip(operands[1:], names[1:], strict=True):
        if a.shape[1] != b.shape[1]:
            raise ShapeMismatchError(
                f"{where}: {names[0]} has {a.shape[1]} features (columns) but {name} has "
                f"{b.shape[1]} (shapes {tuple(a.shape)} and {tuple(b.shape)}); both must be "
                "row sets with the same number of columns (did you pass a transposed matrix?)."
            )


def non_finite_error(where: str, name: str, row: int, dtype: np.dtype) -> NonFiniteError:
    return NonFiniteError(
        f"{where}: {name} row {row} holds NaN or Inf (or its squared norm overflows "
        f"{dtype.name}); drop or impute such rows first (e.g. with np.nan_to_num, or "
        f"x[np.isfinite(x).all(axis=1)])."
    )


def with_args(kern: Callable, *args: Any) -> Callable:
    """A Step kernel ``(carry, tile)`` calling ``kern(carry, tile, *args)``."""
    return lambda carry, t: kern(carry, t, *args)


# ------------------------------------------------------------------ row-norm pre-pass
@functools.cache
def _norm_kernel(first: bool, last: bool, nops: int, st: Any, sv: Any, rep: Any) -> Callable:
    """Folds one feature panel into the row tile's squared norms; the last panel gives
    ``(nops,)`` first non-finite rows (BIG elsewhere), at the operand's slot."""

    def step(acc, t, r0, o):  # noqa: ANN001, ANN202
        part = jnp.sum(jnp.square(t), axis=1)
        acc = part if first else acc + part
        if not last:
            return acc, ()
        rows = r0 + lax.iota(jnp.int32, acc.shape[0])
        bad = jnp.min(jnp.where(jnp.isfinite(acc), BIG, rows))  # padding rows are 0
        return None, (jnp.full((nops,), BIG, jnp.int32).at[o].set(bad),)

    outs = (None if last else sv, (rep,) if last else ())
    if first:
        jitted = jax.jit(lambda *a: step(None, *a), in_shardings=(st, rep, rep),
                         out_shardings=outs)  # fmt: skip
        return lambda _carry, *a: jitted(*a)
    donate = () if last else (0,)  # the last panel's result is not the carry's shape
    return jax.jit(step, in_shardings=(sv, st, rep, rep), out_shardings=outs, donate_argnums=donate)


def _norm_footprint(tile: tuple[int, int], dtype: Any, nops: int, mesh: Mesh) -> Footprint:
    """A row tile ``P(all devices, None)`` read, its squared norms carried, the first bad
    rows emitted; extra: the squared tile the kernel sums (one tile)."""
    st, sv, rep = (NamedSharding(mesh, p) for p in (P(ALL, None), P(ALL), P()))
    return Footprint(reads=(Buffer(tile, dtype, st),), writes=(Buffer((nops,), np.int32, rep),),
                     accumulators=(Buffer(tile[:1], dtype, sv),),
                     extra=Buffer(tile, dtype).nbytes)  # fmt: skip


class RowNormCheck(Op):
    """Pre-pass: refuses row sets with a NaN/Inf row (or an overflowing squared norm).

    Row tiles ``P(all devices, None)`` x feature panels; the result (the first bad row
    per operand) is returned, never stored. NonFiniteError names the first bad row.
    ``prepass``: ``jw.explain`` passes over it (its caller ignores its value) and
    explains the run that follows.
    """

    prepass = True

    def __init__(self, name: str, operand_names: tuple[str, ...]) -> None:
        self.name, self.operand_names = name, operand_names

    def check(self, operands: Any, mesh: Mesh) -> Problem:
        check_row_sets(operands, self.operand_names, self.name)
        dtype = result_dtype(*(x.dtype for x in operands), where=self.name, policy="float")
        out = Output("first_bad_rows", (len(operands), 1), np.dtype(np.int32))
        return Problem(tuple(operands), (out,), None, mesh, data=dtype)

    def tilings(self, problem: Problem, targets: Targets) -> list[Candidate]:
        xs, mesh, dtype = problem.sources, problem.mesh, problem.data
        d, nd = xs[0].shape[1], mesh.size
        rows = set().union(*(tile_candidates(x.shape[0], granule(x, 0), nd) for x in xs))
        cands = []
        for tr, tc in itertools.product(sorted(rows), tile_candidates(d, granule(xs[0], 1), 1)):
            steps = sum(-(-x.shape[0] // self._rows(x, tr, nd)) for x in xs) * -(-d // tc)
            fp = _norm_footprint((tr, tc), dtype, len(xs), mesh)
            cands.append(Candidate((tr, tc), fp, steps))
        return cands

    @staticmethod
    def _rows(x: Any, tr: int, nd: int) -> int:
        return min(tr, round_up(x.shape[0], nd))

    def plan(self, problem: Problem, tiling: Any, targets: Targets, resume: Resume,
             prefetch: int) -> Plan:  # fmt: skip
        (tr0, tc), mesh, dtype = tiling, problem.mesh, problem.data
        st, sv, rep = (NamedSharding(mesh, p) for p in (P(ALL, None), P(ALL), P()))
        steps, nops = [], len(problem.sources)
        for o, x in enumerate(problem.sources):
            (m, d), tr = x.shape, self._rows(x, tr0, mesh.size)
            gc = -(-d // tc)
            for r0, (kk, c0) in itertools.product(range(0, m, tr), enumerate(range(0, d, tc))):
                kern = _norm_kernel(kk == 0, kk == gc - 1, nops, st, sv, rep)
                reads = (Read(x, (r0, r0 + tr, c0, c0 + tc), (tr, tc), st, dtype),)
                steps.append(Step(reads, with_args(kern, np.int32(r0), np.int32(o)),
                                  (Write(None),) if kk == gc - 1 else (),
                                  label=f"|{self.operand_names[o]}[{r0}:]|^2 [{c0}:]"))  # fmt: skip
        return Plan(f"{self.name}: row norms", steps, None, tiles=f"tiles of {tr0}x{tc}")

    def finish(self, problem: Problem, returned: list, targets: Targets) -> None:
        bad = np.stack([to_host(b) for b in returned]).min(axis=0)
        for name, row in zip(self.operand_names, bad, strict=True):
            if row < BIG:
                raise non_finite_error(self.name, name, int(row), problem.data)


# ------------------------------------------------------------------ pairwise distances
@functools.cache
def _dist_kernel(first: bool, last: bool, dtype: Any, sx: Any, sy: Any, sd: Any) -> Callable:
    """One compiled step per (first, last); shapes key jit's own cache."""

    def step(acc, x, y):  # noqa: ANN001, ANN202
        prod = jnp.einsum("ik,jk->ij", x, y, precision=HIGHEST, preferred_element_type=dtype)
        xn, yn = jnp.sum(jnp.square(x), axis=1), jnp.sum(jnp.square(y), axis=1)
        part = xn[:, None] + yn[None, :] - 2 * prod
        acc = part if first else acc + part
        if not last:
            return acc, ()
        return None, (jnp.where(acc > 0, acc, 0).astype(dtype),)

    outs = (None if last else sd, (sd,) if last else ())
    if first:
        jitted = jax.jit(lambda x, y: step(None, x, y), in_shardings=(sx, sy), out_shardings=outs)
        return lambda _acc, x, y: jitted(x, y)
    return jax.jit(step, in_shardings=(sd, sx, sy), out_shardings=outs, donate_argnums=0)


def _dist_footprint(t: tuple[int, int, int], mesh: Mesh, dtype: Any) -> Footprint:
    """x tiles ``P('rows', None)`` and y tiles ``P('cols', None)`` read, the distances
    carried and emitted ``P('rows', 'cols')``; extra: the panel's distances before they
    are added (one output tile)."""
    (tm, tn, tk), sd = t, NamedSharding(mesh, P(ROWS, COLS))
    sx, sy = NamedSharding(mesh, P(ROWS, None)), NamedSharding(mesh, P(COLS, None))
    return Footprint(reads=(Buffer((tm, tk), dtype, sx), Buffer((tn, tk), dtype, sy)),
                     writes=(Buffer((tm, tn), dtype, sd),),
                     accumulators=(Buffer((tm, tn), dtype, sd),),
                     extra=Buffer((tm, tn), dtype).nbytes)  # fmt: skip


class PairwiseSqDistances(Op):
    """``D[i, j] = ||x_i - y_j||^2``: output tiles accumulated over feature panels."""

    name = "pairwise_sq_distances"
    operand_names = ("x", "y")

    def check(self, operands: Any, mesh: Mesh) -> Problem:
        x, y = operands
        check_row_sets(operands, self.operand_names, self.name)
        dtype = result_dtype(x.dtype, y.dtype, where=self.name, policy="float")
        block = (granule(x, 0, 1024), granule(y, 0, 1024))
        return Problem((x, y), (Output("D", (x.shape[0], y.shape[0]), dtype, block),), (), mesh)

    def tilings(self, problem: Problem, targets: Targets) -> list[Candidate]:
        (x, y), mesh, stored = problem.sources, problem.mesh, targets["D"]
        (m, d), n, dtype = x.shape, y.shape[0], problem.outputs[0].dtype
        s = dtype.itemsize
        gm, gn = stored if stored is not None else (granule(x, 0), granule(y, 0))
        cands = []
        cand_m = tile_candidates(m, gm, mesh.shape[ROWS])
        cand_n = tile_candidates(n, gn, mesh.shape[COLS])
        cand_k = tile_candidates(d, granule(x, 1, granule(y, 1)), 1)
        for t in itertools.product(cand_m, cand_n, cand_k):
            gi, gj, gk = -(-m // t[0]), -(-n // t[1]), -(-d // t[2])
            cost = (m * gj + n * gi) * d * s + gi * gj * gk * _STEP_COST
            cands.append(Candidate(t, _dist_footprint(t, mesh, dtype), cost, gi == gj == 1))
        return cands

    def plan(self, problem: Problem, tiling: Any, targets: Targets, resume: Resume,
             prefetch: int) -> Plan:  # fmt: skip
        """For each output tile, the feature panels accumulate; the last writes D (with
        a record when resumable; recorded tiles are skipped)."""
        (x, y), mesh, out = problem.sources, problem.mesh, targets["D"]
        (m, d), n, dtype = x.shape, y.shape[0], problem.outputs[0].dtype
        tm, tn, tk = tiling
        sx, sy = NamedSharding(mesh, P(ROWS, None)), NamedSharding(mesh, P(COLS, None))
        sd, gk = NamedSharding(mesh, P(ROWS, COLS)), -(-d // tk)
        steps = []
        for i0, j0 in itertools.product(range(0, m, tm), range(0, n, tn)):
            rec = resume.key(f"{tm}x{tn}-{i0}-{j0}")  # the output tile: any K panel width
            for kk, k0 in enumerate(range(0, d, tk)):
                last = kk == gk - 1
                reads = (Read(x, (i0, i0 + tm, k0, k0 + tk), (tm, tk), sx, dtype),
                         Read(y, (j0, j0 + tn, k0, k0 + tk), (tn, tk), sy, dtype))  # fmt: skip
                size = (min(tm, m - i0), min(tn, n - j0))
                writes = (Write(out, (i0, j0), size, record=rec),) if last else ()
                kern = _dist_kernel(kk == 0, last, dtype, sx, sy, sd)
                steps.append(Step(reads, kern, writes, skip=resume.done(rec),
                                  label=f"D[{i0}:, {j0}:] [{k0}:]"))  # fmt: skip
        tiles = (
            f"{-(-m // tm)}x{-(-n // tn)} output tiles of {tm}x{tn}, {gk} feature panels of {tk}"
        )
        return Plan(self.name, steps, None, tiles=tiles)


def pairwise_sq_distances(
    x: Any,
    y: Any,
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
    """Squared Euclidean distances between the rows of ``x`` and the rows of ``y``.

    ``D[i, j] = ||x_i||^2 - 2 x_i . y_j + ||y_j||^2``, clamped at 0 — what
    ``scipy.spatial.distance.cdist(x, y, 'sqeuclidean')`` or
    ``sklearn.metrics.pairwise.euclidean_distances(x, y, squared=True)`` give, up to the
    rounding of this (GEMM) formula: near-equal rows may get a small positive distance.

    Args:
      x: ``(m, d)`` row set: BigMatrix (a ``.T`` view works), jax.Array or numpy array.
      y: ``(n, d)`` row set, likewise.
      out: None to return a jax.Array sharded ``P('rows', 'cols')`` (as far as the mesh
        divides ``(m, n)``; only when it fits the budget); a URL or BigMatrix to store D.
        With stored inputs every stored tile is recorded: a rerun after an interruption
        skips finished tiles, and a result recorded complete for the same input data is
        returned as it is.
      mesh: a 2-D mesh with axes ``('rows', 'cols')``; None: all devices.
      memory_budget: bytes (or ``"2GiB"``) the run may hold on the devices and in host
        staging; None: from the devices' memory (40% of RAM on CPU).
      block_shape: block shape of a new ``out`` (default: x's row block by y's row block).
      storage: StorageConfig for an ``out`` URL.
      progress: progress bar for multi-step runs (None: when the session is
        interactive: stderr is a terminal, or a Jupyter/IPython kernel).
      prefetch: steps of reads in flight ahead of the computing step (None: 1).
      spec: a :class:`jaxwren.RunSpec` with these settings (as in :func:`jaxwren.matmul`).

    Returns:
      D ``(m, n)``: a sharded jax.Array or the BigMatrix ``out``, in the dtype jnp gives
      for ``x`` and ``y`` (float32 for 16-bit floats, jnp's default float for integers).

    Raises:
      ShapeMismatchError: empty or non-2-D inputs, feature dimensions that differ,
        ``out`` of the wrong shape/dtype.
      OutputConflictError: ``out`` is, contains or lies inside an input or another matrix.
      NonFiniteError: a row of x or y holds NaN/Inf (found by a norm pass that runs
        before ``out`` is created or written).
      MemoryBudgetError: no tiling fits ``memory_budget`` (checked before anything runs).
    """
    spec = run_spec("pairwise_sq_distances", spec, mesh=mesh,
                    memory_budget=memory_budget, storage=storage, progress=progress,
                    prefetch=prefetch, block_shape=block_shape)  # fmt: skip
    run(RowNormCheck("pairwise_sq_distances", ("x", "y")), (x, y), None, spec)
    return run(PairwiseSqDistances(), (x, y), out, spec).value
