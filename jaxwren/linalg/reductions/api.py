"""numpy's reductions of a matrix: sum, mean, min, max, var, std and norm.

Each is a short call of :class:`~jaxwren.linalg.reductions.op.Reduce` on the engine (one
streamed pass along the reduced axis; ``axis=None`` reduces along the longer axis and
combines the short vector of per-line statistics on the host) and returns numpy results
with numpy's dtypes: a numpy scalar for the whole matrix, else a 1-D numpy array.
"""

from __future__ import annotations

import builtins
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxwren.config import RunSpec, run_spec
from jaxwren.dtypes import is_float
from jaxwren.engine.run import run
from jaxwren.errors import ConfigError, ShapeMismatchError
from jaxwren.linalg.reductions.op import Reduce, Stat, acc_dtype
from jaxwren.linalg.svd import svd
from jaxwren.sharding.multihost import to_host
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = ["max", "mean", "min", "norm", "std", "sum", "var"]


def _one_axis(axis: Any, where: str) -> int:
    ok = isinstance(axis, int | np.integer) and not isinstance(axis, bool)
    if not ok or not -2 <= axis <= 1:
        raise ConfigError(
            f"{where}: axis={axis!r} is out of range for a 2-D matrix; use 0 (down each "
            "column), 1 (along each row), -2, -1, or None (the whole matrix)."
        )
    return int(axis) % 2


def _axes(axis: Any, where: str) -> tuple[int, ...]:
    """``axis`` as the reduced axes in the caller's order: ``(0,)``, ``(1,)`` or both."""
    if axis is None:
        return (0, 1)
    if not isinstance(axis, tuple | list):
        return (_one_axis(axis, where),)
    axes = tuple(_one_axis(x, where) for x in axis)
    if not axes or len(set(axes)) != len(axes):
        raise ConfigError(f"{where}: axis={axis!r} must name 0, 1 or both once each "
                          "(or be None for the whole matrix).")  # fmt: skip
    return axes


def _matrix(a: Any, where: str) -> Any:
    """``a`` (a URL opened as a BigMatrix; a numpy array if it is neither a matrix nor an
    array), refused when empty."""
    if isinstance(a, str | os.PathLike):
        a = BigMatrix.open(a)
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        a = np.asarray(a)
    if len(a.shape) != 2:
        raise ShapeMismatchError(
            f"{where}: a must be a 2-D matrix, got shape {tuple(a.shape)}; reshape a vector "
            "with x.reshape(-1, 1), or use numpy for it."
        )
    if 0 in a.shape:
        raise ShapeMismatchError(
            f"{where}: a has shape {tuple(a.shape)}, so the reduction runs over an empty "
            "axis and has no value (numpy gives nan, 0 or an error depending on the "
            "function); check how a was built, or skip the call when a.size == 0."
        )
    return a


def _stats(where: str, a: Any, stat: Stat, axis: int, acc: Any, spec: RunSpec) -> list[np.ndarray]:
    return run(Reduce(stat, axis, acc, where), (a,), None, spec).value


def _long(a: Any) -> int:
    """For the whole matrix: reduce along the longer axis (the short vector is combined
    on the host)."""
    return 0 if a.shape[0] >= a.shape[1] else 1


def _shaped(value: Any, dtype: np.dtype, axes: tuple[int, ...], keepdims: bool) -> Any:
    """numpy's result: a scalar of ``dtype`` for the whole matrix, else a 1-D array;
    ``keepdims`` keeps the reduced axes with length 1."""
    value = np.asarray(value).astype(dtype)
    if keepdims:
        shape = (1, 1) if len(axes) == 2 else ((1, -1) if axes == (0,) else (-1, 1))
        return value.reshape(shape)
    return value[()] if len(axes) == 2 else value


def _float_dtype(dtype: np.dtype) -> np.dtype:
    """numpy's result dtype of mean/var/norm: floats keep theirs, others the default."""
    return dtype if is_float(dtype) else np.dtype(jax.dtypes.canonicalize_dtype(np.float64))


