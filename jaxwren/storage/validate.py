"""Argument checks shared by the storage entry points (before anything is written)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from jaxwren.config import StorageConfig
from jaxwren.errors import ConfigError, DTypeMismatchError, ShapeMismatchError

__all__ = [
    "check_block",
    "check_cast",
    "check_dtype",
    "check_labels",
    "check_shape",
    "resolve_storage",
]

_SUPPORTED_KINDS = "fiub"
_EXTRA_DTYPES = ("bfloat16",)


def resolve_storage(storage: StorageConfig | None) -> StorageConfig:
    """The public entry points' one read of the environment (endpoint, region, credentials)."""
    return (storage or StorageConfig()).resolve(os.environ)


def check_dtype(dtype: Any, *, where: str) -> np.dtype:
    """Returns the numpy dtype for ``dtype`` or raises DTypeMismatchError."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or not (dt.kind in _SUPPORTED_KINDS or dt.name in _EXTRA_DTYPES):
        raise DTypeMismatchError(
            f"{where}: dtype {dtype!r} is not supported; use a numeric dtype such as "
            "'float32', 'float64', 'bfloat16' or an integer type."
        )
    return dt


def check_labels(dims: Any, attrs: Any, *, where: str) -> tuple[list[str] | None, dict]:
    """``dims`` (two distinct non-empty names, stored as zarr ``dimension_names``, which
    xarray reads) and ``attrs`` (a JSON-serialisable dict of user attributes; the key
    ``"jaxwren"`` is jaxwren's own header), checked before anything is written."""
    if dims is not None:
        ok = isinstance(dims, list | tuple) and len(dims) == 2
        ok = ok and all(isinstance(d, str) and d for d in dims) and dims[0] != dims[1]
        if not ok:
            raise ShapeMismatchError(
                f"{where}: dims must be two distinct non-empty names such as ('row', 'col'), "
                f"got {dims!r}."
            )
        dims = list(dims)
    attrs = {} if attrs is None else attrs
    if not isinstance(attrs, dict) or not all(isinstance(k, str) for k in attrs):
        raise ConfigError(f"{where}: attrs must be a dict with string keys, got {attrs!r}.")
    if "jaxwren" in attrs:
        raise ConfigError(f"{where}: attrs may not use the key 'jaxwren' (jaxwren's header).")
    try:
        json.dumps(attrs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{where}: attrs must be JSON-serialisable (stored in zarr.json): {exc}."
        ) from None
    return dims, dict(attrs)


def check_shape(shape: Any, *, where: str, name: str = "shape") -> tuple[int, int]:
    """Returns ``shape`` as a 2-tuple of positive ints or raises ShapeMismatchError."""
    try:
        dims = tuple(int(s) for s in shape)
        ok = len(dims) == 2 and all(d > 0 and d == s for d, s in zip(dims, shape, strict=True))
    except (TypeError, ValueError):
        ok, dims = False, ()
    if not ok:
        raise ShapeMismatchError(
            f"{where}: {name}={shape!r} must be two positive integers (rows, cols)."
        )
    return dims  # type: ignore[return-value]


def check_block(block: np.ndarray, expected: tuple[int, int], dtype: np.dtype, call: str) -> None:
    """Checks a block's shape (its true, possibly ragged size) and that its dtype casts
    safely to ``dtype``; ``call`` names the call in the message."""
    if block.shape != expected:
        raise ShapeMismatchError(
            f"{call}: block has shape {block.shape}, expected {expected} "
            "(edge blocks are ragged: pass exactly the block's true size)."
        )
    check_cast(block, dtype, call)


def check_cast(data: np.ndarray, dtype: np.dtype, call: str) -> None:
    """Checks that ``data``'s dtype casts safely to ``dtype``."""
    if not np.can_cast(data.dtype, dtype, casting="safe"):
        raise DTypeMismatchError(
            f"{call}: block dtype {data.dtype} does not cast safely to "
            f"{dtype}; convert it first with block.astype({dtype.name!r})."
        )
