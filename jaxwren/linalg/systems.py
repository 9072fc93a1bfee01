"""Public functions for general linear systems: ``solve``, ``lu_solve``, ``inv``,
``slogdet``, ``det`` (the operations are :class:`jaxwren.linalg.lu.LUFactor` and
:class:`jaxwren.linalg.solve.Solve`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxwren.config import RunSpec, StorageConfig, run_spec
from jaxwren.engine.run import run
from jaxwren.errors import ConfigError
from jaxwren.linalg.lu import LUFactor
from jaxwren.linalg.solve import Solve
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = ["det", "inv", "lu_solve", "slogdet", "solve"]


def _spec(where: str, spec: Any, mesh: Any, memory_budget: Any, storage: Any) -> RunSpec:
    return run_spec(where, spec, mesh=mesh, memory_budget=memory_budget, storage=storage)


def _as_matrix(b: Any) -> tuple[Any, bool]:
    vector = not isinstance(b, BigMatrix) and np.ndim(b) == 1
    return (b[:, None] if vector else b), vector


def solve(
    a: Any,
    b: Any,
    out: Any = None,
    *,
    assume_a: str = "gen",
    refine: bool = False,
    mesh: Mesh | None = None,
    memory_budget: int | str | None = None,
    storage: StorageConfig | None = None,
    spec: RunSpec | None = None,
) -> Any:
    """Solves ``a x = b`` (``scipy.linalg.solve`` / ``numpy.linalg.solve``).

    ``assume_a="gen"``: LU with partial pivoting, on CPU devices of one process by the
    in-core tile plan of :func:`jaxwren.lu_factor` then LAPACK ``getrs`` on the host,
    elsewhere the sharded GEPP kernel and two sharded substitutions, one program.
    ``"pos"``: :func:`jaxwren.cholesky` and :func:`jaxwren.cho_solve` (out-of-core when
    ``a`` does not fit).

    ``refine=True`` (float64 data): factors in float32 and refines ``x`` with float64
    residuals until the backward error ``||b - A x|| / (||A|| ||x||)`` is at float64
    level (``sqrt(n) eps``), falling back to a float64 solve when it stalls (on the tile
    plan the float64 residuals come from the float64 panels kept while the float32
    factor ran); the run's
    report (``jw.observe``) gives ``details["refine_iterations"]``, the backward error
    and ``refine_converged``.

    Args:
      a: ``(n, n)`` BigMatrix, URL, jax.Array or numpy array.
      b: ``(n,)`` or ``(n, k)``.
      out: None returns a jax.Array (sharded as far as the mesh divides it); a URL or
        BigMatrix stores the ``(n, k)`` solution.
      assume_a: "gen" or "pos".
      refine: mixed precision, as above.
      mesh, memory_budget, storage, spec: as for :func:`jaxwren.matmul`.

    Raises:
      ShapeMismatchError: ``a`` not square, ``b``'s rows differ.
      ConfigError: ``assume_a`` not "gen"/"pos"; ``refine=True`` on float32 data.
      SingularMatrixError: an exactly zero pivot (names the column).
      NonFiniteError: NaN or Inf in the inputs.
      NotPositiveDefiniteError: ``assume_a="pos"`` and ``a`` not positive definite.
      MemoryBudgetError: ``a`` does not fit in-core (no out-of-core LU solve yet).
    """
    if assume_a not in ("gen", "pos"):
        raise ConfigError(f"solve: assume_a must be 'gen' or 'pos', got {assume_a!r}.")
    if not isinstance(refine, bool):
        raise ConfigError(f"solve: refine must be True or False, got {refine!r}.")
    import jaxwren as jw  # the public Cholesky (its own package)

    bm, vector = _as_matrix(b)
    spec = _spec("solve", spec, mesh, memory_budget, storage)
    x = None
    if refine:
        op = Solve("pos32" if assume_a == "pos" else "gen32")
        x = run(op, (a, bm), out, spec).value
        if not op.details["refine_converged"]:
            x = None  # stalled: the float64 solve below
    if x is None and assume_a == "pos":
        x = jw.cho_solve(jw.cholesky(a, spec=spec), bm, out, spec=spec)
    elif x is None:
        x = run(Solve("gen"), (a, bm), out, spec).value
    return x[:, 0] if vector and out is None else x


def lu_solve(lu_and_piv: Any, b: Any, out: Any = None, *, trans: Any = 0,
             mesh: Mesh | None = None, memory_budget: int | str | None = None,
             storage: StorageConfig | None = None,
             spec: RunSpec | None = None) -> Any:  # fmt: skip
    """Solves ``A x = b`` (``trans``: ``A^T x = b``) from :func:`jaxwren.lu_factor`'s
    ``(lu, piv)`` (``scipy.linalg.lu_solve``); ``lu`` and ``piv`` may be stored
    (BigMatrix), device or host arrays, ``piv`` ``(n,)`` or ``(n, 1)``.

    Raises:
      ConfigError: ``lu_and_piv`` not a pair, a bad ``trans``.
      ShapeMismatchError: ``lu`` not square, ``piv`` not ``n`` integers, ``b``'s rows.
      NonFiniteError: the solution is not finite (a singular factor).
    """
    if not isinstance(lu_and_piv, tuple | list) or len(lu_and_piv) != 2:
        raise ConfigError("lu_solve: pass lu_and_piv as the pair (lu, piv) lu_factor returns.")
    if trans not in (0, 1, 2, "N", "T", "C", False, True):
        raise ConfigError(f"lu_solve: trans must be 0/1/2 or 'N'/'T'/'C', got {trans!r}.")
    lu, piv = lu_and_piv
    if not isinstance(piv, BigMatrix) and np.ndim(piv) == 1:
        piv = piv[:, None]
    bm, vector = _as_matrix(b)
    op = Solve("lu", trans in (1, 2, "T", "C", True), name="lu_solve")
    x = run(op, (lu, piv, bm), out, _spec("lu_solve", spec, mesh, memory_budget, storage)).value
    return x[:, 0] if vector and out is None else x


def inv(a: Any, out: Any = None, *, mesh: Mesh | None = None,
        memory_budget: int | str | None = None,
        storage: StorageConfig | None = None, spec: RunSpec | None = None) -> Any:  # fmt: skip
    """The inverse of a square matrix (``numpy.linalg.inv``): LU with partial pivoting and
    a solve with the identity's columns (made on the devices, never read).

    Raises:
      ShapeMismatchError: ``a`` not square. SingularMatrixError: an exactly zero pivot.
      NonFiniteError: NaN or Inf. MemoryBudgetError: ``a`` does not fit in-core.
    """
    spec = _spec("inv", spec, mesh, memory_budget, storage)
    return run(Solve("inv", name="inv"), (a,), out, spec).value


@jax.jit
def _diagonal(lu: jax.Array) -> jax.Array:
    i = jax.lax.broadcasted_iota(jnp.int32, lu.shape, 0)
    j = jax.lax.broadcasted_iota(jnp.int32, lu.shape, 1)
    return jnp.sum(jnp.where(i == j, lu, 0), axis=1)  # a masked row sum: no gather


def slogdet(a: Any, *, mesh: Mesh | None = None, memory_budget: int | str | None = None,
            storage: StorageConfig | None = None,
            spec: RunSpec | None = None) -> tuple[Any, Any]:  # fmt: skip
    """``(sign, logabsdet)`` of a square matrix (``numpy.linalg.slogdet``), from its LU
    factor: ``sign`` is ``(-1)^(row interchanges)`` times the signs of ``U``'s diagonal,
    ``logabsdet = sum(log |U_ii|)``; a singular matrix gives ``(0.0, -inf)`` as numpy's.

    Returns:
      numpy scalars of the factor's dtype.

    Raises:
      ShapeMismatchError: ``a`` not square. NonFiniteError: NaN or Inf.
      MemoryBudgetError: ``a`` does not fit in-core.
    """
    spec = _spec("slogdet", spec, mesh, memory_budget, storage)
    lu, piv = run(LUFactor(allow_singular=True), (a,), None, spec).value
    d = np.asarray(_diagonal(lu))
    swaps = int(np.count_nonzero(np.asarray(piv) != np.arange(d.shape[0])))
    sign = (-1.0) ** swaps * np.prod(np.sign(d))
    with np.errstate(divide="ignore"):  # a zero pivot: log 0 = -inf, as numpy's
        return d.dtype.type(sign), d.dtype.type(np.sum(np.log(np.abs(d))))


def det(a: Any, **kwargs: Any) -> Any:
    """The determinant (``numpy.linalg.det``): ``sign * exp(logabsdet)`` of
    :func:`slogdet` (keyword arguments as there); 0.0 for a singular matrix."""
    sign, logabs = slogdet(a, **kwargs)
    return sign * np.exp(logabs)
