"""Cholesky factorisation that never gathers the matrix, in-core or out-of-core.

In-core (the matrix and its factor fit the budget): one step on the engine — the matrix
is read from the host (store or memory) straight into the 2-D block-cyclic layout
(:class:`CyclicSource`: the permutation is a host memcpy), factored by the ``shard_map``
kernel of ``cholesky_kernel`` (compiled once: ``fori_loop``s over block columns; no device
ever holds the whole matrix), and put back in natural order on the host, in the buffer the
input was read into. A stored factor is written from there as whole chunks, skipping the
blocks above the diagonal (the run emptied ``out``; absent blocks read as zeros).

On one process's CPU devices a stored factor takes the tile plan below even when the
kernel fits (see :func:`tiles_first`), its finished tiles kept in host memory when the
budget holds them. Out-of-core: a left-looking tile plan over the store. Tile ``L[I, J]``
(``I >= J``) is ``A[I, J] - sum_K L[I, K] L[J, K]^T`` (one GEMM step per chunk of K tiles,
as wide as the budget allows), then the diagonal tile is factored (LAPACK: on the host
for CPU devices, else on one device) and the others multiplied by the inverse of
``L[J, J]``, carried through the column. Tiles are sharded by rows over all devices with
the right-hand panels replicated: no collectives. Every finished tile is written once,
then a completion record: a rerun with the same input and ``out`` skips finished tiles.
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

from jaxwren.config import RunSpec, StorageConfig
from jaxwren.dtypes import result_dtype
from jaxwren.engine.plan import Plan, Read, Step, Write
from jaxwren.engine.problem import Candidate, Output, Problem, Resume, Targets
from jaxwren.engine.run import run
from jaxwren.errors import (
    ConfigError,
    NonFiniteError,
    NotPositiveDefiniteError,
    ShapeMismatchError,
)
from jaxwren.linalg import cholesky_kernel as ck
from jaxwren.linalg.base import Op
from jaxwren.linalg.common import pad_identity, round_up
from jaxwren.sharding.cyclic import CyclicSource, natural_from_cyclic
from jaxwren.sharding.lower import LowerTriangle
from jaxwren.sharding.mesh import COLS, ROWS
from jaxwren.sharding.multihost import to_host
from jaxwren.sharding.platform import platform_profile
from jaxwren.sharding.tiles import host_copy, replicate
from jaxwren.storage.bigmatrix import BigMatrix
from jaxwren.storage.buffers import aligned_empty

__all__ = ["Cholesky", "cholesky"]

_KB = (256, 128, 64, 32, 16, 8, 4, 2, 1)


def _incore_block(n: int, mesh: Mesh) -> int:
    """Kernel block for a whole n x n matrix: 128 up to n = 6144, 256 above (measured at
    n = 4096 f64 on 8 CPU devices: b=128 0.52 s, b=256 0.59 s; n = 8192: equal), smaller
    for small n (load balance). The kernel compiles once whatever the block count."""
    unit = math.lcm(mesh.shape[ROWS], mesh.shape[COLS])
    top = 128 if n <= 6144 else 256
    return next(b for b in _KB if b <= top and b * unit * 2 <= max(n, 2 * unit))


# ------------------------------------------------------------------------------ kernels
def _factor(x: jax.Array, n: int, kb: int, mesh: Mesh, stored: bool = False
            ) -> tuple[jax.Array, ...]:  # fmt: skip
    """x (natural layout, n_pad x n_pad, P(rows, cols)) -> (L natural, info): permuted to
    block-cyclic on the devices, factored by the shard_map kernel, and back (a ``stored``
    result as a host array: written lower-only, see :func:`_factor_cyclic`)."""
    return _factor_cyclic(ck.to_cyclic(x, kb, mesh), n, kb, mesh, stored=stored)


def _factor_cyclic(x_cyc: jax.Array, n: int, kb: int, mesh: Mesh, src: CyclicSource | None = None,
                   stored: bool = False) -> tuple[jax.Array, ...]:  # fmt: skip
    """x in cyclic layout (read so from the host by ``src``) -> (L natural n x n, info).
    ``L`` is assembled in ``src``'s host buffer (no fresh pages); a ``stored`` result
    (only written to the store) stays there, a host array (written as is, its blocks
    above the diagonal skipped: the runner honours ``Write.lower`` for host results)."""
    l_cyc, info = ck.cholesky_cyclic(x_cyc, block=kb, n=n, mesh=mesh)
    buffer = None if src is None else src.take_buffer()
    return natural_from_cyclic(l_cyc, kb, mesh, n, buffer=buffer, host=stored), info


def _check_factor(outs: tuple, *, kb: int, offset: int, src: Any, n: int) -> None:
    """A diagonal tile's ``(L, info)`` (out-of-core); the input is checked for NaN/Inf
    only when the factor failed, as in :func:`_check_incore`."""
    k = int(outs[1])
    if k >= 0:
        _raise_failed(_lower_finite(src, n), k, kb=kb, offset=offset)


def _check_incore(outs: tuple, *, kb: int, src: Any, n: int) -> None:
    """The in-core kernel's ``(L, info)``. A NaN or Inf in the lower triangle always fails
    the factor (see :func:`ck.cholesky_cyclic`), so the input is checked only then, to
    name the right cause (a separate pass on every call cost ~20 ms at n = 4096)."""
    k = int(outs[1])
    if k >= 0:
        _raise_failed(_lower_finite(src, n), k, kb=kb)


def _raise_failed(finite: bool, k: int, *, kb: int, offset: int = 0) -> None:
    if not finite:
        raise NonFiniteError(
            "cholesky: the input holds NaN or Inf on or below the diagonal; clean the "
            "matrix (e.g. np.nan_to_num) before factoring."
        )
    if k >= 0:
        col = offset + k * kb
        raise NotPositiveDefiniteError(
            f"cholesky: the matrix is not positive definite: the factorisation failed in "
            f"block column {offset // kb + k if kb else k} (columns {col}:{col + kb}); the "
            "leading minor there has a non-positive pivot. Check symmetry and conditioning "
            "(adding a small multiple of the identity regularises it)."
        )


@jax.jit
def _tril_finite(x: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(jnp.tril(x)))


def _lower_finite(src: Any, n: int) -> bool:
    """Whether the input's lower triangle is finite: a device array at once, a host or
    stored source by strips of rows (at most ~64 MiB read at a time)."""
    if isinstance(src, jax.Array):
        return bool(to_host(_tril_finite(src)))
    rows = max(1, (64 << 20) // (n * np.dtype(src.dtype).itemsize))
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        strip = aligned_empty((r1 - r0, r1), src.dtype)
        src.read_region_into_async(r0, r1, 0, r1, strip).result()
        lower = np.arange(r1)[None, :] <= np.arange(r0, r1)[:, None]
        if not np.isfinite(strip[lower]).all():
            return False
    return True


def _diag(acc: jax.Array, valid: jax.Array) -> tuple[jax.Array, ...]:
    """``(L, L^-1, info)`` of a diagonal tile from its lower triangle (LAPACK potrf and
    trsm; padding past ``valid`` as identity). ``info`` is 0 when the factor is not
    finite (a non-positive pivot gives NaN; so does a NaN or Inf in the input), else -1."""
    low = lax.linalg.cholesky(pad_identity(acc, valid), symmetrize_input=False)
    info = jnp.where(jnp.all(jnp.isfinite(low)), -1, 0).astype(jnp.int32)
    return low, _inverse(low), info


def _inverse(low: jax.Array) -> jax.Array:
    """``L^-1`` of a lower-triangular tile (LAPACK trsm against the identity)."""
    eye = jnp.eye(low.shape[0], dtype=low.dtype)
    return lax.linalg.triangular_solve(low, eye, left_side=True, lower=True)


@functools.cache
def _tile_kernel(kind: str, first: bool, mesh: Mesh):
    """Out-of-core tile kernels. Every tile is sharded by rows over all devices and the
    right-hand panels are replicated (one shared host buffer on CPU), so the updates and
    solves are local GEMMs: no collective anywhere (XLA's emulated CPU collectives cost
    more than the GEMMs at these sizes). ``valid`` is traced: one compile per plan."""
    srow = NamedSharding(mesh, P((ROWS, COLS), None))
    rep = NamedSharding(mesh, P())
    # (several processes: the runner's writer gathers a finished tile whose row shards
    # cut a block between processes and stores it whole from process 0)
    multi = any(d.process_index != jax.process_index() for d in mesh.devices.flat)

    def update(acc: jax.Array, li: jax.Array, lj: jax.Array) -> jax.Array:
        return _minus_products(acc, (li,), (lj,))

    if kind == "update":  # acc (or A) -= L[I, K] L[J, K]^T
        if first:
            return jax.jit(update, in_shardings=(srow, srow, rep), out_shardings=srow)
        return jax.jit(update, in_shardings=(srow, srow, rep), out_shardings=srow,
                       donate_argnums=0)  # fmt: skip
    if kind == "solve":  # L[I, J] = acc L[J, J]^-T, a GEMM with the carried inverse

        def solve(acc: jax.Array, inv: jax.Array) -> jax.Array:
            return lax.dot_general(acc, inv, (((1,), (1,)), ((), ())),
                                   precision=lax.Precision.HIGHEST)  # fmt: skip

        return jax.jit(solve, in_shardings=(srow, rep), out_shardings=srow)
    # "diag" (L[J, J] = chol(acc) and its inverse) and "inverse" (of a stored L[J, J], in
    # a resumed column). One process: on one device (the tile is small; the other devices
    # would only repeat it), the inverse then replicated (on CPU devices as one shared host
    # buffer, as the engine's tiles). Several processes: computed replicated.
    fn = _diag if kind == "diag" else _inverse
    if multi:
        return jax.jit(lambda x, *a: fn(lax.with_sharding_constraint(x, rep), *a),
                       out_shardings=rep)  # fmt: skip
    if platform_profile(mesh).host_lapack:  # CPU devices: LAPACK on the host
        return functools.partial(_host_tile, kind, rep)
    one, single = mesh.devices.flat[0], jax.jit(fn)

    def on_one(x: jax.Array, *args: jax.Array) -> Any:
        x1 = jax.device_put(x, one)
        if kind == "diag":
            x.delete()  # the accumulator (or A tile) is not used again: free it now
        outs = single(x1, *args)
        if kind == "inverse":
            return replicate(outs, rep)
        low, inv, info = outs
        # L[J, J] as a host array: the runner writes a host result lower-only (the tile's
        # blocks above the diagonal are absent), a device array whole
        return np.asarray(low), replicate(inv, rep), info

    return on_one


def _host_tile(kind: str, rep: NamedSharding, x: jax.Array, valid: Any = None) -> Any:
    """The "diag" / "inverse" tile kernels on CPU devices: the tile's shards gathered into
    one host buffer, factored there by LAPACK ``potrf`` and inverted by ``trtri`` (a third
    of ``trsm``'s flops against the identity), in place. ``L`` stays a host array (the
    runner writes it as is), ``L^-1`` is one shared host buffer. n = 4096 in tiles of
    512: the 8 diagonal steps 0.055-0.07 s, against 0.14 s jitted on one device. BLAS
    stays single-threaded (the runner's limit): lifted for these calls, OpenBLAS's
    threads went on spinning into the next GEMM steps (the plan ran 0.83-0.88 s against
    0.63-0.73 s)."""
    tile = host_copy(x)
    if kind == "inverse":
        return replicate(_trtri(tile), rep, adopt=True)
    x.delete()  # the accumulator (or A tile) is not used again: free it now
    info = _potrf(tile, int(valid))
    inv = aligned_empty(tile.shape, tile.dtype)
    inv[...] = tile if info < 0 else np.eye(tile.shape[0], dtype=tile.dtype)
    if info < 0:
        _trtri(inv)
    return tile, replicate(inv, rep, adopt=True), info


def _potrf(tile: np.ndarray, valid: int) -> int:
    """``tile`` := ``L`` of its lower triangle, in place (padding past ``valid`` as the
    identity, the strictly upper part zero); ``info`` as :func:`_diag` gives it. A NaN or
    Inf in the lower triangle fails the factor: a NaN or non-positive pivot, or an
    infinite diagonal entry of ``L``."""
    from scipy.linalg import lapack

    t = tile.shape[0]
    part = tile if valid == t else np.array(tile[:valid, :valid])
    potrf = lapack.get_lapack_funcs("potrf", (part,))
    # the C-ordered part's transpose is Fortran-ordered: its upper factor U = L^T
    _, bad = potrf(part.T, lower=0, clean=1, overwrite_a=1)
    if valid < t:
        tile[...] = 0
        tile[:valid, :valid] = part
        np.fill_diagonal(tile[valid:, valid:], 1)
    return 0 if bad != 0 or not np.isfinite(np.diagonal(tile)).all() else -1


def _trtri(low: np.ndarray) -> np.ndarray:
    """``L^-1`` of a lower-triangular host tile, in place (LAPACK trtri)."""
    from scipy.linalg import lapack

    trtri = lapack.get_lapack_funcs("trtri", (low,))
    trtri(low.T, lower=0, overwrite_c=1)  # (L^T)^-1 = (L^-1)^T
    return low


# --------------------------------------------------------------------------------- plans
@dataclasses.dataclass(frozen=True)
class _Setup:
    src: Any  # what to read A from (LowerTriangle for stored matrices)
    n: int
    dtype: np.dtype
    mesh: Mesh
    out: BigMatrix | None
    resume: Resume


def _incore_bytes(n: int, itemsize: int, mesh: Mesh) -> int:
    kb = _incore_block(n, mesh)
    n_pad = ck.padded_size(n, kb, mesh)
    return 4 * n_pad * n_pad * itemsize + 8 * n_pad * kb * itemsize


def _incore_plan(s: _Setup) -> tuple[Plan, int]:
    kb = _incore_block(s.n, s.mesh)
    n_pad = ck.padded_size(s.n, kb, s.mesh)
    sharding = NamedSharding(s.mesh, P(ROWS, COLS))
    write = Write(s.out, (0, 0), (s.n, s.n), lower=True)
    if isinstance(s.src, jax.Array):  # on accelerators: permuted on the devices
        read = Read(s.src, (0, s.n, 0, s.n), (n_pad, n_pad), sharding, s.dtype)
        factor, warm = functools.partial(_factor, stored=s.out is not None), None
    else:  # read from the host (store or memory) straight into the cyclic layout
        src = CyclicSource(s.src, kb, s.mesh)
        read = Read(src, (0, n_pad, 0, n_pad), (n_pad, n_pad), sharding, s.dtype)
        factor = functools.partial(_factor_cyclic, src=src, stored=s.out is not None)
        spec = jax.ShapeDtypeStruct((n_pad, n_pad), s.dtype, sharding=sharding)
        # compiled while A is read (the kernel takes exactly this input)
        warm = functools.partial(ck.compile_ahead, s.n, spec, kb, s.mesh)
    step = Step(
        reads=(read,),
        kernel=lambda _carry, x: (None, factor(x, s.n, kb, s.mesh)),
        writes=(write, Write(None)),
        label="factor",
        check=functools.partial(_check_incore, kb=kb, src=s.src, n=s.n),
        warm=warm,
    )
    proj = _incore_bytes(s.n, s.dtype.itemsize, s.mesh)
    return Plan("cholesky", [step], None, proj, proj, f"in-core, kernel block {kb}"), kb


def _tile_bytes(t: int, kw: int, itemsize: int, mesh: Mesh, prefetch: int) -> int:
    """Peak bytes of the tile plan: the K panels of the steps in flight (``L[I, K]`` by
    rows, ``L[J, K]`` replicated: one shared buffer on CPU, a copy per device and host
    staging elsewhere) and, in tiles, the A tiles in flight, the accumulator (updated in
    place) with the GEMM's product (or the diagonal step's gathered tile, factor, inverse
    and its host copy, after the accumulator is freed), two finished tiles on their way to
    the store (write-behind, also without prefetch) and the replicated inverse of the
    column's diagonal tile."""
    profile = platform_profile(mesh)
    copies = 1 if profile.shares_host_memory else mesh.devices.size
    panels = (prefetch + 1) * t * kw * (1 + copies)
    staging = prefetch * 2 * t * kw if profile.host_staging else 0
    tiles = (prefetch + 1 + 2 + 2 + copies) * t * t
    return (panels + staging + tiles) * itemsize


