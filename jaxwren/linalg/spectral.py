"""Store-backed polar decomposition, symmetric eigendecomposition and SVD of any shape.

Each is one pipeline step: the whole matrix is read once onto the mesh (``P('rows',
'cols')``, zero padded to whole shards) and the sharded kernels of :mod:`jaxwren.lax` run
on it (QDWH for :func:`polar`, QDWH-eig for :func:`eigh`; :func:`svd_general` is ``A = U_p
H`` and ``H = V diag(w) V^T``, so ``A = (U_p V) diag(w) V^T``); the factors are written
to the store or returned. Every step is a product or a Cholesky solve on the devices, but
the plan holds the matrix and its work arrays at once. On CPU devices :func:`eigh` and
:func:`svd_general` hand the matrix to the host's LAPACK instead
(:mod:`jaxwren.linalg.spectral_host` chooses, and says why). A stored matrix whose plan
exceeds the budget, with ``out`` a URL prefix, takes the out-of-core route of
:mod:`jaxwren.linalg.spectral_ooc` instead (:func:`polar` and :func:`eigh`: QDWH and
QDWH-eig as stored products, Cholesky factors and triangular solves under ``OUT/work``,
resumable; the run report names it); with ``out=None`` or an unstored matrix it is refused
with :class:`~jaxwren.errors.MemoryBudgetError` naming that fix before anything runs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.config import RunSpec, StorageConfig, run_spec
from jaxwren.dtypes import result_dtype
from jaxwren.engine.memory import Buffer, Footprint
from jaxwren.engine.plan import Plan, Read, Step, Write
from jaxwren.engine.problem import Candidate, Output, Problem, Resume, Targets
from jaxwren.engine.run import run
from jaxwren.errors import ConfigError, NonFiniteError, ShapeMismatchError
from jaxwren.linalg import spectral_host as route
from jaxwren.linalg import spectral_ooc
from jaxwren.linalg.base import Op
from jaxwren.linalg.common import round_up, trim
from jaxwren.sharding.mesh import COLS, ROWS, default_sharding

__all__ = ["Eigh", "Polar", "SpectralSVD", "eigh", "polar", "svd_general"]

_WORK = {"polar": 12, "eigh": 16, "svd": 20}  # matrix-sized arrays a kernel holds at once


def _padded(shape: tuple[int, int], mesh: Mesh) -> tuple[int, int]:
    unit = mesh.shape[ROWS] * mesh.shape[COLS]
    return round_up(shape[0], unit), round_up(shape[1], unit)


def _iterations(value: Any, where: str) -> int:
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not ok or value < 1:
        raise ConfigError(f"{where}: max_iterations must be a positive int, got {value!r}.")
    return int(value)


def _finite(where: str, outs: tuple) -> None:
    xp = lambda o: np if isinstance(o, np.ndarray) else jnp  # noqa: E731  (host: no compile)
    if not all(bool(xp(o).all(xp(o).isfinite(o))) for o in outs):
        raise NonFiniteError(f"{where}: a holds NaN or Inf (checked before and after the "
                             "factorisation); clean it first.")  # fmt: skip


class _Whole(Op):
    """One step on the whole matrix; subclasses give the outputs and the kernel."""

    operand_names = ("a",)
    square = False

    def __init__(self, max_iterations: Any = 60, algorithm: Any = None, **params: Any) -> None:
        self.max_iterations = _iterations(max_iterations, self.name)
        self.algorithm = route.check_algorithm(algorithm, self.name)
        self.params = params

    def outputs(self, m: int, n: int, dtype: np.dtype) -> tuple[Output, ...]:
        raise NotImplementedError

    def kernel(self, x: jax.Array, shape: tuple[int, int], mesh: Mesh) -> tuple:
        raise NotImplementedError

    def check(self, operands: Any, mesh: Mesh) -> Problem:
        (a,) = operands
        m, n = a.shape
        if self.square and m != n:
            raise ShapeMismatchError(
                f"{self.name}: a must be square (n, n), got shape {tuple(a.shape)}; the "
                "eigendecomposition is defined for symmetric matrices (for a general one "
                "use jw.svd)."
            )
        dtype = result_dtype(a.dtype, where=self.name, policy="factor")
        params = (self.max_iterations, *sorted(self.params.items()))
        params += (("algorithm", self.algorithm),) if self.algorithm else ()
        return Problem((a,), self.outputs(m, n, dtype), params, mesh, data=(m, n))

    def tilings(self, problem: Problem, targets: Targets) -> list[Candidate]:
        mp, np_ = _padded(problem.data, problem.mesh)
        big, dtype = max(mp, np_), problem.outputs[0].dtype
        whole = Buffer((mp, np_), dtype, NamedSharding(problem.mesh, P(ROWS, COLS)))
        work = _WORK[self.kind] * big * big * dtype.itemsize  # the kernels' work arrays
        qdwh = Candidate(None, Footprint(reads=(whole,), extra=work), 0, True)
        if self.kind not in route.HOST:
            return [qdwh]
        first, _ = route.select(self.kind, problem.mesh, self.algorithm)
        host = Candidate(first, Footprint(reads=(whole,), extra=route.HOST_WORK[self.kind]
                                          * big * big * dtype.itemsize), 0, True)  # fmt: skip
        if self.algorithm is not None:  # forced: that one only
            return [host if first != route.QDWH else qdwh]
        if first == route.QDWH:  # accelerators: the host is no fallback for the budget
            return [qdwh]
        return [host, dataclasses.replace(qdwh, cost=1)]

    def plan(self, problem: Problem, tiling: Any, targets: Targets, resume: Resume,
             prefetch: int) -> Plan:  # fmt: skip
        (a,), mesh, (m, n) = problem.sources, problem.mesh, problem.data
        dtype = problem.outputs[0].dtype
        read = Read(a, (0, m, 0, n), _padded((m, n), mesh), NamedSharding(mesh, P(ROWS, COLS)),
                    dtype)  # fmt: skip
        keys = [resume.key(f"whole-{o.name}") for o in problem.outputs]
        writes = tuple(Write(targets[o.name], (0, 0), o.shape, record=k)
                       for o, k in zip(problem.outputs, keys, strict=True))  # fmt: skip

        def kernel(_carry: Any, x: jax.Array) -> tuple:
            if tiling is not None:  # the host route (jaxwren.linalg.spectral_host)
                return None, route.host_kernel(self.kind, x, (m, n), dtype, self.params,
                                               functools.partial(_finite, self.name))  # fmt: skip
            _finite(self.name, (x,))  # before anything compiles or runs
            return None, self.kernel(x, (m, n), mesh)

        step = Step((read,), kernel, writes,
                    label=self.name, check=functools.partial(_finite, self.name),
                    skip=all(resume.done(k) for k in keys))  # fmt: skip
        why = ""
        if self.kind in route.HOST:
            why = route.reason(self.kind, tiling or route.QDWH, mesh, self.algorithm)
        where = "on the host" if tiling is not None else "on the mesh"
        return Plan(self.name, [step], None, f"in-core, the whole matrix {where}", reason=why)

    def finish(self, problem: Problem, returned: list, targets: Targets) -> Any:
        values = []
        for i, o in enumerate(problem.outputs):
            got = targets.get(o.name)
            if got is None:  # a host route's results are host arrays
                sharding = default_sharding(o.shape, problem.mesh)
                got = trim(jnp.asarray(returned[i]), o.shape, sharding)
            elif o.shape[0] == 1:  # a vector comes back as an array, as jw.svd's S
                got = got.to_jax()
            values.append(got[0] if o.shape[0] == 1 and isinstance(got, jax.Array) else got)
        return values[0] if len(values) == 1 else tuple(values)


class Polar(_Whole):
    """``A = U H`` by QDWH (:func:`jaxwren.lax.polar`)."""

    name, kind = "polar", "polar"

    def outputs(self, m: int, n: int, dtype: np.dtype) -> tuple[Output, ...]:
        return Output("U", (m, n), dtype), Output("H", (n, n), dtype)

    def kernel(self, x: jax.Array, shape: tuple[int, int], mesh: Mesh) -> tuple:
        from jaxwren.lax.layout import block_size
        from jaxwren.lax.spectral import _polar

        u, h, _ = _polar(x, mesh, block_size(min(shape), mesh), self.max_iterations, shape)
        return u, h


def _eigh_call(h: jax.Array, n: int, mesh: Mesh, iters: int, params: dict) -> tuple:
    from jaxwren.lax.divide_conquer import eigh_sharded

    return eigh_sharded(h, mesh, n=n, max_iterations=iters, where="eigh", **params)[:2]


class Eigh(_Whole):
    """``A = V diag(w) V^T`` by QDWH-eig (:func:`jaxwren.lax.eigh`)."""

    name, kind, square = "eigh", "eigh", True

    def outputs(self, m: int, n: int, dtype: np.dtype) -> tuple[Output, ...]:
        return Output("w", (1, n), dtype, (1, n)), Output("V", (n, n), dtype)

    def kernel(self, x: jax.Array, shape: tuple[int, int], mesh: Mesh) -> tuple:
        w, v = _eigh_call(x, shape[0], mesh, self.max_iterations, self.params)
        return w[None, :], v


@functools.partial(jax.jit, static_argnames=("wide", "mesh"))
def _assemble(up: jax.Array, w: jax.Array, v: jax.Array, wide: bool, mesh: Mesh) -> tuple:
    """``U, S, Vt`` (descending) from ``A' = U_p H`` and ``H = V diag(w) V^T``."""
    w, v = w[::-1], v[:, ::-1]
    left = jnp.matmul(up, v, precision=jax.lax.Precision.HIGHEST) * jnp.sign(w + (w == 0))
    s = jnp.abs(w)[None, :]
    u, vt = (v, left.T) if wide else (left, v.T)
    c = functools.partial(jax.lax.with_sharding_constraint)
    return (c(u, default_sharding(u.shape, mesh)), s, c(vt, default_sharding(vt.shape, mesh)))


