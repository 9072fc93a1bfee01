"""SVD: exact for tall-skinny matrices (TSQR, then the SVD of R) and randomized
(Halko-Martinsson-Tropp with power iterations) for low-rank approximations of large ones.

``svd`` is the TSQR operation of ``linalg/qr.py`` with the SVD of ``R`` at the top of
its tree (``U = Q U_r``). :class:`RandomizedSVD` is an Op whose plan is passes over row
tiles of ``a`` (``P(('rows', 'cols'), None)``), each a streamed matmul on the devices:

* sketch ``Y_t = A_t Ω`` (``Ω`` Gaussian ``(n, l)``, ``l = k + n_oversamples``);
* orthonormalise ``Y`` by TSQR over its tiles (no reads: ``Y`` is ``(m, l)``, held);
* project ``Z = Σ_t A_tᵀ Q_t`` (``(n, l)``, a psum over the devices);
* rotate ``Ω = qr(Z).Q`` and sketch again — ``n_iter`` times — then project once more:
  ``Z = Aᵀ Q``, whose SVD ``Z = W S Vhᵀ`` gives ``A ≈ (Q Vh) S Wᵀ``.

When the tiles fit the budget together they are read once, in the first pass, and kept
on the devices (the in-core plan); otherwise every pass reads them again.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import os
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
from jaxwren.engine.run import run
from jaxwren.errors import ConfigError, NonFiniteError
from jaxwren.linalg import tsqr_kernel as tk
from jaxwren.linalg.base import Op
from jaxwren.linalg.common import round_up, tile_candidates
from jaxwren.linalg.qr import MAX_COLS, TSQR
from jaxwren.linalg.spectral_host import check_algorithm
from jaxwren.sharding.mesh import default_sharding
from jaxwren.sharding.multihost import to_host
from jaxwren.sharding.tiles import on_one_device
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = ["RandomizedSVD", "randomized_svd", "svd"]

_HI = lax.Precision.HIGHEST


def _count(value: Any, name: str, low: int, high: int | None = None) -> int:
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(f"randomized_svd: {name} must be an integer {bound}, got {value!r}.")
    return int(value)


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Row tiles of ``rows`` (loaded as ``shape_rows``); ``resident``: read once, kept."""

    rows: int
    shape_rows: int
    resident: bool


@dataclasses.dataclass(frozen=True)
class _Params:
    k: int
    l: int  # noqa: E741  (the sketch width, k + oversamples)
    n_iter: int
    seed: int