def sum(a: Any, axis: Any = None, *, keepdims: bool = False, mesh: Mesh | None = None,
        memory_budget: int | str | None = None, progress: bool | None = None,
        prefetch: int | None = None,
        spec: RunSpec | None = None) -> Any:  # fmt: skip
    """Sum of the entries (``numpy.sum(a, axis)``), streamed tile by tile.

    Args:
      a: ``(m, n)`` BigMatrix (a ``.T`` view works), jax.Array or numpy array.
      axis: None (all entries), 0 (each column), 1 (each row), -2, -1, or a tuple.
      keepdims: keep the reduced axes with length 1, as numpy.
      mesh, memory_budget, progress, prefetch, spec: as in :func:`jaxwren.matmul`.

    Returns:
      A numpy scalar (``axis=None``) or 1-D numpy array, with numpy's dtype: integers
      and bools sum to int64 (unsigned: uint64; int32/uint32 while JAX runs 32-bit), floats
      keep theirs (accumulated in float64 with x64, else float32 with Kahan compensation).

    Raises:
      ShapeMismatchError: ``a`` is empty (a reduction over an empty axis) or not 2-D.
      ConfigError: ``axis`` out of range.
      MemoryBudgetError: no tiling fits ``memory_budget`` (checked before anything runs).
    """
    where, axes = "sum", _axes(axis, "sum")
    a = _matrix(a, where)
    stat = Stat("sum")
    acc = acc_dtype(stat, a.dtype, where=where, exact_ints=True)
    spec = run_spec("sum", spec, mesh=mesh, memory_budget=memory_budget,
                    progress=progress, prefetch=prefetch)  # fmt: skip
    red = axes[0] if len(axes) == 1 else _long(a)
    (s,) = _stats(where, a, stat, red, acc, spec)
    out = np.dtype(a.dtype) if is_float(a.dtype) else acc
    return _shaped(s if len(axes) == 1 else np.sum(s, dtype=acc), out, axes, keepdims)


def mean(a: Any, axis: Any = None, *, keepdims: bool = False, mesh: Mesh | None = None,
         memory_budget: int | str | None = None, progress: bool | None = None,
         prefetch: int | None = None, spec: RunSpec | None = None) -> Any:  # fmt: skip
    """Mean of the entries (``numpy.mean(a, axis)``), streamed tile by tile.

    Args: as :func:`sum`.

    Returns:
      A numpy scalar or 1-D numpy array: floats keep their dtype (accumulated in float64
      with x64), integers and bools give float64 (float32 while JAX runs 32-bit).

    Raises: as :func:`sum`.
    """
    where, axes = "mean", _axes(axis, "mean")
    a = _matrix(a, where)
    stat = Stat("sum")
    acc = acc_dtype(stat, a.dtype, where=where)
    spec = run_spec("mean", spec, mesh=mesh, memory_budget=memory_budget,
                    progress=progress, prefetch=prefetch)  # fmt: skip
    red = axes[0] if len(axes) == 1 else _long(a)
    (s,) = _stats(where, a, stat, red, acc, spec)
    value = s / a.shape[red] if len(axes) == 1 else np.sum(s) / (a.shape[0] * a.shape[1])
    return _shaped(value, _float_dtype(np.dtype(a.dtype)), axes, keepdims)


def _extreme_of(kind: str, a: Any, axis: Any, keepdims: bool, spec: RunSpec) -> Any:
    axes = _axes(axis, kind)
    a = _matrix(a, kind)
    stat = Stat(kind)
    acc = acc_dtype(stat, a.dtype, where=kind)
    red = axes[0] if len(axes) == 1 else _long(a)
    (v,) = _stats(kind, a, stat, red, acc, spec)
    if len(axes) == 2:
        v = np.min(v) if kind == "min" else np.max(v)  # NaN propagates, as in numpy
    return _shaped(v, np.dtype(a.dtype), axes, keepdims)


def min(a: Any, axis: Any = None, *, keepdims: bool = False, mesh: Mesh | None = None,
        memory_budget: int | str | None = None, progress: bool | None = None,
        prefetch: int | None = None,
        spec: RunSpec | None = None) -> Any:  # fmt: skip
    """Minimum of the entries (``numpy.min(a, axis)``; NaN propagates), streamed.

    Args: as :func:`sum`.

    Returns:
      A numpy scalar or 1-D numpy array of ``a``'s dtype.

    Raises: as :func:`sum`.
    """
    spec = run_spec("min", spec, mesh=mesh, memory_budget=memory_budget,
                    progress=progress, prefetch=prefetch)  # fmt: skip
    return _extreme_of("min", a, axis, keepdims, spec)


def max(a: Any, axis: Any = None, *, keepdims: bool = False, mesh: Mesh | None = None,
        memory_budget: int | str | None = None, progress: bool | None = None,
        prefetch: int | None = None,
        spec: RunSpec | None = None) -> Any:  # fmt: skip
    """Maximum of the entries (``numpy.max(a, axis)``; NaN propagates), streamed.

    Args: as :func:`sum`.

    Returns:
      A numpy scalar or 1-D numpy array of ``a``'s dtype.

    Raises: as :func:`sum`.
    """
    spec = run_spec("max", spec, mesh=mesh, memory_budget=memory_budget,
                    progress=progress, prefetch=prefetch)  # fmt: skip
    return _extreme_of("max", a, axis, keepdims, spec)


