"""Memory accounting, owned by the engine: a tiling declares what it holds, the engine
projects the bytes.

Each candidate tiling declares a :class:`Footprint`: the tiles one step reads, the output
tiles one step emits, the state carried across steps, what stays for the whole run, each
a :class:`Buffer` (shape x dtype, laid out by a sharding), and an ``extra`` term for what
the engine cannot see (a kernel's temporaries). :func:`projected` turns it into peak bytes
on the devices and in host staging, with the platform profile, the prefetch depth and
whether the outputs are stored; ``engine.choice`` compares that with the budget, once.

The rules (summed over all devices, as the budget is):

- reads: ``prefetch + 1`` steps' tiles in flight; a replicated tile costs one copy per
  device, except where device buffers are host memory (CPU devices: the runner loads one
  host buffer that every replica shares); where the platform stages transfers through the
  host (accelerators), ``prefetch`` steps' tiles also wait in host buffers;
- writes: each output tile once while computed, and once more while it is written behind
  to the store (stored outputs); an output written with ``Write.settle`` is stored before
  the next step runs, so nothing of it waits behind: the operation counts it once, where
  it is computed (e.g. the carried buffer that becomes it), not among the writes;
- accumulators and held buffers: once (kernels donate the carry, so its update reuses it);
- extra: as the operation declares it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np
from jax.sharding import NamedSharding

from jaxwren.sharding.platform import platform_profile

__all__ = ["Buffer", "Footprint", "projected"]


@functools.lru_cache(maxsize=1024)
def _copies(shape: tuple[int, ...], sharding: Any) -> int:
    """How many devices hold each element of an array of ``shape`` laid out by
    ``sharding`` (1: sharded; the device count: replicated)."""
    if isinstance(sharding, NamedSharding):
        used = [a for p in sharding.spec if p is not None
                for a in (p if isinstance(p, tuple) else (p,))]  # fmt: skip
        return sharding.mesh.size // math.prod(sharding.mesh.shape[a] for a in used)
    indices = sharding.devices_indices_map(shape)
    return len(indices) // len({repr(i) for i in indices.values()})


@dataclasses.dataclass(frozen=True)
class Buffer:
    """An array the run holds: ``shape`` x ``dtype``, laid out by ``sharding`` (None: one
    copy, e.g. a host buffer or an array on one device)."""

    shape: tuple[int, ...]
    dtype: Any
    sharding: Any = None

    @property
    def nbytes(self) -> int:
        """One copy's bytes."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    @property
    def on_devices(self) -> int:
        """Bytes over all devices: one copy per device that holds an element."""
        copies = 1 if self.sharding is None else _copies(tuple(self.shape), self.sharding)
        return self.nbytes * copies


@dataclasses.dataclass(frozen=True)
class Footprint:
    """What one tiling holds (see the module docstring for how each part counts).

    Attributes:
      reads: the tiles of the step that reads the most (with the shardings they load).
      writes: the output tiles of the step that emits the most.
      accumulators: the state carried from step to step.
      held: what stays on the devices for the whole run (returned results gathered
        across steps, tiles kept resident).
      extra: bytes the engine cannot see: kernels' temporaries, transfers inside a
        kernel. The operation documents each term where it declares it.
    """

    reads: tuple[Buffer, ...] = ()
    writes: tuple[Buffer, ...] = ()
    accumulators: tuple[Buffer, ...] = ()
    held: tuple[Buffer, ...] = ()
    extra: int = 0


def projected(fp: Footprint, mesh: Any, prefetch: int, stored: bool) -> int:
    """Peak bytes of a tiling on ``mesh``'s devices and in host staging at ``prefetch``;
    ``stored``: its outputs go to the store (written behind)."""
    profile = platform_profile(mesh)
    host = sum(b.nbytes for b in fp.reads)
    device = host if profile.shares_host_memory else sum(b.on_devices for b in fp.reads)
    reads = (prefetch + 1) * device + (prefetch * host if profile.host_staging else 0)
    writes = sum(b.on_devices for b in fp.writes) * (2 if stored else 1)
    state = sum(b.on_devices for b in (*fp.accumulators, *fp.held))
    return reads + writes + state + fp.extra
