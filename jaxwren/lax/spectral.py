"""Public polar and symmetric eigendecompositions of sharded matrices (checks, the mesh,
dtypes around :mod:`jaxwren.lax.qdwh` and :mod:`jaxwren.lax.divide_conquer`)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxwren.errors import ConfigError, NonFiniteError, ShapeMismatchError
from jaxwren.lax import qdwh
from jaxwren.lax.api import _place, _result_dtype, _traced, resolve_mesh
from jaxwren.lax.divide_conquer import _prepare, check_square, eigh_sharded, ladder
from jaxwren.lax.eigh_traced import eigh_traced
from jaxwren.lax.layout import block_size
from jaxwren.sharding.lapack_threads import single_threaded_blas
from jaxwren.sharding.mesh import COLS, ROWS

__all__ = ["eigh", "polar"]

_MAX_ITERATIONS = 60


def _qr_r(x: Any) -> Any:
    return jnp.linalg.qr(x, mode="r")  # the dtype of a factorisation of a general matrix


def _iterations(max_iterations: Any, where: str) -> int:
    if max_iterations is None:
        return _MAX_ITERATIONS
    if not isinstance(max_iterations, int | np.integer) or max_iterations < 1:
        raise ConfigError(f"{where}: max_iterations must be a positive int, got "
                          f"{max_iterations!r}.")  # fmt: skip
    return int(max_iterations)


@functools.partial(jax.jit, static_argnames=("mesh", "block", "max_iterations", "shape"))
def _polar(x: jax.Array, mesh: Any, block: int, max_iterations: int,
           shape: tuple[int, int] | None = None) -> tuple:  # fmt: skip
    """QDWH of ``x`` (its top-left ``shape``) padded with zeros to whole shards (zero rows
    and columns stay exactly zero: ``polar([x 0; 0 0]) = ([U 0; 0 0], [H 0; 0 0])``); a
    wide ``x`` through ``x^T`` (padding it in its own orientation would not be exact)."""
    m, n = shape or x.shape
    x = x[:m, :n]
    wide = m < n
    unit = mesh.shape[ROWS] * mesh.shape[COLS]
    t = x.T if wide else x
    t = jnp.pad(t, [(0, -(-d // unit) * unit - d) for d in t.shape])
    u, _, _, ok = qdwh.polar_kernel(t, mesh, block, max_iterations, want_h=False)
    u = u[: max(m, n), : min(m, n)]
    u = qdwh._constrain(u.T if wide else u, mesh)
    h = qdwh._mm(u.T, x, mesh)
    return u, qdwh._constrain((h + qdwh._constrain(h.T, mesh)) / 2, mesh), ok


def polar(x: Any, *, mesh: Any = None, max_iterations: int | None = None,
          block: int | None = None) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """Polar decomposition ``x = U H`` (``scipy.linalg.polar(x, side='right')``) by QDWH,
    jit-able, never gathered.

    ``U`` (``m x n``) has orthonormal columns (rows, when ``m < n``: then computed from
    ``x^T``), ``H = sym(U^T x)`` (``n x n``) is symmetric positive semi-definite. Every
    step is a sharded product and a sharded Cholesky solve (:mod:`jaxwren.lax.qdwh`);
    about 16 steps from ``cond(x) = 1/eps``, more for a singular ``x`` (whose ``U`` is then
    one of the many polar factors: scipy's may differ, ``U H`` does not).

    Args:
      x: ``(m, n)`` array (jax.Array, possibly sharded over a ``('rows', 'cols')`` mesh;
        numpy accepted eagerly).
      mesh: the mesh (default: the argument's, else the context mesh, else all devices).
      max_iterations: the most iterations (default 60).
      block: the Cholesky kernel's block (default: 128, smaller for small ``n``).

    Returns:
      ``(U, H)`` sharded over the mesh.

    Raises:
      ShapeMismatchError: not one non-empty matrix.
      DTypeMismatchError: 16-bit or complex dtypes.
      ConfigError: a mesh without the axes ``('rows', 'cols')``; a bad ``max_iterations``.
      NonFiniteError: eager calls only, when ``x`` holds NaN or Inf.
    """
    where = "jaxwren.lax.polar"
    shape = np.shape(x)
    if len(shape) != 2 or 0 in shape:
        raise ShapeMismatchError(f"{where}: x must be one non-empty (m, n) matrix, got shape "
                                 f"{tuple(shape)}; call once per matrix.")  # fmt: skip
    iters = _iterations(max_iterations, where)
    mesh = resolve_mesh((x,), mesh, where)
    dtype = _result_dtype(_qr_r, (x,), where)
    (xs,) = _place((x,), mesh, dtype)
    k = min(shape)
    if not _traced(x) and not bool(jnp.all(jnp.isfinite(xs))):
        raise NonFiniteError(f"{where}: the input holds NaN or Inf; clean it first.")
    return _polar(xs, mesh, block or block_size(k, mesh), iters)[:2]


def eigh(x: Any, *, symmetrize_input: bool = True, mesh: Any = None,
         termination_size: int = 768, max_iterations: int | None = None,
         seed: int = 0) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """Eigenvalues (ascending) and eigenvectors (columns) of a symmetric sharded matrix
    (``jnp.linalg.eigh`` / ``numpy.linalg.eigh``) by QDWH-eig spectral divide and conquer,
    never gathered: ``x = V diag(w) V^T``.

    Each split is a polar decomposition of ``H - sigma I`` (``sigma`` the median of the
    diagonal) on the mesh and a randomised rank-revealing step; blocks of at most
    ``termination_size`` are solved on one device (:mod:`jaxwren.lax.divide_conquer`).
    Eagerly, a host loop over jitted splits (each reads its rank back), compiled once per
    size on a ladder ``n, ~n/2, ~n/4, ...``; inside ``jit``, one program
    (:mod:`jaxwren.lax.eigh_traced`). Not differentiable.

    Args:
      x: ``(n, n)`` symmetric array (jax.Array, possibly sharded; numpy accepted).
      symmetrize_input: decompose ``(x + x^T) / 2`` (jnp's default); False reads only the
        lower triangle (numpy's ``UPLO='L'``).
      mesh: as for :func:`polar`.
      termination_size: blocks this small are solved by ``jnp.linalg.eigh`` on one device.
      max_iterations: the most QDWH iterations per split (default 60).
      seed: the random sketch's seed (results are deterministic for a seed).

    Returns:
      ``(w, V)``: ``w`` (``n``,) ascending, ``V`` (``n x n``) orthonormal, sharded.

    Raises:
      ShapeMismatchError: not one square matrix.
      DTypeMismatchError: 16-bit or complex dtypes.
      ConfigError: a bad mesh or ``termination_size``.
      NonFiniteError: eager calls only, when the input holds NaN or Inf (traced: NaN
        results, as ``jnp.linalg.eigh``'s).
    """
    where = "jaxwren.lax.eigh"
    check_square(x, where)
    if not isinstance(termination_size, int | np.integer) or termination_size < 2:
        raise ConfigError(f"{where}: termination_size must be an int >= 2, got "
                          f"{termination_size!r}.")  # fmt: skip
    iters = _iterations(max_iterations, where)
    mesh = resolve_mesh((x,), mesh, where)
    dtype = _result_dtype(jnp.linalg.cholesky, (x,), where)
    (xs,) = _place((x,), mesh, dtype)
    if _traced(x):  # one program: the agenda in a while_loop (jaxwren.lax.eigh_traced)
        n = xs.shape[0]
        rungs = ladder(n, mesh, int(termination_size))
        h = _prepare(xs, n, rungs[0], mesh, bool(symmetrize_input))
        w, v, _ = eigh_traced(h, jax.random.key(int(seed)), mesh, rungs,
                              int(termination_size), iters, n)  # fmt: skip
        return w, v
    with single_threaded_blas():  # the leaves' LAPACK on emulated CPU devices
        w, v, _ = eigh_sharded(xs, mesh, symmetrize=bool(symmetrize_input),
                               termination=int(termination_size), max_iterations=iters,
                               seed=int(seed))  # fmt: skip
    return w, v
