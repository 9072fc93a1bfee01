"""Storage guarantees on every store: generations replaced by every write, stale handles
refused, parent_fn honoured by every read, pickling."""

from __future__ import annotations

import pickle
import re
import socket

import jax
import numpy as np
import pytest

import jaxwren as jw
from tests.conftest import BUCKET
from tests.helpers import rand, run_python

X = np.arange(5 * 7, dtype="float64").reshape(5, 7)


def test_every_write_replaces_the_generation_and_reads_do_not(store):
    m = jw.from_numpy(X, store.url("g"), (2, 3), storage=store.config)
    seen = {m.generation()}
    writes = [
        lambda: m.put_block(np.ones((2, 3)), 0, 0),
        lambda: m.write_region(1, 1, np.ones((2, 2))),
        lambda: m.delete_block(1, 1),
        lambda: jw.save(jax.numpy.asarray(X), m),
        m.free,
        lambda: jw.BigMatrix.create(
            m.url, X.shape, (2, 3), "float64", storage=store.config, overwrite=True
        ),  # fmt: skip
    ]
    for write in writes:
        write()
        g = jw.BigMatrix.open(m.url, storage=store.config).generation()
        assert g is not None and g not in seen
        seen.add(g)
    m2 = jw.BigMatrix.open(m.url, storage=store.config)
    g = m2.generation()
    m2.numpy(), m2.get_block(0, 0), m2.to_jax(), m2.block_idxs_exist  # noqa: B018
    assert m2.generation() == g


def test_handle_of_a_recreated_matrix_raises(store):
    url = store.url("stale")
    jw.from_numpy(X, url, (2, 3), storage=store.config)
    old = jw.BigMatrix.open(url, storage=store.config)
    jw.BigMatrix.create(url, (5, 7), (2, 3), "int32", storage=store.config, overwrite=True)
    for read in (old.numpy, lambda: old.get_block(0, 0), old.to_jax,
                 lambda: jw.matmul(old, old.T)):  # fmt: skip
        with pytest.raises(jw.MatrixChangedError, match="reopen it with jw.BigMatrix.open"):
            read()


def _parent(a, i, j):
    r0, r1, c0, c1 = a.block_bounds(i, j)
    return X[r0:r1, c0:c1] + 100.0


def test_parent_fn_on_every_read_path(store):
    p = jw.BigMatrix.create(store.url("pf"), X.shape, (2, 3), "float64", storage=store.config,
                            parent_fn=_parent)  # fmt: skip
    p.put_block(X[2:4, 3:6], 1, 1)
    want = X + 100.0
    want[2:4, 3:6] = X[2:4, 3:6]
    np.testing.assert_array_equal(p.numpy(), want)
    np.testing.assert_array_equal(p.read_region(1, 4, 2, 7), want[1:4, 2:7])
    np.testing.assert_array_equal(np.asarray(p.to_jax()), want)
    np.testing.assert_array_equal(p.T.numpy(), want.T)
    np.testing.assert_array_equal(p.T.get_block(1, 0), want[0:2, 3:6].T)
    np.testing.assert_array_equal(np.asarray(p.T.to_jax()), want.T)
    batches = [np.asarray(b) for b in p.iter_row_batches(2)]
    np.testing.assert_array_equal(np.concatenate(batches), want)
    np.testing.assert_allclose(np.asarray(jw.matmul(p, p.T)), want @ want.T)
    np.testing.assert_allclose(np.asarray(jw.matmul(p, p.T, memory_budget=2_000)), want @ want.T)


def test_pickled_matrix_is_the_same_matrix(store):
    m = jw.from_numpy(rand((6, 4)), store.url("pk"), (2, 2), storage=store.config)
    for handle in (m, m.T):
        back = pickle.loads(pickle.dumps(handle))
        np.testing.assert_array_equal(back.numpy(), handle.numpy())
        assert back.transposed == handle.transposed


def test_storage_config_with_dict_credentials_pickles():
    cfg = jw.StorageConfig(credentials={"type": "profile", "profile": "minio"})
    back = pickle.loads(pickle.dumps(cfg))
    assert back == cfg and dict(back.credentials) == {"type": "profile", "profile": "minio"}


def test_unreachable_gcs_fails_in_bounded_time():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    code = (
        "import time, jaxwren as jw\n"
        "t = time.time()\n"
        "try:\n"
        "    jw.BigMatrix.open('gs://some-bucket/x', storage=jw.StorageConfig(s3_max_retries=2))\n"
        "except jw.StorageError as e:\n"
        "    print('StorageError', round(time.time() - t, 1))\n"
    )
    proc = run_python(code, TENSORSTORE_GCS_HTTP_URL=f"http://127.0.0.1:{port}",
                       GOOGLE_APPLICATION_CREDENTIALS="/nonexistent")  # fmt: skip
    assert "StorageError" in proc.stdout, proc.stderr[-2000:]
    assert float(proc.stdout.split()[-1]) < 30


def test_s3_with_environment_credentials_logs_no_errors(s3_endpoint):
    code = (
        "import numpy as np, jaxwren as jw\n"
        f"m = jw.from_numpy(np.ones((4, 4)), 's3://{BUCKET}/quiet', (2, 2), overwrite=True)\n"
        f"print(jw.BigMatrix.open('s3://{BUCKET}/quiet').numpy().sum())\n"
    )
    proc = run_python(code, drop=("AWS_PROFILE",), AWS_ENDPOINT_URL_S3=s3_endpoint, AWS_ACCESS_KEY_ID="testing-key-id",
                       AWS_SECRET_ACCESS_KEY="testing-secret-key", HOME="/nonexistent-home")  # fmt: skip
    assert proc.stdout.strip() == "16.0", proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if re.match(r"[EF]\d{4} ", ln)]
    assert errors == []
