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
from jaxwren.sharding.platform import platform_profile
from jaxwren.storage.buffers import aligned_empty

__all__ = [
    "CyclicSource",
    "natural_from_cyclic",
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


def _blocks(x: np.ndarray, b: int, r: int, c: int) -> np.ndarray:
    """A natural ``(n_pad, n_pad)`` array as ``(nbr, R, b, nbc, C, b)``: block row
    ``l * R + q`` at ``[l, q]`` (a view)."""
    n = x.shape[0]
    return x.reshape(n // b // r, r, b, n // b // c, c, b)


class CyclicSource:
    """The padded cyclic layout of a square natural-layout Source, permuted on the host.

    Reading through it replaces the on-device permutation of :func:`to_cyclic` (on
    emulated CPU devices an all-to-all of the whole matrix: ~0.3 s at n = 4096) by a
    memcpy: the first read fetches the whole natural matrix once (one large store read),
    every shard of the ``P('rows', 'cols')`` tile then copies its blocks out of it. The
    padding (rows/columns ``>= n``) reads as zeros.
    """

    def __init__(self, source: Any, block: int, mesh: Mesh) -> None:
        n = source.shape[0]
        self.source, self.block = source, block
        self.r, self.c = mesh.shape[ROWS], mesh.shape[COLS]
        self.n_pad = padded_size(n, block, mesh)
        self.shape = (self.n_pad, self.n_pad)
        self.dtype = np.dtype(source.dtype)
        self.location = getattr(source, "location", None)
        self._full: tuple[np.ndarray, Any] | None = None

    def __repr__(self) -> str:
        return f"CyclicSource({self.source!r}, block={self.block})"

    def _start(self) -> tuple[np.ndarray, Any]:
        if self._full is None:
            n = self.source.shape[0]
            buf = aligned_empty(self.shape, self.dtype, zero=n < self.n_pad)
            self._full = buf, self.source.read_region_into_async(0, n, 0, n, buf[:n, :n])
        return self._full

    def read_region_into_async(
        self, r0: int, r1: int, c0: int, c1: int, out: np.ndarray
    ) -> _Gather:
        return _Gather(self, (r0, r1, c0, c1), out)

    def take_buffer(self) -> np.ndarray | None:
        """Hands over the ``(n_pad, n_pad)`` host buffer the natural matrix was read into
        (its pages already touched) once every shard has been copied out; None if none."""
        full, self._full = self._full, None
        if full is None:
            return None
        full[1].result()
        return full[0]


class _Gather:
    """Waits for the natural matrix, then copies a cyclic region out of it."""

    def __init__(self, src: CyclicSource, region: tuple[int, int, int, int], out: np.ndarray):
        self._src, self._region, self._out = src, region, out
        self._buf, self._fut = src._start()

    def done(self) -> bool:
        return self._fut.done()

    def result(self) -> None:
        self._fut.result()
        s, (r0, r1, c0, c1) = self._src, self._region
        b, nr, nc = s.block, s.n_pad // s.r, s.n_pad // s.c
        view = _blocks(self._buf, b, s.r, s.c)
        if r1 - r0 == nr and c1 - c0 == nc and r0 % nr == 0 and c0 % nc == 0:
            q, p = r0 // nr, c0 // nc  # one device's shard: its blocks, strided
            if self._out.flags.c_contiguous:  # copied in place, no temporary
                self._out.reshape(nr // b, b, nc // b, b)[...] = view[:, q, :, :, p, :]
            else:
                self._out[...] = view[:, q, :, :, p, :].reshape(nr, nc)
            return
        rows = _cyclic_index(s.n_pad, b, s.r)[r0:r1]
        cols = _cyclic_index(s.n_pad, b, s.c)[c0:c1]
        self._out[...] = self._buf[np.ix_(rows, cols)]


def _cyclic_index(n_pad: int, b: int, p: int) -> np.ndarray:
    """Natural index of each cyclic position."""
    order = cyclic_order(n_pad // b, p)
    return (order[:, None] * b + np.arange(b)).ravel()


def natural_from_cyclic(
    x_cyc: jax.Array, block: int, mesh: Mesh, n: int, *, buffer: np.ndarray | None = None,
    host: bool = False,
) -> jax.Array | np.ndarray:  # fmt: skip
    """:func:`from_cyclic` trimmed to ``n``, through host memory where device buffers are
    host memory (the platform profile's ``shares_host_memory``, CPU devices: memcpys
    instead of XLA's emulated all-to-all, ~0.25 s at n = 4096), on the devices elsewhere.

    Args:
      buffer: an ``(n_pad, n_pad)`` host array to assemble into (reusing memory already
        touched saves the page faults of a fresh one: ~0.1-0.25 s per 128 MiB on a VM);
        ignored unless its shape and dtype are exactly the result's.
      host: return the natural matrix as a host (numpy) array (results that are only
        stored); else a jax.Array sharded ``default_sharding``. Arrays spanning processes
        are always permuted on the devices (each process holds only its shards).
    """
    shared = platform_profile(x_cyc).shares_host_memory
    if not x_cyc.is_fully_addressable or not (host or shared):  # spans processes, or
        return from_cyclic(x_cyc, block, mesh, n=n)  # an accelerator's fast interconnect
    r, c = mesh.shape[ROWS], mesh.shape[COLS]
    n_pad = x_cyc.shape[0]
    nr, nc = n_pad // r, n_pad // c
    usable = buffer is not None and buffer.shape == (n_pad, n_pad) and buffer.dtype == x_cyc.dtype
    full = buffer if usable else aligned_empty((n_pad, n_pad), x_cyc.dtype)
    view = _blocks(full, block, r, c)
    for shard in x_cyc.addressable_shards:
        if shard.replica_id:
            continue
        q, p = shard.index[0].indices(n_pad)[0] // nr, shard.index[1].indices(n_pad)[0] // nc
        data = np.asarray(shard.data).reshape(nr // block, block, nc // block, block)
        view[:, q, :, :, p, :] = data
    if host:
        return full[:n, :n]
    return jax.device_put(full[:n, :n], default_sharding((n, n), mesh))
