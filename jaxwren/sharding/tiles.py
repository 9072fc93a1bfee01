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

__all__ = ["Source", "ArraySource", "as_source", "PendingTile", "start_tile", "shard_bounds"]


class Source(Protocol):
    """Anything that reads rectangular regions asynchronously (BigMatrix does)."""

    shape: tuple[int, int]
    dtype: np.dtype

    def read_region_async(self, r0: int, r1: int, c0: int, c1: int) -> Any: ...


class _Done:
    def __init__(self, value: np.ndarray) -> None:
        self._value = value

    def result(self) -> np.ndarray:
        return self._value


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """An in-memory array (numpy, or a jax.Array gathered to the host) as a Source."""

    array: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def read_region_async(self, r0: int, r1: int, c0: int, c1: int) -> _Done:
        return _Done(self.array[r0:r1, c0:c1])


def as_source(x: Any) -> Any:
    """A BigMatrix or jax.Array stays as it is; other arrays become ArraySources."""
    if hasattr(x, "read_region_async") or isinstance(x, jax.Array):
        return x
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
        if (r0, c0) != (0, 0) or (r1, c1) != x.shape:
            x = x[r0:r1, c0:c1]
        pad = ((0, self.shape[0] - x.shape[0]), (0, self.shape[1] - x.shape[1]))
        return _pad_cast(x, pad, self.dtype, self.sharding)


@functools.partial(jax.jit, static_argnames=("pad", "dtype", "sharding"))
def _pad_cast(x: jax.Array, pad: Any, dtype: np.dtype, sharding: Any) -> jax.Array:
    return jax.lax.with_sharding_constraint(jnp.pad(x.astype(dtype), pad), sharding)


def shard_bounds(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``(r0, r1, c0, c1)`` of a device index (tuple of slices) into ``shape``."""
    (r0, r1, _), (c0, c1, _) = (s.indices(d) for s, d in zip(index, shape, strict=True))
    return r0, r1, c0, c1


@dataclasses.dataclass
class PendingTile:
    """A tile whose reads are in flight; ``result()`` assembles the sharded jax.Array."""

    shape: tuple[int, int]
    sharding: jax.sharding.Sharding
    dtype: np.dtype
    parts: list[tuple[tuple[int, int, int, int], list[jax.Device], Any]]
    nbytes: int

    def result(self) -> jax.Array:
        placed: dict[jax.Device, jax.Array] = {}
        for (a0, a1, b0, b1), devices, fut in self.parts:
            data = fut.result() if fut is not None else None
            want = (a1 - a0, b1 - b0)
            if data is None or data.shape != want:  # ragged edge: zero padding
                buf = np.zeros(want, self.dtype)
                if data is not None:
                    buf[: data.shape[0], : data.shape[1]] = data
                data = buf
            data = data.astype(self.dtype, copy=False)
            for d in devices:
                placed[d] = jax.device_put(data, d)
        order = self.sharding.addressable_devices_indices_map(self.shape)
        return jax.make_array_from_single_device_arrays(
            self.shape, self.sharding, [placed[d] for d in order]
        )


def start_tile(
    source: Source,
    region: tuple[int, int, int, int],
    sharding: jax.sharding.Sharding,
    shape: tuple[int, int] | None = None,
    dtype: Any = None,
) -> PendingTile | DeviceTile:
    """Issues the reads of ``source[r0:r1, c0:c1]`` for every distinct device index.

    Args:
      source: where to read.
      region: ``(r0, r1, c0, c1)``; rows/cols past the source's edge read as zeros.
      sharding: the tile's sharding.
      shape: the padded tile shape (at least the region's); default the region's.
      dtype: the tile dtype (default the source's).
    """
    r0, r1, c0, c1 = region
    shape = (r1 - r0, c1 - c0) if shape is None else shape
    dtype = np.dtype(source.dtype if dtype is None else dtype)
    if isinstance(source, jax.Array):
        return DeviceTile(source, region, shape, sharding, dtype)
    m, n = source.shape
    by_index: dict[tuple[int, int, int, int], list[jax.Device]] = {}
    for device, index in sharding.addressable_devices_indices_map(shape).items():
        by_index.setdefault(shard_bounds(index, shape), []).append(device)
    parts = []
    nbytes = 0
    for (a0, a1, b0, b1), devices in by_index.items():
        # clip the shard to the valid part of the region (and of the source)
        v0, v1 = r0 + a0, min(r0 + a1, r1, m)
        w0, w1 = c0 + b0, min(c0 + b1, c1, n)
        fut = source.read_region_async(v0, v1, w0, w1) if v1 > v0 and w1 > w0 else None
        parts.append(((a0, a1, b0, b1), devices, fut))
        nbytes += (a1 - a0) * (b1 - b0) * dtype.itemsize
    return PendingTile(shape, sharding, dtype, parts, nbytes)
