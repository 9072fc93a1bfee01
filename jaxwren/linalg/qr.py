"""Tall-skinny QR (TSQR) on the pipeline, and what is built on it: ``qr`` and ``lstsq``
(``svd`` of a tall-skinny matrix lives in ``linalg/svd.py`` on the same operation).

Row tiles of ``a`` (sharded over every device) stream through the devices; the kernels
in :mod:`jaxwren.linalg.tsqr_kernel` factor each tile by a tree of local QRs. Kinds:

* ``"r"``, ``"sv"``, ``"lstsq"``: one pass, each tile folded into the running ``R``
  (lstsq factors ``[A | B]``: the top-right block of its ``R`` is ``Q^T B``); a last
  step with no reads gives ``R`` (diagonal >= 0), the singular values, or ``x``.
* ``"reduced"``, ``"svd"``: when the whole matrix is one tile, one step reads it once and
  gives ``Q`` (or ``U``) too. Otherwise two passes: each tile's ``R`` and the Q of its
  devices' stack, then the top of the tree over tiles (no reads), then every tile again,
  its leaves recomputed and multiplied down the tree into its rows of ``Q``, stored (a
  record per tile: a rerun resumes) or returned.

Wide matrices (``m < n``) and more than :data:`MAX_COLS` columns are refused: TSQR's top
levels factor ``(devices * n, n)`` stacks on every device, which stops being parallel (and
fitting) for wide or square matrices; those need a blocked Householder / CAQR, not built.
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
from jaxwren.errors import ConfigError, NonFiniteError, RankDeficientError, ShapeMismatchError
from jaxwren.linalg import tsqr_kernel as tk
from jaxwren.linalg.base import Op
from jaxwren.linalg.common import round_up, tile_candidates, trim
from jaxwren.sharding.mesh import default_sharding
from jaxwren.sharding.multihost import to_host
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = ["MAX_COLS", "TSQR", "lstsq", "qr"]

MAX_COLS = 4096
_Q_KINDS = ("reduced", "svd")
_SMALL = {"reduced": ("R",), "r": ("R",), "svd": ("S", "Vt"), "sv": ("S",), "lstsq": ("X",)}
_PUBLIC = {"reduced": "qr", "r": "qr", "svd": "svd", "sv": "svd", "lstsq": "lstsq"}


@dataclasses.dataclass(frozen=True)
class Tiling:
    """``rows`` of the matrix per tile (block aligned), loaded as ``shape_rows`` (a
    multiple of :func:`tsqr_kernel.row_unit`, zero padded)."""

    rows: int
    shape_rows: int


def _granule(x: Any, unit: int) -> int:
    """Tile rows come in whole stored blocks (in memory: whole leaf rows of every device)."""
    return x.block_shape[0] if isinstance(x, BigMatrix) else unit


def _footprint(t: Tiling, widths: tuple[int, ...], n: int, dtype: Any, q_kind: bool,
               mesh: Mesh) -> Footprint:  # fmt: skip
    """A row tile of every operand ``P(all devices, None)`` read; with Q, its Q tile
    emitted. Extra: the kernel's scratch (XLA's memory analysis: half a tile for R only,
    1.4 tiles when [A | B] is concatenated for lstsq; with Q, the leaves' Q factors and
    the Q tile being formed) and the R factors (carried, stacked, combined)."""
    rows = NamedSharding(mesh, P(tk.ALL, None))
    reads = tuple(Buffer((t.shape_rows, w), dtype, rows) for w in widths)
    tile, cols = sum(b.nbytes for b in reads), sum(widths)
    scratch = (2 if q_kind or len(widths) > 1 else 1) * tile
    writes = (Buffer((t.shape_rows, n), dtype, rows),) if q_kind else ()
    extra = scratch + 4 * cols * cols * np.dtype(dtype).itemsize
    return Footprint(reads=reads, writes=writes, extra=extra)


def _check_shape(where: str, shape: tuple[int, int], what: str) -> None:
    m, n = shape
    if m < n:
        raise ShapeMismatchError(
            f"{where}: {what} has shape {tuple(shape)}, fewer rows than columns; jaxwren's "
            "QR is TSQR, for tall-skinny matrices (m >= n). For a wide matrix factor its "
            "transpose (a.T: the LQ of a), or use jw.randomized_svd for a low-rank SVD."
        )
    if n > MAX_COLS:
        raise ShapeMismatchError(
            f"{where}: {what} has {n} columns; TSQR takes at most {MAX_COLS} (its top levels "
            "factor (devices x n, n) stacks on every device). For a low-rank approximation "
            "use jw.randomized_svd; a blocked Householder QR for square matrices is not built."
        )


class TSQR(Op):
    """TSQR of ``a`` (and ``[a | b]`` for lstsq) as a tile plan; ``kind`` picks outputs."""

    def __init__(self, kind: str = "reduced") -> None:
        self.kind = kind
        self.name = _PUBLIC[kind]
        self.operand_names = ("a", "b") if kind == "lstsq" else ("a",)

    def check(self, operands: Any, mesh: Mesh) -> Problem:
        a = operands[0]
        _check_shape(self.name, a.shape, "a")
        m, n = a.shape
        dtype = result_dtype(*(x.dtype for x in operands), where=self.name, policy="factor")
        rb = a.block_shape[0] if isinstance(a, BigMatrix) else 16384
        if self.kind == "lstsq":
            b = operands[1]
            if b.shape[0] != m:
                raise ShapeMismatchError(
                    f"lstsq: a has {m} rows but b has {b.shape[0]} (shapes {tuple(a.shape)} "
                    f"and {tuple(b.shape)}); b needs one row per row of a."
                )
            _check_shape("lstsq", (m, n + b.shape[1]), "[a | b]")
            outs: tuple[Output, ...] = (Output("X", (n, b.shape[1]), dtype),)
        else:
            big = {"reduced": "Q", "svd": "U"}.get(self.kind)
            small = {"R": (n, n), "S": (1, n), "Vt": (n, n)}
            outs = tuple(Output(s, small[s], dtype, small[s]) for s in _SMALL[self.kind])
            if big is not None:
                outs = (Output(big, (m, n), dtype, (min(rb, m), n)), *outs)
        return Problem(tuple(operands), outs, (self.kind,), mesh)

    def _cols(self, problem: Problem) -> int:
        return sum(x.shape[1] for x in problem.sources)

    def tilings(self, problem: Problem, targets: Targets) -> list[Candidate]:
        a, mesh = problem.sources[0], problem.mesh
        m, cols = a.shape[0], self._cols(problem)
        dtype, unit = problem.outputs[0].dtype, tk.row_unit(cols, mesh)
        widths = tuple(x.shape[1] for x in problem.sources)
        q_kind = self.kind in _Q_KINDS
        cands = []
        for rows in tile_candidates(m, _granule(a, unit), 1):
            t = Tiling(rows, round_up(rows, unit))
            ntiles = -(-m // rows)
            fp = _footprint(t, widths, a.shape[1], dtype, q_kind, mesh)
            steps = ntiles if not q_kind or ntiles == 1 else 2 * ntiles + 1
            # a returned Q is one resident tile; bigger ones are stored (out=URL)
            cands.append(Candidate(t, fp, steps, returns=not q_kind or ntiles == 1))
        return cands

    def plan(self, problem: Problem, tiling: Any, targets: Targets, resume: Resume,
             prefetch: int) -> Plan:  # fmt: skip
        a = problem.sources[0]
        m, n = a.shape
        mesh, dtype, t = problem.mesh, problem.outputs[0].dtype, tiling
        cols = self._cols(problem)
        leaf = tk.leaf_rows(cols)
        rows_sh = NamedSharding(mesh, P(tk.ALL, None))
        starts = list(range(0, m, t.rows))

        def reads(r0: int) -> tuple[Read, ...]:
            r1 = min(r0 + t.rows, m)
            return tuple(Read(x, (r0, r1, 0, x.shape[1]), (t.shape_rows, x.shape[1]),
                              rows_sh, dtype) for x in problem.sources)  # fmt: skip

        small = tuple(Write(targets[o]) for o in _SMALL[self.kind])
        desc = f"{len(starts)} row tiles of {t.rows} (as {t.shape_rows}), leaves of {leaf}"
        if self.kind not in _Q_KINDS:
            steps = self._r_steps(problem, starts, reads, leaf, small)
            init = functools.partial(_r_init, cols, dtype, mesh)
            return Plan(self.name, steps, init, tiles=desc)
        big = problem.outputs[0]
        target = targets[big.name]
        if len(starts) == 1:
            kern = _incore(mesh, leaf, self.kind == "svd", self.name)
            writes = (*small, Write(target, (0, 0), big.shape))
            step = Step(reads(0), kern, writes, label="TSQR in one tile")
            return Plan(self.name, [step], None, tiles=desc)
        steps = [Step(reads(r0), _factor(mesh, leaf), label=f"R of rows {r0}:") for r0 in starts]
        steps.append(Step((), _combine(mesh, self.kind == "svd", self.name), small,
                          label="top of the tree"))  # fmt: skip
        for i, r0 in enumerate(starts):
            key = resume.key(f"q{t.rows}-{r0}")
            size = (min(t.rows, m - r0), n)
            steps.append(Step(reads(r0), functools.partial(_q_step, mesh, leaf, i),
                              (Write(target, (r0, 0), size, record=key),),
                              label=f"{big.name}[{r0}:]", skip=resume.done(key)))  # fmt: skip
        return Plan(self.name, steps, list, tiles=desc)

    def _r_steps(self, problem: Problem, starts: list[int], reads: Any, leaf: int,
                 small: tuple[Write, ...]) -> list[Step]:  # fmt: skip
        fold = functools.partial(tk.fold_tile, mesh=problem.mesh, leaf=leaf)
        steps = [Step(reads(r0), lambda c, *x: (fold(c, x), ()), label=f"R += rows {r0}:")
                 for r0 in starts]  # fmt: skip
        last = functools.partial(
            _r_final,
            kind=self.kind,
            where=self.name,
            n=problem.sources[0].shape[1],
            m=problem.sources[0].shape[0],
        )
        steps.append(Step((), last, small, label="R"))
        return steps

    def finish(self, problem: Problem, returned: list, targets: Targets) -> Any:
        names = [o.name for o in problem.outputs]
        small = _SMALL[self.kind]
        if all(targets.get(nm) is not None for nm in names):
            got = {nm: targets[nm] for nm in names}
            for nm in small:
                if nm != "X":  # small factors come back as arrays; lstsq's x as stored
                    got[nm] = got[nm].to_jax()
        else:
            got = dict(zip(small, returned[: len(small)], strict=True))
            if self.kind in _Q_KINDS:
                got[names[0]] = _join(returned[len(small) :], problem)
        if "S" in got:
            got["S"] = jnp.asarray(got["S"])[0]
        for nm in names:
            if isinstance(got[nm], jax.Array) and got[nm].ndim == 2 and nm != names[0]:
                got[nm] = jax.device_put(got[nm], default_sharding(got[nm].shape, problem.mesh))
        values = tuple(got[nm] for nm in names)
        return values[0] if len(values) == 1 else values


def _join(tiles: list[jax.Array], problem: Problem) -> jax.Array:
    """The returned Q: one tile (a returned Q is planned in one), trimmed and resharded."""
    (q,) = tiles
    shape = problem.outputs[0].shape
    return trim(q, shape, default_sharding(shape, problem.mesh))


def _r_init(cols: int, dtype: Any, mesh: Mesh) -> tuple[jax.Array, jax.Array]:
    rep = NamedSharding(mesh, P())
    return (jax.device_put(jnp.zeros((cols, cols), dtype), rep),
            jax.device_put(jnp.asarray(True), rep))  # fmt: skip


def _check_finite(ok: Any, where: str) -> None:
    if not bool(to_host(ok)):
        raise NonFiniteError(
            f"{where}: the input holds NaN or Inf; clean it first (np.nan_to_num, or drop "
            "the rows) — a factorisation of non-finite data has no meaning. Nothing was stored."
        )


@functools.lru_cache(maxsize=32)
def _r_outputs(kind: str, n: int) -> Any:
    """The last step of the R-only kinds, on the replicated ``R``."""

    def out(r: jax.Array) -> tuple:
        if kind == "r":
            sign = jnp.where(jnp.diagonal(r) < 0, -1, 1).astype(r.dtype)
            return (sign[:, None] * r,), None
        if kind == "sv":
            return (jnp.linalg.svd(r, compute_uv=False)[None, :],), None
        r11, r12 = r[:n, :n], r[:n, n:]
        s = jnp.linalg.svd(r11, compute_uv=False)
        x = jax.scipy.linalg.solve_triangular(r11, r12, lower=False)
        return (x,), s[-1] / s[0]

    return jax.jit(out)


def _r_final(carry: Any, *, kind: str, where: str, n: int, m: int) -> tuple[None, tuple]:
    r, ok = carry
    _check_finite(ok, where)
    outs, ratio = _r_outputs(kind, n)(r)
    if ratio is not None:
        ratio = float(to_host(ratio))
        tol = np.finfo(r.dtype).eps * max(m, n)
        if not ratio > tol:
            raise RankDeficientError(
                f"lstsq: a is rank deficient (or numerically so): the ratio of its smallest "
                f"to largest singular value is {ratio:.2e}, below {tol:.1e} (eps * max(m, n)), "
                "so the least-squares solution is not unique. Remove linearly dependent "
                "columns (duplicated or constant features), or regularise: solve the ridge "
                "problem [a; sqrt(lam) I] x = [b; 0]."
            )
    return None, outs


def _incore(mesh: Mesh, leaf: int, svd: bool, where: str) -> Any:
    def step(_carry: Any, x: jax.Array) -> tuple[None, tuple]:
        (q,), small, ok = tk.tsqr_tiles([x], mesh, leaf, svd)
        if not ok:
            _check_finite(False, where)  # before Q is written
        return None, (*small, q)

    return step


def _factor(mesh: Mesh, leaf: int) -> Any:
    return lambda carry, x: ([*carry, tk.factor_tile(x, mesh, leaf)], ())


def _combine(mesh: Mesh, svd: bool, where: str) -> Any:
    def step(carry: list, *_: Any) -> tuple[Any, tuple]:
        if not all(ok for _qg, _r, ok in carry):
            _check_finite(False, where)
        qgs = jnp.stack([c[0] for c in carry])
        rts = jnp.stack([c[1] for c in carry])
        cs, small = tk.combine(mesh, svd)(qgs, rts)
        return cs, small

    return step


def _q_step(mesh: Mesh, leaf: int, i: int, cs: jax.Array, x: jax.Array) -> tuple[jax.Array, tuple]:
    return cs, (tk.q_tile(x, cs[i], mesh, leaf),)


def qr(
    a: Any,
    out: Any = None,
    *,
    mode: str = "reduced",
    mesh: Mesh | None = None,
    memory_budget: int | str | None = None,
    block_shape: tuple[int, int] | None = None,
    storage: StorageConfig | None = None,
    progress: bool | None = None,
    prefetch: int | None = None,
    spec: RunSpec | None = None,
) -> Any:
    """QR of a tall-skinny matrix by TSQR: ``a = Q R``, ``Q`` ``(m, n)`` with orthonormal
    columns, ``R`` ``(n, n)`` upper triangular.

    Matches ``numpy.linalg.qr(a, mode)`` up to signs: jaxwren normalises them so that
    ``diag(R) >= 0`` (numpy's LAPACK leaves them as they fall), which makes Q and R unique
    for a full-rank ``a``.

    Args:
      a: ``(m, n)`` BigMatrix (a view works), jax.Array or numpy array with ``m >= n`` and
        ``n <= 4096``; float32 or float64 (integers in jnp's default float).
      out: None to return ``Q`` as a jax.Array (sharded by rows); a URL prefix to store
        ``Q`` at ``OUT/Q`` (and ``R`` at ``OUT/R``). With ``mode="r"``, a URL stores R.
      mode: ``"reduced"`` -> ``(Q, R)``; ``"r"`` -> ``R`` only (one pass, nothing but
        ``R`` held).
      mesh, memory_budget, block_shape, storage, progress, prefetch, spec: as in
        :func:`jaxwren.matmul`.

    Returns:
      ``(Q, R)``: Q a jax.Array or the stored BigMatrix, R a replicated jax.Array; or R.

    Raises:
      ShapeMismatchError: ``a`` is wide (m < n) or has more than 4096 columns.
      NonFiniteError: ``a`` holds NaN or Inf (nothing is stored).
      ConfigError: an unknown ``mode``.
      MemoryBudgetError, OutputConflictError, DTypeMismatchError: as in matmul.
    """
    if mode not in ("reduced", "r"):
        raise ConfigError(f"qr: mode must be 'reduced' or 'r', got {mode!r}.")
    spec = run_spec("qr", spec, mesh=mesh, memory_budget=memory_budget,
                    storage=storage, progress=progress, prefetch=prefetch,
                    block_shape=block_shape)  # fmt: skip
    return run(TSQR(mode), (a,), out, spec).value


def lstsq(
    a: Any,
    b: Any,
    out: Any = None,
    *,
    mesh: Mesh | None = None,
    memory_budget: int | str | None = None,
    storage: StorageConfig | None = None,
    progress: bool | None = None,
    prefetch: int | None = None,
    spec: RunSpec | None = None,
) -> Any:
    """Least-squares solution ``x`` minimising ``||a x - b||``: ``numpy.linalg.lstsq(a, b)[0]``
    for a full-rank tall-skinny ``a``.

    One pass of TSQR over ``[a | b]`` (the top-right block of its ``R`` is ``Q^T b``),
    then ``x = R^-1 Q^T b``: Q is never formed, the data is read once.

    Args:
      a: ``(m, n)`` with ``m >= n`` (BigMatrix, jax.Array or numpy).
      b: ``(m,)`` or ``(m, k)`` right-hand sides (a 1-D host/jax array gives a 1-D x).
      out: None to return ``x`` as a jax.Array; a URL to store it.
      mesh, memory_budget, storage, progress, prefetch, spec: as in :func:`jaxwren.matmul`.

    Raises:
      RankDeficientError: ``a`` is rank deficient to working precision (smallest/largest
        singular value <= eps * max(m, n)); the message names the fixes.
      NonFiniteError: NaN or Inf in ``a`` or ``b``.
      ShapeMismatchError: wide ``a``, or ``b`` with another row count.
    """
    vector = not isinstance(b, BigMatrix) and np.ndim(b) == 1
    if vector:
        b = b.reshape(-1, 1)
    spec = run_spec("lstsq", spec, mesh=mesh, memory_budget=memory_budget,
                    storage=storage, progress=progress, prefetch=prefetch)  # fmt: skip
    x = run(TSQR("lstsq"), (a, b), out, spec).value
    return x[:, 0] if vector and isinstance(x, jax.Array) else x
