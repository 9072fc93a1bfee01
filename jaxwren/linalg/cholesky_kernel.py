"""In-core blocked Cholesky on a 2-D block-cyclic layout (ScaLAPACK style), never gathered.

Layout. The padded ``(n_pad, n_pad)`` matrix is cut into ``b x b`` blocks; block row ``i``
lives on mesh row ``i % R`` at local block row ``i // R`` and block column ``j`` on mesh
column ``j % C`` at local block column ``j // C``. A *cyclic* array is the matrix with its
block rows and columns permuted (:func:`cyclic_order`) so that the plain sharding
``P('rows', 'cols')`` of the permuted array is exactly that block-cyclic distribution.
Every device then keeps a share of the trailing matrix until the last step.

Algorithm (right-looking, one ``shard_map`` inside one ``jax.jit``, the loop over block
columns ``k`` unrolled in Python so every slice is static and shrinks as ``k`` grows):

1. the diagonal block ``A[k, k]`` is masked to its owner and ``psum``-ed over the mesh;
   every device factors it redundantly (``b x b`` LAPACK ``potrf``);
2. mesh column ``k % C`` solves its panel ``L[i, k] = A[i, k] L[k, k]^-T``; a ``psum`` over
   ``cols`` gives every device the panel rows of its local rows, an ``all_gather`` over
   ``rows`` and a ``take`` the panel rows of its local columns;
3. one local GEMM updates the trailing local matrix in place: ``A[sr:, sc:] -= Pr Pc^T``;
4. the finished column ``k`` (zeros above the diagonal) is written into local storage.

Memory per device: the input (donated, aliased by the output), one trailing-update temporary
of at most the local matrix, and ``O(n_pad * b)`` of panels.
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

from jaxwren.errors import ConfigError, DTypeMismatchError, ShapeMismatchError
from jaxwren.sharding.mesh import COLS, ROWS, check_mesh

__all__ = [
    "DEFAULT_BLOCK",
    "cyclic_order",
    "padded_size",
    "to_cyclic",
    "from_cyclic",
    "cholesky_cyclic",
    "memory_per_device",
]

DEFAULT_BLOCK = 256
_GROUPS = 4  # row groups per trailing update: ~(1 + 1/_GROUPS) / 2 of the square's flops
_HIGHEST = lax.Precision.HIGHEST  # no TF32/bf16 passes on accelerators
_LEAF = 32  # diagonal blocks are factored by halves down to this size
_DTYPES = (np.dtype("float32"), np.dtype("float64"))


def cyclic_order(nb: int, p: int) -> np.ndarray:
    """The block permutation that makes a plain ``p``-way block sharding block-cyclic.

    Position ``q * (nb // p) + l`` of the permuted matrix holds block ``l * p + q``, so shard
    ``q`` of ``p`` holds blocks ``q, q + p, q + 2p, ...`` (block ``i`` at local index
    ``i // p``). ``x_cyc = x_blocks[order]``; ``x = x_cyc_blocks[np.argsort(order)]``.

    Raises:
      ConfigError: ``p`` does not divide ``nb``.
    """
    if p < 1 or nb % p:
        raise ConfigError(
            f"cyclic_order: the block count {nb} must be a multiple of the mesh axis size "
            f"{p}; pad the matrix to padded_size(n, block, mesh)."
        )
    return np.arange(nb).reshape(nb // p, p).T.ravel()


def padded_size(n: int, block: int, mesh: Mesh) -> int:
    """``n`` rounded up to a multiple of ``block * lcm(R, C)`` for an ``R x C`` mesh."""
    _check_block(block, where="padded_size")
    unit = block * math.lcm(mesh.shape[ROWS], mesh.shape[COLS])
    return max(1, -(-n // unit)) * unit


def _check_block(block: int, *, where: str) -> None:
    if not isinstance(block, int | np.integer) or block < 1:
        raise ConfigError(f"{where}: block must be a positive int, got {block!r}.")


def _permute(x: jax.Array, b: int, r: int, c: int, *, inverse: bool) -> jax.Array:
    """Block rows natural <-> cyclic for ``r`` parts, block columns for ``c`` parts."""
    n = x.shape[0]
    # natural block i = l * p + q  <->  cyclic position q * (nb // p) + l
    nat = (n // b // r, r, b, n // b // c, c, b)
    cyc = (r, n // b // r, b, c, n // b // c, b)
    x = x.reshape(cyc if inverse else nat).transpose(1, 0, 2, 4, 3, 5)
    return x.reshape(n, n)


@functools.partial(jax.jit, static_argnames=("block", "mesh", "n_pad"))
def _to_cyclic(x: jax.Array, block: int, mesh: Mesh, n_pad: int) -> jax.Array:
    x = jnp.pad(x, ((0, n_pad - x.shape[0]), (0, n_pad - x.shape[1])))
    x = _permute(x, block, mesh.shape[ROWS], mesh.shape[COLS], inverse=False)
    return lax.with_sharding_constraint(x, NamedSharding(mesh, P(ROWS, COLS)))


@functools.partial(jax.jit, static_argnames=("block", "mesh", "n"))
def _from_cyclic(x: jax.Array, block: int, mesh: Mesh, n: int) -> jax.Array:
    x = _permute(x, block, mesh.shape[ROWS], mesh.shape[COLS], inverse=True)[:n, :n]
    return lax.with_sharding_constraint(x, NamedSharding(mesh, P(ROWS, COLS)))


def to_cyclic(x: jax.Array, block: int, mesh: Mesh | None = None) -> jax.Array:
    """Natural ``(n, n)`` layout -> padded cyclic ``(n_pad, n_pad)`` layout.

    Args:
      x: a square array (any sharding); ``n`` need not be a multiple of anything: it is
        zero padded to :func:`padded_size` (the kernel treats the padding as identity).
      block: the block size.
      mesh: the ``('rows', 'cols')`` mesh (None: all devices).

    Returns:
      The permuted matrix, sharded ``NamedSharding(mesh, P('rows', 'cols'))``.
    """
    mesh = check_mesh(mesh, where="to_cyclic")
    _check_square(x.shape, where="to_cyclic")
    return _to_cyclic(x, block, mesh, padded_size(x.shape[0], block, mesh))


def from_cyclic(
    x_cyc: jax.Array, block: int, mesh: Mesh | None = None, *, n: int | None = None
) -> jax.Array:
    """Cyclic ``(n_pad, n_pad)`` layout -> natural layout, trimmed to ``(n, n)``.

    Args:
      x_cyc: a cyclic-layout array (e.g. :func:`cholesky_cyclic`'s factor).
      block: the block size it was made with.
      mesh: the mesh it was made on (None: all devices).
      n: the size to keep (default ``n_pad``: no trimming).

    Returns:
      The natural-layout matrix, sharded ``NamedSharding(mesh, P('rows', 'cols'))``.
    """
    mesh = check_mesh(mesh, where="from_cyclic")
    n_pad = x_cyc.shape[0]
    _check_square(x_cyc.shape, where="from_cyclic")
    if padded_size(n_pad, block, mesh) != n_pad:
        raise ShapeMismatchError(
            f"from_cyclic: a cyclic array for block={block} on a {_mesh_str(mesh)} mesh has "
            f"a size that is a multiple of {padded_size(1, block, mesh)}, got {n_pad}; pass "
            "the block and mesh used with to_cyclic."
        )
    return _from_cyclic(x_cyc, block, mesh, n_pad if n is None else n)


def _check_square(shape: tuple[int, ...], *, where: str) -> None:
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0:
        raise ShapeMismatchError(
            f"{where}: expected a non-empty square matrix, got shape {tuple(shape)}."
        )


def _mesh_str(mesh: Mesh) -> str:
    return f"{mesh.shape[ROWS]}x{mesh.shape[COLS]}"


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


def _chol_inv_leaf(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(L, L^-1)`` of a small SPD block: right-looking Cholesky, then forward
    substitution, one column (row) per loop step. A non-positive pivot gives NaN/Inf."""
    m = a.shape[0]
    idx = jnp.arange(m)

    def factor(j: jax.Array, carry: tuple) -> tuple:
        rest, low = carry
        col = lax.dynamic_index_in_dim(rest, j, axis=1, keepdims=False)
        v = jnp.where(idx >= j, col / jnp.sqrt(col[j]), 0)
        return rest - v[:, None] * v[None, :], low.at[:, j].set(v)

    _, low = lax.fori_loop(0, m, factor, (a, jnp.zeros_like(a)))

    def invert(j: jax.Array, inv: jax.Array) -> jax.Array:
        row = lax.dynamic_index_in_dim(low, j, axis=0, keepdims=False)
        new = ((idx == j).astype(a.dtype) - row @ inv) / row[j]
        return lax.dynamic_update_index_in_dim(inv, new, j, axis=0)

    return low, lax.fori_loop(0, m, invert, jnp.zeros_like(a))


def _chol_inv(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(L, L^-1)`` of an SPD block (lower triangle read), recursively by halves so that
    almost all the work is GEMMs. Pure XLA on purpose: LAPACK's potrf/trsm run on
    OpenBLAS, whose worker threads spin after each call and starve the GEMMs of the other
    emulated devices on a small host (measured up to 5x slower overall)."""
    m = a.shape[0]
    if m <= _LEAF:
        return _chol_inv_leaf(a)
    h = -(-m // 2 // _LEAF) * _LEAF if m > 2 * _LEAF else m // 2
    l11, i11 = _chol_inv(a[:h, :h])
    l21 = _dot(a[h:, :h], i11, trans_y=True)  # A21 L11^-T
    l22, i22 = _chol_inv(a[h:, h:] - _dot(l21, l21, trans_y=True))
    i21 = -_dot(i22, _dot(l21, i11))
    zero = jnp.zeros((h, m - h), a.dtype)
    low = jnp.block([[l11, zero], [l21, l22]])
    return low, jnp.block([[i11, zero], [i21, i22]])


def _factor_block(blk: jax.Array, k: int, g: _Grid) -> jax.Array:
    """``[L; L^-1]`` (``2b x b``) of a diagonal block, read from its lower triangle only,
    rows/cols past ``n`` set to identity; NaN/Inf where the factorisation fails."""
    b = g.b
    idx = jnp.arange(b)
    lower = idx[:, None] >= idx[None, :]
    pad = k * b + idx >= g.n
    blk = jnp.where(lower, blk, blk.T)
    blk = jnp.where(pad[:, None] | pad[None, :], jnp.eye(b, dtype=blk.dtype), blk)
    return jnp.concatenate(_chol_inv(blk))


def _zeros_like_factor(blk: jax.Array) -> jax.Array:
    zeros = jnp.zeros((2 * blk.shape[0], blk.shape[1]), blk.dtype)
    return lax.pcast(zeros, (ROWS, COLS), to="varying")  # varies like the owner's branch


def _diag_factor(a: jax.Array, k: int, me: tuple, g: _Grid) -> tuple[jax.Array, jax.Array]:
    """``(L[k, k], L[k, k]^-1)`` on every device: only the owner of block ``(k, k)``
    factors it (``lax.cond``), a psum shares the result."""
    b, (ri, ci) = g.b, me
    blk = a[(k // g.r) * b : (k // g.r + 1) * b, (k // g.c) * b : (k // g.c + 1) * b]
    own = (ri == k % g.r) & (ci == k % g.c)
    both = lax.cond(own, lambda x: _factor_block(x, k, g), _zeros_like_factor, blk)
    both = lax.psum(both, (ROWS, COLS))
    return both[:b], both[b:]


def _local_rows_global(ri: jax.Array, start: int, g: _Grid) -> jax.Array:
    """Global block index of local block rows ``start, start + 1, ...`` on mesh row ``ri``."""
    return ri + (start + jnp.arange(g.nbr - start)) * g.r


def _panel_rows(a: jax.Array, linv: jax.Array, k: int, me: tuple, g: _Grid) -> jax.Array:
    """``L[i, k] = A[i, k] L[k, k]^-T`` for this device's local block rows from
    ``sr = (k + 1) // R`` on, ``((nbr - sr) * b, b)``, computed by mesh column ``k % C`` (a
    GEMM with the inverse, not LAPACK's trsm: see :func:`_chol_inv`) and psum-ed over
    ``cols``; zero for rows with global block ``<= k`` and for padding."""
    b, (ri, ci) = g.b, me
    sr, kc = (k + 1) // g.r, k // g.c
    x = a[sr * b :, kc * b : (kc + 1) * b]
    blk = _local_rows_global(ri, sr, g)
    row = (blk[:, None] * b + jnp.arange(b)).ravel()
    col = k * b + jnp.arange(b)
    keep = (jnp.repeat(blk > k, b) & (row < g.n))[:, None] & (col < g.n)[None, :]

    def solve(x: jax.Array) -> jax.Array:
        x = jnp.where(keep, x, 0)
        return lax.dot_general(x, linv, (((1,), (1,)), ((), ())), precision=_HIGHEST)

    pr = lax.cond(ci == k % g.c, solve, jnp.zeros_like, x)
    return lax.psum(pr, COLS)


def _panel_cols(pr: jax.Array, k: int, me: tuple, g: _Grid) -> jax.Array:
    """``L[j, k]`` for this device's local block columns from ``sc = (k + 1) // C`` on,
    ``((nbc - sc) * b, b)``, gathered from the mesh rows' panel rows ``pr``."""
    b, (_, ci) = g.b, me
    sr, sc = (k + 1) // g.r, (k + 1) // g.c
    rows_held = g.nbr - sr
    blocks = lax.all_gather(pr, ROWS).reshape(g.r * rows_held, b, b)
    j = ci + (sc + jnp.arange(g.nbc - sc)) * g.c  # global block of each local block column
    idx = (j % g.r) * rows_held + jnp.clip(j // g.r - sr, 0, rows_held - 1)
    pc = jnp.where((j > k)[:, None, None], jnp.take(blocks, idx, axis=0), 0)
    return pc.reshape(-1, b)


def _row_groups(start: int, g: _Grid) -> list[tuple[int, int, int]]:
    """Splits local block rows ``[start, nbr)`` into up to ``_GROUPS`` ranges, each with
    the local block columns it must update: ``(row0, row1, col1)``. Only blocks on or below
    the diagonal are needed; ``col1`` covers them on every device (worst case mesh row
    ``R - 1``, mesh column 0), so the staircase skips most of the upper triangle."""
    count = g.nbr - start
    parts = min(_GROUPS, count)
    bounds = [start + (count * p) // parts for p in range(parts + 1)]
    out = []
    for r0, r1 in zip(bounds[:-1], bounds[1:], strict=True):
        last_row = (g.r - 1) + (r1 - 1) * g.r  # largest global block row in the range
        out.append((r0, r1, min(g.nbc, last_row // g.c + 1)))
    return out


def _trailing_update(a: jax.Array, pr: jax.Array, pc: jax.Array, k: int, g: _Grid) -> jax.Array:
    """``A[sr:, sc:] -= Pr @ Pc^T`` in place, in row groups that skip the upper triangle
    (rows/cols not yet trailing have zero panels, so updating them changes nothing)."""
    b, sr, sc = g.b, (k + 1) // g.r, (k + 1) // g.c
    for r0, r1, c1 in _row_groups(sr, g):
        if c1 <= sc:
            continue
        lhs = pr[(r0 - sr) * b : (r1 - sr) * b]
        rhs = pc[: (c1 - sc) * b]
        upd = lax.dot_general(lhs, rhs, (((1,), (1,)), ((), ())), precision=_HIGHEST)
        a = lax.dynamic_update_slice(a, a[r0 * b : r1 * b, sc * b : c1 * b] - upd, (r0 * b, sc * b))
    return a


def _write_column(a: jax.Array, lkk: jax.Array, pr: jax.Array | None, k: int, me: tuple,
                  g: _Grid) -> jax.Array:  # fmt: skip
    """Stores finished block column ``k`` on its mesh column: zeros above the diagonal,
    ``L[k, k]`` on it, the panel below."""
    b, (ri, ci) = g.b, me
    kr, kc = k // g.r, k // g.c
    new = jnp.zeros((g.nbr * b, b), a.dtype)
    if pr is not None:
        new = lax.dynamic_update_slice(new, pr, ((k + 1) // g.r * b, 0))
    diag = jnp.where(ri == k % g.r, lkk, new[kr * b : (kr + 1) * b])
    new = lax.dynamic_update_slice(new, diag, (kr * b, 0))
    col = jnp.where(ci == k % g.c, new, a[:, kc * b : (kc + 1) * b])
    return lax.dynamic_update_slice(a, col, (0, kc * b))


def _factor_local(a: jax.Array, g: _Grid) -> tuple[jax.Array, jax.Array]:
    """The per-device program: all ``nb`` block-column steps, unrolled."""
    me = (lax.axis_index(ROWS), lax.axis_index(COLS))
    info = jnp.int32(-1)
    for k in range(g.nb):
        lkk, linv = _diag_factor(a, k, me, g)
        info = jnp.where((info < 0) & ~jnp.all(jnp.isfinite(lkk)), jnp.int32(k), info)
        pr = None
        if k < g.nb - 1:
            pr = _panel_rows(a, linv, k, me, g)
            a = _trailing_update(a, pr, _panel_cols(pr, k, me, g), k, g)
        a = _write_column(a, lkk, pr, k, me, g)
    return a, info


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
    return jax.jit(
        body, in_shardings=spec, out_shardings=(spec, NamedSharding(mesh, P())), donate_argnums=0
    )


def _check_call(shape: tuple, dtype: Any, block: int, n: int, mesh: Mesh, where: str) -> int:
    _check_block(block, where=where)
    _check_square(shape, where=where)
    if np.dtype(dtype) not in _DTYPES:
        raise DTypeMismatchError(
            f"{where}: dtype must be float32 or float64, got {np.dtype(dtype).name}; convert "
            "the matrix with .astype(jnp.float64)."
        )
    n_pad = padded_size(n, block, mesh)
    if n < 1 or shape[0] != n_pad:
        raise ShapeMismatchError(
            f"{where}: for n={n}, block={block} on a {_mesh_str(mesh)} mesh the cyclic "
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
      Inf) — then ``l_cyc`` is garbage and the caller raises NotPositiveDefiniteError.

    Raises:
      ShapeMismatchError: ``a_cyc`` is not ``(n_pad, n_pad)``.
      DTypeMismatchError: not float32/float64.
    """
    mesh = check_mesh(mesh, where="cholesky_cyclic")
    n_pad = _check_call(a_cyc.shape, a_cyc.dtype, block, n, mesh, "cholesky_cyclic")
    return _factor_fn(n, n_pad, block, mesh)(a_cyc)


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
