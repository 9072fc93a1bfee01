"""Multi-process (``jax.distributed``) coordination of store metadata.

Every process runs the same plan and touches only its own shards; what is shared — creating
or freeing a matrix, completion records — is done once, by process 0, behind a barrier.
Single-process runs pay nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

__all__ = ["finished_records", "once", "record_key", "sync", "to_host"]

T = TypeVar("T")


def sync(name: str) -> None:
    """A barrier across all processes (no-op in a single-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"jaxwren:{name}")


def once(name: str, fn: Callable[[], T], then: Callable[[], T] | None = None) -> T:
    """Runs ``fn`` on process 0 only, then (after a barrier) ``then`` on the others.

    Typical: ``once("create", lambda: BigMatrix.create(...), lambda: BigMatrix.open(...))``.
    """
    if jax.process_count() == 1:
        return fn()
    result = fn() if jax.process_index() == 0 else None
    sync(name)
    if jax.process_index() != 0 and then is not None:
        result = then()
    return result  # type: ignore[return-value]


def record_key(key: str) -> str:
    """This process's completion record for ``key`` (each process vouches for its own
    shards; a step is finished when every process has recorded it)."""
    if jax.process_count() == 1:
        return key
    return f"{key}.p{jax.process_index()}"


def finished_records(marks: set[str], keys: Any) -> set[str]:
    """The ``keys`` recorded as finished by every process."""
    n = jax.process_count()
    if n == 1:
        return {k for k in keys if k in marks}
    return {k for k in keys if all(f"{k}.p{i}" in marks for i in range(n))}


def to_host(x: Any) -> np.ndarray:
    """The whole value of a (small) device array on every process's host: ``np.asarray``
    when this process holds all of it, else an all-gather across processes."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
