"""Blocked algorithms, one per module, all planned and run by jaxwren.engine."""

from jaxwren.linalg.cholesky import cholesky
from jaxwren.linalg.matmul import matmul
from jaxwren.linalg.triangular import cho_logdet, cho_solve, solve_triangular

__all__ = ["cho_logdet", "cho_solve", "cholesky", "matmul", "solve_triangular"]
