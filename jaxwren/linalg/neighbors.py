"""Fused k-nearest-neighbour search: distance tiles reduced to a running top-k on the devices.

One plan on the engine: for each query tile Q_I (carried on the devices while it is in
use) the data tiles X_J stream through (prefetched), and every step folds the squared
distances ``||q||^2 - 2 q . x + ||x||^2`` of Q_I x X_J into a running top-k carried in the
step state. The distance matrix is never materialised: inside a step each device works on
chunks of at most a few MiB. The tiling comes from one search over a cost model (GEMM
efficiency of the chunks, IO, steps) within the budget: a small problem is a plan with
one step; a large one that fits keeps all queries in one tile and still cuts the data
into a few tiles, so that reading overlaps computing.

Layout: query tiles are split by rows over all devices, ``P(('rows', 'cols'), None)``,
and the top-k of a query lives on the device that owns it, so no merge across devices is
ever needed and no compiled kernel holds a collective (devices never wait on each other;
XLA:CPU's in-process collectives could deadlock with many launches in flight). Data tiles
are either broadcast (``P(None, None)``: every device gets the whole tile) or, when the
budget cannot hold a copy per device, split by rows like the queries and passed around
the ring of devices by runtime device-to-device copies — no operand is replicated. On
CPU devices (which share host memory) the moved shards are views of the same buffers
and all hops run in one launch; elsewhere each hop is a launch. The tiling search picks
the faster layout that fits.

Ties go to the lowest index: candidates are merged by (distance, index).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.engine.plan import Plan, Read, Step, Write, resolve_budget
from jaxwren.engine.runner import execute
from jaxwren.errors import ConfigError, NonFiniteError, ShapeMismatchError
from jaxwren.linalg.common import (
    is_complete,
    mark_complete,
    prepare_out,
    record_prefix,
    tile_candidates,
)
from jaxwren.linalg.distances import (
    ALL,
    HIGHEST,
    budget_error,
    compute_dtype,
    granule,
    non_finite_error,
    row_operands,
    search_tiling,
)
from jaxwren.sharding import multihost
from jaxwren.sharding.mesh import check_mesh, default_sharding
from jaxwren.sharding.multihost import finished_records, to_host
from jaxwren.sharding.tiles import shard_bounds

__all__ = ["nearest_neighbors", "choose_tiling", "search", "Tiling"]

BIG = np.iinfo(np.int32).max  # the index of "no neighbour yet"
# (query rows, data rows) per device per chunk, at most: the chunk's distances are
# the only intermediate, so its size is what the budget trades against tile sizes.
_CHUNKS = tuple(itertools.product((2048, 1024, 512, 256, 128, 64), (1024, 512, 256, 128, 64)))
# Rough rates for comparing tilings (a model, not a measurement): GEMM FLOP/s, store
# bytes/s, seconds per step, the ring's slowdown; a chunk of c rows runs at
# 1 / (1 + 10/c) of the GEMM rate (fitted to runs on the emulated CPU devices).
_FLOPS, _IO, _STEP, _RING = 1e11, 1e9, 2e-3, 1.05


@dataclasses.dataclass(frozen=True)
class Tiling:
    """A tiling of the search (see :func:`choose_tiling`)."""

    tq: int  # query rows per tile (a multiple of devices x qc)
    tn: int  # data rows per tile (a multiple of the devices for the ring)
    qc: int  # query rows per device per chunk
    cw: int  # data rows per device per chunk
    ring: bool  # data tiles split over the devices and passed around (else broadcast)
    projected: int


@dataclasses.dataclass(frozen=True)
class _Config:
    """What the compiled kernels depend on besides tile shapes (hashable: a cache key)."""

    mesh: Mesh
    k: int
    exclude_self: bool
    m: int
    n: int
    qc: int
    cw: int
    ring: bool
    fused: bool  # the ring's hops in one launch (CPU devices: moved shards are free views)


def _on_cpu(mesh: Mesh) -> bool:
    """CPU devices share host memory: a shard moved to another device is a view."""
    return all(d.platform == "cpu" for d in mesh.devices.flat)


def _chunk(rows: int, chunk: int) -> int:
    """Near-equal chunks of at most ``chunk`` rows covering ``rows``: their size."""
    return -(-rows // -(-rows // chunk))


def _options(q: Any, x: Any, nd: int) -> set[tuple[int, int, int, int, bool]]:
    """(tq, tn, qc, cw, ring): query tiles padded to whole chunks on every device; data
    tiles whole blocks (a multiple of the devices for the ring), the last chunk ragged."""
    (m, _), n = q.shape, x.shape[0]
    out = set()
    cand_q = tile_candidates(m, granule(q, 0), nd)
    # the ring passes data shards between this process's devices only: one process alone
    rings = (True, False) if jax.process_count() == 1 else (False,)
    for (qc0, cw0), ring in itertools.product(_CHUNKS, rings):
        cand_x = tile_candidates(n, granule(x, 0), nd if ring else 1)
        for t1, t2 in itertools.product(cand_q, cand_x):
            qc = _chunk(t1 // nd, qc0)
            tq = nd * qc * -(-t1 // (nd * qc))
            out.add((tq, t2, qc, _chunk(t2 // nd if ring else t2, cw0), ring))
    return out


def choose_tiling(q: Any, x: Any, k: int, mesh: Mesh, budget: int, s: int,
                  prefetch: int) -> Tiling:  # fmt: skip
    """The tiling with the least modelled time (compute at the chunk's GEMM efficiency,
    IO, steps) whose projected bytes fit ``budget``."""
    (m, d), n, nd = q.shape, x.shape[0], mesh.size
    cpu = _on_cpu(mesh)

    def projected(o: tuple[int, int, int, int, bool]) -> int:
        tq, tn, qc, cw, ring = o
        queries = tq * d * s * (2 if tq < m else 1)  # carried; the next one placed
        # in flight on the devices (one copy per device when broadcast), staged on the
        # host, and the ring's copy in transit (none on CPU: a view)
        copies = (prefetch + 1) * (1 if ring else nd) + prefetch + (ring and not cpu)
        data = tn * d * s * copies
        per_q, per_x = tq // nd, tn // nd if ring else tn
        copies = (qc < per_q) * qc + (cw < per_x) * cw  # rows sliced out for a chunk
        chunk = nd * (qc * cw * s * (2 if k > 1 else 1) + copies * d * s)
        state = 3 * tq * k * (s + 4) + 2 * m * k * (s + 4) + 3 * (tq + tn) * s
        return queries + data + chunk + state

    def cost(o: tuple[int, int, int, int, bool]) -> float:
        """Modelled seconds: compute, IO (its CPU work competes with compute on a CPU
        host, so it is added), the first step's reads again (nothing overlaps them) and
        a little per step."""
        tq, tn, qc, cw, ring = o
        gi, gj = -(-m // tq), -(-n // tn)
        flops = 2.0 * gi * tq * gj * tn * d * (1 + 10 / qc + 10 / cw) * (_RING if ring else 1)
        io = (m + n * gi) * d * s / _IO
        return flops / _FLOPS + io + (tq + tn) * d * s / _IO + gi * gj * _STEP

    best, smallest = search_tiling(_options(q, x, nd), projected, cost, budget)
    if best is None:
        raise budget_error("nearest_neighbors", f"queries {(m, d)} against data {(n, d)}",
                           smallest, budget)  # fmt: skip
    return Tiling(*best, projected(best))


# ------------------------------------------------------------------ kernels
def _merge(best: tuple[jax.Array, jax.Array], dist: jax.Array, idx: jax.Array,
           k: int) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """The k smallest by (distance, index) of ``best`` (sorted) and a chunk of distances
    ``(rows, w)`` with global column indices ``idx``, all above those in ``best``."""
    bd, bi = best
    if k == 1:  # two vectorised reductions instead of a sort
        mn = jnp.min(dist, axis=1)
        ii = jnp.min(jnp.where(dist == mn[:, None], idx[None, :], BIG), axis=1)
        better = mn < bd[:, 0]  # on a tie the carried one has the lower index
        return jnp.where(better, mn, bd[:, 0])[:, None], jnp.where(better, ii, bi[:, 0])[:, None]
    neg, pos = lax.top_k(-dist, min(k, dist.shape[1]))  # equal values: lower index first
    cd = jnp.concatenate([bd, -neg], axis=1)
    ci = jnp.concatenate([bi, idx[pos]], axis=1)
    neg, pos = lax.top_k(-cd, k)  # best comes first: ties keep the index order
    return -neg, jnp.take_along_axis(ci, pos, axis=1)


def _merge_any(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array],
               k: int) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """The k smallest by (distance, index) of two sorted candidate lists, in any order."""
    cd, ci = (jnp.concatenate(pair, axis=1) for pair in zip(a, b, strict=True))
    cd, ci = lax.sort((cd, ci), dimension=1, num_keys=2)
    return cd[:, :k], ci[:, :k]


def _local(cfg: _Config, q, qn, x, xn, best, qrow0, base):  # noqa: ANN001, ANN202
    """One device: its queries against one data shard, chunk by chunk."""
    qc, cw = cfg.qc, cfg.cw
    nq, nc = q.shape[0] // qc, x.shape[0] // cw

    def query_chunk(a, best):  # noqa: ANN001, ANN202
        def rows_of(v):  # noqa: ANN001, ANN202
            return v if nq == 1 else lax.dynamic_slice_in_dim(v, a * qc, qc)

        qa, qna = rows_of(q), rows_of(qn)
        part = tuple(rows_of(b) for b in best)
        rows = qrow0 + a * qc + lax.iota(jnp.int32, qc)

        def fold(part, xb, xnb, col0):  # noqa: ANN001, ANN202
            cols = base + col0 + lax.iota(jnp.int32, xb.shape[0])
            dot = jnp.einsum("ik,jk->ij", qa, xb, precision=HIGHEST)
            dist = qna[:, None] + xnb[None, :] - 2 * dot
            dist = jnp.where(dist > 0, dist, 0)  # clamp; also maps -0.0 to +0.0
            if cfg.exclude_self:
                dist = jnp.where(rows[:, None] == cols[None, :], jnp.inf, dist)
            return _merge(part, dist, cols, cfg.k)

        def data_chunk(b, part):  # noqa: ANN001, ANN202
            xb, xnb = (lax.dynamic_slice_in_dim(v, b * cw, cw) for v in (x, xn))
            return fold(part, xb, xnb, b * cw)

        if nc == 1 and cw == x.shape[0]:  # one chunk: no slicing
            part = fold(part, x, xn, 0)
        else:
            part = lax.fori_loop(0, nc, data_chunk, part)
            if nc * cw < x.shape[0]:  # the ragged last chunk
                part = fold(part, x[nc * cw :], xn[nc * cw :], nc * cw)
        if nq == 1:
            return part
        return tuple(lax.dynamic_update_slice_in_dim(b, p, a * qc, 0)
                     for b, p in zip(best, part, strict=True))  # fmt: skip

    return lax.fori_loop(0, nq, query_chunk, best)


def _first_bad(norms: jax.Array, rows: jax.Array, limit: Any) -> jax.Array:
    """The first global row index below ``limit`` whose norm is not finite (or BIG)."""
    return jnp.min(jnp.where(jnp.isfinite(norms) | (rows >= limit), BIG, rows))


def _start(cfg: _Config, q, i0):  # noqa: ANN001, ANN202
    """One device: its queries' norms, an empty top-k, and its first bad query row."""
    rows = i0 + lax.axis_index(ALL) * q.shape[0] + lax.iota(jnp.int32, q.shape[0])
    qn = jnp.sum(jnp.square(q), axis=1)
    shape = (q.shape[0], cfg.k)
    bad = jnp.stack([_first_bad(qn, rows, cfg.m), jnp.int32(BIG)])
    return qn, jnp.full(shape, jnp.inf, q.dtype), jnp.full(shape, BIG, jnp.int32), bad


