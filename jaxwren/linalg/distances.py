"""Squared Euclidean distances between row sets, tile by tile on the device mesh.

``pairwise_sq_distances(x, y)`` is the PyWren notebook's ``D_sharded``:
``D[i, j] = ||x_i||^2 - 2 x_i . y_j + ||y_j||^2`` clamped at 0. It is one plan on the
engine, like matmul: output tiles D[I, J] accumulate ``x_I @ y_J^T`` over feature panels
(the whole feature dimension per tile when it fits), and the last panel adds the row
norms, which a first small plan (:func:`row_sq_norms`) computes and checks for NaN/Inf
before anything is written. The in-core case is a plan with one step.

Shardings (mesh axes ``rows`` x ``cols``): x tiles ``P('rows', None)``, y tiles
``P('cols', None)``, D tiles ``P('rows', 'cols')`` — each device computes its D block
locally, with no collective. Also here: what the neighbour searches share (operand
checks, the compute dtype, the tiling search, the NaN error).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.config import StorageConfig, format_bytes
from jaxwren.engine.plan import Plan, Read, Step, Write, resolve_budget
from jaxwren.engine.runner import execute
from jaxwren.errors import ConfigError, MemoryBudgetError, NonFiniteError, ShapeMismatchError
from jaxwren.linalg.common import OutTarget, operand, prepare_out, result_dtype, tile_candidates
from jaxwren.sharding.mesh import COLS, ROWS, check_mesh, default_sharding
from jaxwren.sharding.multihost import to_host
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = ["pairwise_sq_distances", "argmin", "row_sq_norms", "row_operands", "compute_dtype"]

ALL = (ROWS, COLS)  # both mesh axes flattened: one shard per device
HIGHEST = jax.lax.Precision.HIGHEST  # no reduced-precision passes on accelerators
_STEP_COST = 4 << 20  # ~4 MiB of IO per step of overhead, as in matmul's tiling


def granule(x: Any, axis: int, default: int = 512) -> int:
    """Tiles along ``axis`` are multiples of the stored block (whole-block reads)."""
    return x.block_shape[axis] if isinstance(x, BigMatrix) else default


def row_operands(a: Any, b: Any, names: tuple[str, str], where: str) -> tuple[Any, Any]:
    """Two row sets ``(m, d)`` and ``(n, d)`` as engine sources, with equal ``d``."""
    sa, sb = operand(a, name=names[0], where=where), operand(b, name=names[1], where=where)
    if sa.shape[1] != sb.shape[1]:
        raise ShapeMismatchError(
            f"{where}: {names[0]} has {sa.shape[1]} features (columns) but {names[1]} has "
            f"{sb.shape[1]} (shapes {tuple(sa.shape)} and {tuple(sb.shape)}); both must be "
            "row sets with the same number of columns (did you pass a transposed matrix?)."
        )
    return sa, sb


def compute_dtype(*dtypes: Any, where: str) -> np.dtype:
    """The float dtype of the computation: jnp's result type; 16-bit floats run in float32."""
    dt = result_dtype(*dtypes, where=where)
    return np.dtype(jnp.float32) if dt.itemsize < 4 else dt


def non_finite_error(where: str, name: str, row: int, dtype: np.dtype) -> NonFiniteError:
    return NonFiniteError(
        f"{where}: {name} row {row} holds NaN or Inf (or its squared norm overflows "
        f"{dtype.name}); drop or impute such rows first (e.g. with np.nan_to_num, or "
        f"x[np.isfinite(x).all(axis=1)])."
    )


def search_tiling(
    options: Iterable[Any], projected: Callable[[Any], int], cost: Callable[[Any], Any],
    budget: int,
) -> tuple[Any | None, int | None]:  # fmt: skip
    """``(option, smallest)``: the cheapest option projected within ``budget`` (ties: the
    smaller projection), and the smallest projection of all options."""
    best, smallest = None, None
    for opt in options:
        proj = projected(opt)
        smallest = proj if smallest is None else min(smallest, proj)
        if proj <= budget and (best is None or (cost(opt), proj) < best[0]):
            best = ((cost(opt), proj), opt)
    return (None if best is None else best[1]), smallest


