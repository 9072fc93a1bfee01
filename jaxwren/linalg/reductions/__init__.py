"""Reductions of a matrix (sum, mean, min, max, var, std, norm), streamed on the engine.

``op``: the operation (per-line statistics along one axis, tile by tile on the devices);
``api``: the public functions, numpy's semantics and result dtypes.
"""

from jaxwren.linalg.reductions.api import max, mean, min, norm, std, sum, var
from jaxwren.linalg.reductions.op import Layout, Reduce, Stat, acc_dtype

__all__ = [
    "Layout",
    "Reduce",
    "Stat",
    "acc_dtype",
    "max",
    "mean",
    "min",
    "norm",
    "std",
    "sum",
    "var",
]
