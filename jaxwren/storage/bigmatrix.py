"""BigMatrix: a 2-D matrix stored as a zarr v3 array whose chunk is the block.

numpywren's BigMatrix on TensorStore: blocks are read and written independently, edge
blocks are ragged (returned at their true size), ``T`` is a lazy transposed view, and
``parent_fn`` materialises blocks that were never written.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorstore as ts

from jaxwren.config import StorageConfig
from jaxwren.errors import (
    BlockIndexError,
    DTypeMismatchError,
    MatrixChangedError,
    MatrixNotFoundError,
    ShapeMismatchError,
)
from jaxwren.storage import backend
from jaxwren.storage.backend import translate_errors
from jaxwren.storage.chunkkeys import ChunkKeys
from jaxwren.storage.urls import Location, parse_url
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

_SUPPORTED_KINDS = "fiub"
_MARKS, _MARKS_END = "jaxwren/done/", "jaxwren/done0"
_GENERATION = "jaxwren/generation"
_EXTRA_DTYPES = ("bfloat16",)


def resolve_storage(storage: StorageConfig | None) -> StorageConfig:
    """The public entry points' one read of the environment (endpoint, region)."""
    return (storage or StorageConfig()).resolve(os.environ)


def check_dtype(dtype: Any, *, where: str) -> np.dtype:
    """Returns the numpy dtype for ``dtype`` or raises DTypeMismatchError."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or not (dt.kind in _SUPPORTED_KINDS or dt.name in _EXTRA_DTYPES):
        raise DTypeMismatchError(
            f"{where}: dtype {dtype!r} is not supported; use a numeric dtype such as "
            "'float32', 'float64', 'bfloat16' or an integer type."
        )
    return dt


def check_shape(shape: Any, *, where: str, name: str = "shape") -> tuple[int, int]:
    """Returns ``shape`` as a 2-tuple of positive ints or raises ShapeMismatchError."""
    try:
        dims = tuple(int(s) for s in shape)
        ok = len(dims) == 2 and all(d > 0 and d == s for d, s in zip(dims, shape, strict=True))
    except (TypeError, ValueError):
        ok, dims = False, ()
    if not ok:
        raise ShapeMismatchError(
            f"{where}: {name}={shape!r} must be two positive integers (rows, cols)."
        )
    return dims  # type: ignore[return-value]


_ALIGN = 64  # XLA's CPU backend adopts 64-byte-aligned host buffers without a copy


def aligned_empty(shape: tuple[int, ...], dtype: Any, *, zero: bool = False) -> np.ndarray:
    """An uninitialised (or zeroed) C-order array whose data is 64-byte aligned."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = (np.zeros if zero else np.empty)(nbytes + _ALIGN, np.uint8)
    off = -raw.ctypes.data % _ALIGN
    return raw[off : off + nbytes].view(dtype).reshape(shape)


