"""Test setup: 8 emulated CPU devices and x64 before JAX starts; a local S3 server.

No test module changes JAX config; everything is set here, once, before jax is imported.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ["JAX_ENABLE_X64"] = "1"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Dummy credentials for the local moto server; never real ones.
os.environ["AWS_ACCESS_KEY_ID"] = "testing-key-id"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing-secret-key"
for _var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
    os.environ.pop(_var, None)

import dataclasses  # noqa: E402
import itertools  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

import jaxwren as jw  # noqa: E402

BUCKET = "jaxwren-test"
_counter = itertools.count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(env_extra: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Starts moto's S3 server on 127.0.0.1 on a free port; returns (process, endpoint)."""
    port = _free_port()
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            return proc, endpoint
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto server did not start")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    import boto3

    proc, endpoint = start_moto()
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_config(s3_endpoint: str) -> jw.StorageConfig:
    return jw.StorageConfig(
        s3_endpoint=s3_endpoint,
        s3_region="us-east-1",
        credentials="environment",
        s3_max_retries=2,
        s3_retry_initial_delay="0.05s",
        s3_retry_max_delay="0.2s",
    )


@dataclasses.dataclass(frozen=True)
class Store:
    """One store kind under test: makes fresh URLs and carries the StorageConfig."""

    kind: str
    root: str
    config: jw.StorageConfig | None

    def url(self, name: str = "m") -> str:
        return f"{self.root}/{name}-{next(_counter)}"


@pytest.fixture(params=["memory", "file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Store:
    kind = request.param
    if kind == "memory":
        return Store(kind, "memory://t", None)
    if kind == "file":
        return Store(kind, str(tmp_path_factory.mktemp("store")), None)
    config = request.getfixturevalue("s3_config")
    return Store(kind, f"s3://{BUCKET}/t", config)


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """Readable test ids: shapes as ``8x8``, keyword sets as ``k=v``, types by name."""
    if isinstance(val, tuple) and val and all(isinstance(v, int) for v in val):
        return "x".join(str(v) for v in val)
    if isinstance(val, dict):
        return ",".join(f"{k}={v!r}" for k, v in val.items())
    if isinstance(val, type):
        return val.__name__
    return None


# The slowest tests (seconds under -n 2 on the loaded 2-core box, 2026-12-07), longest
# first. Run first, the xdist `load` scheduler hands them out in turn to both workers
# before the many short tests, so no long test starts last and stretches the run's tail.
# A name not collected (renamed, deselected) is ignored.
SLOW_FIRST = (
    "test_multiprocess.py::test_two_processes_file_and_s3",  # 79 s
    "test_docs.py::test_python_blocks_run[user-guide.md]",  # 34 s
    "test_docs.py::test_python_blocks_run[README.md]",  # 33 s
    "test_spectral_ooc.py::test_polar_out_of_core_resumes",
    "test_spectral_ooc.py::test_eigh_out_of_core",
    "test_lax_lu.py::test_derivatives_match_jax_scipy",  # 31 s
    "test_spectral.py::test_eigh_in_jit_diagonal_and_lower_triangle",  # 26 s
    "test_spectral.py::test_eigh_hard_spectra_bounded_compiles",  # 24 s
    "test_eigh_ops.py::test_eigh_returned_matches_lax_and_reads_lower_triangle",  # 22 s
    "test_reductions.py::test_match_numpy_every_store[s3-float32]",
    "test_reductions.py::test_match_numpy_every_store[s3-int64]",
    "test_lax.py::test_gaussian_process_example_matches_sklearn",  # 17 s
    "test_eigh_route.py::test_svd_routes_match_numpy[qdwh]",  # 16 s
    "test_lax.py::test_cholesky_derivatives_match_jnp",  # 16 s
    "test_lax.py::test_second_order",  # 15 s
    "test_table_batches.py::test_taxi_example_matches_numpy",  # 15 s
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Moves the SLOW_FIRST tests to the front, longest first; the rest keep their order."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}

    def key(item: pytest.Item) -> int:
        return rank.get(item.nodeid.rpartition("tests/")[2], len(rank))

    items.sort(key=key)  # stable
