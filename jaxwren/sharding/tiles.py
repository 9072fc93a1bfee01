"""Tiles: a region of a source matrix brought onto the mesh, padded to a fixed shape.

The engine loads every tile of a plan at one padded shape so that one compiled kernel
serves every tile, ragged edges included. Reads are issued at once (TensorStore futures)
and waited on only when the tile is needed, so the next tiles load while the devices
compute the current one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxwren.sharding.platform import platform_profile
from jaxwren.storage.backend import translate_errors
from jaxwren.storage.bigmatrix import aligned_empty
from jaxwren.storage.window import Futures, Window

__all__ = [
    "Source",
    "ArraySource",
    "CpuShardsSource",
    "as_source",
    "PendingTile",
    "start_tile",
    "shard_bounds",
    "host_copy",
    "splits_blocks",
]


class Source(Protocol):
    """Anything that reads rectangular regions into a buffer asynchronously (BigMatrix)."""

    shape: tuple[int, int]
    dtype: np.dtype

    def read_region_into_async(self, r0: int, r1: int, c0: int, c1: int, out: np.ndarray) -> Any:
        """Starts filling ``out``; returns an object with ``result()`` and ``done()``."""


@dataclasses.dataclass(frozen=True)
class _InMemory:
    """A matrix already in this process's memory (host, or CPU devices) as a Source."""

    array: Any

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)


@dataclasses.dataclass(frozen=True)
class ArraySource(_InMemory):
    """A host array (numpy) as a Source."""

    def read_region_into_async(
        self, r0: int, r1: int, c0: int, c1: int, out: np.ndarray
    ) -> Futures:
        out[...] = self.array[r0:r1, c0:c1]
        return Futures()


@dataclasses.dataclass(frozen=True)
class CpuShardsSource(_InMemory):
    """A jax.Array on this process's CPU devices as a Source: a region is copied straight
    out of the shards' host buffers (no gathered copy of the whole array first: that
    costs a fresh full-size allocation, which jax also keeps cached on the array)."""

    def read_region_into_async(
        self, r0: int, r1: int, c0: int, c1: int, out: np.ndarray
    ) -> Futures:
        for shard in self.array.addressable_shards:
            if shard.replica_id:
                continue  # a replica: replica 0 of each index is here (fully addressable)
            a0, a1, b0, b1 = shard_bounds(shard.index, self.shape)
            v0, v1, w0, w1 = max(a0, r0), min(a1, r1), max(b0, c0), min(b1, c1)
            if v1 > v0 and w1 > w0:
                data = np.asarray(shard.data)  # the CPU buffer itself, no copy
                out[v0 - r0 : v1 - r0, w0 - c0 : w1 - c0] = data[v0 - a0 : v1 - a0,
                                                                  w0 - b0 : w1 - b0]  # fmt: skip
        return Futures()


def as_source(x: Any) -> Any:
    """A BigMatrix stays as it is; host arrays become ArraySources; a jax.Array stays on
    its devices (tiles are cut and resharded there) except where the platform profile
    says device buffers are host memory (CPU devices), where moving
    it through host memory is a memcpy while XLA's emulated collectives are slow
    (docs/decisions.md: CPU jax.Array operands are read through host memory)."""
    if hasattr(x, "read_region_into_async"):
        return x
    if isinstance(x, jax.Array):
        if x.is_fully_addressable and platform_profile(x).shares_host_memory:
            return CpuShardsSource(x)
        return x  # on accelerators, or spanning processes: cut tiles on the devices
    return ArraySource(np.asarray(x))


@dataclasses.dataclass
class DeviceTile:
    """A tile cut from an array already on the devices: sliced, padded and resharded."""

    array: jax.Array
    region: tuple[int, int, int, int]
    shape: tuple[int, int]
    sharding: jax.sharding.Sharding
    dtype: np.dtype
    nbytes: int = 0

    def result(self) -> jax.Array:
        r0, r1, c0, c1 = self.region
        x = self.array
        # the region clipped to the array (past it reads as zeros); its offset is traced:
        # one compile serves every tile of a plan (two or four with ragged edges)
        r1, c1 = min(r1, x.shape[0]), min(c1, x.shape[1])
        size = (max(r1 - r0, 0), max(c1 - c0, 0))
        return _cut_pad_cast(x, np.int32(r0), np.int32(c0), size, self.shape, self.dtype,
                             self.sharding)  # fmt: skip


@functools.partial(jax.jit, static_argnames=("size", "shape", "dtype", "sharding"))
def _cut_pad_cast(x: jax.Array, r0: jax.Array, c0: jax.Array, size: tuple[int, int],
                  shape: tuple[int, int], dtype: np.dtype, sharding: Any) -> jax.Array:  # fmt: skip
    """``x[r0:r0 + size[0], c0:c0 + size[1]]`` zero padded to ``shape`` and cast."""
    if size != x.shape:
        x = jax.lax.dynamic_slice(x, (r0, c0), size)
    pad = ((0, shape[0] - size[0]), (0, shape[1] - size[1]))
    return jax.lax.with_sharding_constraint(jnp.pad(x.astype(dtype), pad), sharding)