def _update(cfg: _Config, q, qn, bd, bi, bad, *args):  # noqa: ANN001, ANN002, ANN202
    """One device: fold its data rows into the top-k of its own queries — the whole tile
    (broadcast), or ring shards: ``args = (*x_hops, shard, i0, j0)``, where hop h holds
    shard ``shard - h`` (one hop per launch, or all of them when ``cfg.fused``), each
    shard's top-k found afresh and merged by (distance, index). No collective: devices
    never wait on each other."""
    *xs, shard, i0, j0 = args
    qrow0 = i0 + lax.axis_index(ALL) * q.shape[0]
    best = (bd, bi)
    fresh = tuple(lax.pcast(jnp.full(bd.shape, v, a.dtype), ALL, to="varying")
                  for v, a in ((jnp.inf, bd), (BIG, bi)))  # fmt: skip
    for h, x in enumerate(xs):
        base = j0 + ((shard[0] - h) % cfg.mesh.size) * x.shape[0] if cfg.ring else j0
        xn = jnp.sum(jnp.square(x), axis=1)
        rows = base + lax.iota(jnp.int32, x.shape[0])
        bad = bad.at[1].min(_first_bad(xn, rows, cfg.n))
        xn = jnp.where(rows < cfg.n, xn, jnp.inf)  # padding rows: infinitely far
        if not cfg.ring:  # data rows arrive in order: fold straight into the carried top-k
            best = _local(cfg, q, qn, x, xn, best, qrow0, base)
        else:
            best = _merge_any(best, _local(cfg, q, qn, x, xn, fresh, qrow0, base), cfg.k)
    return (*best, bad)


