"""jw.enable_compilation_cache: a second process with the same work compiles nothing."""

from __future__ import annotations

import pytest

import jaxwren as jw
from tests.helpers import run_python

_JOB = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import numpy as np
import jaxwren as jw
print("cache:", jw.enable_compilation_cache({path!r}))
x = np.random.default_rng(0).standard_normal((40, 40))
with jw.observe() as runs:
    jw.cholesky(x @ x.T + 40 * np.eye(40))
print("compiles:", runs[0].compiles)
"""


def test_second_process_compiles_nothing(tmp_path):
    cache = tmp_path / "cache"
    counts = []
    for _ in range(2):
        proc = run_python(_JOB.format(path=str(cache)))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"cache: {cache}" in proc.stdout
        counts.append(int(proc.stdout.split("compiles:")[1]))
    assert counts[0] > 0 and counts[1] == 0, counts
    assert any(cache.iterdir())


def test_default_directory_follows_the_environment(tmp_path, monkeypatch):
    from jaxwren.compile_cache import default_cache_dir

    monkeypatch.setenv("JAXWREN_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("JAXWREN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "jaxwren" / "jax"


def test_a_file_is_not_a_cache_directory(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(jw.ConfigError, match="enable_compilation_cache: cannot use .* writable"):
        jw.enable_compilation_cache(f / "sub")
