"""Plans: the tiles of a blocked algorithm, their reads, kernels and writes.

A Plan is a sequence of Steps. A Step names the tiles it reads (each a region of a source,
padded to a fixed shape and sharded over the mesh), a jit-compiled kernel that folds them
into the carried device state, and where its outputs go. The in-core case is a plan with
one step; out-of-core plans have many steps of the same tile shapes, so one compiled kernel
serves them all. Memory is not the plan's business: each candidate tiling declares its
footprint and the engine refuses an over-budget one before any plan is built.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax

from jaxwren.config import parse_bytes
from jaxwren.sharding.platform import platform_profile

__all__ = ["Read", "Write", "Step", "Plan", "default_budget", "resolve_budget"]

Region = tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class Read:
    """A region of ``source`` loaded as a tile of ``shape`` (zero padded) with ``sharding``
    (None: a host numpy array, for kernels on host BLAS on CPU devices of one process)."""

    source: Any
    region: Region
    shape: tuple[int, int]
    sharding: jax.sharding.Sharding
    dtype: Any = None


@dataclasses.dataclass(frozen=True)
class Write:
    """Where an output tile goes: ``target`` at ``origin``, keeping its top-left ``size``.

    ``target=None`` keeps the output on the devices and returns it from the run.
    ``record`` names a completion record written (``target.mark(record)``) once the
    tile's data is stored: resumable plans skip steps whose records exist. ``settle``:
    the tile is stored before the next step runs, so no copy of it waits behind the
    compute (:mod:`jaxwren.engine.memory`: a settled output is counted once, where it was
    computed).
    """

    target: Any
    origin: tuple[int, int] = (0, 0)
    size: tuple[int, int] | None = None
    record: str | None = None
    settle: bool = False  # stored before the next step runs (nothing waits behind it:
    # a host output that is the run's one big buffer, counted once, where it was computed)
    lower: bool = False  # strictly upper part zero and target emptied by the run: the
    # target's blocks wholly above the diagonal are not written (absent reads as zero);
    # honoured for host (numpy) results and tiles assembled on the host, so a kernel
    # whose output is written lower gives a host array


@dataclasses.dataclass(frozen=True)
class Step:
    """One unit of work: ``carry, outputs = kernel(carry, *tiles)``.

    Kernels may donate the carry but never a tile: on CPU devices the replicas of a tile
    share one host buffer. An output that is only stored may be a host (numpy) array: it
    is written as one region (whole chunks, no copy to devices).

    Attributes:
      reads: the tiles to load (prefetched while earlier steps compute).
      kernel: a jitted function of the carried state and the loaded tiles.
      writes: one Write per output of the kernel (an empty tuple: no outputs).
      label: what the step does, for progress and logs.
      skip: the step's effect is already stored (resume) and it need not run.
      check: called with the kernel's outputs before any is written; raises to stop the
        run (e.g. a failed factorisation) so that nothing wrong is stored.
      warm: compiles the kernel ahead of time (e.g. ``jitted.lower(spec).compile()``); the
        runner calls it on a background thread when the run starts, so that a first call
        compiles while its reads are in flight, and waits for it before the kernel runs.
    """

    reads: tuple[Read, ...]
    kernel: Callable[..., tuple[Any, tuple[jax.Array, ...]]]
    writes: tuple[Write, ...] = ()
    label: str = ""
    skip: bool = False
    check: Callable[[tuple[jax.Array, ...]], None] | None = None
    warm: Callable[[], Any] | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """An ordered list of steps.

    What a plan holds is declared before it is built, by its candidate's footprint
    (:mod:`jaxwren.engine.memory`); the engine refuses an over-budget tiling then, once.

    Attributes:
      name: the calling operation (``"matmul"``), for messages.
      steps: the steps, run in order.
      init: makes the initial carried state (None: no carry).
      tiles: a human description of the tiling, for messages and logs.
      reason: the operation's own reason for this algorithm, where it chooses among
        several (the report shows it after the engine's reason for the tiling).
      write_behind: bytes of finished output that the projection allows in flight to
        the store even without prefetch (one output queued, writes up to this many bytes
        in progress); 0: without prefetch each output is stored before the next step.
    """

    name: str
    steps: Sequence[Step]
    init: Callable[[], Any] | None
    tiles: str = ""
    write_behind: int = 0
    reason: str = ""


def default_budget(devices: Sequence[jax.Device] | None = None) -> int:
    """Bytes a run may hold: 80% of the devices' memory (the platform profile's
    ``memory_per_device``), or, where that is unknown (CPU devices share host RAM), 40% of
    the host's physical memory."""
    devices = list(jax.devices() if devices is None else devices)
    per_device = platform_profile(devices).memory_per_device
    if per_device is not None:
        return int(0.8 * per_device * len(devices))
    return int(0.4 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def resolve_budget(memory_budget: int | str | None, devices: Sequence[jax.Device]) -> int:
    """The run's budget in bytes: the user's (validated) or :func:`default_budget`."""
    parsed = parse_bytes(memory_budget, what="memory_budget")
    return default_budget(devices) if parsed is None else parsed
