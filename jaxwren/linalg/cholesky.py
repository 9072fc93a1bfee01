"""Cholesky factorisation that never gathers the matrix, in-core or out-of-core.

In-core (the matrix and its factor fit the budget): one step on the engine — the matrix
is read from the host (store or memory) straight into the 2-D block-cyclic layout
(:class:`CyclicSource`: the permutation is a host memcpy), factored by the ``shard_map``
kernel of ``cholesky_kernel`` (compiled once: ``fori_loop``s over block columns; no device
ever holds the whole matrix), and put back in natural order on the host, in the buffer the
input was read into. A stored factor is written from there as whole chunks, skipping the
blocks above the diagonal (the run emptied ``out``; absent blocks read as zeros).

Out-of-core: a left-looking tile plan over the store. Tile ``L[I, J]`` (``I >= J``) is
``A[I, J] - sum_K L[I, K] L[J, K]^T`` (one GEMM step per chunk of K tiles, as wide as the
budget allows), then the diagonal tile is factored by the same kernel and the others
solved against ``L[J, J]`` (read back from the store). Every finished tile is written
once, then a completion record: a rerun with the same input and ``out`` skips finished
tiles.
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
from jaxwren.errors import NonFiniteError, NotPositiveDefiniteError, ShapeMismatchError
from jaxwren.linalg import cholesky_kernel as ck
from jaxwren.linalg.base import Op
from jaxwren.linalg.common import pad_identity, round_up
from jaxwren.linalg.matmul import gemm_projected_bytes
from jaxwren.sharding.cyclic import CyclicSource, natural_from_cyclic
from jaxwren.sharding.lower import LowerTriangle
from jaxwren.sharding.mesh import COLS, ROWS
from jaxwren.sharding.tiles import replicas_shared
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = ["Cholesky", "cholesky"]

_KB = (256, 128, 64, 32, 16, 8, 4, 2, 1)


def _kernel_block(size: int, mesh: Mesh) -> int:
    """The cyclic kernel's block for a ``size`` x ``size`` (padded) problem."""
    unit = math.lcm(mesh.shape[ROWS], mesh.shape[COLS])
    return next(b for b in _KB if b * unit <= max(size, unit) and size % (b * unit) == 0)


def _incore_block(n: int, mesh: Mesh) -> int:
    """Kernel block for a whole n x n matrix: 128 up to n = 6144, 256 above (measured at
    n = 4096 f64 on 8 CPU devices: b=128 0.52 s, b=256 0.59 s; n = 8192: equal), smaller
    for small n (load balance). The kernel compiles once whatever the block count."""
    unit = math.lcm(mesh.shape[ROWS], mesh.shape[COLS])
    top = 128 if n <= 6144 else 256
    return next(b for b in _KB if b <= top and b * unit * 2 <= max(n, 2 * unit))


# ------------------------------------------------------------------------------ kernels
def _factor(x: jax.Array, n: int, kb: int, mesh: Mesh) -> tuple[jax.Array, ...]:
    """x (natural layout, n_pad x n_pad, P(rows, cols)) -> (L natural, info, finite):
    permuted to block-cyclic on the devices, factored by the shard_map kernel, and back."""
    return _factor_cyclic(ck.to_cyclic(x, kb, mesh), n, kb, mesh)


def _factor_cyclic(x_cyc: jax.Array, n: int, kb: int, mesh: Mesh, src: CyclicSource | None = None,
                   stored: bool = False) -> tuple[jax.Array, ...]:  # fmt: skip
    """x in cyclic layout (read so from the host by ``src``) -> (L natural n x n, info,
    finite). ``L`` is assembled in ``src``'s host buffer (no fresh pages); a ``stored``
    result (only written to the store) stays there, a host array (written as is)."""
    l_cyc, info, finite = ck.cholesky_cyclic(x_cyc, block=kb, n=n, mesh=mesh)
    buffer = None if src is None else src.take_buffer()
    return natural_from_cyclic(l_cyc, kb, mesh, n, buffer=buffer, host=stored), info, finite


def _check_factor(outs: tuple, *, kb: int, offset: int = 0) -> None:
    _, info, finite = outs
    if not bool(finite):
        raise NonFiniteError(
            "cholesky: the input holds NaN or Inf on or below the diagonal"
            + (f" (in rows/columns from {offset})" if offset else "")
            + "; clean the matrix (e.g. np.nan_to_num) before factoring."
        )
    k = int(info)
    if k >= 0:
        col = offset + k * kb
        raise NotPositiveDefiniteError(
            f"cholesky: the matrix is not positive definite: the factorisation failed in "
            f"block column {offset // kb + k if kb else k} (columns {col}:{col + kb}); the "
            "leading minor there has a non-positive pivot. Check symmetry and conditioning "
            "(adding a small multiple of the identity regularises it)."
        )


