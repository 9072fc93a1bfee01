"""Blocks and regions of a stored matrix: the one read path and the writes.

:class:`BlockIO` is the part of :class:`~jaxwren.storage.bigmatrix.BigMatrix` that reads
and writes data: blocks by index (ragged at the edges, ``parent_fn`` for blocks never
written), regions (the one read path, into buffers the caller owns), and the whole matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorstore as ts

from jaxwren.errors import BlockIndexError, ShapeMismatchError
from jaxwren.storage import backend, device_io, records, views
from jaxwren.storage.backend import read_json_async, translate_errors
from jaxwren.storage.buffers import aligned_empty
from jaxwren.storage.chunkkeys import ChunkKeys
from jaxwren.storage.parent import ParentFill, overlapping_blocks
from jaxwren.storage.urls import Location
from jaxwren.storage.validate import check_block, check_cast
from jaxwren.storage.views import View
from jaxwren.storage.window import Futures

if TYPE_CHECKING:
    import jax

__all__ = ["BlockIO"]


class BlockIO:
    """Block and region reads and writes of one stored matrix.

    Needs ``_base`` (the TensorStore array), ``_view`` (it, through the handle's view),
    ``_spec`` (the View), ``_loc``, ``_keys``, ``_base_block``, ``_transposed``, the
    shape/dtype/block properties, ``parent_fn``, ``_whole`` and the
    :class:`~jaxwren.storage.state.StoredState` checks.
    """

    _base: ts.TensorStore
    _view: ts.TensorStore
    _spec: View
    _loc: Location
    _keys: ChunkKeys
    _base_block: tuple[int, int]
    _transposed: bool
    parent_fn: Any
    shape: tuple[int, int]
    dtype: np.dtype
    block_shape: tuple[int, int]
    grid_shape: tuple[int, int]
    block_idxs: list[tuple[int, int]]

    # ------------------------------------------------------------------------ blocks
    def block_bounds(self, i: int, j: int) -> tuple[int, int, int, int]:
        """``(row0, row1, col0, col1)`` of block ``(i, j)``; edge blocks are ragged."""
        self._check_block_idx(i, j)
        (bi, bj), (m, n) = self.block_shape, self.shape
        return i * bi, min((i + 1) * bi, m), j * bj, min((j + 1) * bj, n)

    def _check_block_idx(self, i: int, j: int) -> None:
        gi, gj = self.grid_shape
        if not (isinstance(i, int | np.integer) and isinstance(j, int | np.integer)) or not (
            0 <= i < gi and 0 <= j < gj
        ):
            raise BlockIndexError(
                f"{self!r}: block index ({i}, {j}) is outside the block grid {self.grid_shape}; "
                f"valid indices are 0 <= i < {gi}, 0 <= j < {gj}."
            )

    def _chunk_key(self, i: int, j: int) -> str:
        self._whole("a block's key")
        return self._keys.key(j, i) if self._transposed else self._keys.key(i, j)

    def block_exists(self, i: int, j: int) -> bool:
        """Whether block ``(i, j)`` has been written (its chunk object exists)."""
        self._check_block_idx(i, j)
        key = self._chunk_key(i, j)
        with translate_errors("BigMatrix.block_exists", self._loc):
            keys = self._base.kvstore.list(ts.KvStore.KeyRange(key, key + "\0")).result()
        return bool(keys)

    @property
    def block_idxs_exist(self) -> set[tuple[int, int]]:
        """Indices of the blocks that have been written (one LIST of the store)."""
        with translate_errors("BigMatrix.block_idxs_exist", self._loc):
            return self._stored_blocks(self._keys.existing_async(self._base.kvstore).result())

    def _stored_blocks(self, listed: list[bytes]) -> set[tuple[int, int]]:
        self._whole("the stored blocks")
        (m, n), (bm, bn) = self._base.shape, self._base_block
        base = {(i, j) for i, j in self._keys.collect(listed) if i * bm < m and j * bn < n}
        return {(j, i) for i, j in base} if self._transposed else base

    def get_block(self, i: int, j: int) -> np.ndarray:
        """Reads block ``(i, j)`` at its true (possibly ragged) size.

        A block never written is produced by ``parent_fn`` when one is set, else read as
        zeros (the fill value).

        Raises:
          MatrixChangedError: the matrix was recreated with another layout under this
            handle (reopen it); MatrixNotFoundError: it was deleted.
        """
        r0, r1, c0, c1 = self.block_bounds(i, j)
        return self._read(r0, r1, c0, c1, "BigMatrix.get_block")

    def put_block(self, block: Any, i: int, j: int) -> None:
        """Writes block ``(i, j)``; it must have the block's true shape and a dtype that
        casts safely to the matrix dtype. A new generation (see :meth:`begin_write`).

        Raises:
          BlockIndexError, ShapeMismatchError, DTypeMismatchError: checked before writing.
          MatrixChangedError: the handle is stale (nothing is written).
        """
        r0, r1, c0, c1 = self.block_bounds(i, j)
        block = np.asarray(block)
        check_block(block, (r1 - r0, c1 - c0), self.dtype, f"{self!r}.put_block(block, {i}, {j})")
        self.write_region(r0, c0, block)

    def delete_block(self, i: int, j: int) -> None:
        """Deletes block ``(i, j)`` (exactly its chunk key): it reads as zeros (or via
        ``parent_fn``) again. A new generation (see :meth:`begin_write`)."""
        self._check_block_idx(i, j)
        views.refuse_write(self._spec, f"{self!r}.delete_block")
        key = self._chunk_key(i, j)
        self.begin_write()
        with translate_errors("BigMatrix.delete_block", self._loc):
            self._base.kvstore.delete_range(ts.KvStore.KeyRange(key, key + "\0")).result()

    def free(self) -> None:
        """Deletes every block and completion record and keeps the header (a new
        generation: see :meth:`begin_write`)."""
        views.refuse_write(self._spec, f"{self!r}.free")
        self.begin_write()
        with translate_errors("BigMatrix.free", self._loc):
            records.clear_marks(self._base.kvstore)  # the records vouch for the data: first
            self._keys.delete_all(self._base.kvstore)

    def destroy(self) -> None:
        """Deletes the matrix entirely: exactly its chunks (named by the stored chunk key
        encoding), its ``jaxwren/`` records (generation token included) and, last, its
        header; nothing else under the same prefix. The URL is free again; this handle
        (and every other one on the URL) is unusable afterwards."""
        with translate_errors("BigMatrix.destroy", self._loc):
            backend.delete_matrix(self._base.kvstore, self._loc, "BigMatrix.destroy")

    def base_region(self, r0: int, r1: int, c0: int, c1: int) -> tuple[int, int, int, int]:
        """A region of this view in the coordinates of the stored (untransposed) matrix."""
        return self._spec.to_base(r0, r1, c0, c1)

    # ----------------------------------------------------------------------- regions
    def _region(self, r0: int, r1: int, c0: int, c1: int) -> ts.TensorStore:
        m, n = self.shape
        if not (0 <= r0 <= r1 <= m and 0 <= c0 <= c1 <= n):
            raise BlockIndexError(
                f"{self!r}: region rows {r0}:{r1}, cols {c0}:{c1} is outside shape {self.shape}."
            )
        return self._view[r0:r1, c0:c1]

    def read_region_into_async(self, r0: int, r1: int, c0: int, c1: int, out: np.ndarray) -> Any:
        """Starts reading rows ``r0:r1``, cols ``c0:c1`` into ``out`` (the region's shape,
        the matrix dtype; a view is fine); returns an object with ``.done()`` and
        ``.result()`` (waits; raises TensorStore's ValueError on failure). Reading into a
        buffer the caller owns (see :func:`aligned_empty`) saves the copy that
        ``jax.device_put`` would make.

        This is the one read path. With a ``parent_fn``, one LIST (done before the read
        is issued, so a block written meanwhile is never taken for zeros) finds the
        blocks that do not exist; their overlap is filled from ``parent_fn`` in
        ``.result()``. It does not check freshness (callers check once, see
        :meth:`check_fresh`)."""
        region = self._region(r0, r1, c0, c1)
        if self.parent_fn is None:
            return ts.array(out, copy=False, write=True).write(region)
        blocks = overlapping_blocks(self, (r0, r1, c0, c1))
        stored = self._stored_blocks(self._keys.existing_async(self._base.kvstore).result())
        missing = [b for b in blocks if b not in stored]
        read = None
        if len(missing) < len(blocks):  # something is stored: read it
            read = ts.array(out, copy=False, write=True).write(region)
        return ParentFill(self, (r0, r1, c0, c1), out, read, missing)

    def read_region_async(self, r0: int, r1: int, c0: int, c1: int) -> Futures:
        """Starts reading rows ``r0:r1``, cols ``c0:c1`` (the one read path);
        ``.result()`` returns the array."""
        out = aligned_empty((r1 - r0, c1 - c0), self.dtype)
        return Futures([self.read_region_into_async(r0, r1, c0, c1, out)], value=out)

    def read_region(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Reads rows ``r0:r1``, cols ``c0:c1`` as a numpy array (missing blocks via
        ``parent_fn``; the handle's freshness is checked by a read issued alongside)."""
        return self._read(r0, r1, c0, c1, "BigMatrix.read_region")

    def _read(self, r0: int, r1: int, c0: int, c1: int, op: str) -> np.ndarray:
        with translate_errors(op, self._loc):
            header = read_json_async(self._base.kvstore)  # in flight with the data read
            before = self.read_token_async()
            # answered before the data is read (a token read answered after a rewrite
            # could match the one after it), and an unfinished matrix (e.g. an ingest's
            # provisional 2**40 rows) is refused before its buffer is allocated
            self.check_unchanged(before, None, op)
            out = aligned_empty((r1 - r0, c1 - c0), self.dtype)
            data = self.read_region_into_async(r0, r1, c0, c1, out)
            self._check_header(header.result())
            data.result()
            self.check_unchanged(before, self.read_token_async(), op)  # not torn
        return out

    def write_region_async(self, r0: int, c0: int, data: np.ndarray, *,
                           handover: bool = False) -> ts.WriteFutures:  # fmt: skip
        """Starts writing ``data`` at ``(r0, c0)``; wait on ``.commit`` for durability.

        The low-level write: it neither checks freshness nor replaces the generation
        token. Callers do both once per call or run (the engine and
        :func:`~jaxwren.storage.ingest.write_blocks` through :meth:`begin_write` or
        :meth:`new_generation`); single writes use :meth:`write_region` / :meth:`put_block`.
        ``handover=True``: the caller never modifies ``data`` again, so TensorStore may
        keep referencing it instead of copying it first.
        """
        views.refuse_write(self._spec, f"{self!r}: writing")
        r1, c1 = r0 + data.shape[0], c0 + data.shape[1]
        data = np.asarray(data, dtype=self.dtype)
        if handover:
            return self._region(r0, r1, c0, c1).write(
                data, can_reference_source_data_indefinitely=True
            )
        return self._region(r0, r1, c0, c1).write(data)

    def write_region(self, r0: int, c0: int, data: np.ndarray) -> None:
        """Writes ``data`` at ``(r0, c0)`` and waits until it is stored (a new generation:
        results computed from the old contents no longer match; see :meth:`begin_write`).

        Raises (before writing):
          ShapeMismatchError: ``data`` is not 2-D (the call is ``write_region(r0, c0,
            data)``). BlockIndexError: the region is outside the matrix.
          DTypeMismatchError: ``data``'s dtype does not cast safely to the matrix dtype.
        """
        call = f"{self!r}.write_region(r0, c0, data)"
        for name, v in (("r0", r0), ("c0", c0)):
            if not isinstance(v, int | np.integer) or isinstance(v, bool | np.bool_):
                raise BlockIndexError(f"{call}: {name}={v!r} must be an int row/column offset.")
        data = np.asarray(data)
        if data.ndim != 2:
            raise ShapeMismatchError(
                f"{call}: data must be a 2-D array, got shape {data.shape}; reshape a row "
                "with x.reshape(1, -1)."
            )
        views.refuse_write(self._spec, call)
        check_cast(data, self.dtype, call)
        self._region(r0, r0 + data.shape[0], c0, c0 + data.shape[1])  # bounds, before writing
        self.begin_write()
        with translate_errors("BigMatrix.write_region", self._loc):
            self.write_region_async(r0, c0, data).result()

    def numpy(self) -> np.ndarray:
        """Reads the whole matrix into memory (missing blocks via ``parent_fn`` if set)."""
        m, n = self.shape
        return self._read(0, m, 0, n, "BigMatrix.numpy")

    def iter_blocks(self) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
        """Yields ``((i, j), block)`` for every block in row-major order."""
        for i, j in self.block_idxs:
            yield (i, j), self.get_block(i, j)

    def iter_row_batches(self, batch_rows: int, **kwargs: Any) -> Iterator[jax.Array]:
        """Streams row batches as sharded jax.Arrays with reads in flight ahead.

        A convenience for the sharding layer's ``iter_row_batches`` (``batch_rows``,
        ``sharding``, ``prefetch``, ``shuffle``, ``seed``, ``drop_remainder``), reached
        through :mod:`jaxwren.storage.device_io` so that storage imports nothing above
        it; checks the handle's freshness once, here.

        Raises:
            ConfigError: the sharding layer was never imported (``import jaxwren`` does).
        """
        iter_row_batches = device_io.get("iter_row_batches", "BigMatrix.iter_row_batches")
        self.check_fresh()
        return iter_row_batches(self, batch_rows, **kwargs)

    def to_jax(self, sharding: jax.sharding.Sharding | None = None) -> jax.Array:
        """Loads the matrix as a sharded ``jax.Array``.

        A convenience for :func:`jaxwren.load` (sharded over all devices when
        ``sharding`` is None), reached through :mod:`jaxwren.storage.device_io` so that
        storage imports nothing above it.

        Raises:
            ConfigError: the sharding layer was never imported (``import jaxwren`` does).
        """
        return device_io.get("load", "BigMatrix.to_jax")(self, sharding)
