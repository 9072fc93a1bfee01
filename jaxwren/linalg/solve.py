"""General linear systems on the engine: ``solve`` (LU, or Cholesky for ``assume_a="pos"``;
optionally mixed precision), ``lu_solve``, ``inv``, ``slogdet`` and ``det``.

On the kernel each is one in-core step: the matrix read into the block-cyclic layout (as
:mod:`jaxwren.linalg.lu` reads it), the right-hand side sharded, and one jitted program on
the devices: the GEPP kernel and the sharded substitutions of :mod:`jaxwren.lax`. Where
the LU selector takes the in-core tile plan (CPU devices of one process), ``solve``
(``"gen"``, ``"gen32"``) factors on it and solves on the host
(:func:`jaxwren.linalg.lu_steps.solve_plan`).

Mixed precision (``refine=True``, after LAPACK's ``dsgesv``): the matrix is factored in
float32; the residual ``b - A x`` is formed in float64 (a sharded product with the float64
matrix) and the correction solved with the float32 factor until the backward error
``max_j ||r_j|| / (||A|| ||x_j||)`` (infinity norms) is below ``sqrt(n) eps64``, at most
``_ITMAX`` times or until it stops halving; then a float64 solve runs instead. The run's
report gives the iterations, the backward error and whether it fell back.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.dtypes import result_dtype
from jaxwren.engine.plan import Plan, Read, Step, Write
from jaxwren.engine.problem import Candidate, Output, Problem, Resume, Targets
from jaxwren.errors import ConfigError, ShapeMismatchError
from jaxwren.lax.layout import from_layout, natural_index, to_layout
from jaxwren.linalg import lu_plans
from jaxwren.linalg.base import Op
from jaxwren.linalg.lu import check_square, cyclic_read, footprint, prepare, raise_failed
from jaxwren.linalg.lu_steps import Setup, solve_plan
from jaxwren.sharding.mesh import COLS, ROWS, default_sharding
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = ["Solve", "backward_error"]

_ITMAX = 10
_F64 = np.dtype(np.float64)


def backward_error(a: jax.Array, x: jax.Array, b: jax.Array, matvec: Any) -> tuple:
    """``(r, e)``: ``r = b - A x`` and ``max_j ||r_j|| / (||A|| ||x_j||)`` (inf norms;
    ``a`` without padding's ones, columns of zeros left out)."""
    r = b - matvec(x)
    rn, xn = jnp.max(jnp.abs(r), axis=0), jnp.max(jnp.abs(x), axis=0)
    anorm = jnp.max(jnp.sum(jnp.abs(a), axis=1))
    e = jnp.where(xn > 0, rn / (anorm * xn), jnp.where(rn > 0, jnp.inf, 0))
    return r, jnp.max(e)


def _refine(x: jax.Array, b: jax.Array, a: jax.Array, n: int, matvec: Any, corr: Any) -> tuple:
    """``x += corr(b - A x)`` until the backward error reaches float64's eps, stalls (does
    not halve) or ``_ITMAX`` corrections ran: ``(x, corrections, backward error)``. The
    run counts as converged at ``sqrt(n) eps`` (:meth:`Solve._check`), but the loop goes
    on while it halves: stopping at ``sqrt(n) eps`` left a backward error 8x the float64
    solve's at n = 4096 (1.3e-14 against 1.6e-15, 2-norms)."""
    aim = float(np.finfo(np.float64).eps)
    r, e = backward_error(a, x, b, matvec)

    def cond(s: tuple) -> jax.Array:
        return (s[0] < _ITMAX) & (s[3] > aim) & ~s[4]

    def body(s: tuple) -> tuple:
        it, x, r, e, _ = s
        x = x + corr(r)
        r, e2 = backward_error(a, x, b, matvec)
        return it + 1, x, r, e2, ~(e2 <= 0.5 * e)

    it, x, _, e, _ = lax.while_loop(cond, body, (jnp.int32(0), x, r, e, jnp.bool_(False)))
    return x, it, e


def _few_rhs_product(a: jax.Array, x: jax.Array, *, rows: Any, cols: Any) -> jax.Array:
    """``A X`` for a few right-hand sides held whole along ``cols``: ``X`` shared down the
    mesh columns (a ``psum`` of ``n x k``), the local product, a ``psum`` over ``cols``."""
    from jaxwren.lax.kernels import _rows_at

    y = jnp.matmul(a, _rows_at(x, rows, cols), precision=lax.Precision.HIGHEST)
    return lax.psum(y, cols.name)


@functools.cache
def _solve_fn(kind: str, n: int, k: int, kb: int, mesh: Mesh, device_array: bool,
              trans: bool) -> Any:  # fmt: skip
    """The in-core program ``(a, piv, b) -> (x natural, [info, corrections, error])``.
    ``kind``: "gen" (factor and solve), "gen32" (float32 factor, refined), "inv" (the
    identity's columns), "lu" (``a`` is the factor, ``piv`` its pivots), "pos32"
    (natural layout: jaxwren.lax's float32 Cholesky, refined)."""
    import jaxwren.lax as wlax  # (jaxwren.lax imports jaxwren.linalg's kernels)
    from jaxwren.lax import kernels, lu_ops
    from jaxwren.lax.ops import Geometry

    geo = Geometry(mesh, n, kb, True)
    g, gb = geo.square, geo.rhs(k)
    rep = NamedSharding(mesh, P())

    def stats(info: Any, it: Any = 0, e: Any = 0.0) -> jax.Array:
        return jnp.stack([jnp.asarray(v, jnp.asarray(0.0).dtype) for v in (info, it, e)])

    def layout_fn(a: jax.Array, piv: Any, b: Any) -> tuple[jax.Array, jax.Array]:
        a, _ = prepare(a, geo, device_array)
        if kind == "inv":
            i, j = natural_index(gb[0])[:, None], natural_index(gb[1])[None, :]
            bl = jnp.where((i == j) & (i < n), jnp.ones((), a.dtype), jnp.zeros((), a.dtype))
            bl = lax.with_sharding_constraint(bl, NamedSharding(mesh, P(*[x.name for x in gb])))
        else:
            bl = to_layout(b.astype(a.dtype), *gb, mesh)
        if kind == "lu":
            extra = jnp.arange(n, geo.size, dtype=jnp.int32)
            piv = jnp.concatenate([piv[:, 0].astype(jnp.int32), extra])
            x, st = lu_ops.solve(a, piv, bl, geo, gb, trans), stats(-1)
        elif kind == "gen32":
            lu, piv, info = lu_ops._kernel(a.astype(jnp.float32), geo)

            def corr(r: jax.Array) -> jax.Array:
                return lu_ops.solve(lu, piv, r.astype(jnp.float32), geo, gb, False).astype(a.dtype)

            def matvec(x: jax.Array) -> jax.Array:
                if gb[1].name is not None:  # many right-hand sides: SUMMA
                    return kernels.matmul(a, x, ga=g, gb=gb, gc=gb, mesh=mesh)
                body = functools.partial(_few_rhs_product, rows=g[0], cols=g[1])
                return jax.shard_map(body, mesh=mesh, in_specs=(P(ROWS, COLS), P(ROWS, None)),
                                     out_specs=P(ROWS, None))(a, x)  # fmt: skip

            i, j = natural_index(g[0])[:, None], natural_index(g[1])[None, :]
            real = jnp.where((i < n) & (j < n), a, 0)
            x, it, e = _refine(corr(bl), bl, real, n, matvec, corr)
            st = stats(info, it, e)
        else:
            lu, piv, info = lu_ops._kernel(a, geo)
            x, st = lu_ops.solve(lu, piv, bl, geo, gb, False), stats(info)
        return from_layout(x, *gb, mesh, (n, k)), st

    def pos_fn(a: jax.Array, _piv: Any, b: jax.Array) -> tuple[jax.Array, jax.Array]:
        low = wlax.cholesky(a.astype(jnp.float32), mesh=mesh)

        def corr(r: jax.Array) -> jax.Array:
            return wlax.cho_solve(low, r.astype(jnp.float32), mesh=mesh).astype(a.dtype)

        def matvec(x: jax.Array) -> jax.Array:
            return jnp.matmul(a, x, precision=lax.Precision.HIGHEST)

        b = b.astype(a.dtype)
        x, it, e = _refine(corr(b), b, a, n, matvec, corr)
        return x, stats(jnp.where(jnp.isnan(low[0, 0]), 0, -1), it, e)

    out = (NamedSharding(mesh, default_sharding((n, k), mesh).spec), rep)
    return jax.jit(pos_fn if kind == "pos32" else layout_fn, out_shardings=out)


class Solve(Op):
    """``x`` of ``A x = b`` (kinds: see :func:`_solve_fn`), in-core, one step."""

    operand_names = ("a", "b")

    def __init__(self, kind: str, trans: bool = False, name: str = "solve") -> None:
        self.kind, self.trans, self.name = kind, bool(trans), name
        self.details: dict[str, Any] = {}
        if kind == "lu":
            self.operand_names = ("lu", "piv", "b")
        elif kind == "inv":
            self.operand_names = ("a",)

    def check(self, operands: Any, mesh: Mesh) -> Problem:
        a, b = operands[0], operands[-1]
        n = check_square(a, self.name)
        if self.kind == "inv":
            b = a
        elif b.shape[0] != n:
            raise ShapeMismatchError(
                f"{self.name}: b must have as many rows as a ({n}), got shape {tuple(b.shape)}."
            )
        if self.kind == "lu" and (tuple(operands[1].shape) != (n, 1) or operands[1].dtype.kind
                                  not in "iu"):  # fmt: skip
            raise ShapeMismatchError(
                f"{self.name}: piv must be the (n,) integer pivots lu_factor returned, n = {n}; "
                f"got shape {tuple(operands[1].shape)}, dtype {operands[1].dtype}."
            )
        dtype = result_dtype(a.dtype, b.dtype, where=self.name, policy="factor")
        if self.kind in ("gen32", "pos32") and dtype != _F64:
            raise ConfigError(
                f"{self.name}: refine=True factors in float32 and refines in float64, but the "
                f"data is {dtype.name}; pass float64 data (with x64 enabled) or refine=False."
            )
        block = (b.block_shape[0], b.shape[1]) if isinstance(b, BigMatrix) else None
        out = Output("X", (n, b.shape[1]), dtype, block)
        return Problem(tuple(operands), (out,), (self.kind, self.trans), mesh)

    def tilings(self, problem: Problem, targets: Targets) -> list[Candidate]:
        """The kernel; for ``"gen"`` / ``"gen32"`` / ``"inv"`` also the in-core LU tile plan (ranked
        first where :func:`.lu_plans.select` takes it for a stored factor: CPU devices of
        one process), its factor then solved (and refined) on the host."""
        (n, k), dtype, mesh = problem.outputs[0].shape, problem.outputs[0].dtype, problem.mesh
        fp = footprint(n, dtype, mesh, 5, extra=6 * n * k * dtype.itemsize)
        cands = [Candidate(("kernel", self.kind), fp, (1,))]
        if self.kind not in ("gen", "gen32", "inv") or not lu_plans.available(mesh):
            return cands
        rank = 0 if lu_plans.select(mesh, True)[0] == lu_plans.TILES else 2
        fdt = np.dtype(np.float32) if self.kind == "gen32" else dtype
        for i, t in enumerate(lu_plans.work_tiles(n, mesh)):
            tf = lu_plans.incore_footprint(n, t, fdt, mesh, n)  # (the factor in one piece)
            kept = n * -(-n // t) * t * dtype.itemsize if self.kind == "gen32" else 0
            tf = dataclasses.replace(tf, extra=tf.extra + kept + 4 * n * k * dtype.itemsize)
            cands.append(Candidate(("tiles", t), tf, (rank, i)))
        return cands

    def plan(self, problem: Problem, tiling: Any, targets: Targets, resume: Resume,
             prefetch: int) -> Plan:  # fmt: skip
        src, mesh = problem.sources, problem.mesh
        (n, k), dtype = problem.outputs[0].shape, problem.outputs[0].dtype
        if tiling[0] == "tiles":
            refine = self.kind == "gen32"
            fdt = np.dtype(np.float32) if refine else dtype
            why = lu_plans.reason(lu_plans.TILES, mesh, True)
            s = Setup(src[0], n, fdt, mesh, None, None, resume, why, self.name,
                      None if refine else False, {})  # fmt: skip
            b = None if self.kind == "inv" else src[-1]  # (inv: the identity, made)
            return solve_plan(s, tiling[1], b, k, refine, targets["X"], self._check)
        if self.kind == "pos32":
            sh = default_sharding((n, n), mesh)
            reads, cyc, kb = [Read(src[0], (0, n, 0, n), (n, n), sh, dtype)], None, 1
        else:
            read, cyc, kb = cyclic_read(src[0], n, dtype, mesh)
            reads = [read]
        rep = NamedSharding(mesh, P())
        if self.kind == "lu":
            reads.append(Read(src[1], (0, n, 0, 1), (n, 1), rep, np.dtype(np.int32)))
        if self.kind != "inv":
            reads.append(Read(src[-1], (0, n, 0, k), (n, k), default_sharding((n, k), mesh),
                              dtype))  # fmt: skip
        fn = _solve_fn(self.kind, n, k, kb, mesh, cyc is None and self.kind != "pos32",
                       self.trans)  # fmt: skip

        def kernel(_carry: Any, *tiles: jax.Array) -> tuple[None, tuple]:
            a, rest = tiles[0], tiles[1:]
            piv = rest[0] if self.kind == "lu" else None
            b = rest[-1] if self.kind != "inv" else None
            if cyc is not None:
                cyc.take_buffer()  # every shard copied out: free the host copy
            return None, fn(a, piv, b)

        step = Step(tuple(reads), kernel, (Write(targets["X"], (0, 0), (n, k)), Write(None)),
                    label=self.kind, check=self._check)  # fmt: skip
        return Plan(self.name, [step], None, f"kernel: in-core ({self.kind})")

    def _check(self, outs: tuple) -> None:
        info, it, e = (float(v) for v in np.asarray(outs[1]))
        refined = self.kind in ("gen32", "pos32")
        x = outs[0]  # (the tile plan's is a host array: checked there, nothing compiles)
        finite = bool(np.isfinite(x).all() if isinstance(x, np.ndarray) else jnp.isfinite(x).all())
        if refined:
            tol = math.sqrt(outs[0].shape[0]) * float(np.finfo(np.float64).eps)
            self.details = {"refine_iterations": int(it), "refine_backward_error": e,
                            "refine_converged": bool(finite and info < 0 and e <= tol)}  # fmt: skip
            return  # the caller falls back to float64 when it did not converge
        raise_failed(self.name, int(info), 0.0 if finite or info >= 0 else np.inf)

    def finish(self, problem: Problem, returned: list, targets: Targets) -> Any:
        if targets["X"] is not None:
            return targets["X"]
        x = returned[0]
        if isinstance(x, np.ndarray):  # the tile plan's host solution
            x = jax.device_put(x, default_sharding(x.shape, problem.mesh))
        return x
