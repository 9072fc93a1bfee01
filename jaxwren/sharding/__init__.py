"""How matrices meet devices: meshes, shardings, sharded load and save, row batches.

Importing this package registers ``load`` and ``iter_row_batches`` with
:mod:`jaxwren.storage.device_io`, behind ``BigMatrix.to_jax`` and
``BigMatrix.iter_row_batches``.
"""

from jaxwren.sharding.batches import iter_row_batches
from jaxwren.sharding.io import load, save, write_shards
from jaxwren.sharding.mesh import default_mesh, default_sharding, fit_spec

__all__ = [
    "default_mesh",
    "default_sharding",
    "fit_spec",
    "iter_row_batches",
    "load",
    "save",
    "write_shards",
]
