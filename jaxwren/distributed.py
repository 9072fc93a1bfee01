"""Multi-process runs: one JAX process per host (or per group of devices), the object
store as the shared memory.

``initialize()`` starts JAX's multi-controller runtime (``jax.distributed``) from explicit
arguments or, when they are omitted, from the variables ``python -m jaxwren.launch`` sets
(``JAXWREN_COORDINATOR``, ``JAXWREN_NUM_PROCESSES``, ``JAXWREN_PROCESS_ID``). Call it once,
first thing in the program, before anything touches a device.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax

from jaxwren.errors import ConfigError

__all__ = ["initialize"]


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Joins this process to a multi-process JAX run (gloo collectives on CPU devices).

    Args:
      coordinator_address: ``host:port`` of process 0 (default ``$JAXWREN_COORDINATOR``).
      num_processes: number of processes (default ``$JAXWREN_NUM_PROCESSES``).
      process_id: this process's rank (default ``$JAXWREN_PROCESS_ID``).
      environ: where to read the defaults (default ``os.environ``).

    Raises:
      ConfigError: a value is missing or malformed.
    """
    env = os.environ if environ is None else environ
    coordinator_address = coordinator_address or env.get("JAXWREN_COORDINATOR")
    try:
        num_processes = int(num_processes or env.get("JAXWREN_NUM_PROCESSES", ""))
        process_id = int(
            process_id if process_id is not None else env.get("JAXWREN_PROCESS_ID", "")
        )
    except ValueError:
        num_processes = process_id = None
    if not coordinator_address or num_processes is None or process_id is None:
        raise ConfigError(
            "jaxwren.distributed.initialize: coordinator address, number of processes and "
            "process id are required; pass them, or start the program with "
            "`python -m jaxwren.launch --num_processes N -- script.py`."
        )
    if not 0 <= process_id < num_processes:
        raise ConfigError(
            f"jaxwren.distributed.initialize: process_id={process_id} must be in "
            f"[0, {num_processes})."
        )
    if env.get("JAX_PLATFORMS", "cpu").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
