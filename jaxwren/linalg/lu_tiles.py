"""The LU tile plans: left-looking LU with partial pivoting by column tiles of ``t``.

Column ``J`` (columns ``c0:c1``) is ``A[:, c0:c1]`` swept by every finished column ``K <
J`` in turn: ``U[K, J] = L[K, K]^-1 P[K]`` (a unit-lower solve of one tile), then
``P[K+1:] -= L[K+1:, K] U[K, J]`` (GEMMs over rows in power-of-two runs of tiles, so at
most ``1 + log2(n / t)`` shapes compile, whatever ``n``); then the tall panel
``P[c0:n]`` is factored by host LAPACK ``getrf`` (its pivots, global and 0-based, are
scipy's ``lu_factor`` layout; on accelerators, where only the out-of-core plan runs
these steps, the panel travels to the host for it). The panel is sharded by columns over
all devices and the ``L`` columns replicated (on CPU devices one shared host buffer, no
copy): every GEMM is local, no collective.

Pivots are applied lazily. A finished column is kept (in memory, or in the store) as it
was when factored: the later panels' interchanges are not applied to it. Instead the
panel being swept is moved into each ``L`` column's row order before that column's
sweep (the rows panel ``K`` interchanged: at most ``2t``, a gather on the devices), so
no finished column is rewritten while the factorisation runs. At the end every column's
rows below its diagonal tile are put in the final order: the in-core plan while it
assembles the factor, the out-of-core plan by one fix-up step per column (read, gather,
write back; recorded).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.errors import NonFiniteError, SingularMatrixError
from jaxwren.sharding.mesh import COLS, ROWS
from jaxwren.sharding.platform import platform_profile
from jaxwren.sharding.tiles import host_copy, replicate
from jaxwren.storage.buffers import aligned_empty

__all__ = ["Pivots", "Sweep", "factor_panel", "row_runs"]

_DEV = (ROWS, COLS)


def row_runs(first: int, nt: int) -> list[tuple[int, int]]:
    """``(tile, count)`` runs covering tiles ``first .. nt - 1``, counts powers of two,
    largest first: the GEMM shapes of a sweep."""
    out, left, at = [], nt - first, first
    while left > 0:
        c = 1 << (left.bit_length() - 1)
        out.append((at, c))
        at, left = at + c, left - c
    return out


class Pivots:
    """The run's interchanges on the host: ``piv`` (global, 0-based, the padding its own)
    and the row order after each panel: row ``i`` of state ``j`` holds row ``perm(j)[i]``
    of ``A`` (panels ``0 .. j-1`` applied)."""

    def __init__(self, n_pad: int, t: int) -> None:
        self.t = t
        self.piv = np.arange(n_pad, dtype=np.int64)
        self._perm: dict[int, np.ndarray] = {0: np.arange(n_pad)}

    def set(self, jj: int, local: np.ndarray) -> None:
        """Panel ``jj``'s pivots, local to its first row (LAPACK's, 0-based)."""
        c0 = jj * self.t
        new = c0 + np.asarray(local, np.int64)
        if not np.array_equal(self.piv[c0 : c0 + len(new)], new):
            self._perm = {j: p for j, p in self._perm.items() if j <= jj}
        self.piv[c0 : c0 + len(new)] = new

    def step(self, jj: int) -> np.ndarray:
        """``idx`` with ``state(jj + 1) = state(jj)[idx]``: panel ``jj``'s swaps."""
        idx = np.arange(len(self.piv))
        for i in range(jj * self.t, min((jj + 1) * self.t, len(self.piv))):
            p = self.piv[i]
            if p != i:
                idx[i], idx[p] = idx[p], idx[i]
        return idx

    def perm(self, j: int) -> np.ndarray:
        got = self._perm.get(j)
        if got is None:
            got = self._perm[j] = self.perm(j - 1)[self.step(j - 1)]
        return got

    def between(self, s: int, j: int) -> np.ndarray:
        """``idx`` taking rows in state ``s`` to state ``j``."""
        if j == s + 1:
            return self.step(s)
        inv = np.empty_like(self.perm(s))
        inv[self.perm(s)] = np.arange(len(inv))
        return inv[self.perm(j)]


