"""Writing in-memory numpy arrays into the store, block by block, concurrently."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxwren.config import StorageConfig
from jaxwren.errors import OutputConflictError, ShapeMismatchError
from jaxwren.storage import lifecycle
from jaxwren.storage.backend import translate_errors
from jaxwren.storage.bigmatrix import BigMatrix
from jaxwren.storage.urls import parse_url
from jaxwren.storage.validate import check_shape
from jaxwren.storage.window import Window

__all__ = ["copy", "from_numpy", "write_blocks"]


def from_numpy(
    x: Any,
    url: str | os.PathLike[str],
    block_shape: tuple[int, int],
    *,
    storage: StorageConfig | None = None,
    overwrite: bool = False,
    n_jobs: int = 16,
    dims: tuple[str, str] | None = None,
    attrs: dict[str, Any] | None = None,
) -> BigMatrix:
    """Stores a 2-D numpy array as a BigMatrix, writing blocks concurrently.

    Args:
      x: a 2-D array (anything ``np.asarray`` accepts).
      url: where to store it.
      block_shape: ``(rows, cols)`` of a block; need not divide the shape.
      storage: StorageConfig; None uses the environment's AWS settings.
      overwrite: replace a matrix already stored at ``url`` (a matrix an interrupted
        writer left unfinished is replaced without it).
      n_jobs: at most this many block writes in flight (numpywren's ``shard_matrix``).
      dims, attrs: zarr ``dimension_names`` and user attributes (see
        :meth:`BigMatrix.create`), for xarray.

    Returns:
      The new BigMatrix.

    Raises:
      ShapeMismatchError: ``x`` is not 2-D (checked before anything is written).
    """
    x = np.asarray(x)
    if x.ndim != 2 or 0 in x.shape:
        raise ShapeMismatchError(
            f"from_numpy: expected a non-empty 2-D array, got shape {x.shape}; "
            "reshape vectors with x.reshape(-1, 1)."
        )
    check_shape(block_shape, where="from_numpy", name="block_shape")
    matrix, claim = BigMatrix.create_uncommitted(url, x.shape, block_shape, x.dtype,
                                                 writer="from_numpy", storage=storage,
                                                 overwrite=overwrite, dims=dims,
                                                 attrs=attrs)  # fmt: skip
    with lifecycle.committing(matrix, claim, "from_numpy"):  # a failure leaves nothing
        _write_blocks(matrix, x, max_inflight_bytes=1 << 30, n_jobs=n_jobs)
    return matrix


def write_blocks(
    matrix: BigMatrix, x: np.ndarray, *, max_inflight_bytes: int = 1 << 30, n_jobs: int = 16
) -> None:
    """Writes ``x`` (the matrix's shape) into an existing matrix block by block with bounded
    concurrency (numpywren's shard_matrix): at most ``n_jobs`` block writes and
    ``max_inflight_bytes`` in flight at once.

    Like every user-facing write it first checks the handle and replaces the matrix's
    generation token, once (:meth:`BigMatrix.begin_write`).

    Raises:
      ShapeMismatchError: ``x`` does not have the matrix's shape (nothing is written).
      MatrixChangedError: the handle is stale (nothing is written).
    """
    x = np.asarray(x)
    if x.shape != matrix.shape:
        raise ShapeMismatchError(
            f"write_blocks: array shape {x.shape} differs from {matrix!r}; pass an array of "
            "the matrix's shape (or create a matching matrix with jw.from_numpy)."
        )
    matrix.begin_write()
    _write_blocks(matrix, x, max_inflight_bytes=max_inflight_bytes, n_jobs=n_jobs)


def _write_blocks(
    matrix: BigMatrix, x: np.ndarray, *, max_inflight_bytes: int, n_jobs: int
) -> None:
    with translate_errors("from_numpy", matrix.location), Window(max_inflight_bytes, n_jobs) as w:
        for i, j in matrix.block_idxs:
            r0, r1, c0, c1 = matrix.block_bounds(i, j)
            block = x[r0:r1, c0:c1]
            w.submit(
                lambda r0=r0, c0=c0, block=block: matrix.write_region_async(r0, c0, block),
                block.size * matrix.dtype.itemsize,
            )


def copy(
    x: BigMatrix,
    url: str | os.PathLike[str],
    block_shape: tuple[int, int] | None = None,
    *,
    storage: StorageConfig | None = None,
    overwrite: bool = False,
    panel_bytes: int = 256 << 20,
    dims: tuple[str, str] | None = None,
    attrs: dict[str, Any] | None = None,
) -> BigMatrix:
    """Materialises any view (``A.T``, ``A[i:j, k:l]``, ``A.astype(...)``) or matrix as a
    new stored matrix at ``url``, rechunked to ``block_shape`` (default: ``x``'s) and
    cast as the view says, streamed in row panels of at most ``panel_bytes``: never the
    whole matrix in memory. One writer lifecycle (uncommitted until done; an interrupted
    copy refuses to be read and a rerun replaces it).

    Raises:
      ShapeMismatchError: ``x`` is not a BigMatrix, or a bad ``block_shape``.
      MatrixExistsError: a matrix is stored at ``url`` and ``overwrite`` is False.
      OutputConflictError: ``url`` is ``x``'s own matrix.
    """
    if not isinstance(x, BigMatrix):
        raise ShapeMismatchError(
            f"copy: expected a BigMatrix (or a view of one), got {type(x).__name__}; store "
            "arrays in memory with jw.from_numpy / jw.save."
        )
    bs = check_shape(block_shape or x.block_shape, where="copy", name="block_shape")
    target = parse_url(url)
    if target.url == x.url or (target.scheme, target.path) == (x.location.scheme, x.location.path):
        raise OutputConflictError(
            f"copy: url {target.url} is the source's own matrix; pass another URL."
        )
    x.check_fresh()
    (m, n), itemsize = x.shape, x.dtype.itemsize
    rows = max(bs[0], (panel_bytes // max(n * itemsize, 1)) // bs[0] * bs[0])
    matrix, claim = BigMatrix.create_uncommitted(url, x.shape, bs, x.dtype, writer="copy",
                                                 storage=storage, overwrite=overwrite,
                                                 dims=dims, attrs=attrs)  # fmt: skip
    with lifecycle.committing(matrix, claim, "copy"):
        for r0 in range(0, m, rows):
            panel = x.read_region(r0, min(r0 + rows, m), 0, n)
            with translate_errors("copy", matrix.location):
                matrix.write_region_async(r0, 0, panel, handover=True).result()
    return matrix