def var(a: Any, axis: Any = None, *, ddof: int | float = 0, keepdims: bool = False,
        mesh: Mesh | None = None, memory_budget: int | str | None = None,
        progress: bool | None = None, prefetch: int | None = None,
        spec: RunSpec | None = None) -> Any:  # fmt: skip
    """Variance of the entries (``numpy.var(a, axis, ddof=ddof)``), streamed in one pass.

    Each tile's mean and sum of squared deviations (two-pass, in float64 with x64) are
    combined with the carried ones by Chan et al.'s formula (never E[x^2] - E[x]^2).

    Args:
      a, axis, keepdims, mesh, memory_budget, progress, prefetch, spec: as :func:`sum`.
      ddof: delta degrees of freedom: the divisor is ``N - ddof`` (N entries reduced).

    Returns:
      A numpy scalar or 1-D numpy array, dtypes as :func:`mean`.

    Raises:
      ConfigError: ``ddof`` is not a number, or ``N - ddof <= 0`` (numpy would give inf
        or nan with a warning); ``axis`` out of range.
      ShapeMismatchError, MemoryBudgetError: as :func:`sum`.
    """
    where, axes = "var", _axes(axis, "var")
    a = _matrix(a, where)
    count = a.shape[axes[0]] if len(axes) == 1 else a.shape[0] * a.shape[1]
    if not isinstance(ddof, int | float | np.integer | np.floating) or isinstance(ddof, bool):
        raise ConfigError(f"var: ddof={ddof!r} must be a number (0: population, 1: sample).")
    if count - ddof <= 0:
        raise ConfigError(
            f"var: ddof={ddof!r} leaves no degrees of freedom for {count} values per "
            f"result (the divisor N - ddof = {count - ddof}); use ddof < {count}."
        )
    stat = Stat("moments")
    acc = acc_dtype(stat, a.dtype, where=where)
    spec = run_spec("var", spec, mesh=mesh, memory_budget=memory_budget,
                    progress=progress, prefetch=prefetch)  # fmt: skip
    red = axes[0] if len(axes) == 1 else _long(a)
    mu, m2 = _stats(where, a, stat, red, acc, spec)
    if len(axes) == 2:  # every line holds a.shape[red] entries: combine the lines
        whole = np.mean(mu)
        m2 = np.sum(m2) + a.shape[red] * np.sum(np.square(mu - whole))
    return _shaped(m2 / (count - ddof), _float_dtype(np.dtype(a.dtype)), axes, keepdims)


def std(a: Any, axis: Any = None, *, ddof: int | float = 0, keepdims: bool = False,
        mesh: Mesh | None = None, memory_budget: int | str | None = None,
        progress: bool | None = None, prefetch: int | None = None,
        spec: RunSpec | None = None) -> Any:  # fmt: skip
    """Standard deviation (``numpy.std(a, axis, ddof=ddof)``): the square root of
    :func:`var`, with its arguments, result dtypes and errors."""
    v = var(a, axis, ddof=ddof, keepdims=keepdims, mesh=mesh, memory_budget=memory_budget,
            progress=progress, prefetch=prefetch, spec=spec)  # fmt: skip
    return np.sqrt(v)


def _order(ord: Any, where: str) -> Any:
    """``ord`` as numpy takes it: None, a string, or a float."""
    if ord is None or isinstance(ord, str):
        return ord
    if isinstance(ord, int | float | np.integer | np.floating) and not isinstance(ord, bool):
        return float(ord)
    raise ConfigError(f"{where}: ord={ord!r} must be None, a number or a string as in "
                      "numpy.linalg.norm.")  # fmt: skip


def _vector_norm(a: Any, ord: Any, axis: int, spec: RunSpec) -> np.ndarray:
    """numpy.linalg.norm's vector norms along ``axis`` (in the accumulation dtype)."""
    if isinstance(ord, str):
        raise ConfigError(
            f"norm: ord={ord!r} is a matrix norm, invalid for vectors (axis={axis}); use a "
            "number (1, 2, inf, -inf, 0, p) or axis=None for the matrix norms."
        )
    ord = 2.0 if ord is None else ord
    kind = {2.0: "sumsq", 1.0: "sumabs", 0.0: "nonzero", np.inf: "absmax", -np.inf: "absmin"}
    stat = Stat(kind.get(ord, "sumpow"), ord if ord not in kind else 0.0)
    acc = acc_dtype(stat, a.dtype, where="norm")
    (v,) = _stats("norm", a, stat, axis, acc, spec)
    if ord == 2:
        return np.sqrt(v)
    return v if stat.kind != "sumpow" else v ** (1.0 / ord)


