"""Out-of-core polar decomposition and symmetric eigendecomposition of stored matrices.

:func:`jaxwren.polar` and :func:`jaxwren.eigh` take this route when their matrix and work
arrays do not fit ``memory_budget``, the input is stored and ``out`` is a URL prefix. Every
step is a pipeline operation with an out-of-core plan, writing under ``OUT/work/``:
products (:func:`jaxwren.matmul` on lazy transposed views), Cholesky factors
(:func:`jaxwren.cholesky`), triangular solves (:func:`jaxwren.solve_triangular`, the
right-hand sides in row panels whose solution fits the budget), norms, and the blockwise
maps and column assembly of :mod:`jaxwren.linalg.spectral_pieces`. Each piece is stored
and identified by the engine's provenance, so a rerun after an interruption reuses every
finished piece (the host scalars are recomputed from them) and resumes the interrupted one.

* polar (QDWH, as :mod:`jaxwren.lax.qdwh`): ``X0 = A / alpha`` with ``alpha = sqrt(||A||_1
  ||A||_inf)``, the lower bound ``l`` by inverse iteration on ``chol(X0^T X0)``, then the
  Cholesky-form steps ``Z = I + c X^T X``, ``W = chol(Z)``, ``Y^T = W^-T W^-1 X^T``, ``X <-
  (b/c) X + (a - b/c) Y`` with the weights :func:`jaxwren.lax.qdwh.weights` of ``l`` and
  the same stopping rule (so the same number of iterations as in core), a Newton-Schulz
  polish, ``H = sym(U^T A)``.
* eigh (QDWH-eig, as :mod:`jaxwren.lax.eigh_kernels`): a split at the median ``sigma`` of the
  diagonal through ``U = polar(A - sigma I)``, ``r = (n - trace U) / 2``, a basis ``Q`` of
  ``range(P_-)`` and ``range(P_+)`` from a Gaussian sketch ``P_-+ G`` (shifted CholeskyQR3,
  then one subspace-iteration pass), ``Q^T A Q`` stored; its diagonal blocks recurse (as
  region views) until one fits the budget in core, where :func:`jaxwren.eigh` solves it.
  The eigenvectors ``V_leaf = (Q_1 Q_2 ...) E`` are products of stored bases, assembled
  in ascending order of the eigenvalues into ``OUT/V``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from time import perf_counter
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxwren.config import RunSpec
from jaxwren.engine.plan import resolve_budget
from jaxwren.engine.report import (
    Explained,
    PhaseSeconds,
    RunReport,
    explaining,
    observe,
    platform_of,
    record,
)
from jaxwren.errors import (
    ConfigError,
    MemoryBudgetError,
    NonFiniteError,
    NotPositiveDefiniteError,
)
from jaxwren.lax.qdwh import weights
from jaxwren.linalg.cholesky import cholesky
from jaxwren.linalg.matmul import matmul
from jaxwren.linalg.reductions.api import norm
from jaxwren.linalg.spectral_pieces import blockwise, columns, incore_fits, scalars
from jaxwren.linalg.triangular import solve_triangular
from jaxwren.sharding.mesh import check_mesh
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = ["eigh", "polar", "route"]

ROUTE = "out-of-core"


# ------------------------------------------------------------------------------ the hook
def route(op: Any, a: Any, out: Any, spec: RunSpec) -> bool:
    """Whether ``jw.polar`` / ``jw.eigh`` take the out-of-core route: the in-core plan does
    not fit the budget, ``a`` is stored and ``out`` a URL prefix. A matrix that does not
    fit with ``out=None`` or an unstored ``a`` is refused here, naming the fix."""
    refused = incore_fits(op, a, spec)
    if refused is None:
        return False
    stored = isinstance(a, BigMatrix | str | os.PathLike)
    if out is not None and stored and isinstance(out, str | os.PathLike):
        return True
    fix = ("pass out=URL (a prefix) to store the factors and run out of core"
           if stored else "store a first (jw.from_numpy / jw.save) and pass out=URL (a "
           "prefix) to run out of core")  # fmt: skip
    raise MemoryBudgetError(
        f"{str(refused).rstrip('.')} (in core: the matrix and its work arrays). Out of core "
        f"the result of out=None must still fit in memory: {fix}."
    )


@dataclasses.dataclass
class _Ledger:
    """The sub-runs of one route: the driver's own report is built from them."""

    name: str
    spec: RunSpec
    runs: list = dataclasses.field(default_factory=list)
    details: dict = dataclasses.field(default_factory=dict)

    def report(self, stored: dict[str, str], t0: float, explained: bool = False,
               error: str | None = None) -> RunReport:  # fmt: skip
        mesh = check_mesh(self.spec.mesh, where=self.name)
        done = [r for r in self.runs if r.state == "complete"]
        details = {"route": ROUTE, "runs": len(self.runs), "runs_reused": len(done),
                   **self.details}  # fmt: skip
        reason = (f"the in-core plan does not fit the budget: {ROUTE}, every step a "
                  "stored pipeline run under OUT/work (products, Cholesky, solves)")  # fmt: skip
        total = perf_counter() - t0
        return RunReport(
            operation=self.name, platform=platform_of(mesh),
            mesh_shape=tuple(mesh.devices.shape), mesh_axes=tuple(mesh.axis_names),
            budget=resolve_budget(self.spec.memory_budget, list(mesh.devices.flat)),
            tiling=repr((ROUTE, "qdwh" if self.name == "polar" else "qdwh-eig")),
            reason=reason, stored=stored, state="complete" if self.runs and
            len(done) == len(self.runs) else "fresh",
            tiles=f"{len(self.runs)} pipeline runs",
            steps_run=sum(r.steps_run for r in self.runs),
            steps_skipped=sum(r.steps_skipped for r in self.runs),
            bytes_read=None if explained else sum(r.bytes_read or 0 for r in self.runs),
            bytes_written=None if explained else sum(r.bytes_written or 0 for r in self.runs),
            compiles=None if explained else sum(r.compiles or 0 for r in self.runs),
            seconds=PhaseSeconds(total=total), explained=explained, details=details,
            error=error,
        )  # fmt: skip

    @contextlib.contextmanager
    def running(self, stored: dict[str, str]) -> Iterator[None]:
        """Collects the pieces' reports; records the route's own report at the end (a
        failed route's too, with ``error`` set)."""
        t0 = perf_counter()
        with observe() as runs:
            self.runs = runs
            try:
                yield
            except BaseException as exc:
                record(self.report(stored, t0, error=type(exc).__name__))
                raise
        record(self.report(stored, t0))


