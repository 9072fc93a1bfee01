"""Block-cyclic layouts (ScaLAPACK's 2-D block-cyclic distribution) on a device mesh.

A *cyclic* array has its block rows and columns permuted (:func:`cyclic_order`) so that
the plain sharding ``P('rows', 'cols')`` of it is the block-cyclic distribution: block row
``i`` lives on mesh row ``i % R`` (local block row ``i // R``), block column ``j`` on mesh
column ``j % C``. Every device then keeps a share of a shrinking trailing matrix.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.errors import ConfigError, ShapeMismatchError
from jaxwren.sharding.mesh import COLS, ROWS, check_mesh, default_sharding

__all__ = [
    "check_block",
    "check_square",
    "cyclic_order",
    "from_cyclic",
    "mesh_str",
    "padded_size",
    "to_cyclic",
]


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
    check_block(block, where="padded_size")
    unit = block * math.lcm(mesh.shape[ROWS], mesh.shape[COLS])
    return max(1, -(-n // unit)) * unit


def check_block(block: int, *, where: str) -> None:
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


@functools.cache
def _to_cyclic_fn(block: int, mesh: Mesh, n_pad: int) -> Any:
    def permute(x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, n_pad - x.shape[0]), (0, n_pad - x.shape[1])))
        return _permute(x, block, mesh.shape[ROWS], mesh.shape[COLS], inverse=False)

    return jax.jit(permute, out_shardings=NamedSharding(mesh, P(ROWS, COLS)))


@functools.cache
def _from_cyclic_fn(block: int, mesh: Mesh, n: int) -> Any:
    def permute(x: jax.Array) -> jax.Array:
        return _permute(x, block, mesh.shape[ROWS], mesh.shape[COLS], inverse=True)[:n, :n]

    # trimmed to n, P('rows', 'cols') may not divide: then the best fit (fit_spec)
    out = default_sharding((n, n), mesh)
    return jax.jit(permute, in_shardings=NamedSharding(mesh, P(ROWS, COLS)), out_shardings=out)


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
    check_square(x.shape, where="to_cyclic")
    return _to_cyclic_fn(block, mesh, padded_size(x.shape[0], block, mesh))(x)


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
      The natural-layout matrix, sharded ``NamedSharding(mesh, P('rows', 'cols'))`` (when
      the mesh does not divide ``n``: ``default_sharding((n, n), mesh)``).
    """
    mesh = check_mesh(mesh, where="from_cyclic")
    n_pad = x_cyc.shape[0]
    check_square(x_cyc.shape, where="from_cyclic")
    if padded_size(n_pad, block, mesh) != n_pad:
        raise ShapeMismatchError(
            f"from_cyclic: a cyclic array for block={block} on a {mesh_str(mesh)} mesh has "
            f"a size that is a multiple of {padded_size(1, block, mesh)}, got {n_pad}; pass "
            "the block and mesh used with to_cyclic."
        )
    return _from_cyclic_fn(block, mesh, n_pad if n is None else n)(x_cyc)


def check_square(shape: tuple[int, ...], *, where: str) -> None:
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0:
        raise ShapeMismatchError(
            f"{where}: expected a non-empty square matrix, got shape {tuple(shape)}."
        )


def mesh_str(mesh: Mesh) -> str:
    return f"{mesh.shape[ROWS]}x{mesh.shape[COLS]}"
