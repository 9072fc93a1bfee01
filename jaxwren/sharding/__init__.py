"""How matrices meet devices: meshes, shardings, sharded load and save."""

from jaxwren.sharding.io import load, save, write_shards
from jaxwren.sharding.mesh import default_mesh, default_sharding, fit_spec

__all__ = ["default_mesh", "default_sharding", "fit_spec", "load", "save", "write_shards"]