class SpectralSVD(_Whole):
    """Thin SVD of any shape through the polar decomposition and :class:`Eigh` of ``H``."""

    name, kind = "svd", "svd"

    def outputs(self, m: int, n: int, dtype: np.dtype) -> tuple[Output, ...]:
        k = min(m, n)
        s = Output("S", (1, k), dtype, (1, k))
        if not self.params.get("compute_uv", True):
            return (s,)
        return Output("U", (m, k), dtype), s, Output("Vt", (k, n), dtype)

    def kernel(self, x: jax.Array, shape: tuple[int, int], mesh: Mesh) -> tuple:
        from jaxwren.lax.layout import block_size
        from jaxwren.lax.spectral import _polar

        m, n = shape
        wide, k = m < n, min(m, n)
        t = x.T if wide else x
        up, h, _ = _polar(t, mesh, block_size(k, mesh), self.max_iterations, (max(m, n), k))
        params = {k_: v for k_, v in self.params.items() if k_ != "compute_uv"}
        w, v = _eigh_call(h, k, mesh, self.max_iterations, params)
        u, s, vt = _assemble(up, w, v, wide, mesh)
        return (u, s, vt) if self.params.get("compute_uv", True) else (s,)


def polar(a: Any, out: Any = None, *, max_iterations: int = 60, mesh: Mesh | None = None,
          memory_budget: int | str | None = None, block_shape: tuple[int, int] | None = None,
          storage: StorageConfig | None = None, progress: bool | None = None,
          spec: RunSpec | None = None) -> Any:  # fmt: skip
    """Polar decomposition ``a = U H`` (``scipy.linalg.polar(a)``) by QDWH on the mesh.

    ``U`` (``m x n``) has orthonormal columns (rows when ``m < n``), ``H`` (``n x n``) is
    symmetric positive semi-definite. The matrix is read once onto the devices and
    :func:`jaxwren.lax.polar` runs on it: sharded products and Cholesky solves only.

    Args:
      a: ``(m, n)`` BigMatrix, jax.Array or numpy array.
      out: None to return jax.Arrays; a URL prefix stores ``OUT/U`` and ``OUT/H``.
      max_iterations: the most QDWH iterations.
      mesh, memory_budget, block_shape, storage, progress, spec: as in
        :func:`jaxwren.matmul`.

    Returns:
      ``(U, H)``: jax.Arrays sharded over the mesh, or BigMatrix handles when stored.

    Raises:
      ShapeMismatchError: ``a`` is empty or not 2-D.
      NonFiniteError: ``a`` holds NaN or Inf.
      MemoryBudgetError: the matrix and its work arrays (about 12 ``max(m, n)^2``
        elements) exceed ``memory_budget`` and ``out`` is None or ``a`` is not stored
        (stored with ``out=URL``: out of core, :mod:`jaxwren.linalg.spectral_ooc`).
    """
    spec = run_spec("polar", spec, mesh=mesh, memory_budget=memory_budget, storage=storage,
                    progress=progress, block_shape=block_shape)  # fmt: skip
    op = Polar(max_iterations)
    if spectral_ooc.route(op, a, out, spec):  # over the budget, stored: out of core
        return spectral_ooc.polar(a, out, spec, op.max_iterations)
    return run(op, (a,), out, spec).value


