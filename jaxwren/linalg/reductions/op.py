"""The reduction operation on the engine: per-line statistics of a matrix along one axis.

:class:`Reduce` computes statistics of every line along the kept axis (each column for
``axis=0``, each row for ``axis=1``): tiles of (reduced x kept) extent stream through the
devices in order along the reduced axis, and each step folds its tile into the carried
statistics (see :class:`Layout` for where they live: on accelerators split along the kept
axis over every device, no collective; on CPU devices whole tiles on one device, read once
as whole stored blocks). The result is returned to the host, never stored.

Accumulation: floats in the default float (float64 with x64, else float32 with Kahan
compensation across tiles), integers in int64/uint64 as numpy's sums, the variance by
Chan's combination of per-tile (mean, M2) (each tile's moments two-pass, shifted by the
running mean), never E[x^2] - E[x]^2.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, Sharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from jaxwren.dtypes import is_float, result_dtype
from jaxwren.engine.memory import Buffer, Footprint
from jaxwren.engine.plan import Plan, Read, Step, Write
from jaxwren.engine.problem import Candidate, Output, Problem, Resume, Targets
from jaxwren.errors import ConfigError
from jaxwren.linalg.base import Op
from jaxwren.linalg.common import tile_candidates
from jaxwren.linalg.distances import granule, with_args
from jaxwren.sharding.mesh import COLS, ROWS, process_local
from jaxwren.sharding.multihost import to_host
from jaxwren.sharding.platform import platform_profile

__all__ = ["Layout", "Reduce", "Stat", "acc_dtype"]

ALL = (ROWS, COLS)  # both mesh axes flattened: one slice of the kept axis per device
_STEP_COST = 4 << 20  # ~4 MiB of IO per step of overhead, as in matmul's tiling
SUMS = ("sum", "sumsq", "sumabs", "sumpow", "nonzero")
EXTREMES = ("min", "max", "absmin", "absmax")


@dataclasses.dataclass(frozen=True)
class Stat:
    """What is accumulated for every kept line.

    Attributes:
      kind: ``sum`` (of x), ``sumsq`` (x**2), ``sumabs`` (|x|), ``sumpow`` (|x|**p),
        ``nonzero`` (count of x != 0), ``min``, ``max``, ``absmin``, ``absmax`` (of |x|),
        or ``moments`` (mean and M2, the sum of squared deviations).
      p: the power of ``sumpow``.
    """

    kind: str
    p: float = 0.0

    @property
    def parts(self) -> int:
        return 2 if self.kind == "moments" else 1

    @property
    def masked(self) -> bool:
        """Whether the zero padding past the matrix edge would change the statistic."""
        return self.kind in ("min", "max", "absmin", "moments", "sumpow")  # |0|**p, p <= 0


def acc_dtype(stat: Stat, dtype: Any, *, where: str, exact_ints: bool = False) -> np.dtype:
    """The dtype ``stat`` accumulates in: the input's own for min/max (bool as uint8);
    int64/uint64 for sums of integers with ``exact_ints`` (numpy's ``sum``); else the
    default float (float64 with x64)."""
    dt = result_dtype(dtype, where=where)  # refuses 64-bit data while JAX runs 32-bit
    if stat.kind in ("min", "max"):
        return np.dtype(np.uint8) if dt.kind == "b" else dt
    if exact_ints and stat.kind == "sum" and not is_float(dt):
        wide = np.uint64 if dt.kind == "u" else np.int64
        return np.dtype(jax.dtypes.canonicalize_dtype(wide))
    return np.dtype(jax.dtypes.canonicalize_dtype(np.float64))


def _read_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.uint8) if dtype.kind == "b" else dtype


# ------------------------------------------------------------------ the per-tile fold
def _extreme(kind: str, x: jax.Array, ok: Any, axis: int) -> jax.Array:
    low = kind in ("min", "absmin")
    if ok is not None:
        if is_float(x.dtype):
            edge = jnp.inf if low else -jnp.inf
        else:
            info = np.iinfo(x.dtype)
            edge = info.max if low else info.min
        x = jnp.where(ok, x, jnp.asarray(edge, x.dtype))
    return jnp.min(x, axis) if low else jnp.max(x, axis)


def _summand(stat: Stat, t: jax.Array, acc: Any, p: jax.Array) -> jax.Array:
    if stat.kind == "sum":
        return t
    if stat.kind == "nonzero":
        return t != 0
    x = t.astype(acc)
    if stat.kind == "sumsq":
        return x * x
    x = jnp.abs(x)
    return x if stat.kind == "sumabs" else x ** p.astype(acc)


def _kahan(s: jax.Array, c: jax.Array, inc: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``s + inc`` with ``c``, what the float32 running sum lost (the sum is ``s - c``)."""
    y = inc - c
    t = s + y
    return t, (t - s) - y


def _accumulate(carry: Any, parts: tuple[jax.Array, ...], comp: bool) -> tuple[jax.Array, ...]:
    """``carry`` (the values, then with ``comp`` their compensations) plus ``parts``."""
    if carry is None:
        return (*parts, *map(jnp.zeros_like, parts)) if comp else parts
    if not comp:
        return tuple(c + p for c, p in zip(carry, parts, strict=True))
    k = len(parts)
    pairs = [_kahan(carry[i], carry[k + i], p) for i, p in enumerate(parts)]
    return (*(s for s, _ in pairs), *(c for _, c in pairs))


def _fold(stat: Stat, carry: Any, t: jax.Array, scalars: tuple[jax.Array, ...], axis: int,
          acc: Any, comp: bool) -> tuple[jax.Array, ...]:  # fmt: skip
    """The carried statistics with tile ``t`` folded in (``carry`` None: the first tile).
    ``scalars``: ``n0`` lines were folded before, ``valid`` of the tile's lines lie in the
    matrix, ``p`` is the power of ``sumpow`` (traced: one compile for every p)."""
    n0, valid, p = scalars
    ok = lax.broadcasted_iota(jnp.int32, t.shape, axis) < valid if stat.masked else None
    if stat.kind == "moments":  # Chan et al.: combine (count, mean, M2) of two parts
        # the tile is shifted by the running mean (the first tile: by its first line), so
        # its moments sum small deviations: no digits lost to a large mean in float32
        x, nt = t.astype(acc), valid.astype(acc)
        shift = lax.index_in_dim(x, 0, axis) if carry is None else jnp.expand_dims(carry[0], axis)
        d = jnp.where(ok, x - shift, 0)
        md = jnp.sum(d, axis) / nt  # the tile's mean minus the shift
        e = jnp.where(ok, d - jnp.expand_dims(md, axis), 0)
        m2t = jnp.sum(e * e, axis)
        if carry is None:
            base = jnp.squeeze(shift, axis)
            zero = jnp.zeros_like(base)
            return _accumulate((base, zero, zero, zero) if comp else (base, zero), (md, m2t), comp)
        na = n0.astype(acc)
        n = na + nt
        if comp:
            md = md + carry[2]  # the carried mean is carry[0] - carry[2]
        return _accumulate(carry, (md * (nt / n), m2t + md * md * (na * nt / n)), comp)
    if stat.kind in EXTREMES:
        x = t if stat.kind in ("min", "max") else jnp.abs(t.astype(acc))
        part = _extreme(stat.kind, x, ok, axis)
        if carry is None:
            return (part,)
        pick = jnp.minimum if stat.kind in ("min", "absmin") else jnp.maximum
        return (pick(carry[0], part),)  # NaN propagates, as in numpy
    x = _summand(stat, t, acc, p)
    part = jnp.sum(x if ok is None else jnp.where(ok, x, 0), axis, dtype=acc)
    return _accumulate(carry, (part,), comp)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where tiles and statistics live.

    ``one``: where device buffers are host memory (the platform profile's
    ``shares_host_memory``: CPU devices) and the mesh is this process's, a tile is read
    once, as whole stored blocks, into one buffer that the mesh's first device adopts, and
    that device reduces it: the emulated devices share the host's cores, which XLA's
    threads use from one device, and splitting the tile would cut stored blocks into
    several reads (or cost a copy per device). Else (accelerators) the tile is split along
    the kept axis over all devices, each reducing its own lines: no collective.
    """

    mesh: Mesh
    one: bool

    @staticmethod
    def of(mesh: Mesh) -> Layout:
        return Layout(mesh, process_local(mesh) and platform_profile(mesh).shares_host_memory)

    def tile(self, axis: int) -> Sharding:
        if self.one:
            return SingleDeviceSharding(self.mesh.devices.flat[0])
        return NamedSharding(self.mesh, P(None, ALL) if axis == 0 else P(ALL, None))

    @property
    def multiple(self) -> int:
        """Kept tile lengths are multiples of this (one line slice per device)."""
        return 1 if self.one else self.mesh.size


@functools.lru_cache(maxsize=128)
def _kernel(stat: Stat, first: bool, last: bool, axis: int, acc: Any, comp: bool,
            layout: Layout) -> Callable:  # fmt: skip
    """One compiled step per (stat, first, last, dtypes, layout); shapes key jit's cache."""
    ncarry = stat.parts * (2 if comp else 1)

    def local(carry, t, *scalars):  # noqa: ANN001, ANN002, ANN202
        new = _fold(stat, carry, t, scalars, axis, acc, comp)
        if last and comp:
            return tuple(new[i] - new[stat.parts + i] for i in range(stat.parts))
        return new

    fn = (lambda t, *scalars: local(None, t, *scalars)) if first else local
    donate = () if first or last else (0,)  # the last step's results are fewer
    if layout.one:
        one = layout.tile(axis)
        jitted = jax.jit(fn, in_shardings=one, out_shardings=one, donate_argnums=donate)
    else:
        mesh, vec = layout.mesh, P(ALL)
        ins: tuple[Any, ...] = (P(None, ALL) if axis == 0 else P(ALL, None), P(), P(), P())
        ins = ins if first else ((vec,) * ncarry, *ins)
        outs = (vec,) * (stat.parts if last else ncarry)
        mapped = jax.shard_map(fn, mesh=mesh, in_specs=ins, out_specs=outs)
        named = functools.partial(jax.tree.map, lambda p: NamedSharding(mesh, p))
        jitted = jax.jit(mapped, in_shardings=named(ins), out_shardings=named(outs),
                         donate_argnums=donate)  # fmt: skip

    def step(carry, t, *scalars):  # noqa: ANN001, ANN002, ANN202
        res = jitted(t, *scalars) if first else jitted(carry, t, *scalars)
        return (None, res) if last else (res, ())

    return step


# ------------------------------------------------------------------ the operation
class Reduce(Op):
    """Per-line statistics along ``axis``; the result (``stat.parts`` numpy vectors of the
    kept length, in the accumulation dtype) is returned, never stored."""

    operand_names = ("a",)

    def __init__(self, stat: Stat, axis: int, acc: Any, name: str = "reduce") -> None:
        self.stat, self.axis, self.acc, self.name = stat, axis, np.dtype(acc), name

    def _comp(self) -> bool:
        """Float32 sums (JAX without x64) carry Kahan compensations across tiles."""
        return self.acc == np.float32 and self.stat.kind in (*SUMS, "moments")

    def _temp_itemsize(self, s_in: int, s_acc: int) -> int:
        """Bytes per entry of the tile-sized temporary XLA materialises (measured with
        ``compiled.memory_analysis()``): none where the reduce takes the tile directly."""
        kind = self.stat.kind
        if kind in ("sum", "sumsq", "sumabs", "absmax"):
            return 0
        return s_in if kind in ("min", "max") else s_acc

    def check(self, operands: Any, mesh: Mesh) -> Problem:
        (a,) = operands
        result_dtype(a.dtype, where=self.name)  # refuses 64-bit data while JAX runs 32-bit
        kept = a.shape[1 - self.axis]
        outs = tuple(Output(f"stat{i}", (kept, 1), self.acc) for i in range(self.stat.parts))
        return Problem((a,), outs, (self.stat, self.axis, self.acc.name), mesh)

    def tilings(self, problem: Problem, targets: Targets) -> list[Candidate]:
        if any(t is not None for t in targets.values()):
            raise ConfigError(f"{self.name}: the result is returned, never stored; "
                              "call it without out.")  # fmt: skip
        (a,), axis, layout = problem.sources, self.axis, Layout.of(problem.mesh)
        red, kept = a.shape[axis], a.shape[1 - axis]
        rd, st = _read_dtype(a.dtype), layout.tile(axis)
        cands = []
        cand_r = tile_candidates(red, granule(a, axis), 1)
        cand_k = tile_candidates(kept, granule(a, 1 - axis), layout.multiple)
        for tr, tk in itertools.product(cand_r, cand_k):
            steps = -(-red // tr) * -(-kept // tk)
            tile = (tr, tk) if axis == 0 else (tk, tr)
            fp = self._footprint(Buffer(tile, rd, st), tk, kept)
            cands.append(Candidate((tr, tk), fp, steps * _STEP_COST + tr * tk * rd.itemsize))
        return cands

    def _footprint(self, tile: Buffer, tk: int, kept: int) -> Footprint:
        """A tile read; the strip's statistics (and their compensations) carried and
        emitted; every strip's held (returned). Extra: the tile-sized temporary XLA
        materialises for some statistics, and the fold's per-line temporaries (the tile's
        own statistics, their compensations, two lines of scratch)."""
        comp, parts = self._comp(), self.stat.parts
        carried = parts * (2 if comp else 1)
        scratch = ((4 if comp else 2) * parts + 2 - carried - parts) * tk
        entries = math.prod(tile.shape)
        temp = entries * self._temp_itemsize(np.dtype(tile.dtype).itemsize, self.acc.itemsize)
        return Footprint(reads=(tile,), writes=(Buffer((parts * tk,), self.acc),),
                         accumulators=(Buffer((carried * tk,), self.acc),),
                         held=(Buffer((parts * kept,), self.acc),),
                         extra=temp + scratch * self.acc.itemsize)  # fmt: skip

    def plan(self, problem: Problem, tiling: Any, targets: Targets, resume: Resume,
             prefetch: int) -> Plan:  # fmt: skip
        """For each strip of the kept axis, its tiles along the reduced axis in order;
        the last returns the strip's statistics."""
        (a,), axis, (tr, tk) = problem.sources, self.axis, tiling
        red, kept = a.shape[axis], a.shape[1 - axis]
        layout, comp = Layout.of(problem.mesh), self._comp()
        st, rd = layout.tile(axis), _read_dtype(a.dtype)
        count = jax.dtypes.canonicalize_dtype(np.float64)
        kind, power = Stat(self.stat.kind), np.asarray(self.stat.p, count)  # p is traced
        starts = range(0, red, tr)
        steps = []
        for k0, (i, r0) in itertools.product(range(0, kept, tk), enumerate(starts)):
            first, last = i == 0, i == len(starts) - 1
            kern = _kernel(kind, first, last, axis, self.acc, comp, layout)
            region = (r0, r0 + tr, k0, k0 + tk) if axis == 0 else (k0, k0 + tk, r0, r0 + tr)
            shape = (tr, tk) if axis == 0 else (tk, tr)
            args = (np.asarray(r0, count), np.int32(min(tr, red - r0)), power)
            steps.append(Step((Read(a, region, shape, st, rd),), with_args(kern, *args),
                              (Write(None),) * self.stat.parts if last else (),
                              label=f"{self.name} [{k0}:] <- [{r0}:]"))  # fmt: skip
        where = "one device" if layout.one else "all devices"
        tiles = f"{-(-kept // tk)} strips of {tk}, tiles of {tr} along axis {axis} ({where})"
        return Plan(self.name, steps, None, tiles=tiles)

    def finish(self, problem: Problem, returned: list, targets: Targets) -> list[np.ndarray]:
        kept, n = problem.outputs[0].shape[0], self.stat.parts
        return [np.concatenate([to_host(o) for o in returned[i::n]])[:kept] for i in range(n)]
