"""The in-core algorithm on the block-cyclic kernel (``"kernel"``).

One step on the engine: the matrix is read from the host (store or memory) straight into
the 2-D block-cyclic layout (:class:`CyclicSource`: the permutation is a host memcpy),
factored by the ``shard_map`` kernel of :mod:`jaxwren.lax.cholesky_kernel` (the same
kernel ``jaxwren.lax.cholesky`` traces: one kernel, two entries; compiled once, a
``fori_loop`` over block columns, so compile time does not grow with their number; no
device ever holds the whole matrix), and put back in natural order on the host, in the
buffer the input was read into. A stored factor is written from there as whole chunks,
skipping the blocks above the diagonal (the run emptied ``out``; absent blocks read as
zeros). The only algorithm that returns its factor as a device array.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.engine.memory import Buffer, Footprint
from jaxwren.engine.plan import Plan, Read, Step, Write
from jaxwren.lax import cholesky_kernel as ck
from jaxwren.linalg.cholesky.checks import check_factor
from jaxwren.linalg.cholesky.setup import Setup
from jaxwren.sharding.cyclic import CyclicSource, natural_from_cyclic
from jaxwren.sharding.mesh import COLS, ROWS

__all__ = ["NAME", "footprint", "incore_block", "kernel_plan"]

NAME = "kernel"
_KB = (256, 128, 64, 32, 16, 8, 4, 2, 1)


def incore_block(n: int, mesh: Mesh) -> int:
    """Kernel block for a whole n x n matrix: 128 up to n = 6144, 256 above (measured at
    n = 4096 f64 on 8 CPU devices: b=128 0.52 s, b=256 0.59 s; n = 8192: equal), smaller
    for small n (load balance). The kernel compiles once whatever the block count."""
    unit = math.lcm(mesh.shape[ROWS], mesh.shape[COLS])
    top = 128 if n <= 6144 else 256
    return next(b for b in _KB if b <= top and b * unit * 2 <= max(n, 2 * unit))


def footprint(n: int, dtype: np.dtype, mesh: Mesh) -> Footprint:
    """The padded input read whole and the factor emitted, both ``P('rows', 'cols')``;
    extra: two matrix-sized temporaries (the permutation to and from the block-cyclic
    layout beside the kernel's in-place factor) and the kernel's panels of ``8 kb``
    columns."""
    kb = incore_block(n, mesh)
    n_pad = ck.padded_size(n, kb, mesh)
    whole = Buffer((n_pad, n_pad), dtype, NamedSharding(mesh, P(ROWS, COLS)))
    panels = 8 * n_pad * kb * np.dtype(dtype).itemsize
    return Footprint(reads=(whole,), writes=(whole,), extra=2 * whole.nbytes + panels)


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


def kernel_plan(s: Setup, tiling: tuple) -> Plan:
    """The one-step plan of ``("kernel", kb)``."""
    kb = tiling[1]
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
        check=functools.partial(check_factor, kb=kb, src=s.src, n=s.n),
        warm=warm,
    )
    desc = f"kernel: in-core, block-cyclic kernel block {kb}"
    return Plan("cholesky", [step], None, tiles=desc, reason=s.why)
