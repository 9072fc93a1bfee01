"""Shared test helpers."""

from __future__ import annotations

import numpy as np


def tolerance(dtype: np.dtype | str) -> dict[str, float]:
    """rtol/atol per dtype for comparisons with numpy/scipy."""
    name = np.dtype(dtype).name
    return {
        "float64": {"rtol": 1e-10, "atol": 1e-10},
        "float32": {"rtol": 2e-4, "atol": 2e-4},
        "bfloat16": {"rtol": 3e-2, "atol": 3e-2},
    }.get(name, {"rtol": 0, "atol": 0})


def rand(shape: tuple[int, ...], dtype: str = "float64", seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


_ids = __import__("itertools").count()


def mem(name: str) -> str:
    """A fresh memory:// URL (memory stores live for the whole test session)."""
    return f"memory://{name}-{next(_ids)}"