@functools.lru_cache(maxsize=16)
def _kernels(mesh: Mesh) -> dict[str, Any]:
    rows, rep = NamedSharding(mesh, P(tk.ALL, None)), NamedSharding(mesh, P())

    def sketch(x, w, extra=0):  # noqa: ANN001, ANN202
        # Ω padded with zero columns to a multiple of 16 and the zero columns of Y
        # dropped: the same Y, but XLA's CPU GEMM runs the 16-aligned width faster
        # (docs/decisions.md: randomized_svd)
        l = w.shape[1]  # noqa: E741
        wide = jnp.pad(w, ((0, 0), (0, -(l + extra) % 16 + extra)))
        y = jnp.matmul(x, wide, precision=_HI)
        return y[:, :l], y[:, l:]

    def checked(x, w):  # noqa: ANN001, ANN202
        # The first pass also checks that a is finite, for free: a zero column of Ω
        # gives exactly 0 in a finite row of A Ω (0 * finite = 0, no overflow) and NaN
        # in a row holding NaN or Inf (0 * Inf = NaN), where a separate isfinite pass
        # over the tile would be most of a pass's time (docs/decisions.md).
        y, pad = sketch(x, w, extra=1)
        return y, jnp.all(pad == 0)

    def project(z, x, q):  # noqa: ANN001, ANN202
        # Qᵀ A with Qᵀ materialised first (the barrier keeps XLA from folding the
        # transpose into the dot): an NN GEMM, faster than Qᵀ A contracted over rows or
        # Aᵀ Q (docs/decisions.md: randomized_svd)
        return z + project0(x, q)

    def project0(x, q):  # noqa: ANN001, ANN202  (the first tile: no zeros to add to)
        return jnp.matmul(lax.optimization_barrier(q.T), x, precision=_HI).T

    def top(z, k):  # noqa: ANN001, ANN202
        w, s, vh = jnp.linalg.svd(z, full_matrices=False)
        return vh.T[:, :k], s[None, :k], w[:, :k].T

    return {
        "sketch": jax.jit(
            lambda x, w: sketch(x, w)[0], in_shardings=(rows, rep), out_shardings=rows
        ),  # fmt: skip
        "checked": jax.jit(checked, in_shardings=(rows, rep), out_shardings=(rows, rep)),
        "project": jax.jit(
            project, in_shardings=(rep, rows, rows), out_shardings=rep, donate_argnums=0
        ),  # fmt: skip
        "project0": jax.jit(project0, in_shardings=(rows, rows), out_shardings=rep),
        # the n x l factors: LAPACK on one device, the result replicated
        # (docs/decisions.md: small replicated factors on one device)
        "rotate": on_one_device(lambda z: jnp.linalg.qr(z)[0], rep),
        "top": on_one_device(top, rep, static_argnums=1),
        "u": jax.jit(
            lambda q, ub: jnp.matmul(q, ub, precision=_HI),
            in_shardings=(rows, rep),
            out_shardings=rows,
        ),  # fmt: skip
    }


def _omega(n: int, l: int, seed: int, dtype: Any, mesh: Mesh) -> jax.Array:  # noqa: E741
    w = jax.random.normal(jax.random.key(seed), (n, l), dtype)
    return jax.device_put(w, NamedSharding(mesh, P()))