def eigh(a: Any, out: Any = None, *, symmetrize_input: bool = True,
         algorithm: str | None = None, termination_size: int = 768,
         max_iterations: int = 60, mesh: Mesh | None = None,
         memory_budget: int | str | None = None, block_shape: tuple[int, int] | None = None,
         storage: StorageConfig | None = None, progress: bool | None = None,
         spec: RunSpec | None = None) -> Any:  # fmt: skip
    """Eigenvalues (ascending) and eigenvectors of a symmetric matrix
    (``numpy.linalg.eigh(a)``): LAPACK ``syevd`` on the host (CPU devices) or QDWH-eig
    spectral divide and conquer on the mesh (accelerators).

    The route (:mod:`jaxwren.linalg.spectral_host`, ``RunReport.reason`` says why): on CPU
    devices of one process the devices are host memory and LAPACK's tridiagonal route
    (about ``9 n^3`` flops, all host cores) beats QDWH-eig's tens of ``n^3`` on the same
    cores, so the matrix goes to the host's LAPACK (one copy); elsewhere QDWH keeps it
    sharded. :func:`jaxwren.lax.eigh` (inside ``jit``) is always QDWH.

    Args:
      a: ``(n, n)`` symmetric BigMatrix, jax.Array or numpy array.
      out: None to return jax.Arrays; a URL prefix stores ``OUT/w`` (``(1, n)``) and
        ``OUT/V``.
      symmetrize_input: decompose ``(a + a^T) / 2``; False reads only the lower triangle
        (numpy's ``UPLO='L'``).
      algorithm: None (automatic, as above), ``"qdwh"`` (on the mesh) or ``"host"``
        (LAPACK ``syevd`` on the host, one gather of the matrix on accelerators).
      termination_size, max_iterations: as in :func:`jaxwren.lax.eigh` (QDWH only).
      mesh, memory_budget, block_shape, storage, progress, spec: as in
        :func:`jaxwren.matmul`.

    Returns:
      ``(w, V)``: ``w`` a 1-D jax.Array (ascending), ``V`` a jax.Array or BigMatrix.

    Raises:
      ShapeMismatchError: ``a`` is not square.
      NonFiniteError: ``a`` holds NaN or Inf.
      ConfigError: a bad ``algorithm``, ``termination_size`` or ``max_iterations``.
      MemoryBudgetError: the matrix and its work arrays (QDWH: about 16 ``n^2`` elements)
        exceed ``memory_budget`` and ``out`` is None or ``a`` is not stored (stored
        with ``out=URL``: out of core, :mod:`jaxwren.linalg.spectral_ooc`).
    """
    op = Eigh(max_iterations, algorithm, symmetrize=bool(symmetrize_input),
              termination=_termination(termination_size))  # fmt: skip
    spec = run_spec("eigh", spec, mesh=mesh, memory_budget=memory_budget, storage=storage,
                    progress=progress, block_shape=block_shape)  # fmt: skip
    if spectral_ooc.route(op, a, out, spec):  # over the budget, stored: out of core
        return spectral_ooc.eigh(a, out, spec, symmetrize=op.params["symmetrize"],
                                 termination=op.params["termination"],
                                 max_iterations=op.max_iterations)  # fmt: skip
    return run(op, (a,), out, spec).value


def _termination(value: Any) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 2:
        raise ConfigError(f"eigh: termination_size must be an int >= 2, got {value!r}.")
    return int(value)


def svd_general(a: Any, out: Any, spec: RunSpec, compute_uv: bool,
                algorithm: str | None = None) -> Any:  # fmt: skip
    """:func:`jaxwren.svd` for shapes TSQR does not take: polar, then eigh of ``H`` (or
    LAPACK on the host, :mod:`jaxwren.linalg.spectral_host`)."""
    op = SpectralSVD(algorithm=algorithm, compute_uv=bool(compute_uv), symmetrize=True,
                     termination=768)  # fmt: skip
    return run(op, (a,), out, spec).value