@functools.lru_cache(maxsize=64)
def _kernels(cfg: _Config) -> tuple[Any, Any]:
    """``start(q, i0) -> (qn, state)``, ``update(q, qn, state, x, shard, i0, j0) -> state``:
    state = (distances (tq, k), indices (tq, k), first bad [query, data] row per device),
    all sharded by device, so that the kernels hold no collective."""
    mesh = cfg.mesh
    xs = P(ALL, None) if cfg.ring else P(None, None)  # data: split for the ring, else whole
    rows, vec, rep = P(ALL, None), P(ALL), P()
    st = (rows, rows, vec)

    def sharded(fn, ins, outs, **kw):  # noqa: ANN001, ANN003, ANN202
        mapped = jax.shard_map(functools.partial(fn, cfg), mesh=mesh, in_specs=ins,
                               out_specs=outs)  # fmt: skip
        named = functools.partial(jax.tree.map, lambda p: NamedSharding(mesh, p))
        return jax.jit(mapped, in_shardings=named(ins), out_shardings=named(outs), **kw)

    hops = cfg.mesh.size if cfg.fused else 1
    start = sharded(_start, (rows, rep), (vec, *st))
    update = sharded(_update, (rows, vec, *st, *(xs,) * hops, vec, rep, rep), st)
    return start, update


