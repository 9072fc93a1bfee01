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
