"""Where the traceable kernels keep a matrix: each dimension padded and spread over one mesh
axis, in natural (contiguous) or block-cyclic order; layout changes done on the devices.

An :class:`Axis` describes one dimension: the mesh axis it is split over (or none), its
padded length, the block size and the order. *Natural*: device ``q`` holds the contiguous
positions ``[q * local, (q + 1) * local)``. *Cyclic* (ScaLAPACK's block-cyclic
distribution): device ``q`` holds blocks ``q, q + p, q + 2p, ...``, so a shrinking trailing
matrix keeps every device busy. A matrix is a pair ``(rows, cols)`` of axes and is sharded
``P(rows.name, cols.name)``.

:func:`to_layout` / :func:`from_layout` pad and permute with reshapes and transposes inside
the caller's ``jit``: XLA lowers the block permutation to all-to-all collectives, never to
an all-gather of the matrix.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.sharding.mesh import COLS, ROWS, fit_spec

__all__ = ["Axis", "block_size", "from_layout", "lu_block_size", "natural_index", "padded", "spec",
           "to_layout"]  # fmt: skip

_KB = (128, 64, 32, 16, 8, 4, 2, 1)


@dataclasses.dataclass(frozen=True)
class Axis:
    """One dimension of a padded matrix on the mesh (static, hashable).

    Attributes:
      name: the mesh axis it is split over (``'rows'`` / ``'cols'``), None: every device
        holds all of it.
      parts: devices along ``name`` (1 when None).
      size: the padded length (a multiple of ``parts * block``).
      block: the block size (panels of the kernels are one block wide).
      cyclic: block-cyclic order, else natural.
    """

    name: str | None
    parts: int
    size: int
    block: int
    cyclic: bool = False

    @property
    def local(self) -> int:
        return self.size // self.parts

    @property
    def nblocks(self) -> int:
        return self.size // self.block

    @property
    def local_blocks(self) -> int:
        return self.local // self.block

    def me(self) -> jax.Array:
        """This device's index along the axis (inside ``shard_map``)."""
        return lax.axis_index(self.name) if self.name else jnp.int32(0)

    def owner(self, k: Any) -> Any:
        """The device holding block ``k``."""
        return k % self.parts if self.cyclic else k // self.local_blocks

    def offset(self, k: Any) -> Any:
        """Where block ``k`` starts in its owner's local array."""
        return (k // self.parts if self.cyclic else k % self.local_blocks) * self.block

    def block_of(self, me: Any, lb: Any) -> Any:
        """The (global) block held at local block ``lb`` by device ``me``."""
        return me + lb * self.parts if self.cyclic else me * self.local_blocks + lb

    def count_le(self, me: Any, k: Any) -> Any:
        """How many of device ``me``'s local blocks are blocks ``<= k`` (they come first)."""
        n = (k - me) // self.parts if self.cyclic else k - me * self.local_blocks
        return jnp.clip(n + 1, 0, self.local_blocks)

    def glob(self, me: Any) -> jax.Array:
        """Natural index of each local position of device ``me``."""
        idx = jnp.arange(self.local)
        return self.block_of(me, idx // self.block) * self.block + idx % self.block

    def pos(self, g: jax.Array) -> jax.Array:
        """Position of natural index ``g`` in the concatenation of the devices' local arrays
        (what a tiled ``all_gather`` along the axis returns)."""
        blk = g // self.block
        return self.owner(blk) * self.local + self.offset(blk) + g % self.block


def spec(rows: Axis, cols: Axis) -> P:
    return P(rows.name, cols.name)


def block_size(n: int, mesh: Any) -> int:
    """Kernel block for an ``n x n`` matrix: 128 (the store-backed in-core plan's choice up
    to n = 6144; 256 above), smaller for small ``n`` so that every device gets blocks."""
    unit = math.lcm(mesh.shape[ROWS], mesh.shape[COLS])
    top = 128 if n <= 6144 else 256
    return next((b for b in (256, *_KB) if b <= top and b * unit * 2 <= max(n, 2 * unit)), 1)


def lu_block_size(n: int, mesh: Any) -> int:
    """The LU kernel's block: :func:`block_size`, at most 64 (n = 4096 f64 on 8 CPU
    devices, best of 5 interleaved at load ~12: b=64 2.94 s, b=32 3.02 s, b=128 3.68 s;
    the panel is factored on one device while the others wait, so narrow panels pay)."""
    return min(64, block_size(n, mesh))


def padded(n: int, block: int, mesh: Any) -> int:
    """``n`` rounded up to a multiple of ``block * lcm(R, C)`` (both orders then hold whole
    blocks on every device, along either mesh axis)."""
    unit = block * math.lcm(mesh.shape[ROWS], mesh.shape[COLS])
    return max(1, -(-n // unit)) * unit


def natural_index(axis: Axis) -> jax.Array:
    """The natural index held at each global position of ``axis`` (a traced iota)."""
    p = jnp.arange(axis.size)
    if not axis.cyclic:
        return p
    me, off = p // axis.local, p % axis.local
    return axis.block_of(me, off // axis.block) * axis.block + off % axis.block


def _permute(x: jax.Array, rows: Axis, cols: Axis, *, inverse: bool) -> jax.Array:
    """Natural <-> cyclic order along each cyclic axis (reshape / transpose / reshape)."""
    if not (rows.cyclic or cols.cyclic):
        return x
    shape, perm = [], []
    for ax, length in ((rows, x.shape[0]), (cols, x.shape[1])):
        base = len(shape)
        if ax.cyclic:  # natural block l * p + q  <->  cyclic position q * (nb / p) + l
            nbl, p = ax.nblocks // ax.parts, ax.parts
            shape += [p, nbl, ax.block] if inverse else [nbl, p, ax.block]
            perm += [base + 1, base, base + 2]
        else:
            shape += [length]
            perm += [base]
    return x.reshape(shape).transpose(perm).reshape(x.shape)


def _constrain(x: jax.Array, mesh: Any, p: P) -> jax.Array:
    return lax.with_sharding_constraint(x, NamedSharding(mesh, p))


def to_layout(x: jax.Array, rows: Axis, cols: Axis, mesh: Any, *, eye: bool = False) -> jax.Array:
    """A natural ``(n, m)`` matrix padded to ``(rows.size, cols.size)`` (zeros; with
    ``eye``, ones on the padded diagonal) and put in ``rows``/``cols`` order, sharded
    ``P(rows.name, cols.name)``."""
    n, m = x.shape
    x = jnp.pad(x, ((0, rows.size - n), (0, cols.size - m)))
    if eye and (rows.size > n or cols.size > m):
        i = lax.broadcasted_iota(jnp.int32, x.shape, 0)
        j = lax.broadcasted_iota(jnp.int32, x.shape, 1)
        x = jnp.where((i == j) & (i >= min(n, m)), jnp.ones((), x.dtype), x)
    x = _constrain(x, mesh, P(rows.name, cols.name))
    return _constrain(_permute(x, rows, cols, inverse=False), mesh, spec(rows, cols))


def from_layout(
    x: jax.Array, rows: Axis, cols: Axis, mesh: Any, shape: tuple[int, int]
) -> jax.Array:
    """Inverse of :func:`to_layout`: natural order, trimmed to ``shape``, sharded over as
    much of the mesh as divides it (``fit_spec``)."""
    x = _permute(x, rows, cols, inverse=True)
    x = _constrain(x, mesh, P(rows.name, cols.name))[: shape[0], : shape[1]]
    return _constrain(x, mesh, fit_spec(shape, mesh))
