"""The writer lifecycle (jaxwren/storage/lifecycle.py): begin -> write -> commit.

A writer that promises a whole matrix (from_numpy, save, from_csv, an operation's out)
leaves, whenever it is interrupted, either nothing or a matrix that refuses to be read
(IncompleteMatrixError naming the writer) and that a rerun of that writer replaces
without overwrite=True; two writers on one out make the loser raise
ConcurrentWriteError; a read that a writer changed under it raises MatrixChangedError
instead of returning torn data. BigMatrix.create + put_block stays complete from birth.
"""

from __future__ import annotations

import signal

import jax
import numpy as np
import pytest

import jaxwren as jw
from jaxwren.storage.bigmatrix import BigMatrix
from tests.helpers import mem, run_python

TINY = 60_000  # bytes: a matmul of the shapes below in 4 out-of-core tiles
X = np.arange(12 * 12, dtype="float64").reshape(12, 12) / 4 - 7  # 9 blocks of 4x4, exact
Y = -X[::-1] + 0.5  # other data of the same layout


class _Where:
    """URLs under a directory (None: fresh memory:// URLs) without a StorageConfig,
    like conftest's Store."""

    config = None

    def __init__(self, root: str | None = None) -> None:
        self.root = root

    def url(self, name: str) -> str:
        return mem(name) if self.root is None else f"{self.root}/{name}"


def _storage_src(store) -> str:
    return "None" if store.config is None else f"jw.{store.config!r}"


def _keys(matrix_url: str, config=None) -> list[str]:
    from jaxwren.storage.backend import open_kvstore
    from jaxwren.storage.urls import parse_url
    from jaxwren.storage.validate import resolve_storage

    kv = open_kvstore(parse_url(matrix_url), resolve_storage(config))
    return sorted(k.decode() for k in kv.list().result())


def _assert_killed(proc) -> None:
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])


def _assert_unreadable(m: BigMatrix, writer: str, *, whole: bool = True) -> None:
    """Every jaxwren read of ``m`` (and ``m`` as an operation's input) raises
    IncompleteMatrixError naming ``writer``."""
    reads = [lambda: m.get_block(0, 0), lambda: m.read_region(0, 1, 0, 1), m.to_jax,
             lambda: jw.matmul(m, np.ones((m.shape[1], 1), m.dtype))]  # fmt: skip
    if whole:
        reads.append(m.numpy)
    for read in reads:
        with pytest.raises(jw.IncompleteMatrixError, match=writer):
            read()


# ------------------------------------------------------------ 1. kill -9 mid from_numpy
_KILL_FROM_NUMPY = """
import os, signal
import numpy as np
import jaxwren as jw
from jaxwren.storage.bigmatrix import BigMatrix

orig, issued = BigMatrix.write_region_async, []

def dying(self, *args, **kwargs):
    if len(issued) == 4:
        for f in issued:  # these 4 blocks are stored: a partial matrix is left behind
            f.result()
        os.kill(os.getpid(), signal.SIGKILL)
    issued.append(orig(self, *args, **kwargs))
    return issued[-1]

BigMatrix.write_region_async = dying
x = np.arange(12 * 12, dtype="float64").reshape(12, 12) / 4 - 7
jw.from_numpy(x, {url!r}, (4, 4), storage={storage})
raise SystemExit("from_numpy was not killed")
"""


@pytest.mark.parametrize("store", ["file", "s3"], indirect=True)
def test_kill_9_mid_from_numpy_leaves_an_unreadable_matrix_a_rerun_replaces(store):
    url = store.url("killed")
    _assert_killed(run_python(_KILL_FROM_NUMPY.format(url=url, storage=_storage_src(store))))
    m = jw.BigMatrix.open(url, storage=store.config)  # the header is there ...
    assert m.shape == X.shape and m.writing_state()["writer"] == "from_numpy"
    assert 0 < len(m.block_idxs_exist) < 9  # ... and only some blocks: zeros elsewhere
    _assert_unreadable(m, "from_numpy")
    again = jw.from_numpy(X, url, (4, 4), storage=store.config)  # no overwrite needed
    np.testing.assert_array_equal(again.numpy(), X)
    np.testing.assert_array_equal(m.numpy(), X)  # the old handle reads the new matrix
    np.testing.assert_array_equal(jw.BigMatrix.open(url, storage=store.config).numpy(), X)
    assert again.writing_state() is None
    with pytest.raises(jw.MatrixExistsError):  # committed: no longer replaced silently
        jw.from_numpy(Y, url, (4, 4), storage=store.config)
    np.testing.assert_array_equal(again.numpy(), X)


