"""The compiled pieces of the nearest-neighbour search (see ``jaxwren.linalg.neighbors``).

For a query tile (carried on the devices while it is in use) each data tile folds the
squared distances ``||q||^2 - 2 q . x + ||x||^2`` of its rows into a running top-k carried
in the step state, chunk by chunk on each device (a chunk's distances are the only
intermediate). Query tiles are split by rows over all devices, ``P(('rows', 'cols'),
None)``, and a query's top-k lives on the device that owns it: no kernel holds a
collective (devices never wait on each other; XLA:CPU's in-process collectives could
deadlock with many launches in flight). Data tiles are broadcast (``P(None, None)``) or,
in the ring, split like the queries and passed around the devices by runtime
device-to-device copies (on CPU devices: views of the same buffers, all hops in one
launch). Ties go to the lowest index: candidates are merged by (distance, index).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.linalg.distances import ALL, BIG, HIGHEST
from jaxwren.sharding.platform import platform_profile
from jaxwren.sharding.tiles import shard_bounds

__all__ = ["Config", "step"]


@dataclasses.dataclass(frozen=True)
class Config:
    """What the compiled kernels depend on besides tile shapes (hashable: a cache key)."""

    mesh: Mesh
    k: int
    exclude_self: bool
    m: int
    n: int
    qc: int  # query rows per device per chunk
    cw: int  # data rows per device per chunk
    ring: bool  # data tiles split over the devices and passed around (else broadcast)
    fused: bool  # the ring's hops in one launch (CPU devices: moved shards are free views)


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


def _local(cfg: Config, q, qn, x, xn, best, qrow0, base):  # noqa: ANN001, ANN202
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


def _start(cfg: Config, q, i0):  # noqa: ANN001, ANN202
    """One device: its queries' norms, an empty top-k, and its first bad query row."""
    rows = i0 + lax.axis_index(ALL) * q.shape[0] + lax.iota(jnp.int32, q.shape[0])
    qn = jnp.sum(jnp.square(q), axis=1)
    shape = (q.shape[0], cfg.k)
    bad = jnp.stack([_first_bad(qn, rows, cfg.m), jnp.int32(BIG)])
    return qn, jnp.full(shape, jnp.inf, q.dtype), jnp.full(shape, BIG, jnp.int32), bad


def _update(cfg: Config, q, qn, bd, bi, bad, *args):  # noqa: ANN001, ANN002, ANN202
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
def _kernels(cfg: Config) -> tuple[Any, Any]:
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
def _shard_ids(cfg: Config) -> list[jax.Array]:
    """Per hop, which data shard each device holds (one hop when the data is broadcast)."""
    nd = cfg.mesh.size
    ids = [(np.arange(nd, dtype=np.int32) - hop) % nd for hop in range(nd if cfg.ring else 1)]
    return [jax.device_put(i, NamedSharding(cfg.mesh, P(ALL))) for i in ids]


def _rotations(x: jax.Array, hops: int) -> Iterator[jax.Array]:
    """``x`` (split by rows over the devices), then with every shard moved on by one device
    per hop: runtime device-to-device copies, no collective in any program. Where device
    buffers are host memory (the platform profile's ``shares_host_memory``: CPU devices)
    each device adopts the shard's buffer (no copy)."""
    by_start = {shard_bounds(sh.index, x.shape)[0]: sh for sh in x.addressable_shards}
    order = [by_start[r] for r in sorted(by_start)]
    targets = [sh.device for sh in order]
    data = [sh.data for sh in order]
    if platform_profile(targets).shares_host_memory:  # views taken before any kernel uses x
        data = [np.asarray(a) for a in data]
    devices = list(x.sharding.addressable_devices_indices_map(x.shape))
    yield x
    for hop in range(1, hops):
        moved = dict(zip(targets, jax.device_put(data[-hop:] + data[:-hop], targets),
                         strict=True))  # fmt: skip
        yield jax.make_array_from_single_device_arrays(x.shape, x.sharding,
                                                       [moved[d] for d in devices])  # fmt: skip


def step(cfg: Config, first: bool, last: bool, i0: int, j0: int, carry: Any,
         *tiles: jax.Array) -> tuple[Any, tuple]:  # fmt: skip
    """Step.kernel, giving (indices, distances, first bad [query, data] rows per device)
    after the last data tile: the query tile and its norms ride in the carry, not through jit; in
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
    return (q, qn, state), (idx, dist, bad)
