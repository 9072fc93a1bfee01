"""The diagonal tiles of the tile plans: ``L[J, J] = chol(acc)`` and ``L[J, J]^-1``.

Three backends, one chosen per mesh by :func:`backend` (the platform profile, never an
inline platform test):

* ``"host LAPACK"`` (CPU devices of one process): the tile's shards gathered into one
  host buffer, factored there by LAPACK ``potrf`` and inverted by ``trtri``, in place;
  ``L`` stays a host array (the runner writes it as is), ``L^-1`` one shared host buffer.
* ``"one device"`` (accelerators, one process): jitted on the first device (the tile is
  small; the others would only repeat it), the inverse then replicated.
* ``"replicated"`` (several processes): computed replicated, every device the same.

Each returns ``(L, L^-1, info)`` for ``"diag"`` (``info`` 0 when the factor is not finite,
else -1) and ``L^-1`` for ``"inverse"`` (a stored ``L[J, J]`` of a resumed column).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.linalg.common import pad_identity
from jaxwren.sharding.mesh import process_local
from jaxwren.sharding.platform import platform_profile
from jaxwren.sharding.tiles import host_copy, replicate
from jaxwren.storage.buffers import aligned_empty

__all__ = ["BACKENDS", "backend", "diagonal_kernel"]

BACKENDS = ("host LAPACK", "one device", "replicated")


def backend(mesh: Mesh) -> str:
    """The diagonal backend for ``mesh``: one of :data:`BACKENDS`."""
    if not process_local(mesh):
        return "replicated"
    return "host LAPACK" if platform_profile(mesh).host_lapack else "one device"


def _diag(acc: jax.Array, valid: jax.Array) -> tuple[jax.Array, ...]:
    """``(L, L^-1, info)`` of a diagonal tile from its lower triangle (LAPACK potrf and
    trsm; padding past ``valid`` as identity). ``info`` is 0 when the factor is not
    finite (a non-positive pivot gives NaN; so does a NaN or Inf in the input), else -1."""
    low = lax.linalg.cholesky(pad_identity(acc, valid), symmetrize_input=False)
    info = jnp.where(jnp.all(jnp.isfinite(low)), -1, 0).astype(jnp.int32)
    return low, _inverse(low), info


def _inverse(low: jax.Array) -> jax.Array:
    """``L^-1`` of a lower-triangular tile (LAPACK trsm against the identity)."""
    eye = jnp.eye(low.shape[0], dtype=low.dtype)
    return lax.linalg.triangular_solve(low, eye, left_side=True, lower=True)


@functools.cache
def diagonal_kernel(kind: str, mesh: Mesh) -> Any:
    """``"diag"`` (``fn(acc, valid) -> (L, L^-1, info)``) or ``"inverse"`` (``fn(L) ->
    L^-1``) on :func:`backend`'s backend; the input tile is sharded by rows, ``L^-1``
    comes back replicated (on CPU devices one shared host buffer, as the engine's
    tiles). ``"diag"`` frees its input: the accumulator is not used again."""
    rep = NamedSharding(mesh, P())
    fn = _diag if kind == "diag" else _inverse
    where = backend(mesh)
    if where == "replicated":
        return jax.jit(lambda x, *a: fn(lax.with_sharding_constraint(x, rep), *a),
                       out_shardings=rep)  # fmt: skip
    if where == "host LAPACK":
        return functools.partial(_host_tile, kind, rep)
    one, single = mesh.devices.flat[0], jax.jit(fn)

    def on_one(x: jax.Array, *args: jax.Array) -> Any:
        x1 = jax.device_put(x, one)
        if kind == "diag":
            x.delete()  # the accumulator (or A tile) is not used again: free it now
        outs = single(x1, *args)
        if kind == "inverse":
            return replicate(outs, rep)
        low, inv, info = outs
        # L[J, J] as a host array: the runner writes a host result lower-only (the tile's
        # blocks above the diagonal are absent), a device array whole
        return np.asarray(low), replicate(inv, rep), info

    return on_one


def _host_tile(kind: str, rep: NamedSharding, x: jax.Array, valid: Any = None) -> Any:
    """The host LAPACK backend: ``potrf`` then ``trtri`` (a third of ``trsm``'s flops
    against the identity), in place. n = 4096 in tiles of 512: the 8 diagonal steps
    0.055-0.07 s, against 0.14 s jitted on one device. BLAS stays single-threaded (the
    runner's limit): lifted for these calls, OpenBLAS's threads went on spinning into the
    next GEMM steps (the plan ran 0.83-0.88 s against 0.63-0.73 s)."""
    tile = host_copy(x)
    if kind == "inverse":
        return replicate(_trtri(tile), rep, adopt=True)
    x.delete()  # the accumulator (or A tile) is not used again: free it now
    info = _potrf(tile, int(valid))
    inv = aligned_empty(tile.shape, tile.dtype)
    inv[...] = tile if info < 0 else np.eye(tile.shape[0], dtype=tile.dtype)
    if info < 0:
        _trtri(inv)
    return tile, replicate(inv, rep, adopt=True), info


def _potrf(tile: np.ndarray, valid: int) -> int:
    """``tile`` := ``L`` of its lower triangle, in place (padding past ``valid`` as the
    identity, the strictly upper part zero); ``info`` as :func:`_diag` gives it. A NaN or
    Inf in the lower triangle fails the factor: a NaN or non-positive pivot, or an
    infinite diagonal entry of ``L``."""
    from scipy.linalg import lapack

    t = tile.shape[0]
    part = tile if valid == t else np.array(tile[:valid, :valid])
    potrf = lapack.get_lapack_funcs("potrf", (part,))
    # the C-ordered part's transpose is Fortran-ordered: its upper factor U = L^T
    _, bad = potrf(part.T, lower=0, clean=1, overwrite_a=1)
    if valid < t:
        tile[...] = 0
        tile[:valid, :valid] = part
        np.fill_diagonal(tile[valid:, valid:], 1)
    return 0 if bad != 0 or not np.isfinite(np.diagonal(tile)).all() else -1


def _trtri(low: np.ndarray) -> np.ndarray:
    """``L^-1`` of a lower-triangular host tile, in place (LAPACK trtri)."""
    from scipy.linalg import lapack

    trtri = lapack.get_lapack_funcs("trtri", (low,))
    trtri(low.T, lower=0, overwrite_c=1)  # (L^T)^-1 = (L^-1)^T
    return low