def _singular_values(a: Any, spec: RunSpec) -> np.ndarray:
    m, n = a.shape
    if builtins.min(m, n) > 4096:
        raise ConfigError(
            f"norm: ord 2, -2 and 'nuc' need the singular values, computed here for at most "
            f"4096 columns (or rows), but a has shape {(m, n)}; use ord='fro' (an upper "
            "bound of the 2-norm) or the top singular values of jw.randomized_svd."
        )
    s = svd(a if m >= n else a.T, compute_uv=False, spec=spec)
    return np.asarray(to_host(s), dtype=np.float64)


def _matrix_norm(a: Any, ord: Any, swapped: bool, spec: RunSpec) -> Any:
    """numpy.linalg.norm's matrix norms (``swapped``: ``axis=(1, 0)``, as numpy)."""
    if ord in (None, "fro", "f"):
        (v,) = _stats("norm", a, Stat("sumsq"), _long(a), acc_dtype(Stat("sumsq"), a.dtype,
                                                                   where="norm"), spec)  # fmt: skip
        return np.sqrt(np.sum(v))
    if ord in (1.0, -1.0, np.inf, -np.inf):
        axis = int(ord in (np.inf, -np.inf)) ^ int(swapped)  # ord 1: column sums (reduce axis 0)
        stat = Stat("sumabs")
        (v,) = _stats("norm", a, stat, axis, acc_dtype(stat, a.dtype, where="norm"), spec)
        return np.max(v) if ord > 0 else np.min(v)
    if ord in (2.0, -2.0, "nuc"):
        s = _singular_values(a, spec)
        return np.sum(s) if ord == "nuc" else (np.max(s) if ord > 0 else np.min(s))
    raise ConfigError(
        f"norm: invalid norm order {ord!r} for matrices; use None or 'fro', 'nuc', 1, -1, "
        "2, -2, inf or -inf (numpy.linalg.norm's), or axis=0/1 for vector norms."
    )


def norm(a: Any, ord: Any = None, axis: Any = None, *, keepdims: bool = False,
         mesh: Mesh | None = None, memory_budget: int | str | None = None,
         progress: bool | None = None, prefetch: int | None = None,
         spec: RunSpec | None = None) -> Any:  # fmt: skip
    """Matrix or vector norm (``numpy.linalg.norm(a, ord, axis)`` for 2-D ``a``), streamed.

    Args:
      a: ``(m, n)`` BigMatrix (a ``.T`` view works), jax.Array or numpy array.
      ord: with ``axis=None`` (or both axes) a matrix norm: None or ``'fro'`` (Frobenius),
        1 / -1 (max / min column sum of |a|), ``inf`` / ``-inf`` (max / min row sum),
        2 / -2 / ``'nuc'`` (largest / smallest / sum of the singular values, by
        :func:`jaxwren.svd`, at most 4096 columns or rows). With ``axis=0`` or ``1`` the
        norm of each column or row: None or 2, 1, ``inf``, ``-inf``, 0 (count of
        non-zeros), any other p (``sum(|x|**p)**(1/p)``).
      axis: None, 0, 1, -2, -1, or a tuple of both axes (``(1, 0)`` swaps 1 and inf).
      keepdims: keep the reduced axes with length 1, as numpy.
      mesh, memory_budget, progress, prefetch, spec: as in :func:`jaxwren.matmul`.

    Returns:
      A numpy scalar or 1-D numpy array; floats keep their dtype, integers and bools
      give float64 (float32 while JAX runs 32-bit), as numpy.

    Raises:
      ConfigError: an unknown ``ord`` (a ValueError, as numpy's), a matrix order with an
        int ``axis``, ``axis`` out of range, or ord 2/-2/'nuc' beyond 4096 columns and rows.
      ShapeMismatchError: ``a`` is empty or not 2-D.
      NonFiniteError: ord 2, -2 or 'nuc' of a matrix holding NaN or Inf.
      MemoryBudgetError: no tiling fits ``memory_budget`` (checked before anything runs).
    """
    axes, ord = _axes(axis, "norm"), _order(ord, "norm")
    a = _matrix(a, "norm")
    spec = run_spec("norm", spec, mesh=mesh, memory_budget=memory_budget,
                    progress=progress, prefetch=prefetch)  # fmt: skip
    if len(axes) == 1:
        value = _vector_norm(a, ord, axes[0], spec)
    else:
        value = _matrix_norm(a, ord, axes == (1, 0), spec)
    return _shaped(value, _float_dtype(np.dtype(a.dtype)), axes, keepdims)
