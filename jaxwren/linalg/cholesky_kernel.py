"""In-core blocked Cholesky on a 2-D block-cyclic layout (ScaLAPACK style), never gathered.

Layout: the padded ``(n_pad, n_pad)`` matrix is cut into ``b x b`` blocks; block row ``i``
lives on mesh row ``i % R`` (local block row ``i // R``), block column ``j`` on mesh column
``j % C`` (local ``j // C``). A *cyclic* array has its block rows and columns permuted
(:func:`cyclic_order`) so that the plain sharding ``P('rows', 'cols')`` of it is exactly
that distribution: every device keeps a share of the trailing matrix until the end.

One ``jax.jit`` of one ``shard_map``; the loop over block columns ``k`` is unrolled in
Python, so every slice is static and shrinks with ``k``. Step ``k``, per device:

1. the owner of block ``(k, k)`` factors it (``lax.cond``) into ``L_kk`` and ``L_kk^-1``;
   a psum over the mesh shares both;
2. mesh column ``k % C`` computes its panel rows ``L[i, k] = A[i, k] L_kk^-T`` (a GEMM with
   the inverse); a psum over ``cols`` gives every device the panel rows of its local rows
   (``Pr``), a masked psum over ``rows`` those of its local columns (``Pc``);
3. the trailing update ``A[i, j] -= L[i, k] L[j, k]^T``, only for blocks ``k < j <= i``:
   row groups of GEMMs whose exact shapes differ per device, hence a ``lax.switch`` over
   device classes; the result is subtracted from the local matrix in place;
4. mesh column ``k % C`` writes the finished column ``k``: zeros above ``L_kk``, the panel
   below.

No LAPACK: potrf/trsm run on OpenBLAS, whose worker threads spin after each call and
starve the GEMMs of the other emulated devices of a small host (measured up to 5x slower
overall); the ``b x b`` factor and inverse are blocked XLA loops around GEMMs instead.

Memory per device (``memory_per_device``): the local matrix (the donated input, aliased by
the output), one update patch (a row group of the trailing part) and ``O(n_pad * b)`` of
panels; at n = 4096, b = 256, float64 on 2 x 4 devices: 16 MiB local, 22 MiB temporaries.
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
]

DEFAULT_BLOCK = 256  # n = 4096 f64, 8 CPU devices: 0.52 s (b=128: 0.57 s, b=512: 0.64 s)
_GROUPS = 8  # row groups per trailing update (more: fewer wasted flops, more GEMMs)
_HIGHEST = lax.Precision.HIGHEST  # no TF32/bf16 passes on accelerators
_LEAF = 32  # diagonal blocks are factored in leaf panels of at most this many columns
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
    """``(L, L^-1)`` of an SPD block: a blocked right-looking Cholesky over leaf panels of
    at most ``_LEAF`` columns, then blocked forward substitution, each one ``fori_loop``
    (a small program whatever the block size; no LAPACK, see the module docstring)."""
    m = a.shape[0]
    t = max(d for d in range(1, min(m, _LEAF) + 1) if m % d == 0)  # leaf size
    if t == m:
        return _chol_inv_leaf(a)
    idx = jnp.arange(m)

    def factor(j: jax.Array, carry: tuple) -> tuple:
        rest, low, diag_inv = carry
        o = j * t
        ld, ldi = _chol_inv_leaf(lax.dynamic_slice(rest, (o, o), (t, t)))
        panel = _dot(lax.dynamic_slice(rest, (0, o), (m, t)), ldi, trans_y=True)
        panel = jnp.where((idx >= o + t)[:, None], panel, 0)  # the rows below the leaf
        rest = rest - _dot(panel, panel, trans_y=True)  # the trailing part is all that changes
        low = lax.dynamic_update_slice(low, lax.dynamic_update_slice(panel, ld, (o, 0)), (0, o))
        return rest, low, lax.dynamic_update_index_in_dim(diag_inv, ldi, j, axis=0)

    init = (a, jnp.zeros_like(a), jnp.broadcast_to(jnp.zeros_like(a[:t, :t]), (m // t, t, t)))
    _, low, diag_inv = lax.fori_loop(0, m // t, factor, init)

    def invert(j: jax.Array, inv: jax.Array) -> jax.Array:
        o = j * t
        eye_rows = (idx[None, :] == o + jnp.arange(t)[:, None]).astype(a.dtype)
        rows = eye_rows - _dot(lax.dynamic_slice(low, (o, 0), (t, m)), inv)
        return lax.dynamic_update_slice(inv, _dot(diag_inv[j], rows), (o, 0))

    return low, lax.fori_loop(0, m // t, invert, jnp.zeros_like(a))


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


def _varying_zeros(shape: tuple[int, int], dtype: Any) -> jax.Array:
    """Zeros typed as varying over the mesh, like the other branch of a ``lax.cond``."""
    return lax.pcast(jnp.zeros(shape, dtype), (ROWS, COLS), to="varying")


def _diag_factor(a: jax.Array, k: int, me: tuple, g: _Grid) -> tuple[jax.Array, jax.Array]:
    """``(L[k, k], L[k, k]^-1)`` on every device: only the owner of block ``(k, k)``
    factors it (``lax.cond``), a psum shares the result."""
    b, (ri, ci) = g.b, me
    r0, c0 = (k // g.r) * b, (k // g.c) * b

    def factor(a: jax.Array) -> jax.Array:
        return _factor_block(a[r0 : r0 + b, c0 : c0 + b], k, g)

    own = (ri == k % g.r) & (ci == k % g.c)
    both = lax.cond(own, factor, lambda a: _varying_zeros((2 * b, b), a.dtype), a)
    both = lax.psum(both, (ROWS, COLS))
    return both[:b], both[b:]


def _panel_rows(a: jax.Array, linv: jax.Array, k: int, me: tuple, g: _Grid) -> jax.Array:
    """``L[i, k] = A[i, k] L[k, k]^-T`` for this device's local block rows from
    ``sr = (k + 1) // R`` on, ``((nbr - sr) * b, b)``, computed by mesh column ``k % C`` and
    psum-ed over ``cols``; zero for rows with global block ``<= k`` and for padding."""
    b, (ri, ci) = g.b, me
    sr, kc = (k + 1) // g.r, k // g.c
    blk = ri + (sr + jnp.arange(g.nbr - sr)) * g.r  # global block of each local block row
    row = (blk[:, None] * b + jnp.arange(b)).ravel()
    col = k * b + jnp.arange(b)
    keep = (jnp.repeat(blk > k, b) & (row < g.n))[:, None] & (col < g.n)[None, :]

    def solve(a: jax.Array) -> jax.Array:
        x = jnp.where(keep, a[sr * b :, kc * b : (kc + 1) * b], 0)
        return _dot(x, linv, trans_y=True)

    shape = ((g.nbr - sr) * b, b)
    pr = lax.cond(ci == k % g.c, solve, lambda a: _varying_zeros(shape, a.dtype), a)
    return lax.psum(pr, COLS)


def _panel_cols(pr: jax.Array, k: int, me: tuple, g: _Grid) -> jax.Array:
    """``L[j, k]`` for this device's local block columns from ``sc = (k + 1) // C`` on,
    ``((nbc - sc) * b, b)``: each device of a mesh column contributes the blocks its panel
    rows ``pr`` hold (``j % R == ri``), a psum over ``rows`` completes them (half the bytes
    of an all_gather of ``pr`` on a 2 x 4 mesh, measured 3x cheaper)."""
    b, (ri, ci) = g.b, me
    sr, sc = (k + 1) // g.r, (k + 1) // g.c
    blocks = pr.reshape(g.nbr - sr, b, b)
    j = ci + (sc + jnp.arange(g.nbc - sc)) * g.c  # global block of each local block column
    idx = jnp.clip(j // g.r - sr, 0, g.nbr - sr - 1)
    mine = (j % g.r == ri) & (j > k)
    pc = jnp.where(mine[:, None, None], jnp.take(blocks, idx, axis=0), 0)
    return lax.psum(pc, ROWS).reshape(-1, b)


@dataclasses.dataclass(frozen=True)
class _Patch:
    """One row group of a trailing update: local block rows ``[r0, r1)`` and the union
    ``[c0, c1)`` of the local block columns the devices update there; ``parts[t]`` is
    the exact ``(l0, m0, m1)`` (rows ``[l0, r1)``, columns ``[m0, m1)``) of the devices
    with ``table[ri * C + ci] == t``."""

    r0: int
    r1: int
    c0: int
    c1: int
    parts: tuple[tuple[int, int, int], ...]
    table: tuple[int, ...]


def _exact_part(k: int, r0: int, r1: int, ri: int, ci: int, g: _Grid) -> tuple[int, int, int]:
    """Rows ``[l0, r1)`` with global block ``> k``; columns ``[m0, m1)`` with global
    block ``> k`` and ``<=`` the group's last row (blocks on/below the diagonal)."""
    l0 = max(r0, (k - ri) // g.r + 1)
    m0 = (k - ci) // g.c + 1
    m1 = min(g.nbc, (ri + (r1 - 1) * g.r - ci) // g.c + 1)
    return (l0, m0, m1) if l0 < r1 and m0 < m1 else (r1, m0, m0)


def _patches(k: int, g: _Grid) -> list[_Patch]:
    """The trailing update of step ``k``, cut in up to ``_GROUPS`` row groups, each with
    its per-device exact block ranges: the GEMMs skip the upper triangle and the rows and
    columns already finished, on every device (static shapes per ``lax.switch`` branch)."""
    sr = (k + 1) // g.r
    count = g.nbr - sr
    bounds = [sr + (count * p) // min(_GROUPS, count) for p in range(min(_GROUPS, count) + 1)]
    out = []
    for r0, r1 in zip(bounds[:-1], bounds[1:], strict=True):
        exact = [_exact_part(k, r0, r1, ri, ci, g) for ri in range(g.r) for ci in range(g.c)]
        parts = tuple(dict.fromkeys(exact))
        live = [p for p in parts if p[0] < r1]
        if not live:
            continue
        c0, c1 = min(p[1] for p in live), max(p[2] for p in live)
        table = tuple(parts.index(p) for p in exact)
        out.append(_Patch(r0, r1, c0, c1, parts, table))
    return out


def _patch_update(part: tuple[int, int, int], p: _Patch, b: int) -> Any:
    """The branch of one device class: its exact GEMM, zero padded to the patch."""
    l0, m0, m1 = part

    def update(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        shape = ((p.r1 - p.r0) * b, (p.c1 - p.c0) * b)
        if l0 >= p.r1:
            return _varying_zeros(shape, lhs.dtype)
        upd = _dot(lhs[(l0 - p.r0) * b :], rhs[(m0 - p.c0) * b : (m1 - p.c0) * b], trans_y=True)
        pad = (((l0 - p.r0) * b, 0), ((m0 - p.c0) * b, (p.c1 - m1) * b))
        return jnp.pad(upd, pad)

    return update


def _trailing_update(a: jax.Array, pr: jax.Array, pc: jax.Array, k: int, me: tuple,
                     g: _Grid) -> jax.Array:  # fmt: skip
    """``A[i, j] -= L[i, k] L[j, k]^T`` for the trailing blocks ``k < j <= i`` (and the
    upper half of the diagonal blocks), patch by patch, in place. The GEMMs run in a
    ``lax.switch`` (exact shapes per device class); their padded result is subtracted
    outside it, where XLA updates ``a`` in place (a switch that takes ``a`` copies it)."""
    b, sr, sc = g.b, (k + 1) // g.r, (k + 1) // g.c
    device = me[0] * g.c + me[1]
    for p in _patches(k, g):
        lhs = pr[(p.r0 - sr) * b : (p.r1 - sr) * b]
        rhs = pc[(p.c0 - sc) * b : (p.c1 - sc) * b]
        branches = [_patch_update(part, p, b) for part in p.parts]
        if len(branches) == 1:
            upd = branches[0](lhs, rhs)
        else:
            upd = lax.switch(jnp.asarray(p.table, jnp.int32)[device], branches, lhs, rhs)
        old = a[p.r0 * b : p.r1 * b, p.c0 * b : p.c1 * b]
        a = lax.dynamic_update_slice(a, old - upd, (p.r0 * b, p.c0 * b))
    return a


def _write_column(a: jax.Array, lkk: jax.Array, pr: jax.Array | None, k: int, me: tuple,
                  g: _Grid) -> jax.Array:  # fmt: skip
    """Stores finished block column ``k`` on its mesh column (``lax.cond``: the others do
    nothing): zeros above the diagonal, ``L[k, k]`` on it, the panel below."""
    b, (ri, ci) = g.b, me
    sr, kr, kc = (k + 1) // g.r, k // g.r, k // g.c

    def write(a: jax.Array) -> jax.Array:
        if sr:  # local block rows < sr hold global blocks <= k: above the diagonal or on it
            a = lax.dynamic_update_slice(a, jnp.zeros((sr * b, b), a.dtype), (0, kc * b))
        if pr is not None:
            a = lax.dynamic_update_slice(a, pr, (sr * b, kc * b))
        diag = jnp.where(ri == k % g.r, lkk, a[kr * b : (kr + 1) * b, kc * b : (kc + 1) * b])
        return lax.dynamic_update_slice(a, diag, (kr * b, kc * b))

    return lax.cond(ci == k % g.c, write, lambda a: a, a)


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
            a = _trailing_update(a, pr, _panel_cols(pr, k, me, g), k, me, g)
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
      Inf) — then ``l_cyc`` is garbage and the caller raises NotPositiveDefiniteError.

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
