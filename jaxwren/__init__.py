"""jaxwren: dense linear algebra on matrices in object storage, on a JAX device mesh."""

from jaxwren.compile_cache import enable_compilation_cache
from jaxwren.config import StorageConfig
from jaxwren.errors import (
    BlockIndexError,
    BucketNotFoundError,
    ConfigError,
    CredentialsError,
    DTypeMismatchError,
    JaxwrenError,
    MatrixChangedError,
    MatrixExistsError,
    MatrixNotFoundError,
    MemoryBudgetError,
    NonFiniteError,
    NotPositiveDefiniteError,
    OutputConflictError,
    RankDeficientError,
    ShapeMismatchError,
    StorageError,
    UnsupportedURLError,
)
from jaxwren.linalg import (
    argmin,
    cho_logdet,
    cho_solve,
    cholesky,
    lstsq,
    map_blocks,
    matmul,
    nearest_neighbors,
    pairwise_sq_distances,
    qr,
    solve_triangular,
)
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
    "MatrixChangedError",
    "MatrixExistsError",
    "MatrixNotFoundError",
    "MemoryBudgetError",
    "NonFiniteError",
    "NotPositiveDefiniteError",
    "OutputConflictError",
    "RankDeficientError",
    "ShapeMismatchError",
    "StorageConfig",
    "StorageError",
    "UnsupportedURLError",
    "argmin",
    "cho_logdet",
    "cho_solve",
    "cholesky",
    "enable_compilation_cache",
    "default_mesh",
    "default_sharding",
    "from_numpy",
    "load",
    "lstsq",
    "map_blocks",
    "matmul",
    "nearest_neighbors",
    "pairwise_sq_distances",
    "qr",
    "save",
    "solve_triangular",
]
