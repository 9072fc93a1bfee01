"""jaxwren: dense linear algebra on matrices in object storage, on a JAX device mesh.

Matrices live in S3-compatible object storage (AWS, MinIO, Ceph), Google Cloud Storage,
local files or memory as chunked TensorStore zarr v3 arrays; operations stream them
through the devices tile by tile, so they may be larger than device or host memory::

    import jaxwren as jw
    A = jw.from_numpy(x, "s3://bucket/A", block_shape=(4096, 4096))
    C = jw.matmul(A, A.T, "s3://bucket/C")      # out a URL: stored, a BigMatrix back
    G = jw.matmul(A.T, A)                       # no out: returned as a jax.Array
    m = jw.mean(A, axis=0)                      # reductions: numpy arrays

Compute functions take BigMatrix, jax.Array or numpy inputs (and, where they make a
matrix, ``out``: a URL stores the result); they take the keyword arguments ``mesh`` and
``memory_budget`` (where they run and within how much memory), ``prefetch``, ``progress``
and, where they store, ``storage``, or all of them at once as ``spec=jw.RunSpec(...)``.
Each name below has its own ``help()``.

Storage: where matrices live
  BigMatrix                 a blocked matrix in a store: create, open, get_block,
                            put_block, numpy, T, [i:j, k:l] views, astype, to_jax, free
  from_numpy                store a numpy array as a BigMatrix
  save                      store a jax.Array (sharded or not) or numpy array
  load                      a BigMatrix (or a region of it) as a sharded jax.Array
  copy                      materialise a view (T, slice, astype) or rechunk a matrix

Compute: linear algebra, streamed out of core
  matmul                    a @ b
  cholesky                  lower Cholesky factor
  solve_triangular          op(l) x = b for triangular l
  cho_solve, cho_logdet     solve and log-determinant from a Cholesky factor
  lu_factor, lu_solve       LU with partial pivoting, and solves from the factor
  solve                     a x = b (LU, or Cholesky with assume_a="pos"; refine=True:
                            float32 factor, float64 refinement)
  inv, slogdet, det         inverse, sign and log |det|, determinant
  lstsq                     least squares
  qr, svd                   tall-skinny QR; thin SVD of any shape
  eigh                      symmetric eigendecomposition (QDWH-eig, sharded)
  polar                     polar decomposition a = U H (QDWH, sharded)
  randomized_svd            rank-k truncated SVD
  pairwise_sq_distances     squared Euclidean distances between rows
  argmin                    argmin-reduce along an axis (indices and values)
  nearest_neighbors         k nearest rows
  map_blocks                apply a function to every output block
  sum, mean, min, max       reductions (numpy semantics, axis=None|0|1)
  var, std, norm            variance, standard deviation, matrix and vector norms
  default_mesh              all devices in a 2-D (rows, cols) mesh
  default_sharding          a NamedSharding over that mesh
  explain                   plan a call without running it: its RunReport
  observe                   collect the RunReport of every run in a with-block
  RunReport                 what a run did: tiling, bytes, steps, seconds
  lax                       inside your jax.jit / jax.grad: sharded, differentiable
                            cholesky, solve_triangular, cho_solve, cho_logdet,
                            lu_factor, lu_solve, solve, polar, eigh

Tables: CSV and Parquet part files in
  from_csv                  CSV parts (globs, **, lists, .gz/.bz2/.zst) -> one BigMatrix
  from_parquet              Parquet parts -> one BigMatrix
  iter_table_batches        part files -> sharded batches, no matrix in between

Errors: every one a JaxwrenError, with a message that names the fix
  JaxwrenError              base class
  ConfigError               a bad argument or setting
  ShapeMismatchError        shapes or block shapes that do not fit
  DTypeMismatchError        an unsupported or unexpected dtype
  NonFiniteError            NaN or Inf where a finite value is required
  NotPositiveDefiniteError  Cholesky of a matrix that is not positive definite
  RankDeficientError        a least-squares matrix without full rank
  SingularMatrixError       an exactly zero pivot in an LU factorisation (.column)
  MemoryBudgetError         a plan over the memory budget
  OutputConflictError       an out that is, holds or lies inside an input
  BlockIndexError           a block index outside the grid
  ForkError                 storage used in a forked child (use spawn or forkserver)
  StorageError              the store failed; its subclasses:
  BucketNotFoundError       the bucket does not exist
  CredentialsError          the store refused the credentials
  UnsupportedURLError       an unknown or malformed URL
  MatrixNotFoundError       no matrix at the URL
  MatrixExistsError         a matrix is already there (pass overwrite=True)
  MatrixChangedError        the matrix was recreated since it was opened
  IncompleteMatrixError     a matrix left uncommitted by an interrupted writer
  ConcurrentWriteError      another writer wrote a run's out meanwhile
  PartsNotFoundError        no part file matches a pattern
  TableParseError           a part that cannot become numeric rows

Config: runs, stores, caches, processes
  RunSpec                   how an operation runs (mesh, memory_budget, prefetch, ...):
                            pass it as spec= to any compute function
  StorageConfig             endpoint, region, credentials, retries (default: the AWS
                            environment variables and shared config file)
  enable_compilation_cache  JAX's persistent compilation cache
  jaxwren.distributed.initialize   join a multi-process run (SLURM, Open MPI,
                            Kubernetes auto-detected; or python -m jaxwren.launch)
"""

