"""Sharded IO the orbax way: each distinct device index read once, every read issued
before any wait (under a byte budget), assembled with make_array_from_single_device_arrays;
saving writes only the addressable shards with ``replica_id == 0``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

from jaxwren.config import StorageConfig
from jaxwren.dtypes import check_representable
from jaxwren.errors import BlockIndexError, DTypeMismatchError, ShapeMismatchError
from jaxwren.sharding import multihost
from jaxwren.sharding.mesh import default_sharding
from jaxwren.sharding.tiles import shard_bounds, splits_blocks, start_tile
from jaxwren.storage import device_io, lifecycle
from jaxwren.storage.backend import translate_errors
from jaxwren.storage.bigmatrix import BigMatrix
from jaxwren.storage.ingest import from_numpy
from jaxwren.storage.window import Window

__all__ = ["load", "save", "check_sharding", "DEFAULT_IO_BYTES"]

DEFAULT_IO_BYTES = 1 << 30
Region = tuple[int, int, int, int]
_DIMS = ("rows", "columns")


def _axes(entry: Any) -> tuple[str, ...]:
    if entry is None or entry is jax.sharding.PartitionSpec.UNCONSTRAINED:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def check_sharding(shape: tuple[int, int], sharding: Any, *, where: str) -> None:
    """Refuses a sharding that does not divide ``shape`` (before anything is read),
    naming the dimension and the mesh axes' size."""
    if not isinstance(sharding, jax.sharding.Sharding):
        raise ShapeMismatchError(
            f"{where}: sharding must be a jax.sharding.Sharding (e.g. NamedSharding(mesh, "
            f"P('rows', 'cols'))) or None, got {type(sharding).__name__}."
        )
    if isinstance(sharding, NamedSharding) and len(sharding.spec) <= len(shape):
        mesh = sharding.mesh
        for dim, (size, entry) in enumerate(zip(shape, sharding.spec, strict=False)):
            axes = _axes(entry)
            parts = math.prod(mesh.shape[a] for a in axes)
            if size % parts:
                named = axes[0] if len(axes) == 1 else axes
                raise ShapeMismatchError(
                    f"{where}: dimension {dim} ({_DIMS[dim]}, size {size}) is not divisible "
                    f"by mesh axis {named!r} of size {parts} (sharding spec "
                    f"{sharding.spec}); pass a sharding whose axes divide the shape, e.g. "
                    "jw.default_sharding(shape, mesh), or a region of a divisible size."
                )
    try:
        sharding.shard_shape(tuple(shape))
    except ValueError as e:
        raise ShapeMismatchError(
            f"{where}: sharding {sharding} does not fit shape {tuple(shape)}: {e}"
        ) from e


def load(
    matrix: BigMatrix,
    sharding: jax.sharding.Sharding | None = None,
    *,
    region: Region | None = None,
    budget_bytes: int = DEFAULT_IO_BYTES,
) -> jax.Array:
    """Loads ``matrix`` (or rows ``r0:r1``, cols ``c0:c1`` of it) as a sharded jax.Array.

    Each distinct device index is read once, straight into an aligned host buffer that
    the device adopts (no extra copy on CPU); replicas are copied device to device.

    Args:
      matrix: the stored matrix (a ``.T`` view works too).
      sharding: the result's sharding; None shards over the default mesh (dimensions a
        mesh axis does not divide are replicated along it).
      region: ``(r0, r1, c0, c1)``; None loads the whole matrix.
      budget_bytes: at most this many bytes of reads in flight.

    Returns:
      A jax.Array of shape ``(r1 - r0, c1 - c0)`` with ``sharding``; in a multi-process
      run each process reads only its addressable shards.

    Raises:
      BlockIndexError: ``region`` is empty or outside the matrix.
      ShapeMismatchError: ``sharding`` does not divide the region's shape.
      DTypeMismatchError: 64-bit data while JAX runs with 32-bit types.
      StorageError: the reads failed.
    """
    region = region if region is not None else (0, matrix.shape[0], 0, matrix.shape[1])
    r0, r1, c0, c1 = region
    if not (0 <= r0 < r1 <= matrix.shape[0] and 0 <= c0 < c1 <= matrix.shape[1]):
        raise BlockIndexError(
            f"load: region rows {r0}:{r1}, cols {c0}:{c1} is empty or outside shape "
            f"{matrix.shape} of {matrix!r}; pass (r0, r1, c0, c1) with r0 < r1 <= rows."
        )
    check_representable(matrix.dtype, where=f"load({matrix!r})")
    before = None
    if hasattr(matrix, "check_fresh"):
        matrix.check_fresh()  # the header it was opened with is still the stored one
        before = matrix.read_token_async()
    shape = (r1 - r0, c1 - c0)
    if sharding is None:
        sharding = default_sharding(shape)
    check_sharding(shape, sharding, where="load")
    with translate_errors("load", matrix.location), Window(budget_bytes) as window:
        tile = start_tile(matrix, region, sharding, window=window)
        value = tile.result()
        if before is not None:  # no writer changed it while it was read (torn data)
            matrix.check_unchanged(before, matrix.read_token_async(), "load")
    return value


