"""The platform profile: what jaxwren assumes about the devices it runs on, decided once.

CPU devices (XLA:CPU, usually several emulated in one process) and accelerators differ in
a few facts that choose code paths and memory projections. :func:`platform_profile`
derives them from the devices at hand (a mesh, a sharding, an array's devices) and every
operation queries the profile instead of testing ``device.platform`` itself.

``JAXWREN_PLATFORM=accelerator`` (read by :func:`jaxwren.config.platform_setting` when a
profile is computed) gives CPU devices the accelerator profile, so the accelerator code
paths (device-side cyclic permutation, the diagonal factor on one device, tiles cut on the
devices, staged transfers and their memory projections, ...) run, and are tested, on a
machine without an accelerator. ``JAXWREN_PLATFORM=cpu`` gives accelerators the CPU
profile (its paths work there, with transfers where CPU devices have views, and memory
projections that do not count per-device copies): for comparisons only.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from typing import Any

import jax
from jax.sharding import Mesh, Sharding

from jaxwren.config import platform_setting

__all__ = ["PlatformProfile", "platform_profile"]


@dataclasses.dataclass(frozen=True)
class PlatformProfile:
    """What the code assumes about a set of devices.

    Attributes:
      name: ``"cpu"`` or ``"accelerator"``: the profile in use.
      forced: ``JAXWREN_PLATFORM`` chose ``name`` against the devices' own platform.
      shares_host_memory: device buffers are host memory. Decides: replicas of a tile
        adopt one host buffer; a jax.Array operand is read as a host source (regions
        copied out of its shards) instead of cut into tiles on the devices; the cyclic
        Cholesky factor is put back in natural order by host memcpys; the neighbour
        ring's moved shards are views (all hops fused in one launch, no copy in transit);
        finished Cholesky tiles may stay in host memory as views for later panels.
      host_lapack: small dense factors (Cholesky's diagonal tiles and their inverses) run
        in the host's LAPACK (``potrf``/``trtri`` in place) rather than jitted on one
        device; with it a stored Cholesky factor ranks the tile plan before the in-core
        kernel (no cyclic permutation, no collectives, the diagonal on the host).
      host_staging: a transfer to the devices goes through a host buffer besides the
        device copies, and replicas are one copy per device: memory projections count the
        staged reads in flight and a replicated panel once per device.
      memory_per_device: the smallest ``bytes_limit`` of the devices' memory stats; the
        default budget is 80% of it times the device count. None (CPU devices share host
        RAM, or no stats): 40% of the host's physical memory.
      emulated_devices: several XLA:CPU devices run in this process on its cores and one
        runtime. Decides: each step's programs finish before the next step dispatches
        (XLA:CPU deadlocked with hundreds of programs in flight) and BLAS/LAPACK runs one
        thread per call during a run (every device thread calls it at once). A fact of
        the process, kept when ``JAXWREN_PLATFORM`` forces the other profile.
    """

    name: str
    forced: bool
    shares_host_memory: bool
    host_lapack: bool
    host_staging: bool
    memory_per_device: int | None
    emulated_devices: bool


def platform_profile(where: Mesh | Sharding | jax.Array | Iterable[jax.Device] | None = None
                     ) -> PlatformProfile:  # fmt: skip
    """The profile of ``where``'s devices (a mesh, a sharding, an array's devices or a
    list of devices; None: this process's devices), computed once per device set and
    ``JAXWREN_PLATFORM`` setting.

    Raises:
      ConfigError: ``JAXWREN_PLATFORM`` holds something else than auto, cpu, accelerator.
    """
    return _profile(_devices(where), platform_setting())


def _devices(where: Any) -> tuple[jax.Device, ...]:
    if where is None:
        devices: Iterable[jax.Device] = jax.local_devices()
    elif isinstance(where, Mesh):
        devices = where.devices.flat
    elif isinstance(where, Sharding):
        devices = where.device_set
    elif isinstance(where, jax.Array):
        devices = where.sharding.device_set
    else:
        devices = where
    return tuple(sorted(devices, key=lambda d: d.id))


@functools.lru_cache(maxsize=64)
def _profile(devices: tuple[jax.Device, ...], setting: str) -> PlatformProfile:
    on_cpu = bool(devices) and all(d.platform == "cpu" for d in devices)
    cpu = on_cpu if setting == "auto" else setting == "cpu"
    limits = [] if cpu else [_bytes_limit(d) for d in devices]
    per_device = min(limits) if limits and all(limits) else None
    local = jax.local_devices()
    return PlatformProfile(
        name="cpu" if cpu else "accelerator",
        forced=cpu != on_cpu,
        shares_host_memory=cpu,
        host_lapack=cpu,
        host_staging=not cpu,
        memory_per_device=per_device,
        emulated_devices=len(local) > 1 and all(d.platform == "cpu" for d in local),
    )


def _bytes_limit(device: jax.Device) -> int | None:
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - some backends do not implement memory stats
        return None
    return int(stats["bytes_limit"]) if stats and stats.get("bytes_limit") else None
