"""S3 outages in the middle of out-of-core matmul and Cholesky: the job completes, or fails
with StorageError and a rerun resumes it; nothing is recorded complete that is not."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import jaxwren as jw
from tests.conftest import BUCKET
from tests.faults import FlakyProxy
from tests.helpers import rand, tolerance


@pytest.fixture
def flaky(s3_endpoint):
    proxy = FlakyProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    yield proxy
    proxy.down()


def _config(proxy: FlakyProxy, retries: int) -> jw.StorageConfig:
    return jw.StorageConfig(s3_endpoint=proxy.endpoint, s3_region="us-east-1",
                            credentials="environment", s3_max_retries=retries,
                            s3_retry_initial_delay="0.05s", s3_retry_max_delay="0.2s")  # fmt: skip


def _outage_after_marks(monkeypatch, proxy: FlakyProxy, after: int, seconds: float | None):
    """Takes the store down right after the ``after``-th completion record; brings it back
    after ``seconds`` (None: stays down until the test brings it up)."""
    orig = jw.BigMatrix.mark
    count = {"n": 0}

    def mark(self, key, *value):
        orig(self, key, *value)
        count["n"] += 1
        if count["n"] == after:
            proxy.down()
            if seconds is not None:
                threading.Timer(seconds, proxy.up).start()

    monkeypatch.setattr(jw.BigMatrix, "mark", mark)


def _run(op: str, cfg: jw.StorageConfig, name: str):
    if op == "matmul":
        a, b = rand((64, 32), seed=31), rand((32, 64), seed=32)
        A = jw.from_numpy(a, f"s3://{BUCKET}/{name}-a", (8, 8), storage=cfg)
        B = jw.from_numpy(b, f"s3://{BUCKET}/{name}-b", (8, 8), storage=cfg)
        call = lambda: jw.matmul(A, B, f"s3://{BUCKET}/{name}-c", memory_budget=60_000,  # noqa: E731
                                 storage=cfg)  # fmt: skip
        return call, a @ b
    x = rand((48, 48), seed=33)
    s = x @ x.T / 48 + np.eye(48)
    S = jw.from_numpy(s, f"s3://{BUCKET}/{name}-s", (8, 8), storage=cfg)
    call = lambda: jw.cholesky(S, f"s3://{BUCKET}/{name}-l", memory_budget=60_000,  # noqa: E731
                               storage=cfg)  # fmt: skip
    return call, np.linalg.cholesky(s)


@pytest.mark.parametrize("op", ["matmul", "cholesky"])
def test_short_outage_is_retried(flaky, monkeypatch, op):
    call, ref = _run(op, _config(flaky, retries=20), f"short-{op}")
    _outage_after_marks(monkeypatch, flaky, after=2, seconds=0.5)
    result = call()
    np.testing.assert_allclose(result.numpy(), ref, **tolerance("float64"))


@pytest.mark.parametrize("op", ["matmul", "cholesky"])
def test_long_outage_fails_then_resumes(flaky, monkeypatch, op):
    call, ref = _run(op, _config(flaky, retries=2), f"long-{op}")
    _outage_after_marks(monkeypatch, flaky, after=2, seconds=None)
    with pytest.raises(jw.StorageError, match="rerun"):
        call()
    monkeypatch.undo()
    flaky.up()
    out = jw.BigMatrix.open(f"s3://{BUCKET}/long-{op}-{'c' if op == 'matmul' else 'l'}",
                            storage=_config(flaky, retries=2))  # fmt: skip
    assert len(out.marks()) >= 2 and not any(m.endswith("complete") for m in out.marks())
    flaky.down()
    flaky.up()
    result = call()  # resumes from the recorded tiles; a wrong record would show here
    np.testing.assert_allclose(result.numpy(), ref, **tolerance("float64"))