# ------------------------------------------------- 2. an error or Ctrl-C in from_numpy
def _failing_writes(monkeypatch, error: BaseException, after: int = 3) -> list[int]:
    orig, calls = BigMatrix.write_region_async, []

    def write(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise error
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(BigMatrix, "write_region_async", write)
    return calls


@pytest.mark.parametrize("error", [ValueError("simulated store error"), KeyboardInterrupt()],
                         ids=["store_error", "ctrl_c"])  # fmt: skip
@pytest.mark.parametrize("store", ["memory", "file"], indirect=True)
def test_failed_from_numpy_leaves_nothing(store, error, monkeypatch):
    url = store.url("failed")
    calls = _failing_writes(monkeypatch, error)
    expected = jw.StorageError if isinstance(error, ValueError) else KeyboardInterrupt
    with pytest.raises(expected):
        jw.from_numpy(X, url, (4, 4), storage=store.config)
    assert len(calls) == 4  # three blocks were written before the failure
    with pytest.raises(jw.MatrixNotFoundError):
        jw.BigMatrix.open(url, storage=store.config)
    assert _keys(url, store.config) == []  # not a chunk, record or writing key left
    monkeypatch.undo()
    np.testing.assert_array_equal(jw.from_numpy(X, url, (4, 4), storage=store.config).numpy(), X)


# --------------------------------------------------------------- 3. kill -9 of from_csv
_KILL_FROM_CSV = """
import os, signal
import jaxwren as jw
from jaxwren.tables import rows

orig, n = rows.RowWriter._write, [0]

def write(self, *args):  # dies at the 3rd block row, the first two stored
    n[0] += 1
    if n[0] == 3:
        self.window.drain()
        os.kill(os.getpid(), signal.SIGKILL)
    return orig(self, *args)

rows.RowWriter._write = write
jw.from_csv({pattern!r}, {url!r}, block_shape=(4, 2), dtype="float64")
raise SystemExit("from_csv was not killed")
"""


def test_kill_9_of_from_csv_leaves_an_unreadable_matrix_a_rerun_replaces(tmp_path):
    parts = [X[:5, :3], X[5:12, :3], Y[:6, :3]]  # 18 rows; parts end inside blocks
    want = np.concatenate(parts)
    (tmp_path / "parts").mkdir()
    for i, p in enumerate(parts):
        lines = ["a,b,c"] + [",".join(repr(float(v)) for v in row) for row in p]
        (tmp_path / "parts" / f"part-{i}.csv").write_text("\n".join(lines) + "\n")
    pattern, url = str(tmp_path / "parts" / "part-*.csv"), str(tmp_path / "m")
    _assert_killed(run_python(_KILL_FROM_CSV.format(pattern=pattern, url=url)))
    m = jw.BigMatrix.open(url)
    assert m.shape == (2**40, 3)  # the provisional row count: never to be read as data
    assert m.block_idxs_exist  # blocks were stored
    _assert_unreadable(m, "from_csv", whole=False)  # (numpy() of 2**40 rows: see below)
    with pytest.raises(jw.IncompleteMatrixError, match="from_csv"):
        m.read_region(0, 18, 0, 3)  # the rows the data would have: still refused
    again = jw.from_csv(pattern, url, block_shape=(4, 2), dtype="float64")  # no overwrite
    assert again.shape == want.shape
    np.testing.assert_array_equal(again.numpy(), want)
    np.testing.assert_array_equal(jw.BigMatrix.open(url).numpy(), want)
    assert again.block_idxs_exist == set(again.block_idxs)
    with pytest.raises(jw.MatrixExistsError):
        jw.from_csv(pattern, url, block_shape=(4, 2), dtype="float64")


# ----------------------------------------------------------- 4. two writers on one out
def _abc(store):
    rng = np.random.default_rng(0)
    a, a2, b = (
        rng.standard_normal((48, 40)),
        rng.standard_normal((48, 40)),
        rng.standard_normal((40, 56)),
    )
    A = jw.from_numpy(a, store.url("a"), (8, 8), storage=store.config)
    A2 = jw.from_numpy(a2, store.url("a2"), (8, 8), storage=store.config)
    B = jw.from_numpy(b, store.url("b"), (8, 8), storage=store.config)
    return (a, a2, b), (A, A2, B)


def _on_second_record(monkeypatch, rival) -> list[int]:
    """Runs ``rival()`` right after the 2nd tile record of the run in progress (2 of its
    4 tiles stored, 2 still to write)."""
    orig, calls = BigMatrix.mark, []

    def mark(self, key, *value):
        orig(self, key, *value)
        calls.append(1)
        if len(calls) == 2:
            assert not key.endswith("complete")
            monkeypatch.setattr(BigMatrix, "mark", orig)  # the rival records as usual
            rival()
            monkeypatch.setattr(BigMatrix, "mark", mark)

    monkeypatch.setattr(BigMatrix, "mark", mark)
    return calls


@pytest.mark.parametrize("store", ["memory", "file"], indirect=True)
def test_a_rival_claim_on_the_out_fails_the_run(store, monkeypatch):
    (a, _, b), (A, _, B) = _abc(store)
    url = store.url("c")

    def rival():  # another process begins writing the same out
        jw.BigMatrix.open(url, storage=store.config).begin_writing("the other job")

    calls = _on_second_record(monkeypatch, rival)
    with pytest.raises(jw.ConcurrentWriteError, match="the other job"):
        jw.matmul(A, B, out=url, memory_budget=TINY, storage=store.config)
    assert len(calls) >= 2  # the rival claimed it mid-run
    monkeypatch.undo()
    C = jw.BigMatrix.open(url, storage=store.config)  # mixed data: unfinished, for every reader
    _assert_unreadable(C, "two runs wrote this out at once")
    # the other job is gone; rerunning this call replaces its leftover
    C = jw.matmul(A, B, out=url, memory_budget=TINY, storage=store.config)
    np.testing.assert_allclose(C.numpy(), a @ b, rtol=1e-12, atol=1e-12)


def test_a_rival_write_to_a_stored_tile_fails_the_run(monkeypatch):
    _, (A, _, B) = _abc(_Where())
    url = mem("c")
    rewritten = []

    def rival():  # another tool rewrites every block this run has stored so far
        C = jw.BigMatrix.open(url)
        for i, j in sorted(C.block_idxs_exist):
            C.put_block(np.full((8, 8), 99.0), i, j)
            rewritten.append((i, j))

    _on_second_record(monkeypatch, rival)
    with pytest.raises(jw.ConcurrentWriteError, match="written by another run or tool"):
        jw.matmul(A, B, out=url, memory_budget=TINY)
    assert rewritten
    monkeypatch.undo()
    with pytest.raises(jw.MatrixNotFoundError):  # what this call created is removed
        jw.BigMatrix.open(url)


def _rival_product_during(monkeypatch, store, run_rival):
    """Runs matmul(A, B) into an out, and a whole matmul(A2, B) into the same out (by
    ``run_rival``) after the first run stored 2 of its 4 tiles; the first run must raise.
    Returns the out's URL and the rival's result as read right after the rival returned."""
    (a, a2, b), (A, A2, B) = _abc(store)
    url = store.url("c")
    seen = {}

    def rival():
        run_rival(A2, B, url)
        seen["rival"] = jw.BigMatrix.open(url, storage=store.config).numpy()

    _on_second_record(monkeypatch, rival)
    with pytest.raises(jw.ConcurrentWriteError):  # it must not return normally
        jw.matmul(A, B, out=url, memory_budget=TINY, storage=store.config)
    monkeypatch.undo()
    np.testing.assert_allclose(seen["rival"], a2 @ b, rtol=1e-12, atol=1e-12)
    return url, seen["rival"]


def test_a_rival_run_of_another_product_fails_the_first_run(monkeypatch):
    def in_process(a2_, b_, url):
        jw.matmul(a2_, b_, out=url)

    url, rival = _rival_product_during(monkeypatch, _Where(), in_process)
    _never_torn(url, None, rival)


def _never_torn(url, config, rival):
    """After the losing run raised: the out refuses to be read, or reads as the
    rival's committed result exactly (never a mix of both products)."""
    try:
        after = jw.BigMatrix.open(url, storage=config).numpy()
    except (jw.IncompleteMatrixError, jw.MatrixChangedError):
        return
    np.testing.assert_array_equal(after, rival)  # never a mix of both products


_RIVAL = """
import jaxwren as jw
A2, B = jw.BigMatrix.open({a2!r}), jw.BigMatrix.open({b!r})
jw.matmul(A2, B, out={url!r})
"""


def test_two_processes_on_one_out(tmp_path, monkeypatch):
    def other_process(a2_, b_, url):
        proc = run_python(_RIVAL.format(a2=a2_.url, b=b_.url, url=url))
        assert proc.returncode == 0, proc.stderr[-3000:]

    url, rival = _rival_product_during(monkeypatch, _Where(str(tmp_path)), other_process)
    _never_torn(url, None, rival)


# ------------------------------------------------------ 5. a reader during an overwrite
@pytest.mark.parametrize("rival", ["overwrite", "put_block", "begin_writing"])
@pytest.mark.parametrize("read", ["numpy", "get_block", "read_region", "to_jax"])
def test_a_read_during_a_rewrite_raises_never_returns_torn_data(read, rival, monkeypatch):
    url = mem("read")
    m = jw.from_numpy(X, url, (4, 4))
    orig_token, orig_read = BigMatrix.read_token_async, BigMatrix.read_region_into_async
    fired = []

    def token(self):  # the token read before the data read has been answered
        futures = orig_token(self)
        for f in futures:
            f.result()
        return futures

    def read_then_rewrite(self, *args):
        fut = orig_read(self, *args)
        if not fired:  # the first read (to_jax: the first shard) holds the old data
            fired.append(1)
            fut.result()
            if rival == "overwrite":
                jw.from_numpy(Y, url, (4, 4), overwrite=True)
            elif rival == "put_block":
                jw.BigMatrix.open(url).put_block(Y[:4, :4], 0, 0)
            else:
                jw.BigMatrix.open(url).begin_writing("the other writer")
        return fut

    monkeypatch.setattr(BigMatrix, "read_token_async", token)
    monkeypatch.setattr(BigMatrix, "read_region_into_async", read_then_rewrite)
    do = {"numpy": m.numpy, "get_block": lambda: m.get_block(0, 0),
          "read_region": lambda: m.read_region(0, 12, 0, 12), "to_jax": m.to_jax}[read]  # fmt: skip
    with pytest.raises(jw.MatrixChangedError, match="torn"):
        do()
    assert fired
    monkeypatch.undo()
    if rival == "begin_writing":
        _assert_unreadable(m, "the other writer")
    else:  # the next read is whole again
        want = Y if rival == "overwrite" else np.block([[Y[:4, :4], X[:4, 4:]], [X[4:]]])
        np.testing.assert_array_equal(m.numpy(), want)


# --------------------------------------------------------------- 6. an interrupted save
@pytest.mark.parametrize("store", ["memory", "s3"], indirect=True)
def test_an_interrupted_save_leaves_nothing_new_and_an_existing_target_uncommitted(
    store, monkeypatch
):
    x = jax.device_put(Y, jw.default_sharding(Y.shape))  # 8 shards of 6x3: 8 writes
    new = store.url("new")
    _failing_writes(monkeypatch, ValueError("simulated store error"), after=3)
    with pytest.raises(jw.StorageError):
        jw.save(x, new, (4, 4), storage=store.config)
    with pytest.raises(jw.MatrixNotFoundError):
        jw.BigMatrix.open(new, storage=store.config)
    monkeypatch.undo()

    target = jw.from_numpy(X, store.url("old"), (4, 4), storage=store.config)
    _failing_writes(monkeypatch, ValueError("simulated store error"), after=3)
    with pytest.raises(jw.StorageError):
        jw.save(x, target)
    monkeypatch.undo()
    _assert_unreadable(target, "save")  # some blocks old, some new: refused
    _assert_unreadable(jw.BigMatrix.open(target.url, storage=store.config), "save")
    jw.save(x, target)  # the rerun commits it
    np.testing.assert_array_equal(target.numpy(), Y)
    np.testing.assert_array_equal(jw.BigMatrix.open(target.url, storage=store.config).numpy(), Y)
    saved = jw.save(x, new, (4, 4), storage=store.config)  # and the new URL is free
    np.testing.assert_array_equal(saved.numpy(), Y)


# ------------------------------------------------------ 7. create + put_block: no commit
def test_create_and_put_block_read_without_any_commit(store):
    m = jw.BigMatrix.create(store.url("cp"), (6, 7), (4, 4), "float64", storage=store.config)
    assert m.writing_state() is None
    np.testing.assert_array_equal(m.numpy(), np.zeros((6, 7)))
    m.put_block(X[:4, :4], 0, 0)
    m.put_block(X[4:6, 4:7], 1, 1)  # the ragged corner
    want = np.zeros((6, 7))
    want[:4, :4], want[4:, 4:] = X[:4, :4], X[4:6, 4:7]
    again = jw.BigMatrix.open(m.url, storage=store.config)
    for h in (m, again):
        np.testing.assert_array_equal(h.numpy(), want)
        np.testing.assert_array_equal(h.get_block(0, 1), np.zeros((4, 3)))
        np.testing.assert_array_equal(np.asarray(h.to_jax()), want)
    np.testing.assert_array_equal(np.asarray(jw.matmul(again, np.eye(7))), want)