def _k_chunks(jj: int, kt: int) -> list[int]:
    """Widths (in tiles) of the GEMM steps of a tile in column ``jj``: greedily the widest
    of ``kt`` and the powers of two below it, so no step multiplies zero padding and at
    most ``1 + log2(kt)`` widths are compiled."""
    widths = sorted({kt} | {1 << i for i in range(kt.bit_length()) if 1 << i < kt}, reverse=True)
    chunks, left = [], jj
    while left:
        w = next(w for w in widths if w <= left)
        chunks.append(w)
        left -= w
    return chunks


def _update_steps(nt: int, kt: int) -> int:
    """GEMM steps of the tile plan."""
    return sum((nt - jj) * len(_k_chunks(jj, kt)) for jj in range(nt))


def _outofcore_plan(s: _Setup, tiling: tuple[int, ...], prefetch: int) -> Plan:
    """Left-looking over lower tiles, column by column. The carry is ``(acc, inv)``: the
    tile being updated and ``L[J, J]^-1`` of the current column (from its diagonal step,
    or, when a resumed run skips that step, from the stored ``L[J, J]``). ``resident``
    (a third element of the tiling; fresh runs only): finished tiles stay in host memory
    and the K panels are views of them instead of reads of the store."""
    t, kt = tiling[:2]  # tiles of t x t; each GEMM step takes kt K tiles (kw = kt * t wide)
    kw = kt * t
    keep = _Resident(s.mesh) if len(tiling) > 2 and not s.resume.finished else None
    nt = -(-s.n // t)
    srow = NamedSharding(s.mesh, P((ROWS, COLS), None))
    rep = NamedSharding(s.mesh, P())
    steps: list[Step] = []
    for jj in range(nt):
        have_inv = False  # whether the carry holds L[J, J]^-1 when the next solve runs
        for ii in range(jj, nt):
            key = s.resume.key(f"t{t}-{ii}-{jj}")
            skip = s.resume.done(key)
            a_read = Read(s.src, _reg(ii, jj, t), (t, t), srow, s.dtype)
            k0 = 0
            for q, width in enumerate(_k_chunks(jj, kt)):  # acc -= L[I, K] L[J, K]^T
                k1, kwq = k0 + width * t, width * t
                label = f"L[{ii},{jj}] -= L[{ii},{k0}:{k1}] L[{jj},{k0}:{k1}]^T"
                if keep is not None:  # the K tiles from memory: no reads but A's
                    kern = functools.partial(keep.update, fn=_resident_update(q == 0, s.mesh),
                                             ii=ii, jj=jj, ks=range(k0 // t, k1 // t))  # fmt: skip
                    steps.append(Step((a_read,) if q == 0 else (), kern, label=label))
                    k0 = k1
                    continue
                li = Read(s.out, (ii * t, ii * t + t, k0, k1), (t, kwq), srow, s.dtype)
                reads = (li, Read(s.out, (jj * t, jj * t + t, k0, k1), (t, kwq), rep, s.dtype))
                fn = _tile_kernel("update", q == 0, s.mesh)
                kern = (lambda c, a, li, lj, fn=fn: ((fn(a, li, lj), c[1]), ())) if q == 0 else \
                       (lambda c, li, lj, fn=fn: ((fn(c[0], li, lj), c[1]), ()))  # fmt: skip
                steps.append(Step((a_read, *reads) if q == 0 else reads, kern, skip=skip,
                                  label=label))  # fmt: skip
                k0 = k1
            size = (min(t, s.n - ii * t), min(t, s.n - jj * t))
            write = Write(s.out, (ii * t, jj * t), size, record=key, lower=ii == jj)
            from_a = jj == 0  # no update steps: the tile is A itself
            if ii == jj:
                steps.append(_diag_step(jj, t, s, a_read if from_a else None, write, skip))
                have_inv = not skip
            else:
                ljj = None if have_inv else Read(s.out, _reg(jj, jj, t), (t, t), rep, s.dtype)
                steps.append(_solve_step(ii, jj, s, a_read if from_a else None, ljj, write,
                                         skip))  # fmt: skip
                have_inv = have_inv or not skip
            if keep is not None:  # the finished tile stays in memory for later panels
                steps[-1] = dataclasses.replace(steps[-1], kernel=functools.partial(
                    keep.finished, steps[-1].kernel, key=(ii, jj)))  # fmt: skip
    proj = _tile_bytes(t, kw, s.dtype.itemsize, s.mesh, prefetch)
    desc = f"tile plan, {nt}x{nt} lower tiles of {t}, K panels of {kw}"
    if keep is not None:
        proj += _resident_bytes(s.n, t, s.dtype.itemsize)
        desc += ", finished tiles kept in memory"
    return Plan("cholesky", steps, lambda: (None, None), proj, proj, desc,
                write_behind=t * t * s.dtype.itemsize)  # fmt: skip


def _resident_bytes(n: int, t: int, itemsize: int) -> int:
    """The finished tiles a resident tile plan keeps: the lower triangle in tiles."""
    nt = -(-n // t)
    return nt * (nt + 1) // 2 * t * t * itemsize


@functools.cache
def _resident_update(first: bool, mesh: Mesh) -> Any:
    """``acc -= sum_q L[I, q] L[J, q]^T`` over K tiles given one by one (row-sharded and
    replicated views of host tiles); ``first``: acc is the A tile (not donated)."""
    srow = NamedSharding(mesh, P((ROWS, COLS), None))
    return jax.jit(_minus_products, out_shardings=srow, donate_argnums=() if first else (0,))


def _minus_products(acc: jax.Array, lis: tuple, ljs: tuple) -> jax.Array:
    """``acc - sum_q lis[q] ljs[q]^T``: the update of every tile plan step."""
    for li, lj in zip(lis, ljs, strict=True):
        acc = acc - lax.dot_general(li, lj, (((1,), (1,)), ((), ())),
                                    precision=lax.Precision.HIGHEST)  # fmt: skip
    return acc


class _Resident:
    """Finished ``L`` tiles of a tile plan kept in host memory (CPU devices, one process,
    a budget that holds the lower triangle): a K panel is a zero-copy view of them, by
    rows or replicated, instead of a read of the store. Re-reading the panels cost 0.55
    CPU-s per GiB on this VM (memmap copy into fresh buffers): 1.6 GiB at n = 8192."""

    def __init__(self, mesh: Mesh) -> None:
        self.srow = NamedSharding(mesh, P((ROWS, COLS), None))
        self.rep = NamedSharding(mesh, P())
        self.tiles: dict[tuple[int, int], np.ndarray] = {}
        self.views: dict[tuple[int, int, bool], jax.Array] = {}

    def view(self, key: tuple[int, int], rows: bool) -> jax.Array:
        got = self.views.get((*key, rows))
        if got is None:
            host = self.tiles[key]
            got = (jax.make_array_from_callback(host.shape, self.srow, lambda idx: host[idx])
                   if rows else replicate(host, self.rep, adopt=True))  # fmt: skip
            self.views[(*key, rows)] = got
        return got

    def update(self, carry: Any, *tiles: jax.Array, fn: Any, ii: int, jj: int,
               ks: range) -> tuple[tuple, tuple]:  # fmt: skip
        acc = tiles[0] if tiles else carry[0]
        lis = tuple(self.view((ii, k), True) for k in ks)
        ljs = tuple(self.view((jj, k), False) for k in ks)
        return (fn(acc, lis, ljs), carry[1]), ()

    def finished(self, kernel: Any, carry: Any, *tiles: jax.Array,
                 key: tuple[int, int]) -> tuple[Any, tuple]:  # fmt: skip
        """A diagonal or solve step whose ``L`` tile is kept (a host array: the runner
        writes it as one region, as it is)."""
        carry, outs = kernel(carry, *tiles)
        low = outs[0]
        if not isinstance(low, np.ndarray):
            low, dev = host_copy(low), low
            dev.delete()
        self.tiles[key] = low
        return carry, (low, *outs[1:])


def _reg(i: int, j: int, t: int) -> tuple[int, int, int, int]:
    return (i * t, (i + 1) * t, j * t, (j + 1) * t)


def _diag_step(jj: int, t: int, s: _Setup, a_read: Read | None, write: Write,
               skip: bool) -> Step:  # fmt: skip
    """``L[J, J] = chol(acc)``; its inverse goes into the carry for the column's solves."""
    diag = _tile_kernel("diag", False, s.mesh)
    valid = jnp.int32(min(t, s.n - jj * t))

    def kern(carry: Any, *tiles: jax.Array) -> tuple[tuple, tuple]:
        low, inv, info = diag(tiles[0] if tiles else carry[0], valid)
        return (None, inv), (low, info)

    check = functools.partial(_check_factor, kb=t, offset=jj * t, src=s.src, n=s.n)
    return Step(
        (a_read,) if a_read is not None else (),
        kern,
        (write, Write(None)),
        label=f"L[{jj},{jj}] = chol",
        skip=skip,
        check=check,
    )


def _solve_step(ii: int, jj: int, s: _Setup, a_read: Read | None, ljj: Read | None,
                write: Write, skip: bool) -> Step:  # fmt: skip
    """``L[I, J] = acc L[J, J]^-T``: a GEMM with the inverse in the carry, or, when this
    run skipped the column's diagonal step, with the inverse of the stored ``L[J, J]``."""
    solve = _tile_kernel("solve", False, s.mesh)
    inverse = _tile_kernel("inverse", False, s.mesh)
    reads = tuple(r for r in (a_read, ljj) if r is not None)

    def kern(carry: Any, *tiles: jax.Array) -> tuple[tuple, tuple]:
        acc = tiles[0] if a_read is not None else carry[0]
        inv = inverse(tiles[-1]) if ljj is not None else carry[1]
        return (None, inv), (solve(acc, inv),)

    return Step(reads, kern, (write,), label=f"L[{ii},{jj}] = A L[{jj},{jj}]^-T", skip=skip)


# ---------------------------------------------------------------------------------- op
_TILE_FIRST = 1024  # the largest tile of a tile plan ranked before the in-core kernel


def tiles_first(mesh: Mesh) -> bool:
    """Whether a stored factor takes the tile plan (tiles up to ``_TILE_FIRST``, at least
    two per side) before the in-core kernel even when the kernel fits: on this process's
    CPU devices. Measured store->store on 8 CPU devices (2 cores), best of 3, tile plan
    vs kernel: n = 1000 0.033 vs 0.044 s, 2000 0.13 vs 0.17 s, 4096 0.58 vs 0.73 s,
    8192 3.2-3.6 vs 4.5-4.9 s; first calls 0.27 vs 1.0 s at n = 2000 (a few small
    compiles). The tiles' updates and solves are local GEMMs (no collective, no cyclic
    permutation) and the diagonal tile goes to host LAPACK; the kernel's per-block
    steps and psums cost more than they save on emulated devices. Accelerators and
    several processes keep the kernel first (not measured here): the platform profile's
    ``host_lapack`` on this process's devices."""
    here = jax.process_index()
    local = all(d.process_index == here for d in mesh.devices.flat)
    return local and platform_profile(mesh).host_lapack


class Cholesky(Op):
    """``L`` with ``A = L L^T``: in-core on the cyclic kernel when it fits the budget,
    else the left-looking out-of-core tile plan (resumable: a record per stored tile)."""

    name = "cholesky"
    operand_names = ("a",)

    def __init__(self, plan: str = "auto") -> None:
        """``plan``: ``"auto"`` (see :func:`tiles_first`), or ``"kernel"`` / ``"tiles"`` to
        rank the in-core kernel or the tile plan first for a stored factor whatever the
        devices (benchmarks and tests compare them; the budget still decides)."""
        if plan not in ("auto", "kernel", "tiles"):
            raise ConfigError(f"cholesky: plan={plan!r} must be 'auto', 'kernel' or 'tiles'.")
        self.prefer = plan

    def check(self, operands: Any, mesh: Mesh) -> Problem:
        (a,) = operands
        if a.shape[0] != a.shape[1]:
            raise ShapeMismatchError(
                f"cholesky: a must be square, got shape {tuple(a.shape)}; the factorisation "
                "is defined for symmetric positive-definite (n, n) matrices."
            )
        dtype = result_dtype(a.dtype, where="cholesky", policy="factor")
        n = a.shape[0]
        stored = isinstance(a, BigMatrix)
        block = a.block_shape if stored else None
        src = LowerTriangle(a) if stored else a  # the upper triangle is never read
        return Problem((src,), (Output("L", (n, n), dtype, block),), (), mesh, data=a)

    def tilings(self, problem: Problem, targets: Targets) -> list[Candidate]:
        n, dtype, mesh = problem.outputs[0].shape[0], problem.outputs[0].dtype, problem.mesh
        incore = _incore_bytes(n, dtype.itemsize, mesh)
        cands = [Candidate(None, lambda _pf: incore, (1, 0, 0), True)]
        a = problem.data
        out_block = targets["L"] or problem.outputs[0].block_shape or (min(n, 1024),)
        granule = math.lcm(a.block_shape[0] if isinstance(a, BigMatrix) else 1, out_block[0])
        unit = math.lcm(granule, mesh.devices.size)  # tiles are sharded by rows over all
        tiles = tiles_first(mesh) if self.prefer == "auto" else self.prefer == "tiles"
        first = max(_TILE_FIRST, unit) if tiles else 0
        # finished tiles can stay in host memory, later panels views of them
        here = jax.process_index()
        host = platform_profile(mesh).shares_host_memory and all(
            d.process_index == here for d in mesh.devices.flat
        )
        for t in range(unit, round_up(n, unit) + unit, unit):
            nt = -(-n // t)
            for kt in range(1, max(nt - 1, 1) + 1):  # fewest steps first, then least memory
                # 0: before the in-core kernel, with K panels of at most 2 tiles (n = 8192
                # in tiles of 1024: 2.95-3.1 s, against 3.1-3.6 s with 4-7 tile panels)
                rank = 0 if t <= first and nt >= 2 and kt <= 2 else 2
                proj = functools.partial(_tile_bytes, t, kt * t, dtype.itemsize, mesh)
                steps = _update_steps(nt, kt) + nt * (nt + 1) // 2
                cands.append(Candidate((t, kt), proj, (rank, steps, -t, 1), False))
                if rank == 0 and host:  # the same, its finished tiles kept: first if it fits
                    kept = _resident_bytes(n, t, dtype.itemsize)
                    cands.append(Candidate((t, kt, True), lambda pf, p=proj, k=kept: p(pf) + k,
                                           (rank, steps, -t, 0), False))  # fmt: skip
        return cands

    def plan(self, problem: Problem, tiling: Any, targets: Targets, resume: Resume,
             prefetch: int) -> Plan:  # fmt: skip
        out = problem.outputs[0]
        setup = _Setup(problem.sources[0], out.shape[0], out.dtype, problem.mesh,
                       targets["L"], resume)  # fmt: skip
        if tiling is None:
            return _incore_plan(setup)[0]
        return _outofcore_plan(setup, tiling, prefetch)


def cholesky(
    a: Any,
    out: Any = None,
    *,
    mesh: Mesh | None = None,
    memory_budget: int | str | None = None,
    block_shape: tuple[int, int] | None = None,
    storage: StorageConfig | None = None,
    progress: bool | None = None,
    prefetch: int = 1,
) -> jax.Array | BigMatrix:
    """Lower Cholesky factor ``L`` of a symmetric positive-definite matrix (``A = L L^T``).

    Matches ``numpy.linalg.cholesky`` / ``scipy.linalg.cholesky(lower=True)``. Only the
    blocks on and below the diagonal of a stored ``a`` are read (the upper triangle may be
    absent); the strictly upper part of ``L`` is zero.

    Args:
      a: ``(n, n)`` BigMatrix, jax.Array or numpy array; float32 or float64 (integers
        are factored in jnp's default float type, 16-bit floats in float32).
      out: None to return a jax.Array sharded ``P('rows', 'cols')`` (as far as the mesh
        divides n); a URL or BigMatrix to store ``L``. A stored out-of-core run records
        each finished tile: a rerun after an interruption on the same input data skips
        them (any write to ``a`` or ``out`` voids the records).
      mesh: a 2-D mesh with axes ``('rows', 'cols')``; None: all devices.
      memory_budget: bytes (or ``"2GiB"``) the run may hold; None: from the devices.
        Below what the in-core factorisation needs, the out-of-core tile plan runs.
      block_shape: block shape of a newly created ``out`` (default: ``a``'s or 1024).
      storage: StorageConfig for an ``out`` URL.
      progress: progress bar for out-of-core runs (None: when stderr is a terminal).
      prefetch: steps of reads in flight ahead of the computing step.

    Returns:
      ``L``: a sharded jax.Array, or the BigMatrix ``out``.

    Raises:
      ShapeMismatchError: ``a`` is not square, or ``out`` has the wrong shape/dtype.
      OutputConflictError: ``out`` is, contains or lies inside an input or another matrix.
      DTypeMismatchError: unsupported dtype.
      NonFiniteError: NaN or Inf in the lower triangle.
      NotPositiveDefiniteError: the factorisation hit a non-positive pivot (names the
        block column); an ``out`` created by the call is removed again.
      MemoryBudgetError: not even the smallest tile plan fits ``memory_budget``.
    """
    spec = RunSpec(mesh=mesh, memory_budget=memory_budget, storage=storage,
                   progress=progress, prefetch=prefetch, block_shape=block_shape)  # fmt: skip
    return run(Cholesky(), (a,), out, spec).value
