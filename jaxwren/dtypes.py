"""The one dtype policy: ``jnp.result_type`` semantics under the current x64 setting.

Every operation (and ``to_jax``) asks :func:`result_dtype` what it computes in. Integers
stay integers where jnp keeps them (an int64 matmul is exact with x64), mixed int/float
promotes as jnp does (int32 @ float32 -> float32), and inexact operations (factorisations,
solves, distances) promote integers to jnp's default float. A 64-bit input while JAX runs
32-bit would be silently truncated: that is refused with the fix, never done quietly.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxwren.errors import DTypeMismatchError

__all__ = ["POLICIES", "check_representable", "is_float", "result_dtype"]

# "promote": jnp.result_type as is; "inexact": integers/bools become the default float;
# "float": as inexact, and 16-bit floats compute in float32 (accumulating reductions);
# "factor": as float, and only float32/float64 are accepted (LAPACK-style algorithms)
POLICIES = ("promote", "inexact", "float", "factor")


def is_float(dtype: Any) -> bool:
    """Whether ``dtype`` is a floating type (bfloat16 and float16 included)."""
    return bool(jnp.issubdtype(np.dtype(dtype), jnp.floating))


def check_representable(dtype: Any, *, where: str) -> None:
    """Refuses a 64-bit dtype while JAX runs with 32-bit types (it would be truncated)."""
    dt = np.dtype(dtype)
    if dt.itemsize == 8 and not jax.config.jax_enable_x64 and dt.kind in "fciu":
        raise DTypeMismatchError(
            f"{where}: the data is {dt.name} but JAX runs with 32-bit types, which would "
            "silently truncate it; enable 64-bit with jax.config.update('jax_enable_x64', "
            f"True) (or JAX_ENABLE_X64=1) before calling, or convert the data to "
            f"{'float32' if dt.kind in 'fc' else 'int32'} first."
        )


def result_dtype(*dtypes: Any, where: str, policy: str = "promote") -> np.dtype:
    """The dtype an operation on ``dtypes`` computes and returns.

    Args:
      dtypes: the operands' dtypes.
      where: the calling operation, for messages.
      policy: one of :data:`POLICIES`.

    Raises:
      DTypeMismatchError: a 64-bit operand without x64, or a dtype the policy refuses.
    """
    for dt in dtypes:
        check_representable(dt, where=where)
    got = np.dtype(jnp.result_type(*[np.dtype(d) for d in dtypes]))
    if policy != "promote" and not is_float(got):
        if got.kind == "c":
            raise DTypeMismatchError(f"{where}: complex dtype {got.name} is not supported.")
        got = np.dtype(jax.dtypes.canonicalize_dtype(np.float64))  # jnp default float
    if policy in ("float", "factor") and got.itemsize < 4:
        got = np.dtype(jnp.float32)
    if policy == "factor" and got.name not in ("float32", "float64"):
        raise DTypeMismatchError(
            f"{where}: dtype {got.name} is not supported; convert to float32 or float64."
        )
    return got
