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


_DYING_PREFIX = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_ENABLE_X64"] = "1"
import jaxwren as jw
_calls = {"n": 0}
_orig_mark = jw.BigMatrix.mark
def _dying_mark(self, key, *args):
    _orig_mark(self, key, *args)
    _calls["n"] += 1
    if _calls["n"] == %d:
        os._exit(17)  # the process dies mid-run, right after this completion record
jw.BigMatrix.mark = _dying_mark
"""


def run_until_killed(tmp_path, call: str, after_marks: int) -> None:
    """Runs ``call`` (Python source using ``jw``) in a subprocess that dies right after
    its ``after_marks``-th completion record, and checks that it died there."""
    import os
    import subprocess
    import sys

    script = tmp_path / "dying.py"
    script.write_text(_DYING_PREFIX % after_marks + call + "\n")
    proc = subprocess.run([sys.executable, str(script)], env=dict(os.environ, PYTHONPATH=os.getcwd()),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 17, proc.stderr[-2000:]


def run_python(code: str, *, drop: tuple[str, ...] = (), **env: str):
    """Runs ``code`` in a fresh interpreter (this repo importable), with the test
    environment less ``drop`` plus ``env``; returns the CompletedProcess."""
    import os
    import subprocess
    import sys

    full = {k: v for k, v in os.environ.items() if k not in drop}
    full.update(env, PYTHONPATH=os.getcwd())
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
