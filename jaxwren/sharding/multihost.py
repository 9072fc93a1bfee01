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

__all__ = [
    "finished_records",
    "once",
    "once_shared",
    "record_key",
    "shared_text",
    "sync",
    "to_host",
]

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


_MSG_BYTES = 2048


def once_shared(name: str, fn: Callable[[], T], then: Callable[[], T]) -> T:
    """Runs ``fn`` on process 0 only and shares its outcome: the other processes run
    ``then`` when it succeeded, and raise the same JaxwrenError class with its message when
    it failed (:func:`once` would leave them waiting at a barrier for ever). For work that
    only process 0 can check, like parsing files (no-op wrapper in a single process)."""
    if jax.process_count() == 1:
        return fn()
    from jaxwren import errors  # noqa: PLC0415  (errors imports nothing from here)

    result, failure = None, None
    if jax.process_index() == 0:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001  (re-raised below, after it is shared)
            failure = exc
    code = np.zeros(_MSG_BYTES, np.uint8)
    if failure is not None:
        cls = type(failure).__name__ if isinstance(failure, errors.JaxwrenError) else ""
        text = f"{cls}\n{failure}".encode()[: _MSG_BYTES - 1]
        code[: len(text)] = np.frombuffer(text, np.uint8)
        code[-1] = 1
    code = np.asarray(multihost_utils.broadcast_one_to_all(code))
    if failure is not None:
        raise failure
    if code[-1]:
        cls_name, _, msg = bytes(code[:-1]).rstrip(b"\0").decode(errors="replace").partition("\n")
        cls = getattr(errors, cls_name, None) if cls_name else None
        if not (isinstance(cls, type) and issubclass(cls, errors.JaxwrenError)):
            cls = errors.JaxwrenError
        raise cls(f"{msg} (raised on process 0 during {name})")
    return then() if jax.process_index() != 0 else result  # type: ignore[return-value]


def shared_text(name: str, fn: Callable[[], str]) -> str:
    """``fn()`` (a short ASCII text, e.g. a digest) computed by process 0 and the same on
    every process: one set of store requests instead of one per process, and no process
    decides on a text another never saw. Errors are shared as :func:`once_shared` does."""
    if jax.process_count() == 1:
        return fn()
    box: list[str] = []
    once_shared(name, lambda: box.append(fn()), lambda: None)
    code = np.zeros(_MSG_BYTES, np.uint8)
    if box:
        text = box[0].encode()
        code[: len(text)] = np.frombuffer(text[:_MSG_BYTES], np.uint8)
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(code))).rstrip(b"\0").decode()


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
