"""Streaming row batches of a stored matrix onto the devices (an object-storage dataset
for JAX training loops): the next batches' reads are in flight while one is used."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from jaxwren.errors import ConfigError
from jaxwren.sharding.mesh import default_sharding
from jaxwren.sharding.tiles import start_tile

__all__ = ["iter_row_batches"]


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
        divides them); a ragged last batch it does not divide gets the default one.
      prefetch: batches whose reads are in flight ahead of the one yielded.
      shuffle: visit the batches in a random order (each epoch's order comes from
        ``seed``); reads stay whole, contiguous row ranges.
      seed: seed of the shuffle (None: fresh randomness).
      drop_remainder: skip a last batch shorter than ``batch_rows``.

    In a multi-process run each process reads only the shards its devices hold.

    Raises:
      ConfigError: ``batch_rows < 1`` or ``prefetch < 0``.
    """
    if not isinstance(batch_rows, int | np.integer) or batch_rows < 1:
        raise ConfigError(f"iter_row_batches: batch_rows={batch_rows!r} must be an int >= 1.")
    if prefetch < 0:
        raise ConfigError(f"iter_row_batches: prefetch={prefetch!r} must be >= 0.")
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
