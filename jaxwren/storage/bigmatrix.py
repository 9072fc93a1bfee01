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
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorstore as ts

from jaxwren.config import StorageConfig
from jaxwren.errors import BlockIndexError, MemoryBudgetError, ShapeMismatchError
from jaxwren.storage import backend, device_io, lifecycle, views
from jaxwren.storage.backend import parse_json, read_json_async, translate_errors
from jaxwren.storage.blockio import BlockIO
from jaxwren.storage.buffers import aligned_empty
from jaxwren.storage.chunkkeys import ChunkKeys
from jaxwren.storage.state import StoredState
from jaxwren.storage.urls import Location, parse_url
from jaxwren.storage.validate import (
    check_dtype,
    check_labels,
    check_shape,
    resolve_storage,
)
from jaxwren.storage.views import View

__all__ = [
    "BigMatrix",
    "ParentFn",
    "aligned_empty",
    "check_dtype",
    "check_shape",
    "resolve_storage",
]

ParentFn = Callable[["BigMatrix", int, int], np.ndarray]


class BigMatrix(BlockIO, StoredState):
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
        # write (docs/decisions.md: shape and dtype cached per handle)
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


def _reopen(url: str, config: StorageConfig, view: Any, parent_fn: Any) -> BigMatrix:
    matrix = BigMatrix.open(url, storage=config, parent_fn=parent_fn)
    if isinstance(view, bool):  # pickled before views (a transposition flag)
        view = View(transposed=view)
    return matrix._with(view)
