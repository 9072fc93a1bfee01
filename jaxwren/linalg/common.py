"""What the tiled algorithms share: tile sizes, trimming padded results, identity padding."""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["chosen_reason", "pad_identity", "round_up", "tile_candidates", "trim"]


def chosen_reason(chosen: str, best: str, why: str) -> str:
    """A run's reason for ``chosen``, given its selector's ``(best, why)``: the selector's
    reason, or that the budget overruled it (the Cholesky, LU and spectral selectors)."""
    if chosen == best:
        return f"selected {chosen}: {why}"
    return f"selected {best} ({why}) but it does not fit the budget: {chosen}, the next that fits"


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