class BigMatrix:
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
    ) -> None:
        self._base = array
        self._loc = loc
        self._config = config
        self._base_block = block_shape
        self._transposed = transposed
        self._view = array.T if transposed else array
        self.parent_fn = parent_fn
        self._metadata = _metadata(array) if metadata is None else metadata

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
    ) -> BigMatrix:
        """Creates an empty matrix at ``url`` (no block written yet; reads give zeros).

        Raises:
          ShapeMismatchError, DTypeMismatchError: invalid shape, block shape or dtype.
          MatrixExistsError: a matrix is stored there and ``overwrite`` is False.
          BucketNotFoundError, CredentialsError, StorageError: the store refused.
        """
        shape = check_shape(shape, where="BigMatrix.create")
        block_shape = check_shape(block_shape, where="BigMatrix.create", name="block_shape")
        dt = check_dtype(dtype, where="BigMatrix.create")
        loc, config = parse_url(url), resolve_storage(storage)
        array = backend.create_array(loc, config, shape, block_shape, dt, overwrite=overwrite)
        matrix = cls(array, loc, config, block_shape, parent_fn=parent_fn)
        matrix.new_generation()
        return matrix

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str],
        *,
        storage: StorageConfig | None = None,
        parent_fn: ParentFn | None = None,
    ) -> BigMatrix:
        """Reopens a stored matrix by URL from its stored header alone.

        Any 2-D zarr v3 array opens; its chunk shape is taken as the block shape.

        Raises:
          MatrixNotFoundError: nothing is stored at ``url``.
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
        return tuple(int(s) for s in self._view.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._view.dtype.numpy_dtype)

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
    def transposed(self) -> bool:
        """Whether this is a transposed view of the stored matrix."""
        return self._transposed

    @property
    def T(self) -> BigMatrix:  # noqa: N802
        """A lazy transposed view: blocks and indices swapped, nothing copied."""
        return BigMatrix(
            self._base,
            self._loc,
            self._config,
            self._base_block,
            parent_fn=self.parent_fn,
            transposed=not self._transposed,
            metadata=self._metadata,
        )

    def __reduce__(self) -> tuple:
        """Pickles as a reopen by URL (a ``memory://`` matrix stays the same matrix in
        this process: it is reopened in the shared TensorStore context)."""
        return (_reopen, (self.url, self._config, self._transposed, self.parent_fn))

    def __repr__(self) -> str:
        t = ".T" if self._transposed else ""
        return (
            f"BigMatrix({self.url!r}{t}, shape={self.shape}, block_shape={self.block_shape}, "
            f"dtype={self.dtype.name})"
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
        bi, bj = (j, i) if self._transposed else (i, j)
        return self._keys.key(bi, bj)

    @property
    def _keys(self) -> ChunkKeys:
        return ChunkKeys.from_metadata(self._metadata)

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
            stored = self._keys.existing(self._base.kvstore)
        return {(j, i) if self._transposed else (i, j) for i, j in stored}

    def get_block(self, i: int, j: int) -> np.ndarray:
        """Reads block ``(i, j)`` at its true (possibly ragged) size.

        A block never written is produced by ``parent_fn(self, i, j)`` when one is set,
        else read as zeros (the fill value).
        """
        r0, r1, c0, c1 = self.block_bounds(i, j)
        self.check_fresh()
        return self._read(r0, r1, c0, c1)

    def _from_parent(self, i: int, j: int) -> np.ndarray:
        """Block ``(i, j)`` of this view made by ``parent_fn`` (called with the stored,
        untransposed matrix and its block indices; a transposed view transposes it)."""
        if self._transposed:
            return self.T._from_parent(j, i).T
        r0, r1, c0, c1 = self.block_bounds(i, j)
        block = np.asarray(self.parent_fn(self, i, j))  # type: ignore[misc]
        self._check_block(block, (r1 - r0, c1 - c0), f"parent_fn(A, {i}, {j})")
        return block.astype(self.dtype, copy=False)

    def put_block(self, block: Any, i: int, j: int) -> None:
        """Writes block ``(i, j)``; it must have the block's true shape and a dtype that
        casts safely to the matrix dtype.

        Raises:
          BlockIndexError, ShapeMismatchError, DTypeMismatchError: checked before writing.
        """
        r0, r1, c0, c1 = self.block_bounds(i, j)
        block = np.asarray(block)
        self._check_block(block, (r1 - r0, c1 - c0), f"put_block(block, {i}, {j})")
        self.write_region(r0, c0, block)

    def _check_block(self, block: np.ndarray, expected: tuple[int, int], call: str) -> None:
        if block.shape != expected:
            raise ShapeMismatchError(
                f"{self!r}.{call}: block has shape {block.shape}, expected {expected} "
                "(edge blocks are ragged: pass exactly the block's true size)."
            )
        if not np.can_cast(block.dtype, self.dtype, casting="safe"):
            raise DTypeMismatchError(
                f"{self!r}.{call}: block dtype {block.dtype} does not cast safely to "
                f"{self.dtype}; convert it first with block.astype({self.dtype.name!r})."
            )

    def delete_block(self, i: int, j: int) -> None:
        """Deletes block ``(i, j)``: it reads as zeros (or via ``parent_fn``) again."""
        self._check_block_idx(i, j)
        key = self._chunk_key(i, j)
        self.new_generation()
        with translate_errors("BigMatrix.delete_block", self._loc):
            self._base.kvstore.delete_range(ts.KvStore.KeyRange(key, key + "\0")).result()

    def free(self) -> None:
        """Deletes every block (and completion record) and keeps the header."""
        self.new_generation()
        with translate_errors("BigMatrix.free", self._loc):
            self._keys.delete_all(self._base.kvstore)
        self.clear_marks()

    def base_region(self, r0: int, r1: int, c0: int, c1: int) -> tuple[int, int, int, int]:
        """A region of this view in the coordinates of the stored (untransposed) matrix."""
        return (c0, c1, r0, r1) if self._transposed else (r0, r1, c0, c1)

    def destroy(self) -> None:
        """Deletes the matrix entirely — its chunks, its ``jaxwren/`` records and its
        header, nothing else under the same prefix (the URL is free again)."""
        kv = self._base.kvstore
        with translate_errors("BigMatrix.destroy", self._loc):
            self._keys.delete_all(kv)
            kv.delete_range(ts.KvStore.KeyRange("jaxwren/", "jaxwren0")).result()
            kv.delete_range(ts.KvStore.KeyRange("zarr.json", "zarr.json\0")).result()

    # ------------------------------------------------------------------- generations
    def generation(self) -> str | None:
        """The matrix's generation token: replaced by every jaxwren write to it (create,
        put_block, write_region, delete_block, free, save, being a run's out). None for
        arrays no jaxwren call has written (e.g. written by zarr-python)."""
        with translate_errors("BigMatrix.generation", self._loc):
            got = self._base.kvstore.read(_GENERATION).result()
        return got.value.decode() if got.state == "value" else None

    def new_generation(self) -> str:
        """Writes and returns a fresh generation token: results and completion records
        derived from the matrix's earlier contents no longer match it."""
        token = uuid.uuid4().hex
        with translate_errors("BigMatrix.new_generation", self._loc):
            self._base.kvstore.write(_GENERATION, token.encode()).result()
        return token

    def check_fresh(self) -> None:
        """Raises when the stored header changed since this handle was opened (the
        matrix was recreated with another shape, dtype or layout) or was deleted.

        Raises:
          MatrixChangedError: reopen the matrix with ``jw.BigMatrix.open(url)``.
          MatrixNotFoundError: the matrix was deleted.
        """
        with translate_errors("BigMatrix.check_fresh", self._loc):
            got = self._base.kvstore.read("zarr.json").result()
        if got.state != "value":
            raise MatrixNotFoundError(
                f"{self!r}: the matrix was deleted after this handle was opened; "
                "create it again (jw.BigMatrix.create / jw.from_numpy)."
            )
        if json.loads(got.value) != self._metadata:
            raise MatrixChangedError(
                f"{self!r}: the stored matrix was recreated (shape, dtype or layout changed) "
                f"after this handle was opened; reopen it with jw.BigMatrix.open({self.url!r})."
            )

    # -------------------------------------------------------------- completion records
    def mark(self, key: str) -> None:
        """Records that part ``key`` of a computation writing this matrix is stored.

        Records live beside the blocks (``jaxwren/done/KEY``); written only after the
        data they vouch for, they let an interrupted run resume without trusting
        half-written output. :meth:`free` and ``overwrite=True`` clear them.
        """
        with translate_errors("BigMatrix.mark", self._loc):
            self._base.kvstore.write(_MARKS + key, b"1").result()

    def marks(self) -> set[str]:
        """The completion records present (one LIST of the store)."""
        with translate_errors("BigMatrix.marks", self._loc):
            keys = self._base.kvstore.list(ts.KvStore.KeyRange(_MARKS, _MARKS_END)).result()
        return {k.decode()[len(_MARKS) :] for k in keys}

    def clear_marks(self) -> None:
        """Deletes every completion record."""
        with translate_errors("BigMatrix.clear_marks", self._loc):
            self._base.kvstore.delete_range(ts.KvStore.KeyRange(_MARKS, _MARKS_END)).result()

    # ----------------------------------------------------------------------- regions
    def _region(self, r0: int, r1: int, c0: int, c1: int) -> ts.TensorStore:
        m, n = self.shape
        if not (0 <= r0 <= r1 <= m and 0 <= c0 <= c1 <= n):
            raise BlockIndexError(
                f"{self!r}: region rows {r0}:{r1}, cols {c0}:{c1} is outside shape {self.shape}."
            )
        return self._view[r0:r1, c0:c1]

    def read_region_async(self, r0: int, r1: int, c0: int, c1: int) -> ts.Future:
        """Starts reading rows ``r0:r1``, cols ``c0:c1``; returns a TensorStore future."""
        return self._region(r0, r1, c0, c1).read()

    def read_region_into_async(self, r0: int, r1: int, c0: int, c1: int, out: np.ndarray) -> Any:
        """Starts reading rows ``r0:r1``, cols ``c0:c1`` into ``out`` (the region's shape,
        the matrix dtype; a view is fine). Reading into a buffer the caller owns (see
        :func:`aligned_empty`) saves the copy that ``jax.device_put`` would make.

        This is the one read path: blocks never written come from ``parent_fn`` when one
        is set (found with one LIST per call), else read as zeros."""
        fut = ts.array(out, copy=False, write=True).write(self._region(r0, r1, c0, c1))
        if self.parent_fn is None:
            return fut
        return _ParentFill(fut, self, (r0, r1, c0, c1), out)

    def read_region(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Reads rows ``r0:r1``, cols ``c0:c1`` as a numpy array (checking first that the
        stored header did not change under this handle)."""
        self.check_fresh()
        return self._read(r0, r1, c0, c1)

    def _read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        out = aligned_empty((r1 - r0, c1 - c0), self.dtype)
        with translate_errors("BigMatrix.read", self._loc):
            self.read_region_into_async(r0, r1, c0, c1, out).result()
        return out

    def write_region_async(self, r0: int, c0: int, data: np.ndarray) -> ts.WriteFutures:
        """Starts writing ``data`` at ``(r0, c0)``; wait on ``.commit`` for durability.

        The low-level write: it does not replace the generation token (the engine and
        bulk writers replace it once per run or call; user-facing writes use
        :meth:`write_region` / :meth:`put_block`)."""
        r1, c1 = r0 + data.shape[0], c0 + data.shape[1]
        return self._region(r0, r1, c0, c1).write(np.asarray(data, dtype=self.dtype))

    def write_region(self, r0: int, c0: int, data: np.ndarray) -> None:
        """Writes ``data`` at ``(r0, c0)`` and waits until it is stored (a new generation:
        results computed from the old contents no longer match)."""
        self.new_generation()
        with translate_errors("BigMatrix.write", self._loc):
            self.write_region_async(r0, c0, data).result()

    def numpy(self) -> np.ndarray:
        """Reads the whole matrix into memory (missing blocks via ``parent_fn`` if set)."""
        m, n = self.shape
        return self.read_region(0, m, 0, n)

    def iter_blocks(self) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
        """Yields ``((i, j), block)`` for every block in row-major order."""
        for i, j in self.block_idxs:
            yield (i, j), self.get_block(i, j)

    def iter_row_batches(self, batch_rows: int, **kwargs: Any) -> Iterator[jax.Array]:
        """Streams row batches as sharded jax.Arrays with reads in flight ahead (see
        :func:`jaxwren.sharding.batches.iter_row_batches` for the options)."""
        from jaxwren.sharding.batches import iter_row_batches  # delegate, as to_jax

        return iter_row_batches(self, batch_rows, **kwargs)

    def to_jax(self, sharding: jax.sharding.Sharding | None = None) -> jax.Array:
        """Loads the matrix as a sharded ``jax.Array`` (see :func:`jaxwren.sharding.load`)."""
        from jaxwren.sharding.io import load  # delegate: storage stays below sharding

        return load(self, sharding)


def _metadata(array: ts.TensorStore) -> dict:
    """The stored zarr.json of ``array`` as the handle saw it when opened."""
    got = array.kvstore.read("zarr.json").result()
    return json.loads(got.value) if got.state == "value" else {}


def _reopen(url: str, config: StorageConfig, transposed: bool, parent_fn: Any) -> BigMatrix:
    matrix = BigMatrix.open(url, storage=config, parent_fn=parent_fn)
    return matrix.T if transposed else matrix


class _ParentFill(Futures):
    """A region read whose never-written blocks are then filled from ``parent_fn``."""

    def __init__(self, fut: Any, matrix: BigMatrix, region: tuple[int, int, int, int],
                 out: np.ndarray) -> None:  # fmt: skip
        super().__init__([fut])
        self._matrix, self._region, self._out = matrix, region, out
        self._missing = _missing_blocks(matrix, region)

    def result(self) -> None:
        super().result()
        r0, r1, c0, c1 = self._region
        for i, j in self._missing:
            b0, b1, d0, d1 = self._matrix.block_bounds(i, j)
            a0, a1, e0, e1 = max(b0, r0), min(b1, r1), max(d0, c0), min(d1, c1)
            block = self._matrix._from_parent(i, j)
            self._out[a0 - r0 : a1 - r0, e0 - c0 : e1 - c0] = block[a0 - b0 : a1 - b0,
                                                                     e0 - d0 : e1 - d0]  # fmt: skip
        self._missing = []


def _missing_blocks(matrix: BigMatrix, region: tuple[int, int, int, int]) -> list:
    r0, r1, c0, c1 = region
    if r1 <= r0 or c1 <= c0:
        return []
    (br, bc), stored = matrix.block_shape, matrix.block_idxs_exist
    rows, cols = range(r0 // br, -(-r1 // br)), range(c0 // bc, -(-c1 // bc))
    return [(i, j) for i in rows for j in cols if (i, j) not in stored]