def budget_error(where: str, what: str, smallest: int, budget: int, hint: str = "") -> Exception:
    return MemoryBudgetError(
        f"{where}: {what} needs at least {format_bytes(smallest)} with the smallest tiles, "
        f"but memory_budget is {format_bytes(budget)}; the smallest workable budget is "
        f"{format_bytes(smallest)}{hint}."
    )


# ------------------------------------------------------------------ row norms (pre-pass)
@functools.cache
def _norm_kernel(first: bool, last: bool, dtype: Any, st: Any, sv: Any) -> Callable:
    def step(acc: jax.Array | None, t: jax.Array) -> tuple[jax.Array, tuple]:
        part = jnp.sum(jnp.square(t), axis=1)
        acc = part if first else acc + part
        return acc, ((acc,) if last else ())

    outs = (sv, (sv,) if last else ())
    if first:
        jitted = jax.jit(lambda t: step(None, t), in_shardings=(st,), out_shardings=outs)
        return lambda _carry, t: jitted(t)
    return jax.jit(step, in_shardings=(sv, st), out_shardings=outs, donate_argnums=0)


def row_sq_norms(
    x: Any, *, mesh: Mesh, budget: int, dtype: np.dtype, where: str, name: str,
    prefetch: int = 1, progress: bool | None = None,
) -> jax.Array:  # fmt: skip
    """Squared row norms ``(m,)`` of a source, replicated; NonFiniteError names the first
    row holding NaN/Inf. A plan of row tiles ``P(all devices, None)`` x feature panels."""
    (m, d), s, nd = x.shape, dtype.itemsize, mesh.size

    def projected(t: tuple[int, int]) -> int:
        return (2 * prefetch + 2) * t[0] * t[1] * s + 3 * m * s

    cands = itertools.product(tile_candidates(m, granule(x, 0), nd),
                              tile_candidates(d, granule(x, 1), 1))  # fmt: skip
    tiling, smallest = search_tiling(
        cands, projected, lambda t: -(-m // t[0]) * -(-d // t[1]), budget
    )
    if tiling is None:
        raise budget_error(where, f"the row norms of {name} {tuple(x.shape)}", smallest, budget)
    tr, tc = tiling
    st, sv = NamedSharding(mesh, P(ALL, None)), NamedSharding(mesh, P(ALL))
    gc = -(-d // tc)
    steps = []
    for r0 in range(0, m, tr):
        for kk, c0 in enumerate(range(0, d, tc)):
            kern = _norm_kernel(kk == 0, kk == gc - 1, dtype, st, sv)
            reads = (Read(x, (r0, r0 + tr, c0, c0 + tc), (tr, tc), st, dtype),)
            steps.append(Step(reads, kern, (Write(None),) if kk == gc - 1 else ()))
    plan = Plan(f"{where}: norms of {name}", steps, None, projected(tiling), smallest or 0,
                f"{-(-m // tr)}x{gc} tiles of {tr}x{tc}")  # fmt: skip
    outs, _ = execute(plan, budget=budget, prefetch=prefetch, progress=progress)
    norms = _gather_rows(outs, m, NamedSharding(mesh, P()))
    bad = np.flatnonzero(~np.isfinite(to_host(norms)))
    if bad.size:
        raise non_finite_error(where, name, int(bad[0]), dtype)
    return norms


def _gather_rows(parts: list[jax.Array], m: int, sharding: NamedSharding) -> jax.Array:
    whole = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
    return jax.device_put(whole[:m], sharding)


# ------------------------------------------------------------------ pairwise distances
def _choose(x: Any, y: Any, target: OutTarget, mesh: Mesh, budget: int, s: int,
            prefetch: int) -> tuple[int, int, int, int]:  # fmt: skip
    """``(tm, tn, tk, projected)``: least IO (then fewest steps) within ``budget``."""
    (m, d), n = x.shape, y.shape[0]
    r, c = mesh.shape[ROWS], mesh.shape[COLS]
    gm = granule(x, 0) if target.returned else target.block_shape[0]
    gn = granule(y, 0) if target.returned else target.block_shape[1]
    cand_m, cand_n = tile_candidates(m, gm, r), tile_candidates(n, gn, c)
    cand_k = tile_candidates(d, granule(x, 1, granule(y, 1)), 1)
    if target.returned:  # the result stays on the devices: it must be one tile
        cand_m, cand_n = cand_m[-1:], cand_n[-1:]

    def projected(t: tuple[int, int, int]) -> int:
        tm, tn, tk = t
        dev = tm * tk * s * c + tn * tk * s * r  # replicated panels
        host = (tm + tn) * tk * s
        acc = tm * tn * s * (3 if not target.returned else 2)
        norms = mesh.size * (m + n + tm + tn) * s  # replicated on every device
        return (prefetch + 1) * dev + prefetch * host + acc + norms

    def cost(t: tuple[int, int, int]) -> int:
        gi, gj, gk = -(-m // t[0]), -(-n // t[1]), -(-d // t[2])
        return (m * gj + n * gi) * d * s + gi * gj * gk * _STEP_COST

    best, smallest = search_tiling(itertools.product(cand_m, cand_n, cand_k), projected, cost,
                                   budget)  # fmt: skip
    if best is None:
        hint = " (or store the result with out=URL)" if target.returned else ""
        raise budget_error("pairwise_sq_distances", f"x {(m, d)} against y {(n, d)}",
                           smallest, budget, hint)  # fmt: skip
    return (*best, projected(best))


@functools.cache
def _dist_kernel(first: bool, last: bool, dtype: Any, sx: Any, sy: Any, sd: Any,
                 rep: Any) -> Callable:  # fmt: skip
    """One compiled step per (first, last); shapes key jit's own cache."""

    def step(acc, x, y, xn, yn, i0, j0):  # noqa: ANN001, ANN202
        prod = jnp.einsum("ik,jk->ij", x, y, precision=HIGHEST, preferred_element_type=dtype)
        acc = prod if first else acc + prod
        if not last:
            return acc, ()
        xs = jax.lax.dynamic_slice_in_dim(xn, i0, x.shape[0])
        ys = jax.lax.dynamic_slice_in_dim(yn, j0, y.shape[0])
        dist = xs[:, None] + ys[None, :] - 2 * acc
        return None, (jnp.where(dist > 0, dist, 0).astype(dtype),)

    outs = (None if last else sd, (sd,) if last else ())
    ins = (sd, sx, sy, rep, rep, rep, rep)
    if first:
        jitted = jax.jit(lambda *a: step(None, *a), in_shardings=ins[1:], out_shardings=outs)
        return lambda _acc, *a: jitted(*a)
    return jax.jit(step, in_shardings=ins, out_shardings=outs, donate_argnums=0)


def _plan(x: Any, y: Any, norms: tuple[jax.Array, jax.Array], out_matrix: BigMatrix | None,
          mesh: Mesh, tiling: tuple[int, int, int, int], dtype: np.dtype) -> Plan:  # fmt: skip
    (m, d), n = x.shape, y.shape[0]
    tm, tn, tk, projected = tiling
    sx, sy = NamedSharding(mesh, P(ROWS, None)), NamedSharding(mesh, P(COLS, None))
    sd, rep = NamedSharding(mesh, P(ROWS, COLS)), NamedSharding(mesh, P())
    gk = -(-d // tk)
    steps = []
    for i0, j0 in itertools.product(range(0, m, tm), range(0, n, tn)):
        for kk, k0 in enumerate(range(0, d, tk)):
            first, last = kk == 0, kk == gk - 1
            kern = _dist_kernel(first, last, dtype, sx, sy, sd, rep)
            reads = (Read(x, (i0, i0 + tm, k0, k0 + tk), (tm, tk), sx, dtype),
                     Read(y, (j0, j0 + tn, k0, k0 + tk), (tn, tk), sy, dtype))  # fmt: skip
            writes = (Write(out_matrix, (i0, j0), (min(tm, m - i0), min(tn, n - j0))),)
            kernel = functools.partial(_with_norms, kern, norms, i0, j0)
            label = f"D[{i0}:, {j0}:] [{k0}:]"
            steps.append(Step(reads, kernel, writes if last else (), label=label))
    gi, gj = -(-m // tm), -(-n // tn)
    return Plan("pairwise_sq_distances", steps, None, projected, projected,
                f"{gi}x{gj} output tiles of {tm}x{tn}, {gk} feature panels of {tk}")  # fmt: skip


def _with_norms(kern: Callable, norms: tuple[jax.Array, jax.Array], i0: int, j0: int,
                acc: Any, x: jax.Array, y: jax.Array) -> Any:  # fmt: skip
    return kern(acc, x, y, *norms, i0, j0)


def _padded(v: jax.Array, length: int, sharding: NamedSharding) -> jax.Array:
    return jax.device_put(jnp.pad(v, (0, length - v.shape[0])), sharding)


def pairwise_sq_distances(
    x: Any,
    y: Any,
    out: Any = None,
    *,
    mesh: Mesh | None = None,
    memory_budget: int | str | None = None,
    block_shape: tuple[int, int] | None = None,
    storage: StorageConfig | None = None,
    progress: bool | None = None,
    prefetch: int = 1,
) -> jax.Array | BigMatrix:
    """Squared Euclidean distances between the rows of ``x`` and the rows of ``y``.

    ``D[i, j] = ||x_i||^2 - 2 x_i . y_j + ||y_j||^2``, clamped at 0 — what
    ``scipy.spatial.distance.cdist(x, y, 'sqeuclidean')`` or
    ``sklearn.metrics.pairwise.euclidean_distances(x, y, squared=True)`` give, up to the
    rounding of this (GEMM) formula: near-equal rows may get a small positive distance.

    Args:
      x: ``(m, d)`` row set: BigMatrix (a ``.T`` view works), jax.Array or numpy array.
      y: ``(n, d)`` row set, likewise.
      out: None to return a jax.Array sharded ``P('rows', 'cols')`` (as far as the mesh
        divides ``(m, n)``; only when it fits the budget); a URL or BigMatrix to store D.
      mesh: a 2-D mesh with axes ``('rows', 'cols')``; None: all devices.
      memory_budget: bytes (or ``"2GiB"``) the run may hold on the devices and in host
        staging; None: from the devices' memory (40% of RAM on CPU).
      block_shape: block shape of a new ``out`` (default: x's row block by y's row block).
      storage: StorageConfig for an ``out`` URL.
      progress: progress bar for multi-step runs (None: when stderr is a terminal).
      prefetch: steps of reads in flight ahead of the computing step.

    Returns:
      D ``(m, n)``: a sharded jax.Array or the BigMatrix ``out``, in the dtype jnp gives
      for ``x`` and ``y`` (float32 for 16-bit floats and integers).

    Raises:
      ShapeMismatchError: empty or non-2-D inputs, feature dimensions that differ,
        ``out`` of the wrong shape/dtype or aliasing an input.
      NonFiniteError: a row of x or y holds NaN/Inf (found by a norm pass that runs
        before ``out`` is created or written).
      MemoryBudgetError: no tiling fits ``memory_budget`` (checked before anything runs).
    """
    where = "pairwise_sq_distances"
    xs, ys = row_operands(x, y, ("x", "y"), where)
    dtype = compute_dtype(xs.dtype, ys.dtype, where=where)
    mesh = check_mesh(mesh, where=where)
    budget = resolve_budget(memory_budget, list(mesh.devices.flat))
    shape = (xs.shape[0], ys.shape[0])
    if block_shape is None:
        block_shape = (min(granule(xs, 0, 1024), shape[0]), min(granule(ys, 0, 1024), shape[1]))
    target = prepare_out(out, shape=shape, dtype=dtype, block_shape=block_shape,
                         inputs=(xs, ys), where=where, storage=storage)  # fmt: skip
    tiling = _choose(xs, ys, target, mesh, budget, dtype.itemsize, prefetch)
    kw = dict(mesh=mesh, budget=budget, dtype=dtype, where=where, prefetch=prefetch,
              progress=progress)  # fmt: skip
    rep = NamedSharding(mesh, P())
    tm, tn = tiling[:2]
    norms = (_padded(row_sq_norms(xs, name="x", **kw), -(-shape[0] // tm) * tm, rep),
             _padded(row_sq_norms(ys, name="y", **kw), -(-shape[1] // tn) * tn, rep))  # fmt: skip
    out_matrix = target.materialize()
    plan = _plan(xs, ys, norms, out_matrix, mesh, tiling, dtype)
    outs, _ = execute(plan, budget=budget, prefetch=prefetch, progress=progress)
    if out_matrix is not None:
        return out_matrix
    return _trim(outs[0], shape, default_sharding(shape, mesh))


@functools.partial(jax.jit, static_argnames=("shape", "sharding"))
def _trim(x: jax.Array, shape: tuple[int, int], sharding: NamedSharding) -> jax.Array:
    return jax.lax.with_sharding_constraint(x[: shape[0], : shape[1]], sharding)


# ------------------------------------------------------------------ argmin-reduce
@functools.lru_cache(maxsize=64)
def _argmin_kernel(first: bool, last: bool, axis: int, shape: tuple[int, int], dtype: Any,
                   st: Any, sv: Any, rep: Any) -> Callable:  # fmt: skip
    """Folds one tile into the running (min, argmin, saw-NaN) of the kept axis."""
    dtype = np.dtype(dtype)
    high = np.inf if dtype.kind == "f" else np.iinfo(dtype).max
    big = np.iinfo(np.int32).max

    def step(carry, t, r0, c0):  # noqa: ANN001, ANN202
        rows = r0 + jax.lax.broadcasted_iota(jnp.int32, t.shape, 0)
        cols = c0 + jax.lax.broadcasted_iota(jnp.int32, t.shape, 1)
        valid = (rows < shape[0]) & (cols < shape[1])
        v = jnp.where(valid, t, jnp.asarray(high, t.dtype))
        mn = jnp.min(v, axis=axis)
        g = rows if axis == 0 else cols
        idx = jnp.min(jnp.where(v == jnp.expand_dims(mn, axis), g, big), axis=axis)
        nan = jnp.any(jnp.isnan(t) & valid, axis=axis) if dtype.kind == "f" else mn < mn
        if not first:  # a later tile wins only when strictly smaller: ties keep the lower index
            cm, ci, cn = carry
            better = mn < cm
            mn, idx, nan = jnp.where(better, mn, cm), jnp.where(better, idx, ci), nan | cn
        return (mn, idx, nan), ((mn, idx, nan) if last else ())

    outs = ((sv,) * 3, (sv,) * 3 if last else ())
    if first:
        jitted = jax.jit(lambda *a: step(None, *a), in_shardings=(st, rep, rep),
                         out_shardings=outs)  # fmt: skip
        return lambda _carry, *a: jitted(*a)
    return jax.jit(step, in_shardings=((sv,) * 3, st, rep, rep), out_shardings=outs,
                   donate_argnums=0)  # fmt: skip


def _argmin_plan(a: Any, axis: int, mesh: Mesh, budget: int, prefetch: int) -> Plan:
    (m, n), s = a.shape, a.dtype.itemsize
    r, c = mesh.shape[ROWS], mesh.shape[COLS]
    dtype = np.dtype(np.uint8) if a.dtype.kind == "b" else a.dtype  # min of bools: as bytes
    kept = n if axis == 0 else m

    def projected(t: tuple[int, int]) -> int:
        return (2 * prefetch + 3) * t[0] * t[1] * s + 3 * (t[1 - axis] + kept) * (s + 5)

    cands = itertools.product(tile_candidates(m, granule(a, 0), r),
                              tile_candidates(n, granule(a, 1), c))  # fmt: skip
    tiling, smallest = search_tiling(cands, projected,
                                     lambda t: -(-m // t[0]) * -(-n // t[1]), budget)  # fmt: skip
    if tiling is None:
        raise budget_error("argmin", f"a {(m, n)}", smallest, budget)
    tm, tn = tiling
    st, rep = NamedSharding(mesh, P(ROWS, COLS)), NamedSharding(mesh, P())
    sv = NamedSharding(mesh, P(COLS if axis == 0 else ROWS))
    outer, inner = (
        (range(0, n, tn), range(0, m, tm)) if axis == 0 else (range(0, m, tm), range(0, n, tn))
    )
    steps = []
    for o in outer:
        for kk, i in enumerate(inner):
            r0, c0 = (i, o) if axis == 0 else (o, i)
            last = kk == len(inner) - 1
            kern = _argmin_kernel(kk == 0, last, axis, (m, n), dtype, st, sv, rep)
            reads = (Read(a, (r0, r0 + tm, c0, c0 + tn), (tm, tn), st, dtype),)
            steps.append(Step(reads, functools.partial(_at, kern, np.int32(r0), np.int32(c0)),
                              (Write(None),) * 3 if last else ()))  # fmt: skip
    return Plan("argmin", steps, None, projected(tiling), smallest or 0,
                f"{-(-m // tm)}x{-(-n // tn)} tiles of {tm}x{tn}")  # fmt: skip


def _at(kern: Callable, r0: np.int32, c0: np.int32, carry: Any, t: jax.Array) -> Any:
    return kern(carry, t, r0, c0)


def argmin(
    a: Any,
    axis: int = 0,
    *,
    mesh: Mesh | None = None,
    memory_budget: int | str | None = None,
    progress: bool | None = None,
    prefetch: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """Argmin-reduce of a matrix along ``axis``: ``(numpy.argmin(a, axis), numpy.min(a, axis))``.

    Tiles ``P('rows', 'cols')`` stream through the devices; each gives its per-tile (min,
    argmin) and a running reduce carries them across tiles. Ties go to the lowest index,
    as in numpy (a later tile replaces the carried minimum only when strictly smaller).

    Args:
      a: ``(m, n)`` BigMatrix (a ``.T`` view works), jax.Array or numpy array; numeric.
      axis: 0 for the minimum of each column (result length n), 1 for each row (length
        m); -2 and -1 are accepted too.
      mesh, memory_budget, progress, prefetch: as in :func:`jaxwren.matmul`.

    Returns:
      ``(indices, values)``: jax.Arrays (not numpy), 1-D, sharded over the mesh as far as
      it divides their length; indices are int32 (numpy gives intp), values have a's dtype.

    Raises:
      ConfigError: ``axis`` is not 0, 1, -1 or -2.
      ShapeMismatchError: ``a`` is empty or not 2-D.
      NonFiniteError: ``a`` holds NaN, which has no order (raised after the reduce; argmin
        writes nothing).
      MemoryBudgetError: no tiling fits ``memory_budget`` (checked before anything runs).
    """
    src = operand(a, name="a", where="argmin")
    if (
        isinstance(axis, bool)
        or not isinstance(axis, int | np.integer)
        or axis not in (0, 1, -1, -2)
    ):
        raise ConfigError(
            f"argmin: axis must be 0 (the minimum of each column) or 1 (of each row), got "
            f"{axis!r}; for the minimum of the whole matrix reduce the result again."
        )
    axis = int(axis) % 2
    mesh = check_mesh(mesh, where="argmin")
    budget = resolve_budget(memory_budget, list(mesh.devices.flat))
    plan = _argmin_plan(src, axis, mesh, budget, prefetch)
    outs, _ = execute(plan, budget=budget, prefetch=prefetch, progress=progress)
    kept = src.shape[1 - axis]
    nan = np.flatnonzero(np.concatenate([to_host(o) for o in outs[2::3]])[:kept])
    if nan.size:
        line = "column" if axis == 0 else "row"
        raise NonFiniteError(
            f"argmin: a holds NaN (first in {line} {int(nan[0])}), and NaN has no order; "
            "replace it first (np.nan_to_num, or +inf to ignore the entry)."
        )
    sharding = default_sharding((kept,), mesh)
    idx, vals = (_gather_rows(outs[i::3], kept, sharding) for i in (1, 0))
    return idx, vals.astype(src.dtype)
