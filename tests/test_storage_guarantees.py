"""Storage guarantees on every store: generations replaced by every write, stale handles
refused, parent_fn honoured by every read, pickling."""

from __future__ import annotations

import os
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


# ------------------------------------------------------------------- parent_fn, one path
def test_parent_fn_is_honoured_by_the_one_read_path(store):
    calls = []

    def parent(a, i, j):
        calls.append((a.transposed, i, j))
        return _parent(a, i, j)

    p = jw.BigMatrix.create(store.url("pf1"), X.shape, (2, 3), "float64", storage=store.config,
                            parent_fn=parent)  # fmt: skip
    p.put_block(X[0:2, 6:7], 0, 2)
    want = X + 100.0
    want[0:2, 6:7] = X[0:2, 6:7]
    out = np.full((3, 5), np.nan)
    fut = p.read_region_into_async(1, 4, 2, 7, out)
    assert hasattr(fut, "done")
    fut.result()
    np.testing.assert_array_equal(out, want[1:4, 2:7])
    np.testing.assert_array_equal(p.read_region_async(0, 5, 0, 7).result(), want)
    np.testing.assert_array_equal(np.asarray(jw.load(p)), want)
    for i, j in p.block_idxs:
        np.testing.assert_array_equal(p.T.get_block(j, i), p.get_block(i, j).T)
    assert all(not transposed for transposed, _, _ in calls)  # always the stored matrix
    assert (2, 0) in {(i, j) for _, i, j in calls}  # .T block (0, 2) is parent block (2, 0)
    p.put_block(np.zeros((1, 3)), 2, 1)  # written between reads: seen (nothing cached)
    want[4:5, 3:6] = 0
    np.testing.assert_array_equal(p.numpy(), want)
    np.testing.assert_array_equal(p.T.read_region(0, 7, 0, 5), want.T)


def test_lower_triangle_reads_parent_blocks(store):
    from jaxwren.sharding.lower import LowerTriangle

    s = np.arange(25.0).reshape(5, 5)
    p = jw.BigMatrix.create(store.url("pfl"), (5, 5), (2, 2), "float64", storage=store.config,
                            parent_fn=lambda a, i, j: s[2 * i : 2 * i + 2, 2 * j : 2 * j + 2])  # fmt: skip
    out = np.full((5, 5), np.nan)
    LowerTriangle(p).read_region_into_async(0, 5, 0, 5, out).result()
    want = s.copy()
    want[0:2, 2:] = want[2:4, 4:] = 0  # blocks above the diagonal are not read
    np.testing.assert_array_equal(out, want)


# ------------------------------------------------------------------------- generations
def test_write_blocks_and_begin_write_replace_the_generation(store):
    from jaxwren.storage.ingest import write_blocks

    m = jw.from_numpy(X, store.url("wb"), (2, 3), storage=store.config)
    g0 = m.generation()
    write_blocks(m, X * 2)
    g1 = m.generation()
    assert g1 not in (None, g0)
    np.testing.assert_array_equal(m.numpy(), X * 2)
    assert m.begin_write() == m.generation() != g1
    g2 = m.generation()
    m.mark("tile-0"), m.marks(), m.read_region(0, 1, 0, 1), m.block_exists(0, 0)  # noqa: B018
    list(m.iter_row_batches(5))
    assert m.generation() == g2  # records and reads leave it alone
    assert len(m.new_generation()) == 32 and m.generation() != g2
    with pytest.raises(jw.ShapeMismatchError, match=r"array shape \(2, 2\) differs"):
        write_blocks(m, np.ones((2, 2)))


def test_free_deletes_blocks_and_records_and_destroy_everything(store):
    m = jw.from_numpy(X, store.url("fr"), (2, 3), storage=store.config)
    m.mark("a")
    m.free()
    assert m.marks() == set() and m.block_idxs_exist == set() and m.generation() is not None
    m.destroy()
    assert m.generation() is None
    with pytest.raises(jw.MatrixNotFoundError, match="no matrix at"):
        jw.BigMatrix.open(m.url, storage=store.config)


# ----------------------------------------------------------------------- stale handles
_RECREATE = (
    "import sys, numpy as np, jaxwren as jw\n"
    "url, shape, dtype = sys.argv[1], eval(sys.argv[2]), sys.argv[3]\n"
    "jw.from_numpy(np.full(shape, 7, dtype), url, (2, 3), overwrite=True)\n"
)


