"""Storage seams (issue 21): keys that alias, stalled stores, unhelpful store errors,
regular files posing as matrices, and storage in a forked child."""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time

import boto3
import numpy as np
import pytest

import jaxwren as jw
from jaxwren.errors import ForkError
from jaxwren.storage.urls import parse_url
from tests.conftest import BUCKET
from tests.helpers import mem, run_python


def _keys(s3_endpoint: str, prefix: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    got = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in got.get("Contents", []))


# ---------------------------------------------------------------- keys that alias
@pytest.mark.parametrize(
    ("url", "segment"),
    [
        ("s3://b12/x/../B", "'..'"),
        ("s3://b12/./B", "'.'"),
        ("s3://b12/x//B", "empty segment"),
        ("s3://b12//B", "empty segment"),
        ("s3://b12/B//", "empty segment"),
        ("gs://b12/x/../B", "'..'"),
        ("memory://x/../y", "'..'"),
        ("memory:///y", "empty segment"),
    ],
)
def test_dot_and_empty_key_segments_are_refused(url, segment):
    with pytest.raises(jw.UnsupportedURLError, match=f"{segment}.*Spell the key plainly"):
        parse_url(url)


def test_plain_keys_and_one_trailing_slash_still_parse():
    assert parse_url("s3://b12/A/").path == "A/"
    assert parse_url("gs://b12/a/b/").url == "gs://b12/a/b"
    assert parse_url("memory://x/").url == "memory://x"
    assert parse_url("s3://b12/a.b/..c/d..").path == "a.b/..c/d../"  # dots inside names
    assert parse_url("/tmp/x/../y").url == "file:///tmp/y"  # file paths: normalised


def test_aliasing_keys_write_nothing(s3_endpoint, s3_config):
    before = _keys(s3_endpoint, "edges-dots")
    for url in (f"s3://{BUCKET}/edges-dots/x/../B", f"s3://{BUCKET}/edges-dots/./B",
                f"s3://{BUCKET}/edges-dots//B"):  # fmt: skip
        with pytest.raises(jw.UnsupportedURLError, match="Spell the key plainly"):
            jw.BigMatrix.create(url, (2, 2), (1, 1), storage=s3_config)
        with pytest.raises(jw.UnsupportedURLError):
            jw.from_numpy(np.ones((2, 2)), url, (1, 1), storage=s3_config)
    assert _keys(s3_endpoint, "edges-dots") == before == []


def test_matmul_out_with_dot_segments_leaves_the_input_intact(s3_endpoint, s3_config):
    a = jw.from_numpy(np.eye(2), f"s3://{BUCKET}/edges-mm/A", (2, 2), storage=s3_config)
    b = jw.from_numpy(np.arange(4.0).reshape(2, 2), f"s3://{BUCKET}/edges-mm/B", (2, 2),
                      storage=s3_config)  # fmt: skip
    before = _keys(s3_endpoint, "edges-mm/")
    with pytest.raises(jw.UnsupportedURLError, match="'..' segment"):
        jw.matmul(a, b, out=f"s3://{BUCKET}/edges-mm/x/../B", storage=s3_config)
    assert _keys(s3_endpoint, "edges-mm/") == before
    np.testing.assert_array_equal(b.numpy(), np.arange(4.0).reshape(2, 2))


