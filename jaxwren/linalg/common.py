"""What every algorithm shares: operand checks, result dtypes, ``out`` handling, tiling."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxwren.config import StorageConfig
from jaxwren.errors import (
    DTypeMismatchError,
    MatrixNotFoundError,
    ShapeMismatchError,
)
from jaxwren.sharding import multihost
from jaxwren.sharding.tiles import as_source
from jaxwren.storage.bigmatrix import BigMatrix, check_dtype
from jaxwren.storage.urls import parse_url

__all__ = [
    "is_complete",
    "mark_complete",
    "operand",
    "pad_identity",
    "result_dtype",
    "OutTarget",
    "prepare_out",
    "record_prefix",
    "round_up",
    "tile_candidates",
    "trim",
]


def operand(x: Any, *, name: str, where: str) -> Any:
    """Validates a matrix operand: a BigMatrix, jax.Array or array-like, 2-D, non-empty.

    Returns a Source for the engine (BigMatrix, jax.Array, or an in-memory ArraySource).
    """
    if not isinstance(x, BigMatrix | jax.Array):
        x = np.asarray(x)
    if len(x.shape) != 2 or 0 in x.shape:
        raise ShapeMismatchError(
            f"{where}: {name} must be a non-empty 2-D matrix, got shape {tuple(x.shape)}; "
            "reshape vectors with x.reshape(-1, 1)."
        )
    check_dtype(x.dtype, where=f"{where}({name})")
    return as_source(x)


def result_dtype(*dtypes: Any, where: str, floating: bool = True) -> np.dtype:
    """The dtype ``jnp`` would give, refusing a silent float64 -> float32 downcast."""
    want = np.result_type(*[np.dtype(d) for d in dtypes])
    got = np.dtype(jnp.result_type(*[np.dtype(d) for d in dtypes]))
    if floating and not jnp.issubdtype(got, jnp.floating):
        got = np.dtype(jnp.result_type(got, jnp.float32))
    if want.itemsize == 8 and got.itemsize < 8 and want.kind in "fc":
        raise DTypeMismatchError(
            f"{where}: inputs are {want.name} but JAX runs with 32-bit types; enable 64-bit "
            "with jax.config.update('jax_enable_x64', True) (or JAX_ENABLE_X64=1) before "
            "calling, or convert the inputs to float32."
        )
    return got


@dataclasses.dataclass(frozen=True)
class OutTarget:
    """A validated ``out`` argument: where the result will be stored (or None: returned)."""

    url: str | None
    matrix: BigMatrix | None
    shape: tuple[int, int]
    dtype: np.dtype
    block_shape: tuple[int, int]
    storage: StorageConfig | None

    @property
    def returned(self) -> bool:
        return self.url is None and self.matrix is None

    def materialize(self) -> BigMatrix | None:
        """Opens or creates the output matrix (only called once the plan is accepted)."""
        if self.matrix is not None or self.url is None:
            return self.matrix
        return multihost.once(
            f"create {self.url}",
            lambda: BigMatrix.create(
                self.url, self.shape, self.block_shape, self.dtype, storage=self.storage
            ),
            lambda: BigMatrix.open(self.url, storage=self.storage),
        )


def prepare_out(
    out: Any,
    *,
    shape: tuple[int, int],
    dtype: np.dtype,
    block_shape: tuple[int, int] | None,
    inputs: Sequence[Any],
    where: str,
    storage: StorageConfig | None = None,
) -> OutTarget:
    """Checks ``out`` (None, URL or BigMatrix) against the result; writes nothing.

    An existing matrix at ``out`` (BigMatrix or URL) must have the result's shape and
    dtype and must not be one of the inputs.
    """
    block_shape = tuple(block_shape) if block_shape is not None else _default_block(inputs, shape)  # type: ignore[assignment]
    if out is None:
        return OutTarget(None, None, shape, dtype, block_shape, storage)  # type: ignore[arg-type]
    if not isinstance(out, BigMatrix | str | os.PathLike):
        raise ShapeMismatchError(
            f"{where}: out must be None, a storage URL or a BigMatrix, got {type(out).__name__}."
        )
    url = out.url if isinstance(out, BigMatrix) else parse_url(out).url
    for i, x in enumerate(inputs):
        if isinstance(x, BigMatrix) and x.url == url:
            raise ShapeMismatchError(
                f"{where}: out ({url}) is also input #{i}; writing the result over an input "
                "would corrupt it while it is read. Pass a different out URL."
            )
    matrix = out if isinstance(out, BigMatrix) else _open_existing(out, storage)
    if matrix is None:
        return OutTarget(url, None, shape, dtype, block_shape, storage)  # type: ignore[arg-type]
    if matrix.shape != shape or matrix.dtype != dtype:
        raise ShapeMismatchError(
            f"{where}: out {matrix!r} must have shape {shape} and dtype {dtype.name} to hold "
            f"the result, got shape {matrix.shape} and dtype {matrix.dtype.name}; pass a new "
            "URL, or free and recreate it."
        )
    return OutTarget(None, matrix, shape, dtype, matrix.block_shape, storage)


def _open_existing(url: Any, storage: StorageConfig | None) -> BigMatrix | None:
    """The matrix at ``url`` or None; every process decides on the same state (barriers
    before and after the look, so none looks after another has created it)."""
    multihost.sync(f"look {url}")
    try:
        return BigMatrix.open(url, storage=storage)
    except MatrixNotFoundError:
        return None
    finally:
        multihost.sync(f"looked {url}")


def _default_block(inputs: Sequence[Any], shape: tuple[int, int]) -> tuple[int, int]:
    rows = next((x.block_shape[0] for x in inputs[:1] if isinstance(x, BigMatrix)), None)
    cols = next((x.block_shape[1] for x in inputs[-1:] if isinstance(x, BigMatrix)), None)
    return (min(rows or 1024, shape[0]), min(cols or 1024, shape[1]))


def round_up(x: int, q: int) -> int:
    return -(-x // q) * q


def tile_candidates(length: int, granule: int, multiple: int) -> list[int]:
    """Tile sizes along a dimension: the whole (padded to ``multiple``), or block-aligned
    pieces (multiples of ``granule`` and ``multiple``), one per distinct tile count."""
    step = granule * multiple // math.gcd(granule, multiple)
    sizes = {round_up(length, multiple)}
    for count in range(2, -(-length // granule) + 1):
        sizes.add(round_up(-(-length // count), step))
    return sorted(s for s in sizes if s <= round_up(length, multiple) or s == step)


@functools.partial(jax.jit, static_argnames=("shape", "sharding"))
def trim(x: jax.Array, shape: tuple[int, int], sharding: Any) -> jax.Array:
    """The top-left ``shape`` of a padded device result, resharded to ``sharding``."""
    return jax.lax.with_sharding_constraint(x[: shape[0], : shape[1]], sharding)


@jax.jit
def pad_identity(x: jax.Array, valid: jax.Array) -> jax.Array:
    """Rows/columns ``>= valid`` (padding past the matrix edge) become the identity's, so a
    padded triangular or SPD tile stays non-singular (``valid`` is traced: one compile)."""
    idx = jax.lax.broadcasted_iota(jnp.int32, x.shape, 0)
    jdx = jax.lax.broadcasted_iota(jnp.int32, x.shape, 1)
    eye = jnp.where(idx == jdx, 1, 0).astype(x.dtype)
    return jnp.where((idx >= valid) | (jdx >= valid), eye, x)


def record_prefix(op: str, *inputs: Any) -> str | None:
    """The completion-record prefix of ``op`` on stored inputs (None when an input lives
    in memory: such a run cannot be resumed). Records name the inputs' URLs and views, not
    their contents: free() an output to force a recomputation after changing an input."""
    if not all(isinstance(x, BigMatrix) for x in inputs):
        return None
    ident = "|".join(f"{x.url}:{int(x.transposed)}" for x in inputs)
    return f"{op}-{hashlib.sha1(ident.encode()).hexdigest()[:10]}"


def is_complete(matrix: BigMatrix | None, prefix: str | None) -> bool:
    """Whether ``matrix`` holds a finished result recorded under ``prefix``."""
    return matrix is not None and prefix is not None and f"{prefix}-complete" in matrix.marks()


def mark_complete(matrix: BigMatrix | None, prefix: str | None) -> None:
    """Records a finished result (once, by process 0, after the run's final barrier)."""
    if matrix is not None and prefix is not None:
        multihost.once(f"complete {matrix.url}", lambda: matrix.mark(f"{prefix}-complete"))