def _recreate_elsewhere(url, shape, dtype):
    """Recreates the matrix in another process (no shared TensorStore cache)."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", _RECREATE, url, repr(shape), dtype], check=True,
                   timeout=300)  # fmt: skip


@pytest.mark.parametrize(("shape", "dtype"), [((5, 7), "int64"), ((6, 7), "float64")])
def test_handle_of_a_matrix_recreated_by_another_process_raises(tmp_path, shape, dtype):
    url = str(tmp_path / "stale")
    old = jw.from_numpy(X, url, (2, 3))
    old.numpy()
    _recreate_elsewhere(url, shape, dtype)
    reads = (old.numpy, lambda: old.get_block(0, 0), lambda: old.read_region(0, 1, 0, 1),
             old.to_jax, old.check_fresh, lambda: old.put_block(np.zeros((2, 3)), 0, 0),
             lambda: old.iter_row_batches(5),
             lambda: old.delete_block(0, 0), old.free)  # fmt: skip
    for call in reads:
        with pytest.raises(jw.MatrixChangedError, match=r"reopen it with jw\.BigMatrix\.open"):
            call()
    new = jw.BigMatrix.open(url)
    np.testing.assert_array_equal(new.numpy(), np.full(shape, 7, dtype))  # nothing written


def test_same_layout_recreated_or_attributes_changed_is_still_fresh(tmp_path):
    import zarr

    url = str(tmp_path / "same")
    old = jw.from_numpy(X, url, (2, 3))
    _recreate_elsewhere(url, X.shape, "float64")
    zarr.open_array(url).attrs["note"] = "a user attribute"
    old.check_fresh()
    np.testing.assert_array_equal(old.numpy(), np.full(X.shape, 7.0))  # the new data


def test_handle_of_a_deleted_matrix_raises(store):
    m = jw.from_numpy(X, store.url("del"), (2, 3), storage=store.config)
    old = jw.BigMatrix.open(m.url, storage=store.config)
    m.destroy()
    for call in (old.check_fresh, old.numpy, lambda: old.put_block(np.ones((2, 3)), 0, 0)):
        with pytest.raises(jw.MatrixNotFoundError, match="was deleted.*create it again"):
            call()
    assert old.generation() is None  # the refused write left nothing behind


# ---------------------------------------------------------------------------- pickling
def test_pickle_keeps_parent_fn_config_and_memory_data():
    url = "memory://pickled-parent"
    p = jw.BigMatrix.create(url, X.shape, (2, 3), "float64", parent_fn=_parent, overwrite=True)
    p.put_block(np.zeros((2, 3)), 0, 0)
    for handle in (p, p.T):
        back = pickle.loads(pickle.dumps(handle))
        assert back.parent_fn is _parent and back.storage == handle.storage
        np.testing.assert_array_equal(back.numpy(), handle.numpy())
    assert pickle.loads(pickle.dumps(p)).numpy()[0, 0] == 0  # the same memory store


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"s3_endpoint": "http://127.0.0.1:9000", "s3_region": "r", "s3_max_retries": 3},
     {"credentials": {"type": "profile", "profile": "p", "credentials_file": "/x"}}],
)  # fmt: skip
def test_storage_config_pickles_equal(kwargs):
    cfg = jw.StorageConfig(**kwargs)
    back = pickle.loads(pickle.dumps(cfg))
    assert back == cfg and hash(back) == hash(cfg)
    with pytest.raises(TypeError, match="read-only"):
        jw.StorageConfig(credentials={"type": "anonymous"}).credentials["type"] = "x"  # type: ignore[index]


# ---------------------------------------------------------------- stores, credentials
def test_unreachable_s3_fails_in_bounded_time():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = jw.StorageConfig(s3_endpoint=f"http://127.0.0.1:{port}", credentials="anonymous",
                           s3_max_retries=2, s3_retry_initial_delay="0.05s")  # fmt: skip
    for call in (lambda: jw.BigMatrix.open(f"s3://{BUCKET}/x", storage=cfg),
                 lambda: jw.BigMatrix.create(f"s3://{BUCKET}/x", (2, 2), (1, 1), storage=cfg)):  # fmt: skip
        with pytest.raises(jw.StorageError, match="did not answer within TensorStore's retries"):
            call()


def test_default_credentials_resolve_to_the_one_source(tmp_path):
    aws = tmp_path / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text("[default]\naws_access_key_id = a\n[minio]\nx = y\n")
    keys = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    home = {"HOME": str(tmp_path)}

    def resolved(env):
        c = jw.StorageConfig().resolve(env).credentials
        return c if isinstance(c, str) else dict(c)

    assert resolved({**keys, **home, "AWS_PROFILE": "minio"}) == "environment"
    assert resolved(home) == {"type": "profile", "profile": "default", "config_file": os.devnull,
                              "credentials_file": str(aws / "credentials")}  # fmt: skip
    assert resolved({**home, "AWS_PROFILE": "minio"})["profile"] == "minio"
    assert resolved({**home, "AWS_PROFILE": "sso"}) == {"type": "default", "profile": "sso"}
    assert resolved({"HOME": str(tmp_path / "none")}) == "default"
    assert jw.StorageConfig(credentials="anonymous").resolve(keys).credentials == "anonymous"


def test_s3_with_a_profile_logs_no_errors(s3_endpoint, tmp_path):
    aws = tmp_path / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text(
        "[minio]\naws_access_key_id = testing-key-id\naws_secret_access_key = testing-secret-key\n"
    )
    code = (
        "import numpy as np, jaxwren as jw\n"
        f"m = jw.from_numpy(np.ones((4, 4)), 's3://{BUCKET}/quiet-p', (2, 2), overwrite=True)\n"
        f"print(jw.BigMatrix.open('s3://{BUCKET}/quiet-p').numpy().sum())\n"
    )
    proc = run_python(code, drop=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
                      AWS_ENDPOINT_URL_S3=s3_endpoint, AWS_PROFILE="minio", HOME=str(tmp_path))  # fmt: skip
    assert proc.stdout.strip() == "16.0", proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if re.match(r"[EF]\d{4} ", ln)]
    assert errors == []


def test_low_level_read_of_a_recreated_matrix_is_typed(store):
    """The engine's reads skip the per-call check (it checks once per run); in this
    process TensorStore itself notices the new header, and the error is typed."""
    from jaxwren.storage.backend import translate_errors

    url = store.url("stale-ll")
    old = jw.from_numpy(X, url, (2, 3), storage=store.config)
    jw.BigMatrix.create(url, (5, 7), (2, 3), "int32", storage=store.config, overwrite=True)
    with (
        pytest.raises(jw.MatrixChangedError, match="reopen it with jw.BigMatrix.open"),
        translate_errors("load", old.location),
    ):
        old.read_region_into_async(0, 2, 0, 3, np.empty((2, 3))).result()


@pytest.mark.parametrize("memmap", [True, False])
def test_file_reads_with_and_without_memmap(tmp_path, memmap):
    """Local files are read through mmap by default (StorageConfig.file_memmap); both
    modes read the same values, ragged edge blocks and missing (fill) blocks included,
    and see a block rewritten by another handle."""
    from jaxwren.storage.urls import kvstore_spec, parse_url

    config = jw.StorageConfig(file_memmap=memmap)
    spec = kvstore_spec(parse_url(str(tmp_path / "m")), config)
    assert spec["file_io_mode"] == {"mode": "memmap" if memmap else "default"}
    x = rand((70, 45), seed=3)
    a = jw.BigMatrix.create(str(tmp_path / "m"), (70, 45), (32, 16), "float64", storage=config)
    a.write_region(0, 0, x[:64])  # the last block row stays missing: zeros
    want = x.copy()
    want[64:] = 0
    np.testing.assert_array_equal(a.numpy(), want)
    other = jw.BigMatrix.open(str(tmp_path / "m"), storage=jw.StorageConfig(file_memmap=not memmap))
    other.write_region(64, 0, x[64:])
    np.testing.assert_array_equal(a.read_region(0, 70, 0, 45), x)


@pytest.mark.parametrize("name", ["file_memmap", "file_sync"])
def test_file_switches_must_be_booleans(name):
    with pytest.raises(
        jw.ConfigError, match=rf"StorageConfig\({name}='false'\) must be True or False"
    ):
        jw.StorageConfig(**{name: "false"})
