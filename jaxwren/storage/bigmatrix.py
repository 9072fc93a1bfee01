"""BigMatrix: a 2-D matrix stored as a zarr v3 array whose chunk is the block.

numpywren's BigMatrix on TensorStore: blocks are read and written independently, edge
blocks are ragged (returned at their true size), ``T`` is a lazy transposed view, and
``parent_fn`` materialises blocks that were never written.

Any zarr v3 array opens (sharded, any chunk key encoding, compressed): a block is the
unit stored under one key (the shard of a sharded array), and block operations act on
exactly that key. Every user-facing write replaces the matrix's generation token first
(see :mod:`jaxwren.storage.records`); a handle whose matrix was recreated under it with
another layout raises :class:`~jaxwren.errors.MatrixChangedError` instead of misreading.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorstore as ts

from jaxwren.config import StorageConfig
from jaxwren.errors import BlockIndexError, MemoryBudgetError, ShapeMismatchError
from jaxwren.storage import backend, device_io, lifecycle, records, views
from jaxwren.storage.backend import parse_json, read_json_async, translate_errors
from jaxwren.storage.buffers import aligned_empty
from jaxwren.storage.chunkkeys import ChunkKeys
from jaxwren.storage.parent import ParentFill, overlapping_blocks
from jaxwren.storage.state import StoredState
from jaxwren.storage.urls import Location, parse_url
from jaxwren.storage.validate import (
    check_block,
    check_cast,
    check_dtype,
    check_labels,
    check_shape,
    resolve_storage,
)
from jaxwren.storage.views import View
from jaxwren.storage.window import Futures

if TYPE_CHECKING:
    import jax

__all__ = [
    "BigMatrix",
    "ParentFn",
    "aligned_empty",
    "check_dtype",
    "check_shape",
    "resolve_storage",
]

ParentFn = Callable[["BigMatrix", int, int], np.ndarray]


class BigMatrix(StoredState):
    """A blocked 2-D matrix in object storage (memory, file, s3, gs).

    Create with :meth:`create`, :meth:`open` or :func:`jaxwren.from_numpy`; do not call
    the constructor directly.
    """

    def __init__(
        self,
        array: ts.TensorStore,
        loc: Location,
        config: StorageConfig,
        block_shape: tuple[int, int],
        *,
        parent_fn: ParentFn | None = None,
        transposed: bool = False,
        metadata: dict | None = None,
        view: View | None = None,
    ) -> None:
        self._base = array
        self._loc = loc
        self._config = config
        self._base_block = block_shape
        self._spec = view if view is not None else View(transposed=transposed)
        self._transposed = self._spec.transposed
        self._view = views.apply(array, self._spec)
        # fixed for this handle (a resize makes a new handle): asked on every read and
        # write, and a TensorStore property access each time cost ~30 ms of a 1 s plan
        self._shape = tuple(int(s) for s in self._view.shape)
        self._dtype = np.dtype(self._view.dtype.numpy_dtype)
        self.parent_fn = parent_fn
        if metadata is None:  # the stored zarr.json as this handle saw it when opened
            metadata = parse_json(read_json_async(array.kvstore).result()) or {}
        self._metadata = metadata
        self._keys = ChunkKeys.from_metadata(metadata)

    # ----------------------------------------------------------------- construction
    @classmethod
    def create(
        cls,
        url: str | os.PathLike[str],
        shape: tuple[int, int],
        block_shape: tuple[int, int],
        dtype: Any = "float32",
        *,
        storage: StorageConfig | None = None,
        parent_fn: ParentFn | None = None,
        overwrite: bool = False,
        dims: tuple[str, str] | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> BigMatrix:
        """Creates an empty matrix at ``url`` (no block written yet; reads give zeros)
        with a fresh generation token. It is complete from birth: filled block by block
        with :meth:`put_block`, unwritten blocks read as zeros (or ``parent_fn``).
        ``dims`` (zarr ``dimension_names``, e.g. ``("sample", "feature")``) and ``attrs``
        (JSON user attributes) make it an xarray DataArray (``xr.open_zarr`` of the zarr
        group holding it).

        ``overwrite=True`` first deletes the array stored there (exactly its keys: chunks,
        records, header; nested matrices and other objects under the prefix stay).

        Raises:
          ShapeMismatchError, DTypeMismatchError: invalid shape, block shape or dtype.
          MatrixExistsError: a matrix is stored there and ``overwrite`` is False.
          BucketNotFoundError, CredentialsError, StorageError: the store refused.
        """
        return cls._create(url, shape, block_shape, dtype, storage=storage, parent_fn=parent_fn,
                           overwrite=overwrite, dims=dims, attrs=attrs)[0]  # fmt: skip

    @classmethod
    def create_uncommitted(
        cls,
        url: str | os.PathLike[str],
        shape: tuple[int, int],
        block_shape: tuple[int, int],
        dtype: Any,
        *,
        writer: str,
        storage: StorageConfig | None = None,
        overwrite: bool = False,
        dims: tuple[str, str] | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> tuple[BigMatrix, str]:
        """Creates a matrix that ``writer`` will fill whole and then commit (see
        :mod:`jaxwren.storage.lifecycle`): reads raise IncompleteMatrixError until then.
        A matrix left uncommitted by an earlier writer is replaced without
        ``overwrite``. Returns the matrix and the writer's claim."""
        matrix, claim = cls._create(url, shape, block_shape, dtype, storage=storage,
                                    overwrite=overwrite, writer=writer, dims=dims,
                                    attrs=attrs)  # fmt: skip
        assert claim is not None
        return matrix, claim

    @classmethod
    def _create(cls, url: Any, shape: Any, block_shape: Any, dtype: Any, *,
                storage: StorageConfig | None, overwrite: bool, parent_fn: Any = None,
                writer: str | None = None, dims: Any = None,
                attrs: Any = None) -> tuple[BigMatrix, str | None]:  # fmt: skip
        where = writer or "BigMatrix.create"
        dims, attrs = check_labels(dims, attrs, where=where)
        shape = check_shape(shape, where=where)
        block_shape = check_shape(block_shape, where=where, name="block_shape")
        dt = check_dtype(dtype, where=where)
        loc, config = parse_url(url), resolve_storage(storage)
        claim = None
        if writer is not None:
            backend.probe_bucket(loc, config, where)
            with translate_errors(where, loc):
                kv = backend.open_kvstore(loc, config)
                header, state = read_json_async(kv), lifecycle.read_state_async(kv)
                exists = parse_json(header.result()) is not None
                if exists and (overwrite or lifecycle.parse_state(state.result()) is not None):
                    backend.delete_matrix(kv, loc, where)  # replaced: an unfinished one too
                    exists = False
                overwrite = False  # (done here: create_array would delete the claim too)
                if not exists:  # (else create_array refuses: MatrixExistsError)
                    claim = lifecycle.begin(kv, writer)  # before the header: never complete
        try:
            array = backend.create_array(loc, config, shape, block_shape, dt,
                                         overwrite=overwrite, dims=dims, attrs=attrs)  # fmt: skip
            matrix = cls(array, loc, config, block_shape, parent_fn=parent_fn)
            matrix.new_generation()
        except BaseException:
            if claim is not None:  # leave the place as it was: empty
                with contextlib.suppress(Exception):
                    lifecycle.abandon(kv, claim)
            raise
        return matrix, claim

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str],
        *,
        storage: StorageConfig | None = None,
        parent_fn: ParentFn | None = None,
    ) -> BigMatrix:
        """Reopens a stored matrix by URL from its stored header alone.

        Any 2-D zarr v3 array opens; its block is its stored chunk (a sharded array's
        shard).

        Raises:
          MatrixNotFoundError: nothing is stored at ``url`` (or a zarr v2 array: the
            message says how to convert it).
          ShapeMismatchError: the stored array is not 2-D.
        """
        loc, config = parse_url(url), resolve_storage(storage)
        array = backend.open_array(loc, config)
        if array.rank != 2:
            raise ShapeMismatchError(
                f"BigMatrix.open: {loc.url} holds a {array.rank}-D array; BigMatrix is 2-D."
            )
        block_shape = backend.stored_block_shape(array)
        return cls(array, loc, config, block_shape, parent_fn=parent_fn)  # type: ignore[arg-type]

    # ------------------------------------------------------------------- properties
    @property
    def url(self) -> str:
        """The normalised storage URL (of the stored, untransposed matrix)."""
        return self._loc.url

    @property
    def location(self) -> Location:
        """The parsed storage location."""
        return self._loc

    @property
    def storage(self) -> StorageConfig:
        """The resolved StorageConfig this matrix was opened with."""
        return self._config

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def block_shape(self) -> tuple[int, int]:
        b = self._base_block
        return (b[1], b[0]) if self._transposed else b

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Number of blocks along each axis (edge blocks included)."""
        return tuple(-(-s // b) for s, b in zip(self.shape, self.block_shape, strict=True))  # type: ignore[return-value]

    @property
    def block_idxs(self) -> list[tuple[int, int]]:
        """All block indices ``(i, j)`` in row-major order."""
        gi, gj = self.grid_shape
        return [(i, j) for i in range(gi) for j in range(gj)]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def fill_value(self) -> Any:
        """What a block never written reads as through TensorStore and zarr-python (the
        stored zarr ``fill_value``; ``parent_fn``, when set, overrides it in jaxwren)."""
        return self._view.fill_value

    @property
    def absent_reads_zero(self) -> bool:
        """Whether a block never written reads as zeros for every reader (jaxwren without
        ``parent_fn``, zarr-python, TensorStore): the fill value is zero and no
        ``parent_fn`` is set."""
        fill = self.fill_value
        return self.parent_fn is None and (fill is None or bool(np.all(np.asarray(fill) == 0)))

    def region_chunk_keys(self, r0: int, r1: int, c0: int, c1: int) -> list[str]:
        """The keys of the stored chunks a region of the *stored* (untransposed) matrix
        touches (see :meth:`base_region`)."""
        bm, bn = self._base_block
        return [self._keys.key(i, j) for i in range(r0 // bm, -(-r1 // bm))
                for j in range(c0 // bn, -(-c1 // bn))]  # fmt: skip

    @property
    def transposed(self) -> bool:
        """Whether this is a transposed view of the stored matrix."""
        return self._transposed

    @property
    def T(self) -> BigMatrix:  # noqa: N802
        """A lazy transposed view: blocks and indices swapped, nothing copied (a
        ``parent_fn`` block of the view is the transposed block of the stored matrix)."""
        return self._with(dataclasses.replace(self._spec, transposed=not self._transposed))

    def __getitem__(self, key: Any) -> BigMatrix:
        """``A[i:j, k:l]``: a lazy, read-only view of a region (basic slices, any bounds,
        negative ones as numpy's); every read of it reads only the chunks it covers.

        Raises:
          BlockIndexError: steps, single indices or fancy indexing (read the data first
            with ``numpy()``, ``read_region`` or ``get_block``), or an empty selection.
        """
        self._refuse_parent_view("A[i:j, k:l]")
        return self._with(views.slice_view(self._spec, self.shape, key, repr(self)))

    def astype(self, dtype: Any, casting: str = "same_kind") -> BigMatrix:
        """A lazy, read-only view cast to ``dtype`` per tile as it is read (numpy's
        ``casting`` rules; ``"same_kind"`` allows float64 -> float32 for a 32-bit JAX
        run). ``jw.copy(A.astype(...), url)`` stores it.

        Raises:
          DTypeMismatchError: the cast can lose data under ``casting`` (e.g. float to
            int without ``casting="unsafe"``), or ``dtype`` is not supported.
        """
        dt = check_dtype(dtype, where=f"{self!r}.astype")
        self._refuse_parent_view("A.astype(...)")
        return self._with(views.cast_view(self._spec, self.dtype, dt, casting, repr(self)))

    @property
    def view(self) -> View:
        """How this handle sees the stored matrix (region, transposition, cast)."""
        return self._spec

    def _with(self, spec: View) -> BigMatrix:
        return BigMatrix(self._base, self._loc, self._config, self._base_block,
                         parent_fn=self.parent_fn, metadata=self._metadata, view=spec)  # fmt: skip

    def _refuse_parent_view(self, what: str) -> None:
        if self.parent_fn is not None:
            raise ShapeMismatchError(
                f"{self!r}: {what} of a matrix with a parent_fn is not supported (its "
                "blocks come from the function); read it with numpy() or get_block."
            )

    def _whole(self, what: str) -> None:
        """Block-level operations address stored chunks: not through a region view."""
        if self._spec.region is not None:
            raise BlockIndexError(
                f"{self!r}: {what} addresses stored blocks and is not defined on a region "
                "view; call it on the whole matrix (jw.BigMatrix.open(url))."
            )

    # ---------------------------------------------------------------- array protocol
    max_asarray_bytes: int = 4 << 30
    """``np.asarray(A)`` reads the whole matrix up to this many bytes and refuses above
    (a stored matrix may exceed RAM); raise it with ``jw.BigMatrix.max_asarray_bytes =
    ...`` or read parts with ``read_region`` / a view ``A[i:j, k:l]``."""

    @property
    def ndim(self) -> int:
        return 2

    @property
    def size(self) -> int:
        return int(self.shape[0]) * int(self.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if self.nbytes > self.max_asarray_bytes:
            raise MemoryBudgetError(
                f"np.asarray({self!r}) would read {self.nbytes} bytes into memory, above "
                f"BigMatrix.max_asarray_bytes = {self.max_asarray_bytes}; read a part "
                "(A[i:j, k:l].numpy(), A.read_region(...)), or raise the limit "
                "(jw.BigMatrix.max_asarray_bytes = ...) if it fits in RAM."
            )
        out = self.numpy()
        return out if dtype is None else out.astype(dtype, copy=False)

    def __matmul__(self, other: Any) -> Any:
        """``A @ B`` is ``jw.matmul(A, B)``: a sharded jax.Array, or the MemoryBudgetError
        that suggests ``out=`` when the result does not fit."""
        return device_io.get("matmul", "BigMatrix.__matmul__")(self, other)

    def __rmatmul__(self, other: Any) -> Any:
        return device_io.get("matmul", "BigMatrix.__rmatmul__")(other, self)

    def __reduce__(self) -> tuple:
        """Pickles as a reopen by URL with the same StorageConfig, view and ``parent_fn``
        (a ``memory://`` matrix stays the same matrix in this process: it is reopened in
        the shared TensorStore context)."""
        return (_reopen, (self.url, self._config, self._spec, self.parent_fn))

    def __repr__(self) -> str:
        spec, sel = self._spec, ""
        if spec.region is not None:
            r0, r1, c0, c1 = spec.region
            sel = f"[{r0}:{r1}, {c0}:{c1}]"
        t = ".T" if self._transposed else ""
        cast = f".astype({spec.dtype.name})" if spec.dtype is not None else ""
        return (
            f"BigMatrix({self.url!r}{sel}{t}{cast}, shape={self.shape}, "
            f"block_shape={self.block_shape}, dtype={self.dtype.name})"
        )

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


def _reopen(url: str, config: StorageConfig, view: Any, parent_fn: Any) -> BigMatrix:
    matrix = BigMatrix.open(url, storage=config, parent_fn=parent_fn)
    if isinstance(view, bool):  # pickled before views (a transposition flag)
        view = View(transposed=view)
    return matrix._with(view)
