"""jaxwren.lax: sharded linear algebra as pure, jit-able, differentiable JAX functions.

Functions of ``jax.Array``\\ s sharded over a ``('rows', 'cols')`` mesh (the arguments'
mesh, ``mesh=``, the context mesh from ``jax.set_mesh``, or all devices), usable inside
``jax.jit`` and under ``jax.grad`` / ``jax.vjp`` / ``jax.jvp`` (higher orders too). They
match ``jnp.linalg.cholesky`` / ``jax.scipy.linalg.solve_triangular`` / ``cho_solve``, and
never all-gather a matrix operand: the kernels are ``shard_map`` programs that exchange
one ``n x b`` panel at a time.

* :func:`cholesky`: lower factor (block-cyclic kernel, compiled once for any number of
  block columns).
* :func:`solve_triangular`, :func:`cho_solve`: blocked substitution with many right-hand
  sides.
* :func:`cho_logdet`: ``log det A`` from the factor.
* :func:`lu_factor`, :func:`lu_solve`, :func:`solve`: LU with partial pivoting (the
  block-cyclic GEPP kernel: ``n x b`` panels and ``2b`` interchanged rows move, never the
  matrix) and general solves (``assume_a="pos"``: Cholesky).
* :func:`polar`: ``A = U H`` by QDWH (sharded products and Cholesky solves).
* :func:`eigh`: symmetric eigendecomposition by QDWH-eig spectral divide and conquer
  (eagerly a host loop over bucketed splits; inside ``jit`` one program).

Bad input: inside ``jit`` a matrix that is not positive definite gives a NaN factor (as
``jnp``'s); an eager call raises :class:`~jaxwren.errors.NotPositiveDefiniteError`.
On CPU devices in one process, run under
:func:`jaxwren.engine.lapack_threads.single_threaded_blas` for speed.
"""

from jaxwren.lax.api import cho_logdet, cho_solve, cholesky, solve_triangular
from jaxwren.lax.lu import lu_factor, lu_solve, solve
from jaxwren.lax.spectral import eigh, polar

__all__ = ["cho_logdet", "cho_solve", "cholesky", "eigh", "lu_factor", "lu_solve", "polar",
           "solve", "solve_triangular"]  # fmt: skip
