"""Typed errors raised by jaxwren.

Every error is a :class:`JaxwrenError` and also the builtin exception a Python user would
expect (``ValueError``, ``OSError``, ``numpy.linalg.LinAlgError`` ...), so existing
``except`` clauses keep working. Messages name the call, give expected vs actual and say
how to fix it; they never contain credentials.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BlockIndexError",
    "ConfigError",
    "CredentialsError",
    "DTypeMismatchError",
    "ForkError",
    "JaxwrenError",
    "MatrixChangedError",
    "MatrixExistsError",
    "MatrixNotFoundError",
    "MemoryBudgetError",
    "NonFiniteError",
    "NotPositiveDefiniteError",
    "OutputConflictError",
    "PartsNotFoundError",
    "ShapeMismatchError",
    "SingularMatrixError",
    "StorageError",
    "TableParseError",
    "UnsupportedURLError",
    "BucketNotFoundError",
    "ConcurrentWriteError",
    "IncompleteMatrixError",
]


class JaxwrenError(Exception):
    """Base class of every error jaxwren raises on purpose."""


class ShapeMismatchError(JaxwrenError, ValueError):
    """Shapes (or block shapes) do not fit together."""


class DTypeMismatchError(JaxwrenError, TypeError):
    """A dtype is unsupported or differs from the one expected."""


class BlockIndexError(JaxwrenError, IndexError):
    """A block index lies outside the block grid."""


class ConfigError(JaxwrenError, ValueError):
    """A configuration value (StorageConfig, memory budget, mesh ...) is invalid."""


class UnsupportedURLError(JaxwrenError, ValueError):
    """A storage URL has an unknown scheme or is malformed."""


class MemoryBudgetError(JaxwrenError, ValueError):
    """A plan needs more memory than the budget allows."""


class NonFiniteError(JaxwrenError, ValueError):
    """An input holds NaN or Inf where a finite value is required."""


class NotPositiveDefiniteError(JaxwrenError, np.linalg.LinAlgError):
    """A matrix given to a Cholesky factorisation is not positive definite."""


class SingularMatrixError(JaxwrenError, np.linalg.LinAlgError):
    """An LU factorisation met an exactly zero pivot: the matrix is singular. ``column``
    is the first such column (0-based; LAPACK's ``info`` less one)."""

    def __init__(self, message: str, column: int | None = None) -> None:
        super().__init__(message)
        self.column = column


class RankDeficientError(JaxwrenError, np.linalg.LinAlgError):
    """A least-squares problem has no unique solution: its matrix is rank deficient."""


class StorageError(JaxwrenError, OSError):
    """Reading or writing the store failed."""


class MatrixNotFoundError(StorageError, FileNotFoundError):
    """No matrix is stored at the URL."""


class MatrixExistsError(StorageError, FileExistsError):
    """A matrix already exists where a new one was to be created."""


class BucketNotFoundError(StorageError, FileNotFoundError):
    """The object-store bucket does not exist."""


class CredentialsError(StorageError, PermissionError):
    """The object store refused the credentials."""


class PartsNotFoundError(StorageError, FileNotFoundError):
    """No part file matches a glob pattern (or a listed part vanished before it was read)."""


class TableParseError(JaxwrenError, ValueError):
    """A CSV or Parquet part cannot become rows of a numeric matrix: a ragged row, a
    non-numeric or empty cell in a selected column, an empty part, or a part whose columns
    differ from the first part's."""


class OutputConflictError(JaxwrenError, ValueError):
    """``out`` is, contains or lies inside an input or another stored matrix."""


class MatrixChangedError(StorageError):
    """A BigMatrix handle's stored header changed (the matrix was recreated) since it
    was opened."""


class IncompleteMatrixError(StorageError):
    """The matrix was left uncommitted by a jaxwren writer (interrupted or failed):
    blocks it never wrote would read as the fill value. Rerunning the same writer
    resumes or replaces it."""


class ConcurrentWriteError(OutputConflictError):
    """Another run or tool wrote to a run's ``out`` while the run was writing it: the
    stored result is not (only) this run's."""


class ForkError(JaxwrenError, RuntimeError):
    """Storage was used in a process forked (``os.fork``, multiprocessing's ``fork``
    start method) after its parent had used TensorStore, whose threads do not survive a
    fork: use the ``spawn`` or ``forkserver`` start method."""
