"""Blocked algorithms, one per module, all planned and run by jaxwren.engine."""

from jaxwren.linalg.cholesky import cholesky
from jaxwren.linalg.matmul import matmul

__all__ = ["cholesky", "matmul"]