@functools.cache
def _tile_kernel(kind: str, first: bool, kb: int, mesh: Mesh):
    """Out-of-core tile kernels; ``valid`` (rows/cols of the tile inside n) is traced so
    every tile of a plan shares one compilation."""
    sc = NamedSharding(mesh, P(ROWS, COLS))
    si = NamedSharding(mesh, P(ROWS, None))
    sj = NamedSharding(mesh, P(COLS, None))
    rep = NamedSharding(mesh, P())

    def update(acc: jax.Array, li: jax.Array, lj: jax.Array) -> jax.Array:
        return acc - lax.dot_general(li, lj, (((1,), (1,)), ((), ())),
                                     precision=lax.Precision.HIGHEST)  # fmt: skip

    if kind == "update":  # acc (or A) -= L[I, K] L[J, K]^T
        if first:
            return jax.jit(lambda a, li, lj: update(a, li, lj), in_shardings=(sc, si, sj),
                           out_shardings=sc)  # fmt: skip
        return jax.jit(update, in_shardings=(sc, si, sj), out_shardings=sc, donate_argnums=0)
    if kind == "diag":  # L[J, J] = chol(acc) with the padding as identity

        def diag(acc: jax.Array, valid: jax.Array) -> tuple[jax.Array, ...]:
            return _factor(pad_identity(acc, valid), acc.shape[0], kb, mesh)

        return diag
    # "solve": L[I, J] = acc L[J, J]^{-T}; rows over every device, L[J, J] replicated
    srow = NamedSharding(mesh, P((ROWS, COLS), None))

    def solve(acc: jax.Array, ljj: jax.Array) -> jax.Array:
        acc = lax.with_sharding_constraint(acc, srow)
        x = lax.linalg.triangular_solve(ljj, acc, left_side=False, lower=True,
                                        transpose_a=True)  # fmt: skip
        return lax.with_sharding_constraint(x, sc)

    return jax.jit(solve, in_shardings=(sc, rep), out_shardings=sc)


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
        factor = _factor
    else:  # read from the host (store or memory) straight into the cyclic layout
        src = CyclicSource(s.src, kb, s.mesh)
        read = Read(src, (0, n_pad, 0, n_pad), (n_pad, n_pad), sharding, s.dtype)
        factor = functools.partial(_factor_cyclic, src=src, stored=s.out is not None)
    step = Step(
        reads=(read,),
        kernel=lambda _carry, x: (None, factor(x, s.n, kb, s.mesh)),
        writes=(write, Write(None), Write(None)),
        label="factor",
        check=functools.partial(_check_factor, kb=kb),
    )
    proj = _incore_bytes(s.n, s.dtype.itemsize, s.mesh)
    return Plan("cholesky", [step], None, proj, proj, f"in-core, kernel block {kb}"), kb


def _tile_bytes(t: int, kw: int, itemsize: int, mesh: Mesh, prefetch: int) -> int:
    """Peak bytes of the tile plan: the GEMM steps (as matmul's, with K panels ``kw``
    wide), the A tiles in flight, and the diagonal factor replicated for the solves (one
    shared buffer on CPU)."""
    copies = 1 if replicas_shared(NamedSharding(mesh, P())) else mesh.devices.size
    gemm = gemm_projected_bytes((t, t, kw), mesh, (itemsize,) * 3, prefetch, True)
    return gemm + (prefetch + 1) * t * t * itemsize + copies * t * t * itemsize