# ---------------------------------------------------------------- a stalled store
@pytest.fixture
def frozen_endpoint():
    """A TCP server that accepts connections and never sends a byte."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    srv.close()
    for c in held:
        c.close()


def test_stalled_endpoint_fails_in_bounded_time(frozen_endpoint):
    # a fresh process: TensorStore reads the stall limit once, when its HTTP transport
    # starts, and this one may have started already
    code = (
        "import time, jaxwren as jw\n"
        f"cfg = jw.StorageConfig(s3_endpoint={frozen_endpoint!r}, credentials='anonymous',\n"
        "    s3_stall_timeout=1, s3_max_retries=1, s3_retry_initial_delay='0.05s')\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    jw.BigMatrix.open('s3://bucket/x', storage=cfg)\n"
        "except jw.StorageError as e:\n"
        "    print(type(e).__name__, time.monotonic() - t, e)\n"
    )
    t = time.monotonic()
    proc = run_python(code, drop=("TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS",))
    assert time.monotonic() - t < 30, proc.stdout
    assert proc.stdout.startswith("StorageError "), proc.stderr[-2000:]
    assert "stalled" in proc.stdout and "s3_stall_timeout" in proc.stdout
    assert float(proc.stdout.split()[1]) < 10


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "60", True, None])
def test_bad_stall_timeout(bad):
    with pytest.raises(jw.ConfigError, match="s3_stall_timeout"):
        jw.StorageConfig(s3_stall_timeout=bad)


# ---------------------------------------------------------------- credentials
@pytest.fixture
def shared_files(tmp_path, monkeypatch):
    cred = tmp_path / "credentials"
    cred.write_text("[edges]\naws_access_key_id = testing-key-id\n"
                    "aws_secret_access_key = testing-secret-key\n")  # fmt: skip
    (tmp_path / "config").write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(cred))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))


def _profile_config(s3_config: jw.StorageConfig, profile: str) -> jw.StorageConfig:
    import dataclasses

    return dataclasses.replace(s3_config, credentials={"type": "profile", "profile": profile})


def test_missing_profile_is_a_credentials_error(s3_endpoint, s3_config, shared_files):
    cfg = _profile_config(s3_config, "nosuch")
    for call in (lambda: jw.BigMatrix.open(f"s3://{BUCKET}/edges-cred", storage=cfg),
                 lambda: jw.BigMatrix.create(f"s3://{BUCKET}/edges-cred", (2, 2), (1, 1),
                                             storage=cfg)):  # fmt: skip
        with pytest.raises(jw.CredentialsError, match=r"'profile'.*~/\.aws/credentials"):
            call()
    assert _keys(s3_endpoint, "edges-cred") == []


def test_an_explicit_existing_profile_works(s3_config, shared_files):
    url = f"s3://{BUCKET}/edges-profile"
    m = jw.from_numpy(np.ones((2, 2)), url, (1, 1), storage=_profile_config(s3_config, "edges"),
                      overwrite=True)  # fmt: skip
    assert m.numpy().sum() == 4


# ---------------------------------------------------------------- a regular file
def test_a_regular_file_is_not_a_matrix(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("keep me")
    a = jw.from_numpy(np.eye(2), mem("edges-a"), (2, 2))
    calls = [
        lambda u: jw.BigMatrix.create(u, (2, 2), (1, 1)),
        lambda u: jw.BigMatrix.create(u, (2, 2), (1, 1), overwrite=True),
        lambda u: jw.BigMatrix.open(u),
        lambda u: jw.matmul(a, a, out=u),
        lambda u: jw.from_numpy(np.eye(2), u, (2, 2), overwrite=True),
    ]
    for url in (str(path), f"file://{path}", str(path / "sub")):
        for call in calls:
            with pytest.raises(jw.UnsupportedURLError, match="is a regular file, not a matrix"):
                call(url)
    assert path.read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["x.txt"]


# ---------------------------------------------------------------- fork
def _open_in_child(url: str) -> tuple[str, str]:
    try:
        jw.BigMatrix.open(url)
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return "opened", ""


@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called")  # JAX's warning; no JAX here
def test_storage_in_a_forked_child_is_a_typed_error():
    url = mem("edges-fork")
    jw.from_numpy(np.eye(2), url, (2, 2))  # TensorStore runs in this process
    with multiprocessing.get_context("fork").Pool(1) as pool:
        kind, msg = pool.apply_async(_open_in_child, (url,)).get(timeout=20)
    assert kind == ForkError.__name__, msg
    assert "use multiprocessing start method 'spawn' or 'forkserver'" in msg
