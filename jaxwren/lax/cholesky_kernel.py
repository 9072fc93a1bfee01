"""In-core blocked Cholesky on a 2-D block-cyclic layout (ScaLAPACK style), never gathered.

The one Cholesky kernel, with two entries: :func:`jaxwren.lax.cholesky` (traced, with its
derivative rule) and the store-backed ``jw.cholesky``'s in-core algorithm
(:mod:`jaxwren.linalg.cholesky.kernel`).

Layout: the padded ``(n_pad, n_pad)`` matrix is cut into ``b x b`` blocks; block row ``i``
lives on mesh row ``i % R`` (local block row ``i // R``), block column ``j`` on mesh column
``j % C`` (local ``j // C``). A *cyclic* array has its block rows and columns permuted
(:func:`cyclic_order`) so that the plain sharding ``P('rows', 'cols')`` of it is exactly
that distribution: every device keeps a share of the trailing matrix until the end.

One ``jax.jit`` of one ``shard_map``, **compiled once whatever the number of block
columns**: a ``lax.fori_loop`` over block columns ``k`` (traced), inside one to
``_PHASES`` Python phases whose static windows (the local rows and columns not finished
when the phase starts) bound the panel sizes. Step ``k``, per device:

1. the owner of block ``(k, k)`` factors it (``lax.cond``) into ``L_kk`` and ``L_kk^-1``;
   a psum down its mesh column shares the inverse;
2. mesh column ``k % C`` computes its panel rows ``L[i, k] = A[i, k] L_kk^-T`` (a GEMM with
   the inverse; rows ``<= k`` masked to zero *after* it, so a failed factor's NaN stays
   out of finished rows); a psum over ``cols`` gives every device the panel rows of its
   local rows (``Pr``), a masked psum over ``rows`` those of its local columns (``Pc``);
3. the trailing update ``A[i, j] -= L[i, k] L[j, k]^T`` for exactly this device's blocks
   ``k < j <= i``: a loop over its local block rows and, in each, over the block columns
   up to the diagonal (dynamic trip counts), one ``b x b x b`` GEMM updating ``a`` in
   place per block — no flops above the diagonal and a small loop body;
4. mesh column ``k % C`` writes the finished column ``k``: ``L_kk`` on the diagonal, the
   panel below. At the end one masked pass zeros the strict upper triangle, and ``info``
   is the first diagonal block that is not finite and positive (a ``pmin``).

The cyclic layout is made and undone on the host by the callers (:class:`CyclicSource`,
:func:`natural_from_cyclic` in ``jaxwren.sharding.cyclic``): XLA's all-to-all over
emulated CPU devices cost ~0.3 s each way at n = 4096.

The ``b x b`` factor and inverse are LAPACK ``potrf``/``trsm`` (un-batched custom
calls). On CPU they run on OpenBLAS, whose worker threads spin after each call and starve
the other emulated devices: the runner limits BLAS to one thread while a plan runs
(``sharding/lapack_threads.py``); called directly, wrap the call in
:func:`jaxwren.engine.lapack_threads.single_threaded_blas` (n = 4096: 0.59 s inside it,
0.8-0.9 s outside). Before, blocked XLA loops factored the block: the same run time, and
0.2 s more compile.

Memory per device (``memory_per_device``): the local matrix (the donated input, aliased by
the output) and ``O(n_pad * b)`` of panels.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.errors import ConfigError, DTypeMismatchError, ShapeMismatchError
from jaxwren.sharding.cyclic import (
    check_block,
    check_square,
    cyclic_order,
    from_cyclic,
    mesh_str,
    padded_size,
    to_cyclic,
)
from jaxwren.sharding.mesh import COLS, ROWS, check_mesh

__all__ = [
    "DEFAULT_BLOCK",
    "cyclic_order",
    "padded_size",
    "to_cyclic",
    "from_cyclic",
    "cholesky_cyclic",
    "memory_per_device",
    "compile_ahead",
]

DEFAULT_BLOCK = 256  # n = 4096 f64, 8 CPU devices: 0.52 s (b=128: 0.57 s, b=512: 0.64 s)
_PHASES = 2  # static panel windows (more: smaller collectives, ~0.35 s compile each)
_HIGHEST = lax.Precision.HIGHEST  # no TF32/bf16 passes on accelerators
_DTYPES = (np.dtype("float32"), np.dtype("float64"))


@dataclasses.dataclass(frozen=True)
class _Grid:
    """Static geometry: size ``n`` (unpadded), ``n_pad``, block ``b``, mesh ``r x c``."""

    n: int
    n_pad: int
    b: int
    r: int
    c: int

    @property
    def nb(self) -> int:
        return self.n_pad // self.b

    @property
    def nbr(self) -> int:  # local block rows
        return self.nb // self.r

    @property
    def nbc(self) -> int:  # local block columns
        return self.nb // self.c


def _dot(x: jax.Array, y: jax.Array, *, trans_y: bool = False) -> jax.Array:
    dims = (((1,), (1 if trans_y else 0,)), ((), ()))
    return lax.dot_general(x, y, dims, precision=_HIGHEST)


def _factor_block(blk: jax.Array, k: int, g: _Grid) -> jax.Array:
    """``[L; L^-1]`` (``2b x b``) of a diagonal block, read from its lower triangle only,
    rows/cols past ``n`` set to identity; NaN where the factorisation fails. LAPACK
    ``potrf`` and ``trsm`` (one un-batched call each; see the module docstring)."""
    b = g.b
    idx = jnp.arange(b)
    lower = idx[:, None] >= idx[None, :]
    pad = k * b + idx >= g.n
    blk = jnp.where(lower, blk, blk.T)
    blk = jnp.where(pad[:, None] | pad[None, :], jnp.eye(b, dtype=blk.dtype), blk)
    low = lax.linalg.cholesky(blk, symmetrize_input=False)
    eye = jnp.eye(b, dtype=blk.dtype)
    return jnp.concatenate([low, lax.linalg.triangular_solve(low, eye, left_side=True, lower=True)])


def _varying_zeros(shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """Zeros typed as varying over the mesh, like the other branch of a ``lax.cond``."""
    return lax.pcast(jnp.zeros(shape, dtype), (ROWS, COLS), to="varying")


def _phases(g: _Grid) -> list[tuple[int, int]]:
    """Ranges of block columns ``[k0, k1)`` of equal length: one up to 16 block columns
    (the smallest program), ``_PHASES`` beyond (the panels shrink with the window)."""
    p = 1 if g.nb <= 16 else min(g.nb, _PHASES)
    bounds = [g.nb * i // p for i in range(p + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _trailing_update(a: jax.Array, pr: jax.Array, pc: jax.Array, k: jax.Array, me: tuple,
                     lr0: int, lc0: int, g: _Grid) -> jax.Array:  # fmt: skip
    """``A[i, j] -= L[i, k] L[j, k]^T`` for exactly this device's blocks with
    ``k < j <= i``: a loop over its local block rows, and in each over the block columns
    up to the diagonal, one ``b x b x b`` GEMM each (in place; no flops above the
    diagonal, and one small loop body whatever the size)."""
    b, (ri, ci) = g.b, me

    def row(lr: jax.Array, a: jax.Array) -> jax.Array:  # local block row: global ri + lr R
        lhs = lax.dynamic_slice_in_dim(pr, (lr - lr0) * b, b)
        m1 = jnp.minimum(g.nbc, (ri + lr * g.r - ci) // g.c + 1)

        def col(m: jax.Array, a: jax.Array) -> jax.Array:
            rhs = lax.dynamic_slice_in_dim(pc, (m - lc0) * b, b)
            old = lax.dynamic_slice(a, (lr * b, m * b), (b, b))
            return lax.dynamic_update_slice(a, old - _dot(lhs, rhs, trans_y=True), (lr * b, m * b))

        return lax.fori_loop(jnp.maximum((k - ci) // g.c + 1, lc0), m1, col, a)

    return lax.fori_loop(jnp.maximum((k - ri) // g.r + 1, lr0), g.nbr, row, a)


def _step(k: jax.Array, a: jax.Array, me: tuple, lr0: int, lc0: int, g: _Grid) -> jax.Array:
    """Block column ``k`` (traced): factor ``A[k, k]``, solve the panel, update the
    trailing window of the phase, store the finished column. Static shapes only: the
    window starts at the phase's first column, rows/columns finished since are zero in
    the panels, so their updates subtract zeros."""
    b, (ri, ci) = g.b, me
    kr, kc = k // g.r, k // g.c
    own_r, own_c = ri == k % g.r, ci == k % g.c
    rows_w = (g.nbr - lr0) * b

    # 1. L[k, k] and its inverse on the owner; the inverse shared down its mesh column
    def factor(blk: jax.Array) -> jax.Array:
        return _factor_block(blk, k, g)

    blk = lax.dynamic_slice(a, (kr * b, kc * b), (b, b))  # outside the conds: `a` as a
    # cond operand would be copied every step
    both = lax.cond(own_r & own_c, factor, lambda x: _varying_zeros((2 * b, b), x.dtype), blk)
    linv = lax.psum(both[b:], ROWS)

    # 2. panel rows L[i, k] = A[i, k] L[k, k]^-T on mesh column k % C, then on every device
    blk_r = ri + (lr0 + jnp.arange(g.nbr - lr0)) * g.r  # global block of each window row
    row = (blk_r[:, None] * b + jnp.arange(b)).ravel()
    keep = (jnp.repeat(blk_r > k, b) & (row < g.n))[:, None] & (k * b + jnp.arange(b) < g.n)

    def solve(x: jax.Array) -> jax.Array:  # masked after the GEMM too: a NaN factor stays
        return jnp.where(keep, _dot(jnp.where(keep, x, 0), linv, trans_y=True), 0)  # in

    x = lax.dynamic_slice(a, (lr0 * b, kc * b), (rows_w, b))  # its own rows
    pr = lax.cond(own_c, solve, lambda x: _varying_zeros((rows_w, b), x.dtype), x)
    pr = lax.psum(pr, COLS)

    # 3. panel columns L[j, k] for the window's columns: from the devices holding row j
    j = ci + (lc0 + jnp.arange(g.nbc - lc0)) * g.c
    idx = jnp.clip(j // g.r - lr0, 0, g.nbr - lr0 - 1)
    mine = (j % g.r == ri) & (j > k)
    pc = jnp.where(mine[:, None, None], jnp.take(pr.reshape(-1, b, b), idx, axis=0), 0)
    pc = lax.psum(pc, ROWS).reshape(-1, b)

    # 4. trailing update A[i, j] -= L[i, k] L[j, k]^T over this device's blocks k < j <= i
    a = _trailing_update(a, pr, pc, k, me, lr0, lc0, g)

    # 5. column k: the panel below the diagonal, L[k, k] on it (owners only)
    old = lax.dynamic_slice(a, (lr0 * b, kc * b), (rows_w, b))
    new = jnp.where(jnp.repeat(blk_r > k, b)[:, None], pr, old)
    at = jnp.clip(kr - lr0, 0, g.nbr - lr0 - 1) * b
    diag = lax.dynamic_slice(new, (at, 0), (b, b))
    new = lax.dynamic_update_slice(new, jnp.where(own_r, both[:b], diag), (at, 0))
    return lax.dynamic_update_slice(a, jnp.where(own_c, new, old), (lr0 * b, kc * b))


def _global_index(me: tuple, g: _Grid) -> tuple[jax.Array, jax.Array]:
    """Global (natural) row and column of each local row and column of this device."""
    b, (ri, ci) = g.b, me
    lr, lc = jnp.arange(g.nbr * b), jnp.arange(g.nbc * b)
    return (ri + (lr // b) * g.r) * b + lr % b, (ci + (lc // b) * g.c) * b + lc % b


def _finish(a: jax.Array, me: tuple, g: _Grid) -> tuple[jax.Array, jax.Array]:
    """Zeros above the diagonal; ``info``: the first block column whose diagonal is not
    finite and positive (a failed factor poisons its own diagonal), else -1. Only this
    device's diagonal entries are looked at (a gather of one per local row)."""
    b, ci = g.b, me[1]
    gr, gc = _global_index(me, g)
    a = jnp.where(gr[:, None] >= gc[None, :], a, 0)
    blk = gr // b  # block column of the diagonal entry of each local row
    mine = (blk % g.c == ci) & (gr < g.n)  # ... and whether it lives on this device
    local_col = jnp.clip((blk // g.c) * b + gr % b, 0, g.nbc * b - 1)
    d = a[jnp.arange(g.nbr * b), local_col]
    bad = mine & ~(jnp.isfinite(d) & (d > 0))
    first = lax.pmin(jnp.min(jnp.where(bad, blk, g.nb)), (ROWS, COLS))
    return a, jnp.where(first < g.nb, first, -1).astype(jnp.int32)


def _factor_local(a: jax.Array, g: _Grid) -> tuple[jax.Array, ...]:
    """The per-device program: a few phases (static trailing windows), each a
    ``fori_loop`` over its block columns, so the program size does not grow with ``nb``."""
    me = (lax.axis_index(ROWS), lax.axis_index(COLS))
    for k0, k1 in _phases(g):
        body = functools.partial(_step, me=me, lr0=k0 // g.r, lc0=k0 // g.c, g=g)
        a = lax.fori_loop(k0, k1, body, a)
    return _finish(a, me, g)


@functools.cache
def _factor_fn(n: int, n_pad: int, block: int, mesh: Mesh) -> Any:
    """The jitted factorisation for one geometry (dtype keys jit's own cache)."""
    g = _Grid(n, n_pad, block, mesh.shape[ROWS], mesh.shape[COLS])
    spec = NamedSharding(mesh, P(ROWS, COLS))
    body = jax.shard_map(
        functools.partial(_factor_local, g=g),
        mesh=mesh,
        in_specs=P(ROWS, COLS),
        out_specs=(P(ROWS, COLS), P()),
    )
    rep = NamedSharding(mesh, P())
    return jax.jit(body, in_shardings=spec, out_shardings=(spec, rep), donate_argnums=0)


def _check_call(shape: tuple, dtype: Any, block: int, n: int, mesh: Mesh, where: str) -> int:
    check_block(block, where=where)
    check_square(shape, where=where)
    if np.dtype(dtype) not in _DTYPES:
        raise DTypeMismatchError(
            f"{where}: dtype must be float32 or float64, got {np.dtype(dtype).name}; convert "
            "the matrix with .astype(jnp.float64)."
        )
    n_pad = padded_size(n, block, mesh)
    if n < 1 or shape[0] != n_pad:
        raise ShapeMismatchError(
            f"{where}: for n={n}, block={block} on a {mesh_str(mesh)} mesh the cyclic "
            f"matrix must be ({n_pad}, {n_pad}) (padded_size), got {tuple(shape)}; build it "
            "with to_cyclic(x, block, mesh)."
        )
    return n_pad


def cholesky_cyclic(
    a_cyc: jax.Array, *, block: int, n: int, mesh: Mesh | None = None
) -> tuple[jax.Array, jax.Array]:
    """Lower Cholesky factor of a padded SPD matrix in cyclic layout (``numpy.linalg.cholesky``).

    Only blocks on and below the diagonal are read (the upper part may hold anything).
    Rows/columns ``>= n`` are treated as the identity whatever they hold. ``a_cyc`` is
    donated: its buffer becomes the factor's, and ``a_cyc`` may not be used afterwards.

    Args:
      a_cyc: ``(n_pad, n_pad)`` with ``n_pad = padded_size(n, block, mesh)``, float32 or
        float64, in cyclic layout (:func:`to_cyclic`), sharded ``P('rows', 'cols')``.
      block: the block size ``b``.
      n: the unpadded size.
      mesh: the ``('rows', 'cols')`` mesh (None: all devices).

    Returns:
      ``(l_cyc, info)``: ``L`` in the same cyclic layout and sharding, strictly upper part
      zero (padding: identity); ``info`` an int32 scalar (replicated), ``-1`` on success,
      else the first block column whose diagonal factor failed (non-positive pivot, NaN or
      Inf) — then ``l_cyc`` is garbage. A NaN or Inf anywhere in the lower triangle
      always fails the factor (it reaches the diagonal of its row's block column, through
      the panel solve and the trailing update); a caller that must tell such input from
      a matrix that is not positive definite checks the input then (the factor costs no
      separate pass over it).

    Raises:
      ShapeMismatchError: ``a_cyc`` is not ``(n_pad, n_pad)``.
      DTypeMismatchError: not float32/float64.
      ConfigError: a bad block or mesh, or ``a_cyc`` not sharded ``P('rows', 'cols')``.
    """
    mesh = check_mesh(mesh, where="cholesky_cyclic")
    n_pad = _check_call(a_cyc.shape, a_cyc.dtype, block, n, mesh, "cholesky_cyclic")
    want = NamedSharding(mesh, P(ROWS, COLS))
    if not a_cyc.sharding.is_equivalent_to(want, 2):
        raise ConfigError(
            f"cholesky_cyclic: a_cyc must be sharded {want.spec} over the {mesh_str(mesh)} "
            f"mesh, got {a_cyc.sharding}; build it with to_cyclic(x, block, mesh) or "
            "jax.device_put(a_cyc, NamedSharding(mesh, P('rows', 'cols')))."
        )
    return _factor_fn(n, n_pad, block, mesh)(a_cyc)


def compile_ahead(n: int, spec: jax.ShapeDtypeStruct, block: int, mesh: Mesh) -> None:
    """Compiles :func:`cholesky_cyclic` for a ``(n_pad, n_pad)`` input of ``spec`` without
    running it (a later call with such an input reuses the compiled program)."""
    _factor_fn(n, spec.shape[0], block, mesh).lower(spec).compile()


def memory_per_device(n: int, block: int, mesh: Mesh | None = None, dtype: Any = "float64") -> dict:
    """Compiles (without running) the factorisation and returns its per-device memory.

    Returns:
      A dict of bytes per device: ``argument``, ``output``, ``alias`` (output sharing the
      donated input), ``temp``, ``generated_code``, ``peak`` (argument + output - alias +
      temp), ``local_matrix`` (``n_pad**2 * itemsize / devices``), and ``n_pad``.
    """
    mesh = check_mesh(mesh, where="memory_per_device")
    n_pad = padded_size(n, block, mesh)
    _check_call((n_pad, n_pad), dtype, block, n, mesh, "memory_per_device")
    spec = jax.ShapeDtypeStruct((n_pad, n_pad), dtype, sharding=NamedSharding(mesh, P(ROWS, COLS)))
    ma = _factor_fn(n, n_pad, block, mesh).lower(spec).compile().memory_analysis()
    out = {
        "argument": int(ma.argument_size_in_bytes),
        "output": int(ma.output_size_in_bytes),
        "alias": int(ma.alias_size_in_bytes),
        "temp": int(ma.temp_size_in_bytes),
        "generated_code": int(ma.generated_code_size_in_bytes),
    }
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    out["local_matrix"] = n_pad * n_pad * np.dtype(dtype).itemsize // mesh.devices.size
    out["n_pad"] = n_pad
    return out