from jaxwren import lax  # the traceable layer: jw.lax.cholesky, ... (a subpackage)
from jaxwren.compile_cache import enable_compilation_cache
from jaxwren.config import RunSpec, StorageConfig
from jaxwren.engine.report import RunReport, explain, observe
from jaxwren.errors import (
    BlockIndexError,
    BucketNotFoundError,
    ConcurrentWriteError,
    ConfigError,
    CredentialsError,
    DTypeMismatchError,
    ForkError,
    IncompleteMatrixError,
    JaxwrenError,
    MatrixChangedError,
    MatrixExistsError,
    MatrixNotFoundError,
    MemoryBudgetError,
    NonFiniteError,
    NotPositiveDefiniteError,
    OutputConflictError,
    PartsNotFoundError,
    RankDeficientError,
    ShapeMismatchError,
    SingularMatrixError,
    StorageError,
    TableParseError,
    UnsupportedURLError,
)
from jaxwren.linalg import (
    argmin,
    cho_logdet,
    cho_solve,
    cholesky,
    det,
    eigh,
    inv,
    lstsq,
    lu_factor,
    lu_solve,
    map_blocks,
    matmul,
    max,
    mean,
    min,
    nearest_neighbors,
    norm,
    pairwise_sq_distances,
    polar,
    qr,
    randomized_svd,
    slogdet,
    solve,
    solve_triangular,
    std,
    sum,
    svd,
    var,
)
from jaxwren.sharding import default_mesh, default_sharding, load, save
from jaxwren.storage import BigMatrix, copy, from_numpy
from jaxwren.tables import from_csv, from_parquet, iter_table_batches

__version__ = "0.1.0"

__all__ = [
    "BigMatrix",
    "BlockIndexError",
    "BucketNotFoundError",
    "ConcurrentWriteError",
    "ConfigError",
    "CredentialsError",
    "DTypeMismatchError",
    "IncompleteMatrixError",
    "JaxwrenError",
    "ForkError",
    "MatrixChangedError",
    "MatrixExistsError",
    "MatrixNotFoundError",
    "MemoryBudgetError",
    "NonFiniteError",
    "NotPositiveDefiniteError",
    "OutputConflictError",
    "PartsNotFoundError",
    "RankDeficientError",
    "RunReport",
    "RunSpec",
    "ShapeMismatchError",
    "SingularMatrixError",
    "StorageConfig",
    "StorageError",
    "TableParseError",
    "UnsupportedURLError",
    "argmin",
    "cho_logdet",
    "cho_solve",
    "cholesky",
    "det",
    "eigh",
    "enable_compilation_cache",
    "explain",
    "default_mesh",
    "default_sharding",
    "from_csv",
    "copy",
    "from_numpy",
    "from_parquet",
    "inv",
    "iter_table_batches",
    "lax",
    "load",
    "lstsq",
    "lu_factor",
    "lu_solve",
    "map_blocks",
    "matmul",
    "max",
    "mean",
    "min",
    "nearest_neighbors",
    "norm",
    "observe",
    "pairwise_sq_distances",
    "polar",
    "qr",
    "randomized_svd",
    "save",
    "slogdet",
    "solve",
    "solve_triangular",
    "std",
    "sum",
    "svd",
    "var",
]