@functools.lru_cache(maxsize=64)
def _shard_ids(cfg: _Config) -> list[jax.Array]:
    """Per hop, which data shard each device holds (one hop when the data is broadcast)."""
    nd = cfg.mesh.size
    ids = [(np.arange(nd, dtype=np.int32) - hop) % nd for hop in range(nd if cfg.ring else 1)]
    return [jax.device_put(i, NamedSharding(cfg.mesh, P(ALL))) for i in ids]


def _rotations(x: jax.Array, hops: int) -> Iterator[jax.Array]:
    """``x`` (split by rows over the devices), then with every shard moved on by one device
    per hop: runtime device-to-device copies, no collective in any program. CPU devices
    share host memory: there each device adopts the shard's buffer (no copy)."""
    by_start = {shard_bounds(sh.index, x.shape)[0]: sh for sh in x.addressable_shards}
    order = [by_start[r] for r in sorted(by_start)]
    targets = [sh.device for sh in order]
    data = [sh.data for sh in order]
    if all(d.platform == "cpu" for d in targets):  # views taken before any kernel uses x
        data = [np.asarray(a) for a in data]
    devices = list(x.sharding.addressable_devices_indices_map(x.shape))
    yield x
    for hop in range(1, hops):
        moved = dict(zip(targets, jax.device_put(data[-hop:] + data[:-hop], targets),
                         strict=True))  # fmt: skip
        yield jax.make_array_from_single_device_arrays(x.shape, x.sharding,
                                                       [moved[d] for d in devices])  # fmt: skip


def _step(cfg: _Config, first: bool, last: bool, i0: int, j0: int, stored: bool, carry: Any,
          *tiles: jax.Array) -> tuple[Any, tuple]:  # fmt: skip
    """Step.kernel: the query tile and its norms ride in the carry, not through jit; in
    the ring the data tile visits every device (all hops in one launch on CPU devices,
    where the moved shards are views of the same buffers, else one launch per hop)."""
    start, update = _kernels(cfg)
    i0_, j0_ = np.int32(i0), np.int32(j0)
    if first:
        q, x = tiles
        qn, *state = start(q, i0_)
    else:
        (q, qn, state), (x,) = carry, tiles
    hops = _shard_ids(cfg)
    if cfg.fused:  # every hop in one launch
        state = update(q, qn, *state, *_rotations(x, len(hops)), hops[0], i0_, j0_)
    else:
        for shard, xh in zip(hops, _rotations(x, len(hops)), strict=True):
            state = update(q, qn, *state, xh, shard, i0_, j0_)
    if not last:
        return (q, qn, state), ()
    dist, idx, bad = state
    return (q, qn, state), ((idx, dist, bad) if stored else (dist, idx, bad))


