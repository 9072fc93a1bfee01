"""Triangular solves (blocked substitution on the engine), cho_solve and log-determinants.

In-core (both operands and the solution fit the budget): one step calling the sharded
substitution kernel of :mod:`jaxwren.lax` (the one ``jw.lax.solve_triangular`` traces:
one kernel, two entries; a ``fori_loop`` over block columns, compiled once). n = 4096,
512 right-hand sides, f64, 8 CPU devices (loaded box): 0.31 s, against 4.9 s for the
streamed plan's single row tile (XLA's triangular solve of the whole matrix on every
device) and 0.36 s for scipy. Otherwise the streamed plan below.

``op(A) X = B`` with ``op(A) = A`` or ``A^T``: the transpose is a lazy view, so every case
is forward (lower) or backward (upper) substitution over row tiles of the effective matrix:
``X[I] = M[I, I]^{-1} (B[I] - sum_K M[I, K] X[K])``. The triangular matrix is streamed tile
by tile (out-of-core when it does not fit); the solution ``X`` stays on the devices,
columns sharded over every device (replicated when it has fewer columns than devices),
and each tile of ``M`` is replicated for its step so that every update is local.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.config import RunSpec, StorageConfig, run_spec
from jaxwren.dtypes import result_dtype
from jaxwren.engine.memory import Buffer, Footprint
from jaxwren.engine.plan import Plan, Read, Step, Write
from jaxwren.engine.problem import Candidate, Output, Problem, Resume, Targets
from jaxwren.engine.run import operand, run
from jaxwren.errors import NonFiniteError, ShapeMismatchError
from jaxwren.lax import ops as lax_ops
from jaxwren.lax.api import sharded_solve
from jaxwren.lax.layout import block_size, padded
from jaxwren.linalg.base import Op
from jaxwren.linalg.common import pad_identity, round_up
from jaxwren.sharding.mesh import COLS, ROWS, fit_spec
from jaxwren.sharding.tiles import ArraySource, CpuShardsSource, on_one_device
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = ["SolveTriangular", "cho_logdet", "cho_solve", "solve_triangular"]


def _transposed(x: Any) -> Any:
    if isinstance(x, BigMatrix):
        return x.T
    if isinstance(x, jax.Array):
        return x.T
    return ArraySource(np.asarray(x.array).T)  # host arrays, CPU device arrays


def _x_spec(k_pad: int, mesh: Mesh) -> P:
    return P(None, (ROWS, COLS)) if k_pad % mesh.devices.size == 0 else P()


@functools.cache
def _kernels(mesh: Mesh, xspec: P, lower: bool):
    """(first-update, update, first-final, final) for one mesh and X layout."""
    sx = NamedSharding(mesh, xspec)
    rep = NamedSharding(mesh, P())
    hi = lax.Precision.HIGHEST

    def upd(x: jax.Array, acc: jax.Array, m: jax.Array, koff: jax.Array) -> jax.Array:
        xk = lax.dynamic_slice_in_dim(x, koff, m.shape[1], axis=0)
        return acc - jnp.matmul(m, xk, precision=hi)

    def fin(x: jax.Array, acc: jax.Array, m: jax.Array, ioff: jax.Array, n: jax.Array) -> jax.Array:
        m = pad_identity(m, n - ioff)  # rows past n: identity, so no NaN from padding
        xi = lax.linalg.triangular_solve(m, acc, left_side=True, lower=lower)
        return lax.dynamic_update_slice_in_dim(x, xi, ioff, axis=0)

    if xspec == P():  # fewer columns than devices: X replicated, so every device would
        # repeat the same solve; one computes it and the result is replicated
        # (docs/decisions.md: small replicated factors on one device)
        one = functools.partial(on_one_device, rep=rep)
        return one(upd), one(upd), one(fin), one(fin)
    j = functools.partial(jax.jit, out_shardings=sx)
    first_update = j(lambda x, b, m, koff: upd(x, b, m, koff), in_shardings=(sx, sx, rep, None))
    update = j(upd, in_shardings=(sx, sx, rep, None), donate_argnums=1)
    first_final = j(lambda x, b, m, ioff, n: fin(x, b, m, ioff, n),
                    in_shardings=(sx, sx, rep, None, None), donate_argnums=0)  # fmt: skip
    final = j(fin, in_shardings=(sx, sx, rep, None, None), donate_argnums=0)
    return first_update, update, first_final, final


def _footprint(t: int, n_pad: int, k_pad: int, dtype: Any, mesh: Mesh) -> Footprint:
    """A row tile of b (X's layout) and a tile of l (replicated) read; X and the row
    tile's accumulator carried; X emitted once, at the end. Extra: the update's
    temporaries (X's slice, the product, the new accumulator; replicated as X is)."""
    sx, rep = NamedSharding(mesh, _x_spec(k_pad, mesh)), NamedSharding(mesh, P())
    row = Buffer((t, k_pad), dtype, sx)
    return Footprint(reads=(row, Buffer((t, t), dtype, rep)),
                     writes=(Buffer((n_pad, k_pad), dtype, sx),),
                     accumulators=(Buffer((n_pad, k_pad), dtype, sx), row),
                     extra=3 * row.on_devices)  # fmt: skip


def _incore_footprint(n_pad: int, k_pad: int, dtype: Any, mesh: Mesh) -> Footprint:
    """The in-core plan: ``l`` and ``b`` read whole, ``x`` emitted (sharded as the mesh
    divides them). Extra: ``l`` and ``b`` in the kernel's block layout, and the
    substitution's temporaries (``l``'s size once more, ``b``'s three times)."""
    l_buf, b_buf = (Buffer(shape, dtype, NamedSharding(mesh, fit_spec(shape, mesh)))
                    for shape in ((n_pad, n_pad), (n_pad, k_pad)))  # fmt: skip
    return Footprint(reads=(l_buf, b_buf), writes=(b_buf,),
                     extra=2 * l_buf.nbytes + 4 * b_buf.nbytes)  # fmt: skip


def _plan(m: Any, b: Any, lower: bool, t: int, k_pad: int, mesh: Mesh, dtype: np.dtype,
          out: BigMatrix | None) -> Plan:  # fmt: skip
    n, k = m.shape[0], b.shape[1]
    nt = -(-n // t)
    n_pad = nt * t
    xspec = _x_spec(k_pad, mesh)
    sx, rep = NamedSharding(mesh, xspec), NamedSharding(mesh, P())
    first_update, update, first_final, final = _kernels(mesh, xspec, lower)
    order = range(nt) if lower else range(nt - 1, -1, -1)
    steps = []
    nn = jnp.int32(n)
    for pos, ii in enumerate(order):
        b_read = Read(b, (ii * t, ii * t + t, 0, k), (t, k_pad), sx, dtype)
        prior = list(order)[:pos]
        for q, kk in enumerate(prior):
            mread = Read(m, (ii * t, ii * t + t, kk * t, kk * t + t), (t, t), rep, dtype)
            off = jnp.int32(kk * t)
            if q == 0:  # carry (X, _) -> (X, B[I] - M[I, K] X[K])
                kern = functools.partial(_start_update, fn=first_update, off=off)
                steps.append(Step((b_read, mread), kern))
            else:  # carry (X, acc) -> (X, acc - M[I, K] X[K])
                steps.append(Step((mread,), functools.partial(_update, fn=update, off=off)))
        dread = Read(m, (ii * t, ii * t + t, ii * t, ii * t + t), (t, t), rep, dtype)
        off = jnp.int32(ii * t)
        if prior:  # X[I] = M[I, I]^-1 acc
            steps.append(Step((dread,), functools.partial(_finish, fn=final, off=off, n=nn)))
        else:  # X[I] = M[I, I]^-1 B[I]
            kern = functools.partial(_start_finish, fn=first_final, off=off, n=nn)
            steps.append(Step((b_read, dread), kern))
    # the last step hands X to the writer (or back to the caller), once it is finite
    last = steps[-1]
    steps[-1] = Step(last.reads, lambda c, *tiles, k=last.kernel: _emit(k(c, *tiles)),
                     (Write(out, (0, 0), (n, k)),), check=_check_finite)  # fmt: skip
    init = functools.partial(_zeros, (n_pad, k_pad), dtype, sx)
    return Plan("solve_triangular", steps, init, tiles=f"{nt} row tiles of {t}")


def _incore_kernel(mesh: Mesh, n: int, block: int, lower: bool, trans: bool) -> Any:
    """The lax substitution (jitted, the geometry static) for one geometry."""
    geo = lax_ops.Geometry(mesh, n, block, False)
    return functools.partial(sharded_solve, geo=geo, lower=lower, trans=trans, cho=False)


def _incore_plan(l: Any, b: Any, lower: bool, trans: bool, block: int, mesh: Mesh,  # noqa: E741
                 dtype: np.dtype, out: BigMatrix | None) -> Plan:  # fmt: skip
    """One step: ``l`` and ``b`` read whole (sharded over the mesh) and solved by the lax
    kernel; the solution is checked finite before it is stored or returned."""
    (n, k), fn = b.shape, _incore_kernel(mesh, l.shape[0], block, lower, trans)
    reads = tuple(Read(x, (0, x.shape[0], 0, x.shape[1]), tuple(x.shape),
                       NamedSharding(mesh, fit_spec(x.shape, mesh)), dtype)
                  for x in (l, b))  # fmt: skip
    step = Step(reads, lambda _c, lm, bm: (None, (fn(lm, bm),)), (Write(out, (0, 0), (n, k)),),
                label="solve", check=_check_finite)  # fmt: skip
    desc = f"in-core, the lax substitution kernel (block {block})"
    return Plan("solve_triangular", [step], None, tiles=desc)


def _start_update(c: tuple, bi: jax.Array, mk: jax.Array, *, fn: Any, off: Any) -> tuple:
    return (c[0], fn(c[0], bi, mk, off)), ()


def _update(c: tuple, mk: jax.Array, *, fn: Any, off: Any) -> tuple:
    return (c[0], fn(c[0], c[1], mk, off)), ()


def _start_finish(c: tuple, bi: jax.Array, md: jax.Array, *, fn: Any, off: Any, n: Any) -> tuple:
    return (fn(c[0], bi, md, off, n), None), ()


def _finish(c: tuple, md: jax.Array, *, fn: Any, off: Any, n: Any) -> tuple:
    return (fn(c[0], c[1], md, off, n), None), ()


def _check_finite(outs: tuple) -> None:
    if not bool(_all_finite(outs[0])):
        raise NonFiniteError(
            "solve_triangular: the solution has NaN or Inf: l is singular (a zero on its "
            "diagonal) or the inputs hold NaN/Inf; nothing was stored."
        )


@jax.jit
def _all_finite(x: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(x))


def _emit(result: tuple) -> tuple:
    carry, _ = result
    return carry, (carry[0],)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _zeros(shape: tuple[int, int], dtype: Any, sharding: Any) -> tuple[jax.Array, None]:
    return jax.lax.with_sharding_constraint(jnp.zeros(shape, dtype), sharding), None


class SolveTriangular(Op):
    """``op(l) x = b`` by blocked substitution over row tiles of the effective matrix."""

    name = "solve_triangular"
    operand_names = ("l", "b")

    def __init__(self, lower: bool = True, trans: bool = False) -> None:
        self.lower, self.trans = bool(lower), bool(trans)

    def check(self, operands: Any, mesh: Mesh) -> Problem:
        l, b = operands  # noqa: E741
        if l.shape[0] != l.shape[1] or b.shape[0] != l.shape[0]:
            raise ShapeMismatchError(
                f"solve_triangular: l must be square and b must have as many rows: got l "
                f"{tuple(l.shape)} and b {tuple(b.shape)}."
            )
        dtype = result_dtype(l.dtype, b.dtype, where="solve_triangular", policy="float")
        block = (b.block_shape[0], b.shape[1]) if isinstance(b, BigMatrix) else None
        out = Output("X", tuple(b.shape), dtype, block)
        return Problem((l, b), (out,), (self.lower, self.trans), mesh)

    def tilings(self, problem: Problem, targets: Targets) -> list[Candidate]:
        l, b = problem.sources  # noqa: E741
        mesh, dtype, (n, k) = problem.mesh, problem.outputs[0].dtype, b.shape
        k_pad = round_up(k, mesh.devices.size) if k >= mesh.devices.size else k
        granule = math.lcm(*l.block_shape) if isinstance(l, BigMatrix) else 256
        granule = min(granule, round_up(n, 8))
        n_pad = padded(n, block_size(n, mesh), mesh)
        incore = _incore_footprint(n_pad, k_pad, dtype, mesh)
        cands = [Candidate(("in-core", block_size(n, mesh)), incore, -(1 << 62))]
        for t in range(granule, round_up(n, granule) + granule, granule):
            cands.append(
                Candidate((t, k_pad), _footprint(t, round_up(n, t), k_pad, dtype, mesh), -t)
            )
            if t >= n:
                break
        return cands

    def plan(self, problem: Problem, tiling: Any, targets: Targets, resume: Resume,
             prefetch: int) -> Plan:  # fmt: skip
        l, b = problem.sources  # noqa: E741
        if tiling[0] == "in-core":
            return _incore_plan(l, b, self.lower, self.trans, tiling[1], problem.mesh,
                                problem.outputs[0].dtype, targets["X"])  # fmt: skip
        m = _transposed(l) if self.trans else l
        t, k_pad = tiling
        return _plan(m, b, self.lower != self.trans, t, k_pad, problem.mesh,
                     problem.outputs[0].dtype, targets["X"])  # fmt: skip


def solve_triangular(
    l: Any,  # noqa: E741
    b: Any,
    out: Any = None,
    *,
    lower: bool = True,
    trans: bool = False,
    mesh: Mesh | None = None,
    memory_budget: int | str | None = None,
    storage: StorageConfig | None = None,
    progress: bool | None = None,
    prefetch: int | None = None,
    spec: RunSpec | None = None,
) -> jax.Array | BigMatrix:
    """Solves ``op(l) x = b`` for triangular ``l`` (``scipy.linalg.solve_triangular``).

    Args:
      l: ``(n, n)`` triangular BigMatrix / jax.Array / numpy array; only its ``lower``
        (or upper) triangle is used.
      b: ``(n,)`` vector or ``(n, k)`` matrix (BigMatrix, jax.Array or numpy).
      out: None returns a jax.Array (columns sharded over the devices when there are at
        least as many as devices); a URL or BigMatrix stores the ``(n, k)`` solution.
      lower: ``l`` is lower (else upper) triangular.
      trans: solve ``l^T x = b`` instead (``scipy``'s ``trans=1``).
      mesh, memory_budget, storage, progress, prefetch, spec: as for :func:`jaxwren.matmul`;
        ``l`` is streamed tile by tile when it does not fit the budget.

    Returns:
      ``x`` with ``b``'s shape (a vector for a vector ``b``), or the BigMatrix ``out``;
      the dtype is jnp's result type of the inputs (16-bit floats solve in float32).

    Raises:
      ShapeMismatchError: ``l`` not square or ``b`` rows differ; bad ``out``.
      NonFiniteError: the solution has NaN/Inf (a zero on the diagonal of ``l``);
        checked before anything is stored.
      MemoryBudgetError: no tiling fits ``memory_budget``.
    """
    vector = not isinstance(b, BigMatrix) and np.ndim(b) == 1
    spec = run_spec("solve_triangular", spec, mesh=mesh, memory_budget=memory_budget,
                    storage=storage, progress=progress, prefetch=prefetch)  # fmt: skip
    x = run(SolveTriangular(lower, trans), (l, b[:, None] if vector else b), out, spec).value
    return x[:, 0] if vector and out is None else x


def cho_solve(
    l: Any,  # noqa: E741
    b: Any,
    out: Any = None,
    **kwargs: Any,
) -> jax.Array | BigMatrix:
    """Solves ``A x = b`` from ``A``'s Cholesky factor ``l`` (``scipy.linalg.cho_solve``
    with ``lower=True``): ``l y = b``, then ``l^T x = y``; ``y`` stays on the devices.

    Keyword arguments are those of :func:`solve_triangular` (not ``lower``/``trans``).
    """
    y = solve_triangular(l, b, None, lower=True, trans=False, **kwargs)
    return solve_triangular(l, y, out, lower=True, trans=True, **kwargs)


def cho_logdet(l: Any) -> float:  # noqa: E741
    """``log det A = 2 sum(log(diag(l)))`` from ``A``'s Cholesky factor ``l``; reads only
    the diagonal blocks of a stored factor."""
    l = operand(l, name="l", where="cho_logdet")  # noqa: E741
    if l.shape[0] != l.shape[1]:
        raise ShapeMismatchError(f"cho_logdet: l must be square, got {tuple(l.shape)}.")
    if isinstance(l, BigMatrix):
        diag = np.concatenate(
            [np.diagonal(l.get_block(i, i)) for i in range(min(l.grid_shape))]
        ) if l.block_shape[0] == l.block_shape[1] else np.diagonal(l.numpy())  # fmt: skip
    else:
        host = l.array if isinstance(l, ArraySource | CpuShardsSource) else l
        diag = np.diagonal(np.asarray(host))
    if np.any(diag <= 0) or not np.all(np.isfinite(diag)):
        raise NonFiniteError(
            "cho_logdet: the factor's diagonal must be positive and finite; pass the "
            "Cholesky factor returned by jw.cholesky."
        )
    return float(2.0 * np.sum(np.log(diag.astype(np.float64))))
