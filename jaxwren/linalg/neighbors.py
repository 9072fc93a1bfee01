"""Fused k-nearest-neighbour search: distance tiles reduced to a running top-k on the devices.

:class:`NearestNeighbors` is an Op on the pipeline: for each query tile Q_I (carried on
the devices while it is in use) the data tiles X_J stream through (prefetched), and every
step folds the squared distances of Q_I x X_J into a running top-k carried in the step
state (the kernels: :mod:`jaxwren.linalg.neighbors_kernel`). The distance matrix is never
materialised: inside a step each device works on chunks of at most a few MiB. The
candidate tilings come with a cost model (GEMM efficiency of the chunks, IO, steps): a
small problem is a plan with one step; a large one that fits keeps all queries in one
tile and still cuts the data into a few tiles, so that reading overlaps computing.

Layout: query tiles are split by rows over all devices, ``P(('rows', 'cols'), None)``,
so no merge across devices is ever needed. Data tiles are either broadcast (every device
gets the whole tile) or, when the budget cannot hold a copy per device, split by rows
like the queries and passed around the ring of devices — no operand is replicated. The
tiling choice picks the faster layout that fits. With ``out``, the results are stored at
``OUT/indices`` and ``OUT/sq_distances`` with a record per query tile (resumable).
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

from jaxwren.config import RunSpec, StorageConfig, run_spec
from jaxwren.dtypes import result_dtype
from jaxwren.engine.memory import Buffer, Footprint
from jaxwren.engine.plan import Plan, Read, Step, Write
from jaxwren.engine.problem import Candidate, Output, Problem, Resume, Targets
from jaxwren.engine.run import run
from jaxwren.errors import ConfigError, ShapeMismatchError
from jaxwren.linalg.base import Op
from jaxwren.linalg.common import tile_candidates
from jaxwren.linalg.distances import ALL, BIG, check_row_sets, granule, non_finite_error
from jaxwren.linalg.neighbors_kernel import Config, step
from jaxwren.sharding.mesh import default_sharding
from jaxwren.sharding.multihost import to_host
from jaxwren.sharding.platform import platform_profile
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = ["NearestNeighbors", "Tiling", "nearest_neighbors"]

# (query rows, data rows) per device per chunk, at most: the chunk's distances are
# the only intermediate, so its size is what the budget trades against tile sizes.
_CHUNKS = tuple(itertools.product((2048, 1024, 512, 256, 128, 64), (1024, 512, 256, 128, 64)))
# Rough rates for comparing tilings (a model, not a measurement): GEMM FLOP/s, store
# bytes/s, seconds per step, the ring's slowdown; a chunk of c rows runs at
# 1 / (1 + 10/c) of the GEMM rate (fitted to runs on the emulated CPU devices).
_FLOPS, _IO, _STEP, _RING = 1e11, 1e9, 2e-3, 1.05


@dataclasses.dataclass(frozen=True)
class Tiling:
    """A tiling of the search."""

    tq: int  # query rows per tile (a multiple of devices x qc)
    tn: int  # data rows per tile (a multiple of the devices for the ring)
    qc: int  # query rows per device per chunk
    cw: int  # data rows per device per chunk
    ring: bool  # data tiles split over the devices and passed around (else broadcast)


@dataclasses.dataclass(frozen=True)
class _Sizes:
    """What the memory and cost models depend on besides the tiling."""

    m: int  # queries
    n: int  # data rows
    d: int  # features
    k: int
    s: int  # bytes per element of the compute dtype
    nd: int  # devices
    cpu: bool  # device buffers are host memory (the ring's moved shards are views)


def _chunk(rows: int, chunk: int) -> int:
    """Near-equal chunks of at most ``chunk`` rows covering ``rows``: their size."""
    return -(-rows // -(-rows // chunk))


def _options(z: _Sizes, gq: int, gx: int) -> set[Tiling]:
    """Query tiles padded to whole chunks on every device (rows in multiples of ``gq``);
    data tiles whole blocks of ``gx`` rows (a multiple of the devices for the ring), the
    last chunk ragged."""
    out, nd = set(), z.nd
    cand_q = tile_candidates(z.m, gq, nd)
    # the ring passes data shards between this process's devices only: one process alone
    rings = (True, False) if jax.process_count() == 1 else (False,)
    for (qc0, cw0), ring in itertools.product(_CHUNKS, rings):
        cand_x = tile_candidates(z.n, gx, nd if ring else 1)
        for t1, t2 in itertools.product(cand_q, cand_x):
            qc = _chunk(t1 // nd, qc0)
            tq = nd * qc * -(-t1 // (nd * qc))
            out.add(Tiling(tq, t2, qc, _chunk(t2 // nd if ring else t2, cw0), ring))
    return out


def _footprint(z: _Sizes, t: Tiling, dtype: Any, mesh: Mesh, returned: bool) -> Footprint:
    """The query tile (carried: the read's own buffer) and the data tile (split for the
    ring, else on every device) read; the top-k state carried; the tile's indices and
    distances emitted (and, returned, every tile's held). Extra: the chunks' distances and
    the rows sliced for a chunk, the merge's two candidate sets, the row norms, and the
    ring's data shard in transit (except where device buffers are host memory)."""
    m, d, k, s, nd = z.m, z.d, z.k, z.s, z.nd
    sq = NamedSharding(mesh, P(ALL, None))
    sx = NamedSharding(mesh, P(ALL if t.ring else None, None))
    per_x = t.tn // nd if t.ring else t.tn
    sliced = (t.qc < t.tq // nd) * t.qc + (t.cw < per_x) * t.cw  # rows sliced for a chunk
    chunk = nd * (t.qc * t.cw * s * (2 if k > 1 else 1) + sliced * d * s)
    extra = chunk + 2 * t.tq * k * (s + 4) + 3 * (t.tq + t.tn) * s
    extra += t.tn * d * s * (t.ring and not z.cpu)

    def topk(rows: int) -> tuple[Buffer, ...]:
        return Buffer((rows, k), np.int32, sq), Buffer((rows, k), dtype, sq)

    return Footprint(reads=(Buffer((t.tq, d), dtype, sq), Buffer((t.tn, d), dtype, sx)),
                     writes=topk(t.tq), accumulators=topk(t.tq),
                     held=topk(m) if returned else (), extra=extra)  # fmt: skip


def _cost(z: _Sizes, t: Tiling) -> float:
    """Modelled seconds: compute at the chunks' GEMM efficiency, IO (its CPU work competes
    with compute on a CPU host, so it is added), the first step's reads again (nothing
    overlaps them) and a little per step."""
    gi, gj = -(-z.m // t.tq), -(-z.n // t.tn)
    eff = (1 + 10 / t.qc + 10 / t.cw) * (_RING if t.ring else 1)
    flops = 2.0 * gi * t.tq * gj * t.tn * z.d * eff
    io = (z.m + z.n * gi) * z.d * z.s / _IO
    return flops / _FLOPS + io + (t.tq + t.tn) * z.d * z.s / _IO + gi * gj * _STEP


def _check_k(k: Any, n: int, exclude_self: bool) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ConfigError(f"nearest_neighbors: k must be a positive integer, got k={k!r}.")
    limit = n - 1 if exclude_self else n
    if k > limit:
        why = f"{n} data rows less the query itself" if exclude_self else f"{n} data rows"
        raise ConfigError(
            f"nearest_neighbors: k={k} exceeds the {limit} candidates ({why}); pass k <= {limit}."
        )
    return int(k)


class NearestNeighbors(Op):
    """The k nearest data rows of each query row: a running top-k over data tiles.

    Args:
      k: neighbours per query.
      exclude_self: leave-one-out (queries are the data).
      tiling: a fixed :class:`Tiling` (None: the cheapest that fits the budget).
      fused: the ring's hops in one launch (None: on CPU devices).
    """

    name = "nearest_neighbors"
    operand_names = ("queries", "data")

    def __init__(self, k: Any = 1, exclude_self: bool = False, *, tiling: Tiling | None = None,
                 fused: bool | None = None) -> None:  # fmt: skip
        self.k, self.exclude_self, self.tiling, self.fused = k, bool(exclude_self), tiling, fused

    def check(self, operands: Any, mesh: Mesh) -> Problem:
        q, x = operands
        check_row_sets(operands, self.operand_names, self.name)
        if self.exclude_self and q.shape != x.shape:
            raise ShapeMismatchError(
                f"{self.name}: exclude_self=True needs queries to be the data (same rows), "
                f"but queries have shape {tuple(q.shape)} and data {tuple(x.shape)}; pass "
                "the data as both, or exclude_self=False."
            )
        k = _check_k(self.k, x.shape[0], self.exclude_self)
        dtype = result_dtype(q.dtype, x.dtype, where=self.name, policy="float")
        shape, block = (q.shape[0], k), (granule(q, 0, 1024), k)
        outs = (Output("indices", shape, np.dtype(np.int32), block),
                Output("sq_distances", shape, dtype, block))  # fmt: skip
        return Problem((q, x), outs, (k, self.exclude_self), mesh)

    def tilings(self, problem: Problem, targets: Targets) -> list[Candidate]:
        if self.tiling is not None:  # fixed by the caller: not accounted
            return [Candidate(self.tiling, Footprint())]
        (q, x), mesh, dtype = problem.sources, problem.mesh, problem.outputs[1].dtype
        (m, d), (n, k) = q.shape, (x.shape[0], problem.outputs[0].shape[1])
        shared = platform_profile(mesh).shares_host_memory
        z = _Sizes(m, n, d, k, dtype.itemsize, mesh.size, shared)
        stored = targets["indices"]
        gq = granule(q, 0, stored[0] if stored is not None else 512)
        return [Candidate(t, _footprint(z, t, dtype, mesh, stored is None), _cost(z, t))
                for t in _options(z, gq, granule(x, 0))]  # fmt: skip

    def plan(self, problem: Problem, tiling: Any, targets: Targets, resume: Resume,
             prefetch: int) -> Plan:  # fmt: skip
        """Steps: for each query tile, every data tile in order; the last stores (or
        returns) the tile's indices and distances, and returns its first bad rows. A
        stored tile is recorded (on its distances, written after its indices)."""
        (q, x), mesh, t = problem.sources, problem.mesh, tiling
        (m, d), n, k = q.shape, x.shape[0], problem.outputs[0].shape[1]
        dtype = problem.outputs[1].dtype
        fused = platform_profile(mesh).shares_host_memory if self.fused is None else self.fused
        cfg = Config(mesh, k, self.exclude_self, m, n, t.qc, t.cw, t.ring, t.ring and fused)
        sq = NamedSharding(mesh, P(ALL, None))
        sx = NamedSharding(mesh, P(ALL if t.ring else None, None))
        gj, steps = -(-n // t.tn), []
        for i0 in range(0, m, t.tq):
            rec, size = resume.key(f"{t.tq}x{t.tn}-{i0}"), (min(t.tq, m - i0), k)
            writes = (Write(targets["indices"], (i0, 0), size),
                      Write(targets["sq_distances"], (i0, 0), size, record=rec),
                      Write(None))  # fmt: skip
            for jj, j0 in enumerate(range(0, n, t.tn)):
                reads = (Read(q, (i0, i0 + t.tq, 0, d), (t.tq, d), sq, dtype),) if jj == 0 else ()
                reads += (Read(x, (j0, j0 + t.tn, 0, d), (t.tn, d), sx, dtype),)
                kern = functools.partial(step, cfg, jj == 0, jj == gj - 1, i0, j0)
                steps.append(Step(reads, kern, writes if jj == gj - 1 else (),
                                  skip=resume.done(rec),
                                  label=f"queries [{i0}:] x data [{j0}:]"))  # fmt: skip
        return Plan(self.name, steps, None,
                    tiles=f"{-(-m // t.tq)}x{gj} tiles of {t.tq}x{t.tn} rows, device chunks of "
                    f"{t.qc}x{t.cw}, data {'ring' if t.ring else 'broadcast'}")  # fmt: skip

    def finish(self, problem: Problem, returned: list, targets: Targets) -> Any:
        """Raises NonFiniteError for the first NaN/Inf query or data row the search met
        (stored tiles recorded earlier were checked by the run that stored them)."""
        stored = targets["indices"] is not None
        flags = returned if stored else returned[2::3]
        if flags:
            bad = np.concatenate([to_host(b) for b in flags]).reshape(-1, 2).min(axis=0)
            for name, row in zip(self.operand_names, bad, strict=True):
                if row < BIG:
                    raise non_finite_error(self.name, name, int(row), problem.outputs[1].dtype)
        if stored:
            return targets["indices"], targets["sq_distances"]
        m, k = problem.outputs[0].shape
        sharding = default_sharding((m, k), problem.mesh)
        return tuple(jax.device_put(jnp.concatenate(returned[i::3])[:m], sharding) for i in (0, 1))


def nearest_neighbors(
    queries: Any,
    data: Any,
    k: int = 1,
    *,
    exclude_self: bool = False,
    mesh: Mesh | None = None,
    memory_budget: int | str | None = None,
    out: str | None = None,
    storage: StorageConfig | None = None,
    progress: bool | None = None,
    prefetch: int | None = None,
    spec: RunSpec | None = None,
) -> tuple[jax.Array | BigMatrix, jax.Array | BigMatrix]:
    """The k nearest rows of ``data`` to each row of ``queries`` (squared Euclidean).

    Matches a brute-force search — ``np.argsort(D, axis=1, kind='stable')[:, :k]`` on
    ``D = scipy.spatial.distance.cdist(queries, data, 'sqeuclidean')``, or
    ``sklearn.neighbors.NearestNeighbors(algorithm='brute').kneighbors`` — with the
    distances computed as ``||q||^2 - 2 q . x + ||x||^2`` (clamped at 0) tile by tile on
    the devices and reduced to a running top-k: the distance matrix is never materialised,
    and ``queries`` and ``data`` may be BigMatrix objects larger than ``memory_budget``
    (they are streamed with prefetch). Each row of the results is sorted by (distance,
    index): equal distances go to the lowest index.

    Precision: every product runs at full precision of the compute dtype. In float64 the
    neighbours are those of a float64 brute force (up to exact ties resolved by index).
    In float32 the norms and products accumulate in float32, so two candidates whose
    exact distances differ by less than the rounding of the computation may come out in
    either order. The rule, from the standard error bounds of float32 sums and dot
    products (unit roundoff ``u = 2**-24``, ``d`` features): a returned distance is within
    ``(2d + 3) u (||q||^2 + ||x||^2)`` of the exact one, and an index may differ from a
    float64 brute force only where the float64 distances of the two candidates differ by
    at most ``2 (2d + 3) u (||q||^2 + max(||x_a||^2, ||x_b||^2))`` — at worst about
    ``2e-4 (||q||^2 + ||x||^2)`` for d = 784, in practice far less.

    Args:
      queries: ``(m, d)`` row set: BigMatrix (a ``.T`` view works), jax.Array or numpy.
      data: ``(n, d)`` row set, likewise.
      k: neighbours per query, ``1 <= k <= n`` (``n - 1`` with ``exclude_self``).
      exclude_self: leave-one-out: ``queries`` are ``data`` (same shape; row i of queries
        is taken to be row i of data) and a row is never its own neighbour — the
        notebook's "training 1-NN". Other rows equal to it still count.
      mesh: a 2-D mesh with axes ``('rows', 'cols')``; None: all devices. Both tiles are
        split by rows over all its devices (``P(('rows', 'cols'), None)``).
      memory_budget: bytes (or ``"2GiB"``) the run may hold on the devices and in host
        staging; None: from the devices' memory (40% of RAM on CPU).
      out: None to return device arrays; a URL prefix to store the results as BigMatrix
        objects ``OUT/indices`` (int32) and ``OUT/sq_distances``. With stored inputs every
        query tile is recorded: a rerun after an interruption skips finished tiles, and a
        result recorded complete for the same input data (any write to an input or an
        output voids the records) is returned as it is.
      storage: StorageConfig for ``out``.
      progress: progress bar for multi-step runs (None: when the session is
        interactive: stderr is a terminal, or a Jupyter/IPython kernel).
      prefetch: steps of reads in flight ahead of the computing step (None: 1).
      spec: a :class:`jaxwren.RunSpec` with these settings (as in :func:`jaxwren.matmul`).

    Returns:
      ``(indices, sq_distances)``: the two BigMatrix objects with ``out``, else jax.Arrays
      ``(m, k)`` sharded over the mesh as far as it divides them (``default_sharding``);
      indices int32, distances in the compute dtype (jnp's result type of the inputs;
      float32 for 16-bit floats, jnp's default float for integers).

    Raises:
      ShapeMismatchError: empty or non-2-D inputs, feature dimensions that differ, or
        ``exclude_self`` with queries and data of different shapes.
      ConfigError: ``k`` not an integer in ``[1, n]`` (``[1, n - 1]`` with exclude_self).
      NonFiniteError: a query or data row holds NaN/Inf (found on the devices during the
        search; raised before anything is returned, and outputs the call created are
        removed again).
      OutputConflictError: ``out`` holds other data, or aliases an input.
      MemoryBudgetError: no tiling fits ``memory_budget`` (checked before anything runs).
    """
    spec = run_spec("nearest_neighbors", spec, mesh=mesh, memory_budget=memory_budget,
                    storage=storage, progress=progress, prefetch=prefetch)  # fmt: skip
    return run(NearestNeighbors(k, exclude_self), (queries, data), out, spec).value