def write_shards(
    x: jax.Array,
    matrix: BigMatrix,
    *,
    offset: tuple[int, int] = (0, 0),
    budget_bytes: int = DEFAULT_IO_BYTES,
) -> None:
    """Writes the addressable shards of ``x`` with ``replica_id == 0`` into ``matrix`` at
    ``offset``; each distinct shard is written once, writes overlap under the budget. In
    a multi-process run whose shards cut stored blocks, ``x`` is gathered and process 0
    writes it whole (every process calls this: the gather is collective)."""
    if not x.is_fully_addressable and splits_blocks(x, matrix, offset):
        host = multihost.to_host(x)
        if jax.process_index() == 0:
            with translate_errors("save", matrix.location):
                matrix.write_region_async(offset[0], offset[1], host).result()
        return
    with translate_errors("save", matrix.location), Window(budget_bytes) as window:
        for shard in x.addressable_shards:
            if shard.replica_id != 0:
                continue
            a0, _, b0, _ = shard_bounds(shard.index, x.shape)
            data = np.asarray(shard.data)
            window.submit(
                lambda data=data, a0=a0, b0=b0: matrix.write_region_async(
                    offset[0] + a0, offset[1] + b0, data
                ),
                data.nbytes,
            )


def save(
    x: Any,
    url: str | os.PathLike[str] | BigMatrix,
    block_shape: tuple[int, int] | None = None,
    *,
    storage: StorageConfig | None = None,
    overwrite: bool = False,
    budget_bytes: int = DEFAULT_IO_BYTES,
    dims: tuple[str, str] | None = None,
    attrs: dict[str, Any] | None = None,
) -> BigMatrix:
    """Saves a 2-D ``jax.Array`` (sharded or not) or numpy array as a BigMatrix
    (``dims``/``attrs`` of a new matrix as in :meth:`BigMatrix.create`, for xarray).

    Args:
      x: the array. A sharded jax.Array is written shard by shard from the devices that
        hold it; in a multi-process run each process writes only its own shards, unless
        they cut stored blocks (then process 0 gathers and writes the whole array).
      url: a storage URL, or an existing BigMatrix of the same shape and dtype.
      block_shape: the block shape of a new matrix (required with a URL).
      storage: StorageConfig for a URL.
      overwrite: replace a matrix already stored at the URL.
      budget_bytes: at most this many bytes of host staging in flight.

    Returns:
      The BigMatrix written.

    Raises:
      ShapeMismatchError, DTypeMismatchError: checked before anything is written.
    """
    if not isinstance(x, jax.Array):
        if isinstance(url, BigMatrix):
            x = jax.numpy.asarray(np.asarray(x))
        else:
            if block_shape is None:
                raise ShapeMismatchError("save: block_shape is required when saving to a URL.")
            return from_numpy(x, url, block_shape, storage=storage, overwrite=overwrite,
                              dims=dims, attrs=attrs)  # fmt: skip
    if x.ndim != 2:
        raise ShapeMismatchError(f"save: expected a 2-D array, got shape {x.shape}.")
    labels = {"dims": dims, "attrs": attrs}
    matrix, claim = _target(x, url, block_shape, storage=storage, overwrite=overwrite,
                            labels=labels)  # fmt: skip
    claim = claim if jax.process_index() == 0 else None
    with lifecycle.committing(matrix, claim, "save", created=not isinstance(url, BigMatrix)):
        write_shards(x, matrix, budget_bytes=budget_bytes)
        multihost.sync(f"saved {matrix.url}")
    multihost.sync(f"committed {matrix.url}")
    return matrix


def _target(
    x: jax.Array,
    url: str | os.PathLike[str] | BigMatrix,
    block_shape: tuple[int, int] | None,
    *,
    storage: StorageConfig | None,
    overwrite: bool,
    labels: dict[str, Any],
) -> tuple[BigMatrix, str | None]:
    if isinstance(url, BigMatrix):
        if url.shape != x.shape:
            raise ShapeMismatchError(
                f"save: array shape {x.shape} differs from {url!r}; create a matching matrix."
            )
        if np.dtype(x.dtype) != url.dtype:
            raise DTypeMismatchError(
                f"save: array dtype {x.dtype} differs from {url!r}; convert with x.astype()."
            )
        url.check_fresh(complete=False)
        # its old contents are void; not complete until saved (a claim only on process 0)
        claim = multihost.once(f"begin {url.url}", lambda: (url.new_generation(),
                                                            url.begin_writing("save"))[1],
                               lambda: None)  # fmt: skip
        return url, claim
    if block_shape is None:
        raise ShapeMismatchError("save: block_shape is required when saving to a URL.")
    return multihost.once(
        f"create {url}",
        lambda: BigMatrix.create_uncommitted(
            url,
            x.shape,
            block_shape,
            x.dtype,
            writer="save",
            storage=storage,
            overwrite=overwrite,
            **labels,
        ),
        lambda: (BigMatrix.open(url, storage=storage), None),
    )


device_io.register("load", load)  # BigMatrix.to_jax