def shard_bounds(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``(r0, r1, c0, c1)`` of a device index (tuple of slices) into ``shape``."""
    (r0, r1, _), (c0, c1, _) = (s.indices(d) for s, d in zip(index, shape, strict=True))
    return r0, r1, c0, c1


def splits_blocks(x: jax.Array, target: Any, origin: tuple[int, int] = (0, 0),
                  size: tuple[int, int] | None = None) -> bool:  # fmt: skip
    """Whether some stored block of ``target`` would be written in parts by two processes
    when the distinct shards of ``x`` (each by the process holding its first replica,
    as the engine and ``save`` write them) go to ``target`` at ``origin``, keeping the
    top-left ``size``: that relies on a conditional read-modify-write of the block that S3
    does not make atomic."""
    blocks = getattr(target, "block_shape", None)
    if blocks is None:
        return False
    (h, w), (r0, c0) = size if size is not None else x.shape, origin
    owner: dict[tuple[int, int], int] = {}
    seen: set[tuple[int, int, int, int]] = set()
    for device, index in x.sharding.devices_indices_map(x.shape).items():
        a0, a1, b0, b1 = bounds = shard_bounds(index, x.shape)
        a1, b1 = min(a1, h), min(b1, w)
        if bounds in seen or a1 <= a0 or b1 <= b0:
            continue  # a replica (written by the first holder only), or nothing kept
        seen.add(bounds)
        for bi in range((r0 + a0) // blocks[0], (r0 + a1 - 1) // blocks[0] + 1):
            for bj in range((c0 + b0) // blocks[1], (c0 + b1 - 1) // blocks[1] + 1):
                if owner.setdefault((bi, bj), device.process_index) != device.process_index:
                    return True
    return False


@dataclasses.dataclass
class PendingTile:
    """A tile whose reads are in flight; ``result()`` assembles the sharded jax.Array.

    Each distinct shard is read once, straight into a 64-byte-aligned host buffer that
    ``jax.device_put`` adopts on CPU without a copy; replicas are copied device to device,
    or, with ``share_replicas`` on CPU devices, adopt the same host buffer (no copy: the
    engine's tiles are never donated, so sharing an immutable buffer is safe).
    """

    shape: tuple[int, int]
    sharding: jax.sharding.Sharding
    parts: list[tuple[np.ndarray, list[jax.Device], Any]]
    nbytes: int
    op: str = "load"
    location: Any = None
    share_replicas: bool = False

    def result(self) -> jax.Array | np.ndarray:
        for _, _, fut in self.parts:
            if fut is not None:
                _wait(fut, self.op, self.location)
        if self.sharding is None:  # a host tile: the buffer itself
            return self.parts[0][0]
        if self.share_replicas or all(len(devices) == 1 for _, devices, _ in self.parts):
            # one batched, zero-copy placement (docs/decisions.md: replicas share a buffer)
            by_device = {d: buf for buf, devices, _ in self.parts for d in devices}
            index = self.sharding.addressable_devices_indices_map(self.shape)
            by_bounds = {shard_bounds(index[d], self.shape): b for d, b in by_device.items()}
            return jax.make_array_from_callback(
                self.shape, self.sharding, lambda idx: by_bounds[shard_bounds(idx, self.shape)]
            )
        placed: dict[jax.Device, jax.Array] = {}
        for buf, devices, _ in self.parts:
            first = placed[devices[0]] = jax.device_put(buf, devices[0])
            for d in devices[1:]:
                placed[d] = jax.device_put(first, d)
        order = self.sharding.addressable_devices_indices_map(self.shape)
        return jax.make_array_from_single_device_arrays(
            self.shape, self.sharding, [placed[d] for d in order]
        )


def _wait(fut: Any, op: str, location: Any) -> None:
    if location is None:
        fut.result()
        return
    with translate_errors(op, location):
        fut.result()


def start_tile(
    source: Any,
    region: tuple[int, int, int, int],
    sharding: jax.sharding.Sharding,
    shape: tuple[int, int] | None = None,
    dtype: Any = None,
    *,
    window: Window | None = None,
    share_replicas: bool = False,
) -> PendingTile | DeviceTile:
    """Issues the reads of ``source[r0:r1, c0:c1]`` for every distinct device index.

    Args:
      source: where to read (a Source, or a jax.Array already on the devices).
      region: ``(r0, r1, c0, c1)``; rows/cols past the region or the source read as zeros.
      sharding: the tile's sharding; None: one host (numpy) buffer, for kernels on host
        BLAS (CPU devices of one process), without the cost of placing it on devices.
      shape: the padded tile shape (at least the region's); default the region's.
      dtype: the tile dtype (default the source's; other dtypes are converted on read).
      window: bounds the reads in flight (default: all issued at once).
      share_replicas: on CPU devices, replicas adopt one host buffer instead of copies
        (only for tiles no kernel donates; see :func:`replicas_shared`).
    """
    r0, r1, c0, c1 = region
    shape = (r1 - r0, c1 - c0) if shape is None else shape
    dtype = np.dtype(source.dtype if dtype is None else dtype)
    if isinstance(source, jax.Array) and sharding is None:
        buf = aligned_empty(shape, dtype, zero=True)
        part = np.asarray(source[r0:r1, c0:c1])
        buf[: part.shape[0], : part.shape[1]] = part
        return PendingTile(shape, None, [(buf, [], None)], buf.nbytes)
    if isinstance(source, jax.Array):
        return DeviceTile(source, region, shape, sharding, dtype)
    m, n = source.shape
    by_index: dict[tuple[int, int, int, int], list[jax.Device]] = {}
    if sharding is None:
        by_index[(0, shape[0], 0, shape[1])] = []
    else:
        for device, index in sharding.addressable_devices_indices_map(shape).items():
            by_index.setdefault(shard_bounds(index, shape), []).append(device)
    parts = []
    for (a0, a1, b0, b1), devices in by_index.items():
        # clip the shard to the valid part of the region (and of the source)
        v0, v1 = r0 + a0, min(r0 + a1, r1, m)
        w0, w1 = c0 + b0, min(c0 + b1, c1, n)
        ragged = (v1 - v0, w1 - w0) != (a1 - a0, b1 - b0)
        buf = aligned_empty((a1 - a0, b1 - b0), dtype, zero=ragged)
        fut = None
        if v1 > v0 and w1 > w0:
            view = buf[: v1 - v0, : w1 - w0]
            if source.dtype == dtype:
                start = functools.partial(source.read_region_into_async, v0, v1, w0, w1, view)
            else:
                start = functools.partial(_read_cast, source, (v0, v1, w0, w1), view)
            if window is None:
                fut = start()
            else:  # submit() starts it (after waiting for older reads if over budget)
                started: list[Any] = []
                window.submit(lambda start=start, started=started: _keep(started, start()),
                              buf.nbytes)  # fmt: skip
                fut = started[0]
        parts.append((buf, devices, fut))
    nbytes = sum(p[0].nbytes for p in parts)
    share = share_replicas and sharding is not None and replicas_shared(sharding)
    return PendingTile(shape, sharding, parts, nbytes, location=getattr(source, "location", None),
                       share_replicas=share)  # fmt: skip


def replicas_shared(sharding: jax.sharding.Sharding) -> bool:
    """Whether replicas of an engine tile share host memory (the platform profile's
    ``shares_host_memory``: CPU devices)."""
    return platform_profile(sharding).shares_host_memory


def host_copy(x: jax.Array) -> np.ndarray:
    """A 2-D array on this process's CPU devices copied shard by shard into a fresh,
    writable host buffer of the caller's own (``np.asarray`` gives a cached, read-only
    one)."""
    out = aligned_empty(x.shape, x.dtype)
    CpuShardsSource(x).read_region_into_async(0, x.shape[0], 0, x.shape[1], out)
    return out


def replicate(x: Any, rep: jax.sharding.Sharding, *, adopt: bool = False) -> jax.Array:
    """``x`` (on one device, or a host array) on every device of ``rep``; on CPU devices
    one host buffer that every device adopts (no copies). ``adopt``: ``x`` is an aligned
    host buffer the caller hands over (never written again), used as that buffer."""
    if not replicas_shared(rep):
        return jax.device_put(x, rep)
    if adopt:
        host = x
    else:
        host = aligned_empty(x.shape, x.dtype)
        host[...] = np.asarray(x)
    return jax.make_array_from_callback(x.shape, rep, lambda _: host)


def on_one_device(fn: Any, rep: jax.sharding.NamedSharding, static_argnums: Any = ()) -> Any:
    """``fn`` (jitted) on the first device of ``rep``'s mesh, its replicated array
    arguments taken from that device and its array results replicated over ``rep``: a
    small LAPACK factor (QR, SVD of ``n x l``) computed once instead of on every device
    (on a few CPU cores the replicas only compete). Meshes spanning processes compute
    replicated instead (every process needs the result)."""
    devices = rep.mesh.devices.flat
    if any(d.process_index != jax.process_index() for d in devices):
        return jax.jit(fn, out_shardings=rep, static_argnums=static_argnums)
    one, single = devices[0], jax.jit(fn, static_argnums=static_argnums)

    def local(x: Any) -> Any:
        if not isinstance(x, jax.Array):
            return x
        mine = [s.data for s in x.addressable_shards if s.device == one]
        if x.is_fully_replicated and mine:  # the copy on `one`, no transfer
            return mine[0]
        return jax.device_put(x, one)  # a sharded argument (gathered), or elsewhere

    def call(*args: Any) -> Any:
        outs = single(*(local(a) for a in args))
        return jax.tree.map(lambda y: replicate(y, rep), outs)

    return call


def _keep(box: list[Any], fut: Any) -> Any:
    box.append(fut)
    return fut


def _read_cast(source: Any, region: tuple[int, int, int, int], out: np.ndarray) -> Futures:
    """Reads in the source dtype and converts into ``out`` (mixed-dtype operands)."""
    tmp = aligned_empty(out.shape, source.dtype)
    source.read_region_into_async(*region, tmp).result()
    out[...] = tmp
    return Futures()
