"""Blocked algorithms, one per module, all planned and run by jaxwren.engine."""

from jaxwren.linalg.cholesky import cholesky
from jaxwren.linalg.distances import pairwise_sq_distances
from jaxwren.linalg.lu import lu_factor
from jaxwren.linalg.map_blocks import map_blocks
from jaxwren.linalg.matmul import matmul
from jaxwren.linalg.neighbors import nearest_neighbors
from jaxwren.linalg.qr import lstsq, qr
from jaxwren.linalg.reduce import argmin
from jaxwren.linalg.reductions import max, mean, min, norm, std, sum, var
from jaxwren.linalg.spectral import eigh, polar
from jaxwren.linalg.svd import randomized_svd, svd
from jaxwren.linalg.systems import det, inv, lu_solve, slogdet, solve
from jaxwren.linalg.triangular import cho_logdet, cho_solve, solve_triangular

__all__ = [
    "det",
    "inv",
    "lu_factor",
    "lu_solve",
    "slogdet",
    "solve",
    "argmin",
    "cho_logdet",
    "cho_solve",
    "cholesky",
    "eigh",
    "lstsq",
    "map_blocks",
    "matmul",
    "max",
    "mean",
    "min",
    "nearest_neighbors",
    "norm",
    "pairwise_sq_distances",
    "polar",
    "qr",
    "randomized_svd",
    "solve_triangular",
    "std",
    "sum",
    "svd",
    "var",
]