def _update_steps(nt: int, kt: int) -> int:
    """GEMM steps of the tile plan: tile ``(I, J)`` takes ``ceil(J / kt)`` of them."""
    return sum((nt - jj) * -(-jj // kt) for jj in range(nt))


def _outofcore_plan(s: _Setup, tiling: tuple[int, int], prefetch: int) -> tuple[Plan, int]:
    t, kt = tiling  # tiles of t x t; each GEMM step takes kt K tiles (kw = kt * t wide)
    kw = kt * t
    kb = _kernel_block(t, s.mesh)
    nt = -(-s.n // t)
    sc = NamedSharding(s.mesh, P(ROWS, COLS))
    si = NamedSharding(s.mesh, P(ROWS, None))
    sj = NamedSharding(s.mesh, P(COLS, None))
    rep = NamedSharding(s.mesh, P())
    steps: list[Step] = []
    for jj in range(nt):
        for ii in range(jj, nt):
            key = s.resume.key(f"t{t}-{ii}-{jj}")
            skip = s.resume.done(key)
            a_read = Read(s.src, _reg(ii, jj, t), (t, t), sc, s.dtype)
            for q, k0 in enumerate(range(0, jj * t, kw)):  # acc -= L[I, K] L[J, K]^T
                k1 = min(k0 + kw, jj * t)  # L's finished columns only; the rest reads zero
                li = Read(s.out, (ii * t, ii * t + t, k0, k1), (t, kw), si, s.dtype)
                reads = (li, Read(s.out, (jj * t, jj * t + t, k0, k1), (t, kw), sj, s.dtype))
                fn = _tile_kernel("update", q == 0, kb, s.mesh)
                kern = (lambda _c, a, li, lj, fn=fn: (fn(a, li, lj), ())) if q == 0 else \
                       (lambda c, li, lj, fn=fn: (fn(c, li, lj), ()))  # fmt: skip
                label = f"L[{ii},{jj}] -= L[{ii},{k0}:{k1}] L[{jj},{k0}:{k1}]^T"
                steps.append(Step((a_read, *reads) if q == 0 else reads, kern, skip=skip,
                                  label=label))  # fmt: skip
            size = (min(t, s.n - ii * t), min(t, s.n - jj * t))
            write = Write(s.out, (ii * t, jj * t), size, record=key)
            steps.append(_final_step(ii, jj, t, kb, s, a_read, write, skip, (rep, sc)))
    proj = _tile_bytes(t, kw, s.dtype.itemsize, s.mesh, prefetch)
    desc = f"out-of-core, {nt}x{nt} lower tiles of {t}, K panels of {kw}, kernel block {kb}"
    return Plan("cholesky", steps, None, proj, proj, desc), kb


def _reg(i: int, j: int, t: int) -> tuple[int, int, int, int]:
    return (i * t, (i + 1) * t, j * t, (j + 1) * t)


def _final_step(ii: int, jj: int, t: int, kb: int, s: _Setup, a_read: Read, write: Write,
                skip: bool, shardings: tuple) -> Step:  # fmt: skip
    rep, _ = shardings
    from_a = jj == 0  # no update steps: the tile is A itself
    if ii == jj:
        diag = _tile_kernel("diag", False, kb, s.mesh)
        valid = jnp.int32(min(t, s.n - jj * t))

        def kern(carry: Any, *tiles: jax.Array) -> tuple[None, tuple]:
            return None, diag(tiles[0] if from_a else carry, valid)

        return Step((a_read,) if from_a else (), kern, (write, Write(None), Write(None)),
                    label=f"L[{jj},{jj}] = chol", skip=skip,
                    check=functools.partial(_check_factor, kb=kb, offset=jj * t))  # fmt: skip
    solve = _tile_kernel("solve", False, kb, s.mesh)
    ljj = Read(s.out, _reg(jj, jj, t), (t, t), rep, s.dtype)

    def kern2(carry: Any, *tiles: jax.Array) -> tuple[None, tuple]:
        acc, l_jj = (tiles[0], tiles[1]) if from_a else (carry, tiles[0])
        return None, (solve(acc, l_jj),)

    return Step((a_read, ljj) if from_a else (ljj,), kern2, (write,),
                label=f"L[{ii},{jj}] = A L[{jj},{jj}]^-T", skip=skip)  # fmt: skip


# ---------------------------------------------------------------------------------- op
class Cholesky(Op):
    """``L`` with ``A = L L^T``: in-core on the cyclic kernel when it fits the budget,
    else the left-looking out-of-core tile plan (resumable: a record per stored tile)."""

    name = "cholesky"
    operand_names = ("a",)

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
        cands = [Candidate(None, lambda _pf: incore, (0, 0), True)]
        a = problem.data
        out_block = targets["L"] or problem.outputs[0].block_shape or (min(n, 1024),)
        granule = math.lcm(a.block_shape[0] if isinstance(a, BigMatrix) else 1, out_block[0])
        unit = math.lcm(granule, math.lcm(mesh.shape[ROWS], mesh.shape[COLS]))
        for t in range(unit, round_up(n, unit) + unit, unit):
            nt = -(-n // t)
            for kt in range(1, max(nt - 1, 1) + 1):  # fewest steps first, then least memory
                proj = functools.partial(_tile_bytes, t, kt * t, dtype.itemsize, mesh)
                steps = _update_steps(nt, kt) + nt * (nt + 1) // 2
                cands.append(Candidate((t, kt), proj, (1, steps, -t), False))
        return cands

    def plan(self, problem: Problem, tiling: Any, targets: Targets, resume: Resume,
             prefetch: int) -> Plan:  # fmt: skip
        out = problem.outputs[0]
        setup = _Setup(problem.sources[0], out.shape[0], out.dtype, problem.mesh,
                       targets["L"], resume)  # fmt: skip
        if tiling is None:
            return _incore_plan(setup)[0]
        return _outofcore_plan(setup, tiling, prefetch)[0]


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
