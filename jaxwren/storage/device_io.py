"""The slot through which a higher layer lends storage its device IO.

storage/ knows nothing of meshes or shardings, yet ``BigMatrix.to_jax`` and
``BigMatrix.iter_row_batches`` are handy conveniences. They call the functions held
here, which the sharding layer's ``io`` and ``batches`` modules register when they
are imported (``import jaxwren`` imports them, so users always find them set).
Nothing here imports upward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jaxwren.errors import ConfigError

__all__ = ["get", "register"]

_NAMES = ("load", "iter_row_batches", "matmul")
_SLOTS: dict[str, Callable[..., Any]] = {}


def register(name: str, fn: Callable[..., Any]) -> None:
    """Fills slot ``name`` (``"load"``, ``"iter_row_batches"`` or ``"matmul"``, the
    last for ``A @ B``) with ``fn``."""
    if name not in _NAMES:
        raise ConfigError(f"device_io.register: unknown slot {name!r}; expected one of {_NAMES}.")
    _SLOTS[name] = fn


def get(name: str, call: str) -> Callable[..., Any]:
    """Returns the function in slot ``name``.

    Raises:
        ConfigError: the sharding layer was never imported, so no function is registered.
    """
    fn = _SLOTS.get(name)
    if fn is None:
        raise ConfigError(
            f"{call}: no device IO is registered ({name!r}); import jaxwren before "
            "loading a matrix onto devices."
        )
    return fn
