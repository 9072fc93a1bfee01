"""Device meshes and the shardings jaxwren uses by default."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.errors import ConfigError

__all__ = ["ROWS", "COLS", "check_mesh", "default_mesh", "default_sharding",
           "fit_spec", "on_mesh", "process_local"]  # fmt: skip

ROWS, COLS = "rows", "cols"


def process_local(mesh: Mesh) -> bool:
    """Whether every device of ``mesh`` belongs to this process (no other process's
    devices: host-memory plans and host LAPACK apply)."""
    here = jax.process_index()
    return all(d.process_index == here for d in mesh.devices.flat)


def _square_factors(n: int) -> tuple[int, int]:
    r = int(math.isqrt(n))
    while n % r:
        r -= 1
    return r, n // r


def default_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """All devices (or ``devices``) in a 2-D ``(rows, cols)`` mesh, as square as possible.

    8 devices give a 2 x 4 mesh, 4 give 2 x 2, a prime count p gives 1 x p.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ConfigError("default_mesh: no devices given; pass jax.devices() or a non-empty list.")
    shape = _square_factors(len(devices))
    return jax.make_mesh(shape, (ROWS, COLS), axis_types=(AxisType.Auto,) * 2, devices=devices)


def check_mesh(mesh: Mesh | None, *, where: str) -> Mesh:
    """Returns ``mesh`` (or the default mesh) with Auto axes, checking it has jaxwren's
    2 axes. Explicit (or Manual) axis types are accepted: jaxwren's kernels state their
    shardings themselves, so they run on the same devices with Auto axes, and results
    are put back on the caller's mesh by :func:`on_mesh`."""
    if mesh is None:
        return default_mesh()
    if not isinstance(mesh, Mesh) or tuple(mesh.axis_names) != (ROWS, COLS):
        names = getattr(mesh, "axis_names", None)
        raise ConfigError(
            f"{where}: mesh must be a jax.sharding.Mesh with axes ({ROWS!r}, {COLS!r}), got "
            f"{type(mesh).__name__} with axes {names}; build one with jw.default_mesh(devices) "
            f"or jax.make_mesh((r, c), ('rows', 'cols'))."
        )
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * 2)


def on_mesh(value: Any, mesh: Mesh | None) -> Any:
    """``value``'s device arrays placed on the caller's ``mesh`` (same devices and
    partitioning; only the axis types differ) when it is not Auto-typed."""
    if mesh is None or all(t == AxisType.Auto for t in mesh.axis_types):
        return value

    def put(x: Any) -> Any:
        if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding):
            return jax.device_put(x, NamedSharding(mesh, x.sharding.spec))
        return x

    return jax.tree_util.tree_map(put, value, is_leaf=lambda x: isinstance(x, jax.Array))


def fit_spec(shape: Sequence[int], mesh: Mesh) -> P:
    """The PartitionSpec that shards ``shape`` over as much of ``mesh`` as divides it.

    Prefers rows over the ``rows`` axis and columns over ``cols``; when a mesh axis does
    not divide a dimension, the other layouts are tried and the one with the most shards
    wins (ties keep the earlier, more natural layout). Nothing divides: replicated.
    """
    size = {ROWS: mesh.shape[ROWS], COLS: mesh.shape[COLS], None: 1}
    both = (ROWS, COLS)
    size[both] = size[ROWS] * size[COLS]  # type: ignore[index]
    if len(shape) == 1:
        layouts: list[tuple] = [(both,), (ROWS,), (COLS,), (None,)]
    else:
        layouts = [
            (ROWS, COLS), (both, None), (None, both), (COLS, ROWS),
            (ROWS, None), (None, COLS), (COLS, None), (None, ROWS), (None, None),
        ]  # fmt: skip
    fits = [
        lay for lay in layouts if all(d % size[a] == 0 for d, a in zip(shape, lay, strict=True))
    ]
    best = max(fits, key=lambda lay: math.prod(size[a] for a in lay))
    return P(*best)


def default_sharding(shape: Sequence[int], mesh: Mesh | None = None) -> NamedSharding:
    """A NamedSharding of ``shape`` over ``mesh`` (default mesh when None)."""
    mesh = default_mesh() if mesh is None else mesh
    return NamedSharding(mesh, fit_spec(shape, mesh))