def plan_neighbors(
    q: Any,
    x: Any,
    cfg: _Config,
    tiling: Tiling,
    dtype: np.dtype,
    stored: tuple[Any, Any] | None = None,
    record: str | None = None,
) -> Plan:
    """Steps: for each query tile, every data tile in order; the last one returns the
    tile's (distances, indices, first bad rows), or writes distances and indices to
    ``stored`` (then a ``record`` per query tile; recorded tiles are skipped: resume)."""
    (m, d), n = q.shape, x.shape[0]
    tq, tn = tiling.tq, tiling.tn
    sq = NamedSharding(cfg.mesh, P(ALL, None))
    sx = NamedSharding(cfg.mesh, P(ALL if cfg.ring else None, None))
    gj = -(-n // tn)
    keys = {i0: f"{record}-{tq}x{tn}-{i0}" for i0 in range(0, m, tq)} if record else {}
    done = finished_records(stored[0].marks(), keys.values()) if stored and record else set()
    steps = []
    for i0 in range(0, m, tq):
        if stored is None:
            writes: tuple[Write, ...] = (Write(None),) * 3
        else:  # indices first, then distances with the record: both stored before it
            size = (min(tq, m - i0), cfg.k)
            rec = keys.get(i0)
            writes = (Write(stored[1], (i0, 0), size),
                      Write(stored[0], (i0, 0), size, record=rec), Write(None))  # fmt: skip
        for jj, j0 in enumerate(range(0, n, tn)):
            first, last = jj == 0, jj == gj - 1
            reads = (Read(q, (i0, i0 + tq, 0, d), (tq, d), sq, dtype),) if first else ()
            reads += (Read(x, (j0, j0 + tn, 0, d), (tn, d), sx, dtype),)
            kern = functools.partial(_step, cfg, first, last, i0, j0, stored is not None)
            steps.append(Step(reads, kern, writes if last else (), skip=keys.get(i0) in done,
                              label=f"queries [{i0}:] x data [{j0}:]"))  # fmt: skip
    return Plan("nearest_neighbors", steps, None, tiling.projected, tiling.projected,
                f"{-(-m // tq)}x{gj} tiles of {tq}x{tn} rows, device chunks of "
                f"{tiling.qc}x{tiling.cw}, data {'ring' if cfg.ring else 'broadcast'}")  # fmt: skip


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


def nearest_neighbors(
    queries: Any,
    data: Any,
    k: int = 1,
    *,
    exclude_self: bool = False,
    mesh: Mesh | None = None,
    memory_budget: int | str | None = None,
    out: str | None = None,
    storage: Any = None,
    progress: bool | None = None,
    prefetch: int = 1,
) -> tuple[Any, Any]:
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
        query tile is recorded, a rerun after an interruption skips finished tiles, and a
        result recorded complete for the same inputs is returned as it is.
      storage: StorageConfig for ``out``.
      progress: progress bar for multi-step runs (None: when stderr is a terminal).
      prefetch: steps of reads in flight ahead of the computing step.

    Returns:
      ``(indices, sq_distances)``: the two BigMatrix objects with ``out``, else jax.Arrays
      ``(m, k)`` sharded over the mesh as far as it
      divides them (``default_sharding``); indices int32, distances in the compute dtype
      (jnp's result type of the inputs; float32 for 16-bit floats and integers).

    Raises:
      ShapeMismatchError: empty or non-2-D inputs, feature dimensions that differ, or
        ``exclude_self`` with queries and data of different shapes.
      ConfigError: ``k`` not an integer in ``[1, n]`` (``[1, n - 1]`` with exclude_self).
      NonFiniteError: a query or data row holds NaN/Inf (found on the devices during the
        search; raised before anything is returned — nothing is ever written).
      MemoryBudgetError: no tiling fits ``memory_budget`` (checked before anything runs).
    """
    where = "nearest_neighbors"
    q, x = row_operands(queries, data, ("queries", "data"), where)
    if exclude_self and q.shape != x.shape:
        raise ShapeMismatchError(
            f"{where}: exclude_self=True needs queries to be the data (same rows), but "
            f"queries have shape {tuple(q.shape)} and data {tuple(x.shape)}; pass the "
            "data as both, or exclude_self=False."
        )
    k = _check_k(k, x.shape[0], exclude_self)
    dtype = compute_dtype(q.dtype, x.dtype, where=where)
    mesh = check_mesh(mesh, where=where)
    budget = resolve_budget(memory_budget, list(mesh.devices.flat))
    tiling = choose_tiling(q, x, k, mesh, budget, dtype.itemsize, prefetch)
    if out is None:
        return search(q, x, k, bool(exclude_self), mesh, tiling, dtype, budget=budget,
                      prefetch=prefetch, progress=progress)  # fmt: skip
    return _search_stored(q, x, k, bool(exclude_self), mesh, tiling, dtype, out, storage,
                          budget=budget, prefetch=prefetch, progress=progress)  # fmt: skip


def _search_stored(
    q: Any,
    x: Any,
    k: int,
    exclude_self: bool,
    mesh: Mesh,
    tiling: Tiling,
    dtype: np.dtype,
    out: str,
    storage: Any,
    **run: Any,
) -> tuple[Any, Any]:
    """nearest_neighbors with its results stored under ``out`` (resumable)."""
    m = q.shape[0]
    targets = [prepare_out(f"{out}/{name}", shape=(m, k), dtype=np.dtype(dt), block_shape=None,
                           inputs=(q, x), where="nearest_neighbors", storage=storage)
               for name, dt in (("sq_distances", dtype), ("indices", np.int32))]  # fmt: skip
    record = record_prefix(f"nn{k}{'x' if exclude_self else ''}", q, x)
    if all(is_complete(t.matrix, record) for t in targets):
        return targets[1].matrix, targets[0].matrix
    dist_m, idx_m = (t.materialize() for t in targets)
    fresh = [t.matrix is None for t in targets]
    cfg = _Config(mesh, k, exclude_self, m, x.shape[0], tiling.qc, tiling.cw, tiling.ring,
                  tiling.ring and _on_cpu(mesh))  # fmt: skip
    plan = plan_neighbors(q, x, cfg, tiling, dtype, (dist_m, idx_m), record)
    outs, _ = execute(plan, budget=run["budget"], prefetch=run["prefetch"],
                      progress=run["progress"])  # fmt: skip
    try:
        _raise_bad_rows(outs, dtype)  # stored runs return only the flags
    except NonFiniteError:
        for matrix, new in zip((dist_m, idx_m), fresh, strict=True):
            if new:  # created here: leave no trace
                multihost.once(f"destroy {matrix.url}", matrix.destroy)
        raise
    mark_complete(dist_m, record)
    mark_complete(idx_m, record)
    return idx_m, dist_m


def _raise_bad_rows(flags: list, dtype: np.dtype) -> None:
    """Raises NonFiniteError for the first NaN/Inf query or data row the search met
    (``flags``: each query tile's first bad (query, data) rows)."""
    if not flags:  # every tile was already stored: checked by the run that stored it
        return
    bad = np.concatenate([to_host(b) for b in flags]).reshape(-1, 2).min(axis=0)
    for name, row in zip(("queries", "data"), bad, strict=True):
        if row < BIG:
            raise non_finite_error("nearest_neighbors", name, int(row), dtype)


def search(q: Any, x: Any, k: int, exclude_self: bool, mesh: Mesh, tiling: Tiling,
           dtype: np.dtype, *, budget: int, prefetch: int = 1, progress: bool | None = None,
           fused: bool | None = None) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """Runs the search with a given tiling on validated sources (see nearest_neighbors);
    ``fused``: the ring's hops in one launch (default: on CPU devices)."""
    (m, _), n = q.shape, x.shape[0]
    fused = _on_cpu(mesh) if fused is None else fused
    cfg = _Config(mesh, k, exclude_self, m, n, tiling.qc, tiling.cw, tiling.ring,
                  tiling.ring and fused)  # fmt: skip
    plan = plan_neighbors(q, x, cfg, tiling, dtype)
    outs, _ = execute(plan, budget=budget, prefetch=prefetch, progress=progress)
    _raise_bad_rows(outs[2::3], dtype)
    sharding = default_sharding((m, k), mesh)
    dist, idx = (jax.device_put(jnp.concatenate(outs[i::3])[:m], sharding) for i in (0, 1))
    return idx, dist