class RandomizedSVD(Op):
    """Rank-``k`` SVD of ``a`` by randomized range finding with power iterations."""

    name = "randomized_svd"
    operand_names = ("a",)

    def __init__(self, k: Any, n_oversamples: Any = 10, n_iter: Any = 4, seed: Any = 0) -> None:
        self.args = (k, n_oversamples, n_iter, seed)

    def check(self, operands: Any, mesh: Mesh) -> Problem:
        (a,) = operands
        m, n = a.shape
        k, p, n_iter, seed = self.args
        k = _count(k, "k", 1, min(m, n))
        p = _count(p, "n_oversamples", 0)
        pr = _Params(k, min(k + p, m, n), _count(n_iter, "n_iter", 0), _count(seed, "seed", 0))
        dtype = result_dtype(a.dtype, where=self.name, policy="factor")
        rb = a.block_shape[0] if isinstance(a, BigMatrix) else 8192
        outs = (Output("U", (m, k), dtype, (min(rb, m), k)), Output("S", (1, k), dtype, (1, k)),
                Output("Vt", (k, n), dtype, (k, min(n, 8192))))  # fmt: skip
        return Problem((a,), outs, (pr.k, pr.l, pr.n_iter, pr.seed), mesh, data=pr)

    def tilings(self, problem: Problem, targets: Targets) -> list[Candidate]:
        (a,), pr, mesh = problem.sources, problem.data, problem.mesh
        (m, n), s = a.shape, problem.outputs[0].dtype.itemsize
        unit = tk.row_unit(pr.l, mesh)
        granule = a.block_shape[0] if isinstance(a, BigMatrix) else 8192
        dtype, rows_sh = problem.outputs[0].dtype, NamedSharding(mesh, P(tk.ALL, None))
        passes = 2 * pr.n_iter + 2
        cands = []
        for rows in tile_candidates(m, granule, 1):
            t_rows = round_up(rows, unit)
            nt = -(-m // rows)
            tile = Buffer((t_rows, n), dtype, rows_sh)
            # held: Y, Q, TSQR's, U (tall, l columns); Z, Ω, Vt and their updates (n x l)
            held = (Buffer((5 * nt * t_rows, pr.l), dtype), Buffer((6 * n, pr.l), dtype))
            resident = Footprint(reads=(tile,), held=(*held, Buffer((nt * t_rows, n), dtype)))
            # cost: bytes read, then tiles (each tile is a few programs per pass)
            cands.append(Candidate(Tiling(rows, t_rows, True), resident, (m * n * s, nt)))
            if nt > 1:
                cands.append(Candidate(Tiling(rows, t_rows, False),
                                       Footprint(reads=(tile,), held=held),
                                       (passes * m * n * s, nt)))  # fmt: skip
        return cands

    def plan(self, problem: Problem, tiling: Any, targets: Targets, resume: Resume,
             prefetch: int) -> Plan:  # fmt: skip
        (a,), pr, mesh, t = problem.sources, problem.data, problem.mesh, tiling
        (m, n), dtype = a.shape, problem.outputs[0].dtype
        kern = _kernels(mesh)
        rows_sh = NamedSharding(mesh, P(tk.ALL, None))
        starts = list(range(0, m, t.rows))
        reads = [Read(a, (r0, min(r0 + t.rows, m), 0, n), (t.shape_rows, n), rows_sh, dtype)
                 for r0 in starts]  # fmt: skip
        leaf = tk.leaf_rows(pr.l)
        steps: list[Step] = []

        def tile_pass(label: str, fn: Any, first: bool = False) -> None:
            for i, r0 in enumerate(starts):
                use = (reads[i],) if first or not t.resident else ()
                steps.append(Step(use, functools.partial(_on_tile, fn, i, t.resident),
                                  label=f"{label} rows {r0}:"))  # fmt: skip

        tile_pass("Y = A Ω", functools.partial(_sketch, kern, True), first=True)
        for _ in range(pr.n_iter):
            steps.append(Step((), functools.partial(_orth, mesh, leaf, self.name), label="Q"))
            tile_pass("Z += A^T Q", functools.partial(_project, kern))
            steps.append(Step((), functools.partial(_rotate, kern), label="Ω = qr(Z)"))
            tile_pass("Y = A Ω", functools.partial(_sketch, kern, False))
        steps.append(Step((), functools.partial(_orth, mesh, leaf, self.name), label="Q"))
        tile_pass("Z = A^T Q", functools.partial(_project, kern))
        writes = tuple(Write(targets[o.name], (0, 0), o.shape) for o in problem.outputs)
        steps.append(Step((), functools.partial(_top, kern, pr.k, m, t.rows), writes,
                          label="SVD of Z"))  # fmt: skip
        init = functools.partial(_init, n, pr, dtype, mesh)
        passes = "read once, kept" if t.resident else f"{2 * pr.n_iter + 2} passes"
        desc = f"{len(starts)} row tiles of {t.rows}, {passes}"
        return Plan(self.name, steps, init, tiles=desc)

    def finish(self, problem: Problem, returned: list, targets: Targets) -> Any:
        names = [o.name for o in problem.outputs]
        if all(targets.get(nm) is not None for nm in names):
            u, s, vt = (targets[nm] for nm in names)
            return u, s.to_jax()[0], vt.to_jax()
        u, s, vt = returned
        mesh = problem.mesh
        return (jax.device_put(u, default_sharding(u.shape, mesh)), s[0],
                jax.device_put(vt, default_sharding(vt.shape, mesh)))  # fmt: skip


def _init(n: int, pr: _Params, dtype: Any, mesh: Mesh) -> dict[str, Any]:
    return {"a": {}, "y": {}, "w": _omega(n, pr.l, pr.seed, dtype, mesh), "ok": []}


def _on_tile(fn: Any, i: int, resident: bool, carry: dict, *tiles: jax.Array) -> tuple:
    if tiles and resident:
        carry["a"][i] = tiles[0]
    fn(carry, i, tiles[0] if tiles else carry["a"][i])
    return carry, ()


def _sketch(kern: dict, first: bool, carry: dict, i: int, x: jax.Array) -> None:
    """``Y = A Ω`` for one tile; the first pass also checks the tile's finiteness (later
    passes read the same data again; a concurrent writer is outside every op's
    guarantees)."""
    if first:
        carry["y"][i], ok = kern["checked"](x, carry["w"])
        carry["ok"].append(ok)
    else:
        carry["y"][i] = kern["sketch"](x, carry["w"])


def _project(kern: dict, carry: dict, i: int, x: jax.Array) -> None:
    if i == 0:
        carry["z"] = kern["project0"](x, carry["q"][i])
    else:
        carry["z"] = kern["project"](carry["z"], x, carry["q"][i])


def _orth(mesh: Mesh, leaf: int, where: str, carry: dict, *_: Any) -> tuple:
    if carry["ok"] and not bool(to_host(functools.reduce(operator.and_, carry["ok"]))):
        raise NonFiniteError(
            f"{where}: a holds NaN or Inf; clean it first (np.nan_to_num, or drop the rows). "
            "Nothing was stored."
        )
    carry["ok"] = []
    ys = [carry["y"][i] for i in sorted(carry["y"])]
    carry["q"] = tk.tsqr_tiles(ys, mesh, leaf, keep_q=True)[0]
    return carry, ()


def _rotate(kern: dict, carry: dict, *_: Any) -> tuple:
    carry["w"] = kern["rotate"](carry.pop("z"))
    return carry, ()


def _top(kern: dict, k: int, m: int, rows: int, carry: dict, *_: Any) -> tuple:
    ub, s, vt = kern["top"](carry["z"], k)
    us = [kern["u"](q, ub) for q in carry["q"]]
    parts = [u[: min(rows, m - i * rows)] for i, u in enumerate(us)]
    return None, (jnp.concatenate(parts) if len(parts) > 1 else parts[0], s, vt)


def svd(
    a: Any,
    out: Any = None,
    *,
    compute_uv: bool = True,
    algorithm: str | None = None,
    mesh: Mesh | None = None,
    memory_budget: int | str | None = None,
    block_shape: tuple[int, int] | None = None,
    storage: StorageConfig | None = None,
    progress: bool | None = None,
    prefetch: int | None = None,
    spec: RunSpec | None = None,
) -> Any:
    """Thin SVD of a matrix of any shape: ``a = U diag(S) Vt`` (``numpy.linalg.svd(a,
    full_matrices=False)`` up to the signs of singular vector pairs).

    Tall-skinny (``m >= 2 n``, ``n <= 4096``): TSQR of ``a`` (see :func:`jaxwren.qr`), then
    the SVD of the small ``R = U_r S Vt``, and ``U = Q U_r`` formed as Q is (the leaves
    multiplied down the tree, never Q then U). Any other shape: the polar decomposition
    ``a = U_p H`` and the eigendecomposition of ``H`` on the mesh (QDWH and QDWH-eig, see
    :func:`jaxwren.polar`, :func:`jaxwren.eigh`; wide ``a`` through ``a^T``), in core;
    on CPU devices of one process LAPACK ``gesdd`` on the host instead (as for
    :func:`jaxwren.eigh`, ``RunReport.reason`` says why).

    Args:
      a: ``(m, n)`` BigMatrix, jax.Array or numpy array.
      out: None to return U as a jax.Array; a URL prefix to store ``OUT/U`` (and ``OUT/S``
        as ``(1, n)``, ``OUT/Vt``). With ``compute_uv=False``, a URL stores S.
      compute_uv: False: only the singular values (one pass, nothing but R held).
      algorithm: the route of the shapes that are not tall-skinny: None (automatic),
        ``"qdwh"`` (polar + eigh on the mesh) or ``"host"`` (LAPACK ``gesdd``);
        tall-skinny ones always take TSQR.
      mesh, memory_budget, block_shape, storage, progress, prefetch, spec: as in matmul.

    Returns:
      ``(U, S, Vt)`` (S 1-D, descending) or ``S``.

    Raises:
      ShapeMismatchError: ``a`` is empty or not 2-D.
      NonFiniteError: NaN or Inf in ``a``.
      ConfigError: a bad ``algorithm``.
      MemoryBudgetError: a shape that is not tall-skinny and does not fit the budget in
        core (about 20 ``max(m, n)^2`` elements; use randomized_svd for a low-rank one).
    """
    spec = run_spec("svd", spec, mesh=mesh, memory_budget=memory_budget,
                    storage=storage, progress=progress, prefetch=prefetch,
                    block_shape=block_shape)  # fmt: skip
    if isinstance(a, str | os.PathLike):  # a URL: its shape picks the algorithm
        a = BigMatrix.open(a, storage=spec.storage)
    shape = tuple(getattr(a, "shape", ()))
    check_algorithm(algorithm, "svd")
    if len(shape) == 2 and 0 not in shape and (shape[0] < 2 * shape[1] or shape[1] > MAX_COLS):
        from jaxwren.linalg.spectral import svd_general  # polar + eigh (imports jaxwren.lax)

        return svd_general(a, out, spec, compute_uv, algorithm)
    return run(TSQR("svd" if compute_uv else "sv"), (a,), out, spec).value


def randomized_svd(
    a: Any,
    k: int,
    out: Any = None,
    *,
    n_oversamples: int = 10,
    n_iter: int = 4,
    seed: int = 0,
    mesh: Mesh | None = None,
    memory_budget: int | str | None = None,
    storage: StorageConfig | None = None,
    progress: bool | None = None,
    prefetch: int | None = None,
    spec: RunSpec | None = None,
) -> tuple[Any, jax.Array, jax.Array]:
    """Rank-``k`` truncated SVD ``a ≈ U diag(S) Vt`` by randomized range finding
    (Halko, Martinsson & Tropp 2011, Algorithm 4.4 with QR-normalised power iterations),
    as ``sklearn.utils.extmath.randomized_svd(a, k, n_oversamples=..., n_iter=...)``.

    Every pass over ``a`` is a streamed matmul on the devices; when ``a`` fits the memory
    budget it is read once and kept, else it is read ``2 n_iter + 2`` times.

    Args:
      a: ``(m, n)`` BigMatrix (a view works), jax.Array or numpy; any shape.
      k: the rank, ``1 <= k <= min(m, n)``.
      out: None to return U as a jax.Array; a URL prefix to store ``OUT/U``, ``OUT/S``
        (``(1, k)``) and ``OUT/Vt``.
      n_oversamples: extra sketch columns (``l = k + n_oversamples``).
      n_iter: power iterations (each two passes over ``a``); more for slowly decaying
        spectra.
      seed: the Gaussian sketch's seed (``jax.random.key(seed)``); same seed, same result.
      mesh, memory_budget, storage, progress, prefetch, spec: as in :func:`jaxwren.matmul`.

    Returns:
      ``(U, S, Vt)``: U ``(m, k)``, S ``(k,)`` descending, Vt ``(k, n)``.

    Raises:
      ConfigError: ``k`` outside ``[1, min(m, n)]``, negative oversamples or iterations.
      NonFiniteError: NaN or Inf in ``a`` (found in the first pass; nothing stored).
    """
    spec = run_spec("randomized_svd", spec, mesh=mesh, memory_budget=memory_budget,
                    storage=storage, progress=progress, prefetch=prefetch)  # fmt: skip
    op = RandomizedSVD(k, n_oversamples, n_iter, seed)
    return run(op, (a,), out, spec).value