def _pairs(idx: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """``(dst, src)`` of the rows ``idx`` moves, padded (with copies of the first pair,
    or row 0 onto itself) to ``2t`` or, for more, to all rows: two shapes compile."""
    dst = np.flatnonzero(idx != np.arange(len(idx))).astype(np.int32)
    size = 2 * t if len(dst) <= 2 * t else len(idx)
    pad = dst[:1] if len(dst) else np.zeros(1, np.int32)
    src = idx[dst].astype(np.int32)
    fill = size - len(dst)
    return (np.concatenate([dst, np.repeat(pad, fill)]),
            np.concatenate([src, np.repeat(idx[pad].astype(np.int32), fill)]))  # fmt: skip


@functools.cache
def _kernels(mesh: Mesh) -> dict[str, Any]:
    """The sweep's jitted programs, the panel sharded by columns, everything local."""
    col, rep = P(None, _DEV), P()

    def local(fn: Any, ins: tuple, outs: Any, donate: tuple = (0,)) -> Any:
        body = jax.shard_map(fn, mesh=mesh, in_specs=ins, out_specs=outs)
        return jax.jit(body, donate_argnums=donate)

    def move(p: jax.Array, dst: jax.Array, src: jax.Array) -> jax.Array:
        return p.at[dst].set(p[src])

    def trsm(p: jax.Array, diag: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
        t = diag.shape[0]
        eye = jnp.eye(t, dtype=diag.dtype)
        low = jnp.tril(diag, -1) + eye
        pk = lax.dynamic_slice_in_dim(p, k * t, t, 0)
        u = lax.linalg.triangular_solve(low, pk, left_side=True, lower=True, unit_diagonal=True)
        return lax.dynamic_update_slice_in_dim(p, u, k * t, 0), u

    def gemm(p: jax.Array, low: jax.Array, u: jax.Array, r0: jax.Array) -> jax.Array:
        h = low.shape[0]
        part = lax.dynamic_slice_in_dim(p, r0, h, 0)
        part = part - jnp.matmul(low, u, precision=lax.Precision.HIGHEST)
        return lax.dynamic_update_slice_in_dim(p, part, r0, 0)

    def absmax(p: jax.Array, rows: jax.Array) -> jax.Array:
        i = lax.broadcasted_iota(jnp.int32, p.shape, 0)
        m = jnp.max(jnp.where(i < rows, jnp.abs(p), jnp.zeros((), p.dtype)))
        return lax.pmax(m, _DEV)

    return {
        "cast": jax.jit(lambda p: p.astype(jnp.float32)),
        "move": local(move, (col, rep, rep), col),
        "trsm": local(trsm, (col, rep, rep), (col, col)),
        "gemm": local(gemm, (col, rep, col, rep), col),
        "absmax": local(absmax, (col, rep), rep, ()),
    }


class Sweep:
    """One column's panel on the devices (sharded by columns) and the sweep of finished
    ``L`` columns over it, each given as a host array of its rows ``K t .. n_pad`` in
    its stored row order ``state``."""

    def __init__(self, mesh: Mesh, t: int, nt: int, piv: Pivots) -> None:
        self.mesh, self.t, self.nt, self.piv = mesh, t, nt, piv
        self.k = _kernels(mesh)
        self.rep = NamedSharding(mesh, P())
        self.col = NamedSharding(mesh, P(None, _DEV))
        self._rows: dict[int, jax.Array] = {}

    def row(self, i: int) -> jax.Array:
        """The int32 scalar ``i`` on the devices, made once (a numpy scalar argument is
        put on every device at each call: measured 0.2-0.3 ms more a call on 8 CPU
        devices, loaded box)."""
        got = self._rows.get(i)
        if got is None:
            got = self._rows[i] = jax.device_put(np.int32(i), self.rep)
        return got

    def view(self, host: np.ndarray, r0: int, r1: int) -> jax.Array:
        """Rows ``r0:r1`` of ``host`` replicated (a zero-copy view on CPU devices)."""
        return replicate(host[r0:r1], self.rep, adopt=True)

    host = False

    def start(self, p: jax.Array, dtype: np.dtype) -> jax.Array:
        """The read panel in the factor's dtype (a copy when cast: the read is kept)."""
        return p if p.dtype == dtype else self.k["cast"](p)

    def absmax(self, p: jax.Array, rows: int) -> jax.Array:
        """``max |p[:rows]|`` (a device scalar: read when the run ends)."""
        return self.k["absmax"](p, np.int32(rows))

    @staticmethod
    def column(p: jax.Array) -> np.ndarray:
        return host_column(p)

    @staticmethod
    def threads() -> Any:
        """BLAS as the runner set it (one thread: the device threads run beside)."""
        return contextlib.nullcontext()

    def warm(self, n_pad: int, dtype: np.dtype) -> None:
        """Compiles every kernel of the sweep ahead of time, side by side (XLA compiles
        without the GIL; the runner calls this on a background thread while the first
        reads are in flight)."""
        t, i32 = self.t, np.dtype(np.int32)

        def spec(shape: tuple, sh: Any, dt: Any = dtype) -> jax.ShapeDtypeStruct:
            return jax.ShapeDtypeStruct(shape, dt, sharding=sh)

        # host (numpy) arguments: no sharding, as they are passed
        p, one = spec((n_pad, t), self.col), spec((), None, i32)
        jobs = [("absmax", (p, one))]
        if self.nt > 1:
            idx, u = spec((2 * t,), None, i32), spec((t, t), self.col)
            at = spec((), self.rep, i32)  # (row offsets: device scalars, see row())
            jobs += [("move", (p, idx, idx)), ("trsm", (p, spec((t, t), self.rep), at))]
            counts = {c for k in range(self.nt - 1) for _, c in row_runs(k + 1, self.nt)}
            jobs += [("gemm", (p, spec((c * t, t), self.rep), u, at)) for c in sorted(counts)]
        with concurrent.futures.ThreadPoolExecutor(4, "jaxwren-lu-warm") as pool:
            done = [pool.submit(lambda k=k, a=a: self.k[k].lower(*a).compile()) for k, a in jobs]
            for f in done:
                f.result()

    def to_state(self, p: jax.Array, cur: int, want: int) -> jax.Array:
        if cur == want:
            return p
        dst, src = _pairs(self.piv.between(cur, want), self.t)
        return self.k["move"](p, dst, src)

    def apply(self, p: jax.Array, cur: int, k: int, low: np.ndarray, state: int) -> jax.Array:
        """Sweeps column ``k`` (``low``: its rows from ``k t``, in row order ``state``)
        over ``p`` (in row order ``cur``); returns ``p`` in row order ``state``."""
        t = self.t
        p = self.to_state(p, cur, state)
        diag = self.view(low, 0, t)
        p, u = self.k["trsm"](p, diag, self.row(k))
        for at, count in row_runs(k + 1, self.nt):
            r0 = (at - k) * t
            low_rows = self.view(low, r0, r0 + count * t)
            p = self.k["gemm"](p, low_rows, u, self.row(at * t))
        return p


def factor_panel(col: np.ndarray, jj: int, n: int, t: int, piv: Pivots, where: str,
                 allow_singular: bool) -> tuple[int, float]:  # fmt: skip
    """Host LAPACK ``getrf`` of ``col[c0:n, :w]`` (``col``: the swept column, ``n_pad x
    t``) in place (C-ordered: recursively, :func:`.host_blas.getrf_rows`; else through a
    Fortran-ordered copy); records its pivots. Returns ``(info, max |U|)`` of the column (the
    rows above the panel and the diagonal tile's upper triangle). Raises for NaN/Inf
    and, unless ``allow_singular``, for an exactly zero pivot; ``allow_singular`` None
    (a refined solve) raises neither: ``info`` says where it failed."""
    from jaxwren.linalg.host_blas import getrf, getrf_rows

    c0, w = jj * t, min(t, n - jj * t)
    lu = col[c0:n, :w]
    if lu.strides[1] == lu.itemsize:
        local, info = getrf_rows(lu)
    else:
        panel = np.asfortranarray(lu)
        local, info = getrf(panel)
        lu[...] = panel
    piv.set(jj, local)
    maxu = max((float(np.abs(np.triu(lu[r : r + 64], r)).max()) for r in range(0, w, 64)),
               default=0.0)  # (64 rows at a time: no temporary of the panel's size)  # fmt: skip
    finite = bool(np.isfinite(maxu) and np.isfinite(lu.max()) and np.isfinite(lu.min()))
    if allow_singular is None and not finite:
        return c0, np.inf  # (a refined solve falls back to float64)
    if not finite:
        raise NonFiniteError(
            f"{where}: the factor is not finite: the matrix holds NaN or Inf; clean it "
            "(e.g. np.nan_to_num) first."
        )
    if info > 0 and not allow_singular:
        c = c0 + info - 1
        raise SingularMatrixError(
            f"{where}: the matrix is singular: U[{c}, {c}] is exactly zero (column {c}; "
            f"LAPACK's info = {c + 1}); nothing was stored. For a least-squares solution "
            "use jw.lstsq.",
            column=c,
        )
    return (c0 + info - 1 if info > 0 else -1), maxu


def refine(lu: np.ndarray, piv: np.ndarray, b: np.ndarray, panels: list | None, t: int,
           info: int, itmax: int = 10) -> tuple[np.ndarray, int, float]:  # fmt: skip
    """``(x, corrections, backward error)`` of ``A x = b`` from the factor (LAPACK
    ``getrs``); with ``panels`` (A's column panels in float64, sharded by columns)
    ``x`` is refined with float64 residuals ``b - A x`` until the backward error
    ``max_j ||r_j|| / (||A|| ||x_j||)`` (inf norms) is below ``eps64``, stops halving,
    or ``itmax`` corrections ran (as :func:`jaxwren.linalg.solve._refine`; converged
    means ``sqrt(n) eps64``). ``info >= 0``: the factor failed (no
    solve)."""
    from scipy.linalg import lapack

    n = len(b)
    if info >= 0:
        return np.full_like(b, np.nan), 0, np.inf
    getrs = lapack.get_lapack_funcs("getrs", (lu,))
    piv32 = piv.astype(np.int32)

    def solve(rhs: np.ndarray) -> np.ndarray:  # lu: Fortran-ordered, not copied
        x, _ = getrs(lu, piv32, rhs.astype(lu.dtype))
        return x.astype(b.dtype)

    x = solve(b)
    if panels is None:
        return x, 0, 0.0
    anorm = np.zeros(n)
    for p in panels:  # row sums of |A|, from the kept shards
        for sh in p.addressable_shards:
            if not sh.replica_id:
                anorm += np.abs(np.asarray(sh.data)[:n]).sum(axis=1)
    anorm_max = float(anorm.max())

    def residual(x: np.ndarray) -> tuple[np.ndarray, float]:
        r = b.copy()
        for jj, p in enumerate(panels):
            for sh in p.addressable_shards:
                if sh.replica_id:
                    continue
                cols = sh.index[1].indices(p.shape[1])
                c0, c1 = jj * t + cols[0], min(jj * t + cols[1], n)
                if c1 > c0:
                    r -= np.asarray(sh.data)[:n, : c1 - c0] @ x[c0:c1]
        rn, xn = np.abs(r).max(axis=0), np.abs(x).max(axis=0)
        scaled = rn / (anorm_max * np.where(xn > 0, xn, 1))
        e = np.where(xn > 0, scaled, np.where(rn > 0, np.inf, 0))
        return r, float(e.max())

    aim = np.finfo(np.float64).eps
    r, e = residual(x)
    it = 0
    while it < itmax and e > aim:
        x2 = x + solve(r)
        r2, e2 = residual(x2)
        it += 1
        if not e2 <= 0.5 * e:
            if e2 < e:
                x, e = x2, e2
            break
        x, r, e = x2, r2, e2
    return x, it, e


def inverse(lu: np.ndarray, piv: np.ndarray, info: int) -> np.ndarray:
    """``A^-1`` from the Fortran-ordered factor by LAPACK ``getri`` (in place, as
    ``scipy.linalg.inv``); ``info >= 0`` (a failed factor): NaN."""
    from scipy.linalg import lapack

    if info >= 0:
        return np.full_like(lu, np.nan)
    getri, getri_lwork = lapack.get_lapack_funcs(("getri", "getri_lwork"), (lu,))
    lwork, _ = getri_lwork(lu.shape[0])
    out, _ = getri(lu, piv.astype(np.int32), lwork=int(1.01 * lwork) + 1, overwrite_lu=1)
    return out


def host_column(p: jax.Array) -> np.ndarray:
    """The swept panel as a fresh, writable host array."""
    if platform_profile(p).shares_host_memory:  # CPU devices: copied shard by shard
        return host_copy(p)
    out = aligned_empty(p.shape, p.dtype)
    out[...] = np.asarray(p)
    return out
