"""Multi-process runs: one JAX process per host (or per group of devices), the object
store as the shared memory.

``initialize()`` starts JAX's multi-controller runtime (``jax.distributed``) from explicit
arguments, from the variables ``python -m jaxwren.launch`` sets (``JAXWREN_COORDINATOR``,
``JAXWREN_NUM_PROCESSES``, ``JAXWREN_PROCESS_ID``), or, when neither gives them, from
JAX's own cluster auto-detection (SLURM ``srun``, Open MPI ``mpirun``, Kubernetes
JobSet/indexed Jobs, Cloud TPU). It only adds the CPU collectives setting (gloo) that
multi-process runs on CPU devices need. Call it once, first thing in the program, before
anything touches a device.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax

from jaxwren.errors import ConfigError

__all__ = ["initialize"]

_WHERE = "jaxwren.distributed.initialize"


def _int(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{_WHERE}: {name}={value!r} must be an integer.") from None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    **jax_kwargs: Any,
) -> None:
    """Joins this process to a multi-process JAX run (gloo collectives on CPU devices).

    With no arguments and no ``JAXWREN_*`` variables this defers to
    ``jax.distributed.initialize()``, which detects SLURM (``srun``), Open MPI
    (``mpirun``), Kubernetes (a JobSet or indexed Job; needs the ``kubernetes`` package)
    and Cloud TPU; values given here or in ``JAXWREN_*`` win, and JAX detects the rest.

    Args:
      coordinator_address: ``host:port`` of process 0 (default ``$JAXWREN_COORDINATOR``,
        else auto-detected).
      num_processes: number of processes (default ``$JAXWREN_NUM_PROCESSES``, else
        auto-detected).
      process_id: this process's rank (default ``$JAXWREN_PROCESS_ID``, else
        auto-detected).
      environ: where to read the ``JAXWREN_*`` defaults (default ``os.environ``; JAX's
        auto-detection reads ``os.environ``).
      **jax_kwargs: passed on to ``jax.distributed.initialize`` (``local_device_ids``,
        ``cluster_detection_method``, ``initialization_timeout``, ...).

    Raises:
      ConfigError: a value is malformed, or no value is given and JAX detects no
        cluster (the message names the ways to start one).
    """
    env = os.environ if environ is None else environ
    coordinator_address = coordinator_address or env.get("JAXWREN_COORDINATOR") or None
    num_processes = _int(
        num_processes if num_processes is not None else env.get("JAXWREN_NUM_PROCESSES"),
        "num_processes",
    )
    process_id = _int(
        process_id if process_id is not None else env.get("JAXWREN_PROCESS_ID"), "process_id"
    )
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"{_WHERE}: num_processes={num_processes} must be >= 1.")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ConfigError(f"{_WHERE}: process_id={process_id} must be in [0, {num_processes}).")
    cpu = env.get("JAX_PLATFORMS", "cpu").startswith("cpu")
    before = jax.config.jax_cpu_collectives_implementation
    if cpu:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id, **jax_kwargs)
    except (ValueError, RuntimeError) as e:  # no cluster detected, or called too late
        if cpu:
            jax.config.update("jax_cpu_collectives_implementation", before)
        ways = (
            "pass them, start the program with "
            "`python -m jaxwren.launch --num_processes N -- script.py`, or run it under a "
            "cluster JAX detects: SLURM (`srun`), Open MPI (`mpirun`), Kubernetes (a "
            "JobSet or indexed Job, with the `kubernetes` package installed)"
        )
        if isinstance(e, ValueError):
            raise ConfigError(
                f"{_WHERE}: JAX could not tell the coordinator address, number of processes "
                f"and process id ({e}); {ways}."
            ) from None
        given = (coordinator_address, num_processes, process_id) != (None, None, None)
        raise ConfigError(
            f"{_WHERE}: JAX refused to start ({e}); call it once, first thing in the "
            "program, before jaxwren or JAX touches a device"
            + ("." if given else f" (with no values given, {ways}).")
        ) from None
