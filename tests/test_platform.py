"""The platform profile: computed from the devices, forced by JAXWREN_PLATFORM, queried by
every operation instead of inline ``device.platform`` checks."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re

import jax
import numpy as np
import pytest

import jaxwren as jw
from jaxwren.config import RunSpec, platform_setting
from jaxwren.engine import plan as plan_mod
from jaxwren.engine.run import run
from jaxwren.linalg.cholesky import Cholesky
from jaxwren.linalg.matmul import Matmul
from jaxwren.sharding.platform import PlatformProfile, platform_profile
from tests.helpers import mem

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_setting_is_read_from_the_environment():
    assert platform_setting({}) == "auto"
    assert platform_setting({"JAXWREN_PLATFORM": ""}) == "auto"
    assert platform_setting({"JAXWREN_PLATFORM": " Accelerator "}) == "accelerator"
    assert platform_setting({"JAXWREN_PLATFORM": "cpu"}) == "cpu"
    with pytest.raises(jw.ConfigError, match="'gpu' is not a platform; use one of auto, cpu, acc"):
        platform_setting({"JAXWREN_PLATFORM": "gpu"})


def test_cpu_devices_get_the_cpu_profile(monkeypatch):
    monkeypatch.delenv("JAXWREN_PLATFORM", raising=False)
    mesh = jw.default_mesh()
    p = platform_profile(mesh)
    assert p == PlatformProfile(name="cpu", forced=False, shares_host_memory=True,
                                host_lapack=True, host_staging=False, memory_per_device=None,
                                emulated_devices=True)  # fmt: skip
    assert platform_profile(mesh) is p  # computed once per device set and setting
    assert platform_profile(list(mesh.devices.flat)[::-1]) is p  # any order, any container
    assert platform_profile(jax.device_put(1.0, jax.devices()[3])).emulated_devices  # the process
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.name = "accelerator"  # type: ignore[misc]


def test_the_environment_forces_the_accelerator_profile(monkeypatch):
    monkeypatch.setenv("JAXWREN_PLATFORM", "accelerator")
    p = platform_profile(jw.default_mesh())
    assert (p.name, p.forced) == ("accelerator", True)
    assert not p.shares_host_memory and not p.host_lapack and p.host_staging
    assert p.memory_per_device is None  # CPU devices have no memory stats
    assert p.emulated_devices  # a fact of the process: steps stay paced, BLAS single-threaded
    monkeypatch.setenv("JAXWREN_PLATFORM", "tpu")
    with pytest.raises(jw.ConfigError, match="JAXWREN_PLATFORM='tpu'"):
        jw.matmul(jax.numpy.ones((4, 4)), jax.numpy.ones((4, 4)))


def test_default_budget_from_the_profiles_device_memory(monkeypatch):
    devices = jax.devices()
    host = int(0.4 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    assert plan_mod.default_budget(devices) == host  # CPU devices: host RAM
    gpu = dataclasses.replace(platform_profile(devices), name="accelerator",
                              memory_per_device=10 << 30)  # fmt: skip
    monkeypatch.setattr(plan_mod, "platform_profile", lambda _devices: gpu)
    assert plan_mod.default_budget(devices) == int(0.8 * len(devices) * (10 << 30))


def test_no_inline_platform_checks():
    """``device.platform`` is read in sharding/platform.py only (launch.py and
    distributed.py set XLA and JAX options, they decide no code path)."""
    pattern = re.compile(r"(\bd|\bdev\w*|\]|\))\.platform\b|\.platform\s*[=!]=|default_backend\(")
    found = [f"{path.relative_to(ROOT)}:{i}"
             for path in sorted((ROOT / "jaxwren").rglob("*.py"))
             if path.name != "platform.py"
             for i, line in enumerate(path.read_text().splitlines(), 1)
             if pattern.search(line.split("#")[0])]  # fmt: skip
    assert found == []


# The accelerator profile's own paths, forced here so that both CI lanes run them.
def test_device_tiles_compile_once_for_every_tile(monkeypatch):
    """Tiles cut from a jax.Array on the devices (the accelerator profile) slice at traced
    offsets: the compiles do not grow with the tiles (an eager ``x[r0:r1]`` compiled once
    per offset: 7 compiles for 4 tiles, 2 more per new offset)."""
    monkeypatch.setenv("JAXWREN_PLATFORM", "accelerator")
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((1100, 24)), rng.standard_normal((24, 1090))
    out = run(Matmul(), (jax.device_put(a), jax.device_put(b)), mem("dev-tiles"),
              RunSpec(block_shape=(256, 256), memory_budget=3_000_000))  # fmt: skip
    np.testing.assert_allclose(out.value.numpy(), a @ b, rtol=1e-12, atol=1e-12)
    assert out.stats.steps_run >= 9  # ragged tiles at both edges
    # the kernel, and per operand a full and a ragged cut in each dimension at most
    assert out.stats.compiles <= 1 + 2 * 4


@pytest.mark.parametrize("plan", ["kernel", "tiles"])
def test_accelerator_cholesky_stores_the_lower_blocks_only(monkeypatch, plan):
    """A jax.Array input on the accelerator profile is permuted into the block-cyclic
    layout on the devices (kernel) or factored tile by tile with the diagonal on one
    device (tiles); either way the stored factor's blocks above the diagonal stay absent
    (a device result used to be written whole: zero blocks above the diagonal)."""
    monkeypatch.setenv("JAXWREN_PLATFORM", "accelerator")
    x = np.random.default_rng(5).standard_normal((72, 72))
    a = x @ x.T / 72 + np.eye(72)
    got = run(Cholesky(plan), (jax.device_put(a),), mem(f"dev-chol-{plan}"),
              RunSpec(block_shape=(16, 16)))  # fmt: skip
    np.testing.assert_allclose(got.value.numpy(), np.linalg.cholesky(a), rtol=1e-10,
                               atol=1e-10)  # fmt: skip
    assert got.value.block_idxs_exist == {(i, j) for i in range(5) for j in range(i + 1)}
    bad = a.copy()
    bad[40, 3] = np.nan
    with pytest.raises(jw.NonFiniteError):  # the device finiteness check names the cause
        run(Cholesky(plan), (jax.device_put(bad),), mem(f"dev-chol-nan-{plan}"), RunSpec())
