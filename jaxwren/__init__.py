"""jaxwren: dense linear algebra on matrices in object storage, on a JAX device mesh."""

from jaxwren.config import StorageConfig
from jaxwren.errors import (
    BlockIndexError,
    BucketNotFoundError,
    ConfigError,
    CredentialsError,
    DTypeMismatchError,
    JaxwrenError,
    MatrixExistsError,
    MatrixNotFoundError,
    MemoryBudgetError,
    NonFiniteError,
    NotPositiveDefiniteError,
    ShapeMismatchError,
    StorageError,
    UnsupportedURLError,
)
from jaxwren.linalg import cho_logdet, cho_solve, cholesky, matmul, solve_triangular
from jaxwren.sharding import default_mesh, default_sharding, load, save
from jaxwren.storage import BigMatrix, from_numpy

__version__ = "0.1.0"

__all__ = [
    "BigMatrix",
    "BlockIndexError",
    "BucketNotFoundError",
    "ConfigError",
    "CredentialsError",
    "DTypeMismatchError",
    "JaxwrenError",
    "MatrixExistsError",
    "MatrixNotFoundError",
    "MemoryBudgetError",
    "NonFiniteError",
    "NotPositiveDefiniteError",
    "ShapeMismatchError",
    "StorageConfig",
    "StorageError",
    "UnsupportedURLError",
    "cho_logdet",
    "cho_solve",
    "cholesky",
    "default_mesh",
    "default_sharding",
    "from_numpy",
    "load",
    "matmul",
    "save",
    "solve_triangular",
]