def _explained(name: str, spec: RunSpec, stored: dict[str, str]) -> None:
    if explaining():
        raise Explained(_Ledger(name, spec).report(stored, perf_counter(), explained=True))


def _prefix(out: Any) -> str:
    return os.fspath(out).rstrip("/")


def _work_spec(a: BigMatrix, spec: RunSpec) -> RunSpec:
    """The spec of the pieces: their block shape is the user's ``block_shape``, else
    ``a``'s, halved until a blockwise map of two inputs (a block per device, read and
    written) takes at most half the budget."""
    if spec.block_shape is not None:
        return spec
    mesh = check_mesh(spec.mesh, where="spectral")
    budget = resolve_budget(spec.memory_budget, list(mesh.devices.flat))
    b0, b1 = a.block_shape
    while mesh.size * 4 * b0 * b1 * a.dtype.itemsize > budget // 2 and max(b0, b1) > 8:
        b0, b1 = max(8, -(-b0 // 2)), max(8, -(-b1 // 2))
    return dataclasses.replace(spec, block_shape=(b0, b1))


def _diag(x: BigMatrix) -> np.ndarray:
    """The diagonal of a stored square matrix (or view), read block by block."""
    n, b = x.shape[0], x.block_shape[0]
    return np.concatenate([np.diag(x[i : min(i + b, n), i : min(i + b, n)].numpy())
                           for i in range(0, n, b)])  # fmt: skip


# ----------------------------------------------------------------------------- QDWH
_PANELS: dict = {}


def _panel(w: BigMatrix, x: BigMatrix, out: str, spec: RunSpec) -> int:
    """Rows of ``x`` per triangular solve: the most whose solution fits the budget (the
    solve's own projection, by bisection; kept per geometry)."""
    from jaxwren.engine.report import explain

    key = (w.shape, w.block_shape, x.shape, str(x.dtype), spec)
    if key in _PANELS:
        return _PANELS[key]

    def fits(rows: int) -> bool:
        try:
            explain(solve_triangular, w, x[:rows].T, out, spec=spec)
            return True
        except MemoryBudgetError:
            return False

    lo, hi = 0, x.shape[0]  # fits(lo) (or lo = 0), not fits(hi + 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    if lo == 0:
        raise MemoryBudgetError(f"{out}: not even one row of the solve fits memory_budget; "
                                "raise memory_budget.")  # fmt: skip
    m = x.shape[0]
    if len(_PANELS) > 256:
        _PANELS.clear()
    _PANELS[key] = -(-m // -(-m // lo))  # panels of (nearly) equal rows: fewer compiles
    return _PANELS[key]


def _solve_rows(w: BigMatrix, x: BigMatrix, trans_twice: bool, out: str, spec: RunSpec) -> Any:
    """``W^-1 X^T`` (``trans_twice``: ``W^-T W^-1 X^T``), ``(n, m)``, by row panels of x."""
    rows, m = _panel(w, x, f"{out}-probe", spec), x.shape[0]  # never created
    pieces = []
    for r0 in range(0, m, rows):
        r1 = min(r0 + rows, m)
        t = solve_triangular(w, x[r0:r1].T, f"{out}-p{r0}", lower=True, spec=spec)
        if trans_twice:
            t = solve_triangular(w, t, f"{out}-q{r0}", lower=True, trans=True, spec=spec)
        pieces.append((t, 0, r1 - r0))
    return columns(pieces, out, spec) if len(pieces) > 1 else pieces[0][0]


def _lower_bound(x: BigMatrix, g: BigMatrix, work: str, spec: RunSpec) -> float:
    """:func:`jaxwren.lax.qdwh._lower_bound` on the stored ``g = x^T x``."""
    dt, n = np.dtype(x.dtype), x.shape[1]
    eps = float(jnp.finfo(dt).eps)
    try:
        low = cholesky(g, f"{work}/lb-chol", spec=spec)
    except (NotPositiveDefiniteError, NonFiniteError):
        return eps
    v = jax.random.normal(jax.random.key(7), (n,), dt)
    mu = 1.0
    for _ in range(6):
        y = solve_triangular(low, np.asarray(v / jnp.linalg.norm(v)), lower=True, spec=spec)
        v = solve_triangular(low, np.asarray(y), lower=True, trans=True, spec=spec)
        mu = float(jnp.linalg.norm(v))
    lam = 1 / mu
    ok = np.isfinite(lam) and lam > 1e3 * eps
    return float(np.sqrt(lam / 4)) if ok else eps


def qdwh(a: Any, work: str, spec: RunSpec, max_iterations: int, ledger: _Ledger,
         u_out: str | None = None) -> tuple:  # fmt: skip
    """``(U, iterations, converged)`` of a tall stored ``a`` (or view); ``U`` stored at
    ``u_out`` (default ``work/u``)."""
    dt = np.dtype(a.dtype)
    eps = float(jnp.finfo(dt).eps)
    tol = (5 * eps) ** (1 / 3)
    alpha = float(np.sqrt(norm(a, 1, spec=spec) * norm(a, np.inf, spec=spec)))
    if not np.isfinite(alpha):
        raise NonFiniteError(f"{ledger.name}: a holds NaN or Inf; clean it first.")
    x = blockwise("scale", [a], [1 / alpha if alpha else 1.0], f"{work}/x0", spec)
    g = matmul(x.T, x, f"{work}/g0", spec=spec)
    lo = jnp.asarray(_lower_bound(x, g, work, spec), dt)
    k, delta = 0, np.inf
    while (float(lo) < 1 - 5 * eps or delta > tol) and k < max_iterations:
        it = f"{work}/it{k}"
        a_, b_, c_ = weights(lo)
        e, a_e, c = float(b_ / c_), float(a_ - b_ / c_), float(c_)
        if k:
            g = matmul(x.T, x, f"{it}/g", spec=spec)
        z = blockwise("shift", [g], [c, 1.0], f"{it}/z", spec)
        w = cholesky(z, f"{it}/w", spec=spec)
        yt = _solve_rows(w, x, True, f"{it}/yt", spec)
        new = blockwise("axpby", [x, yt.T], [e, a_e], f"{work}/x{k + 1}", spec)
        lo = jnp.minimum(1, lo * (a_ + b_ * lo * lo) / (1 + c_ * lo * lo))
        if float(lo) >= 1 - 5 * eps:  # only then does the difference decide (lax.qdwh)
            d = blockwise("axpby", [new, x], [1.0, -1.0], f"{it}/d", spec)
            delta = float(norm(d, spec=spec))
        x, k = new, k + 1
    g = matmul(x.T, x, f"{work}/ns-g", spec=spec)  # Newton-Schulz: 1.5 X - 0.5 X (X^T X)
    t = matmul(x, g, f"{work}/ns-t", spec=spec)
    u = blockwise("axpby", [x, t], [1.5, -0.5], u_out or f"{work}/u", spec)
    return u, k, delta <= tol


def polar(a: Any, out: Any, spec: RunSpec, max_iterations: int) -> tuple:
    """``(U, H)`` of a stored ``a`` out of core, stored at ``OUT/U`` and ``OUT/H``."""
    prefix = _prefix(out)
    _explained("polar", spec, {"U": f"{prefix}/U", "H": f"{prefix}/H"})
    a = a if isinstance(a, BigMatrix) else BigMatrix.open(a, storage=spec.storage)
    spec = _work_spec(a, spec)
    ledger = _Ledger("polar", spec)
    wide = a.shape[0] < a.shape[1]  # through a^T: U^T = polar factor of a^T
    with ledger.running({"U": f"{prefix}/U", "H": f"{prefix}/H"}):
        ut, k, ok = qdwh(a.T if wide else a, f"{prefix}/work/polar", spec, max_iterations,
                         ledger, None if wide else f"{prefix}/U")  # fmt: skip
        ledger.details.update(iterations=k, converged=bool(ok))
        u = blockwise("scale", [ut.T], [1.0], f"{prefix}/U", spec) if wide else ut
        mh = matmul(u.T, a, f"{prefix}/work/uta", spec=spec)
        h = blockwise("axpby", [mh, mh.T], [0.5, 0.5], f"{prefix}/H", spec)
    return u, h


# ------------------------------------------------------------------------------ eigh
def _orth(x: BigMatrix, shift: bool, out: str, spec: RunSpec) -> BigMatrix:
    """``Q^T`` of one (shifted) CholeskyQR round of ``x`` (:func:`jaxwren.lax.eigh_kernels.
    _cholqr`, the shift from ``||x||_F^2 >= ||x||_2^2``)."""
    m, n = x.shape
    g = matmul(x.T, x, f"{out}-g", spec=spec)
    s = 0.0
    if shift:
        s = 11 * (m * n + n * (n + 1)) * float(jnp.finfo(x.dtype).eps) * float(_diag(g).sum())
    z = blockwise("shift", [g], [1.0, s], f"{out}-z", spec)
    w = cholesky(z, f"{out}-w", spec=spec)
    return _solve_rows(w, x, False, out, spec)


def _split(h: Any, work: str, spec: RunSpec, iters: int, seed: int, ledger: _Ledger) -> tuple:
    """``(Q, Q^T H Q, r)`` of a stored symmetric ``h`` (the split of lax's ``divide``)."""
    b = h.shape[0]
    sigma = float(np.median(_diag(h)))
    s = blockwise("shift", [h], [1.0, -sigma], f"{work}/shifted", spec)
    u, k, _ = qdwh(s, f"{work}/polar", spec, iters, ledger)
    r = int(np.round((b - _diag(u).sum()) / 2))
    ledger.details.setdefault("split_iterations", []).append(k)
    if not 0 < r < b:
        raise ConfigError(f"eigh: a split of a {b} x {b} block found rank {r}; report this "
                          "matrix.")  # fmt: skip
    q = blockwise("gauss", [h], [float(seed)], f"{work}/g", spec)
    for p in range(2):  # the second pass: one subspace iteration, range(P q) = range(q)
        ug = matmul(u, q, f"{work}/ug{p}", spec=spec)
        x = blockwise("signs", [q, ug], [float(r)], f"{work}/sketch{p}", spec)
        for i in range(3 if p == 0 else 1):  # shifted CholeskyQR3; P q is orthonormal
            # to rounding already, so one round of CholeskyQR refines it to eps
            x = _orth(x, p == 0 and i == 0, f"{work}/qt{p}{i}", spec).T
        q = x
    hq = matmul(q.T, matmul(h, q, f"{work}/hq-r", spec=spec), f"{work}/hq-l", spec=spec)
    hq = blockwise("axpby", [hq, hq.T], [0.5, 0.5], f"{work}/hq", spec)
    return q, hq, r


def _node(h: Any, basis: Any, work: str, spec: RunSpec, params: dict, leaves: list,
          ledger: _Ledger) -> None:  # fmt: skip
    """Appends ``(w, V_leaf)`` of every leaf of ``h`` (in ascending order of eigenvalues)."""
    from jaxwren.linalg.spectral import Eigh
    from jaxwren.linalg.spectral import eigh as eigh_incore

    eps = float(jnp.finfo(h.dtype).eps)
    hnorm = float(norm(h, spec=spec))
    off = float(norm(blockwise("offdiag", [h], [], f"{work}/off", spec), spec=spec))
    params.setdefault("norm0", hnorm)
    if off <= 5 * eps * hnorm or hnorm <= eps * params["norm0"]:  # diagonal (lax's test)
        v = basis if basis is not None else blockwise("shift", [h], [0.0, 1.0], f"{work}/eye",
                                                      spec)  # fmt: skip
        leaves.append((_diag(h), v))
        return
    op = Eigh(params["max_iterations"], symmetrize=True, termination=params["termination"])
    if incore_fits(op, h, spec) is None:
        w, e = eigh_incore(h, f"{work}/leaf", termination_size=params["termination"],
                           max_iterations=params["max_iterations"], spec=spec)  # fmt: skip
        v = e if basis is None else matmul(basis, e, f"{work}/leaf-v", spec=spec)
        leaves.append((np.asarray(w), v))
        return
    q, hq, r = _split(h, work, spec, params["max_iterations"], len(ledger.details.get(
        "split_iterations", [])), ledger)  # fmt: skip
    v = q if basis is None else matmul(basis, q, f"{work}/basis", spec=spec)
    _node(hq[:r, :r], v[:, :r], f"{work}/lo", spec, params, leaves, ledger)
    _node(hq[r:, r:], v[:, r:], f"{work}/hi", spec, params, leaves, ledger)


def eigh(a: Any, out: Any, spec: RunSpec, *, symmetrize: bool, termination: int,
         max_iterations: int) -> tuple:  # fmt: skip
    """``(w, V)`` of a stored symmetric ``a`` out of core: ``OUT/w`` ``(1, n)``, ``OUT/V``."""
    prefix = _prefix(out)
    _explained("eigh", spec, {"w": f"{prefix}/w", "V": f"{prefix}/V"})
    a = a if isinstance(a, BigMatrix) else BigMatrix.open(a, storage=spec.storage)
    spec = _work_spec(a, spec)
    ledger = _Ledger("eigh", spec)
    work = f"{prefix}/work/eigh"
    params = {"termination": termination, "max_iterations": max_iterations}
    leaves: list = []
    with ledger.running({"w": f"{prefix}/w", "V": f"{prefix}/V"}):
        kind = "axpby" if symmetrize else "lower"
        h = blockwise(kind, [a, a.T], [0.5, 0.5] if symmetrize else [], f"{work}/a", spec)
        _node(h, None, f"{work}/t", spec, params, leaves, ledger)
        w = np.concatenate([lw for lw, _ in leaves])
        order = np.argsort(w, kind="stable")
        cols = [(v, j) for _, v in leaves for j in range(v.shape[1])]
        pieces: list = []
        for i in order:  # runs of consecutive columns of one leaf become one piece
            v, j = cols[i]
            if pieces and pieces[-1][0] is v and pieces[-1][2] == j:
                pieces[-1][2] = j + 1
            else:
                pieces.append([v, j, j + 1])
        vout = columns([tuple(p) for p in pieces], f"{prefix}/V", spec)
        scalars(f"{prefix}/w", list(w[order]), w.dtype, spec)  # OUT/w, (1, n)
        ledger.details.update(leaves=len(leaves), splits=len(ledger.details.get(
            "split_iterations", [])))  # fmt: skip
    return jnp.asarray(w[order]), vout
