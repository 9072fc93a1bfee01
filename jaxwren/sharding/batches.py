"""Streaming row batches of a stored matrix onto the devices (an object-storage dataset
for JAX training loops): the next batches' reads are in flight while one is used."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from jaxwren.dtypes import check_representable
from jaxwren.errors import ConfigError
from jaxwren.sharding.io import check_sharding
from jaxwren.sharding.mesh import default_sharding
from jaxwren.sharding.tiles import start_tile
from jaxwren.storage import device_io

__all__ = ["iter_row_batches"]


def _is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool | np.bool_)


def _sharding_for(shape: tuple[int, int], sharding: Any) -> Any:
    if sharding is None:
        return default_sharding(shape)
    try:
        sharding.shard_shape(shape)
        return sharding
    except ValueError:  # a ragged last batch the given sharding does not divide
        return default_sharding(shape, getattr(sharding, "mesh", None))


def iter_row_batches(
    matrix: Any,
    batch_rows: int,
    *,
    sharding: jax.sharding.Sharding | None = None,
    prefetch: int = 2,
    shuffle: bool = False,
    seed: int | None = None,
    drop_remainder: bool = False,
) -> Iterator[jax.Array]:
    """Yields ``matrix[r:r + batch_rows]`` as sharded jax.Arrays, ``prefetch`` batches ahead.

    Args:
      matrix: a BigMatrix (a ``.T`` view works too).
      batch_rows: rows per batch (the last one may be shorter).
      sharding: the batches' sharding (None: rows over the default mesh as far as it
        divides them). It must divide a full batch ``(batch_rows, cols)``; a ragged last
        batch it does not divide gets the default sharding on its mesh.
      prefetch: batches whose reads are in flight ahead of the one yielded.
      shuffle: visit the batches in a random order (each epoch's order comes from
        ``seed``); reads stay whole, contiguous row ranges.
      seed: seed of the shuffle (None: fresh randomness).
      drop_remainder: skip a last batch shorter than ``batch_rows``.

    In a multi-process run each process reads only the shards its devices hold.

    Raises (at the call, before any read):
      ConfigError: ``batch_rows`` or ``prefetch`` is not an int (bools are refused),
        ``batch_rows < 1`` or ``prefetch < 0``.
      ShapeMismatchError: ``sharding`` does not divide a full batch.
      DTypeMismatchError: 64-bit data while JAX runs with 32-bit types.
    """
    if not _is_int(batch_rows) or batch_rows < 1:
        raise ConfigError(f"iter_row_batches: batch_rows={batch_rows!r} must be an int >= 1.")
    if not _is_int(prefetch) or prefetch < 0:
        raise ConfigError(
            f"iter_row_batches: prefetch={prefetch!r} must be an int >= 0 (batches read ahead)."
        )
    check_representable(matrix.dtype, where="iter_row_batches")
    if sharding is not None:
        check_sharding((int(batch_rows), matrix.shape[1]), sharding, where="iter_row_batches")
    return _batches(matrix, int(batch_rows), sharding, int(prefetch), shuffle, seed,
                    drop_remainder)  # fmt: skip


def _batches(matrix: Any, batch_rows: int, sharding: Any, prefetch: int, shuffle: bool,
             seed: int | None, drop_remainder: bool) -> Iterator[jax.Array]:  # fmt: skip
    m, n = matrix.shape
    starts = list(range(0, m, batch_rows))
    if drop_remainder and m % batch_rows:
        starts.pop()
    if shuffle:
        starts = [starts[i] for i in np.random.default_rng(seed).permutation(len(starts))]
    pending: collections.deque[Any] = collections.deque()
    for r0 in starts:
        r1 = min(r0 + batch_rows, m)
        shape = (r1 - r0, n)
        pending.append(start_tile(matrix, (r0, r1, 0, n), _sharding_for(shape, sharding)))
        if len(pending) > prefetch:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


device_io.register("iter_row_batches", iter_row_batches)  # BigMatrix.iter_row_batches
