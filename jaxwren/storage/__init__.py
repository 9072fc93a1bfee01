"""Where matrices live: URLs -> TensorStore specs, BigMatrix, numpy ingest."""

from jaxwren.storage.bigmatrix import BigMatrix
from jaxwren.storage.ingest import copy, from_numpy
from jaxwren.storage.urls import Location, kvstore_spec, parse_url

__all__ = ["BigMatrix", "Location", "copy", "from_numpy", "kvstore_spec", "parse_url"]
