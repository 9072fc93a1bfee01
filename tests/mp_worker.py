"""Run by tests/test_multiprocess.py under ``python -m jaxwren.launch``: every public
operation on a 2-process mesh, compared with numpy on every process, for each store root
given (one launch for all of them: the processes start and compile once)."""

from __future__ import annotations

import os
import sys

os.environ["JAX_ENABLE_X64"] = "1"

import numpy as np  # noqa: E402

import jaxwren as jw  # noqa: E402
from jaxwren import distributed  # noqa: E402

distributed.initialize()

import jax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from jaxwren.config import RunSpec  # noqa: E402
from jaxwren.engine.run import run  # noqa: E402
from jaxwren.linalg.cholesky import Cholesky  # noqa: E402
from jaxwren.linalg.matmul import Matmul  # noqa: E402


def gather(x: jax.Array) -> np.ndarray:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def main(root: str) -> None:
    assert jax.process_count() == 2 and len(jax.devices()) == 8, jax.devices()
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((37, 29)), rng.standard_normal((29, 23))
    s = a @ a.T / 29 + np.eye(37)
    q, d = rng.standard_normal((21, 6)), rng.standard_normal((40, 6))
    if jax.process_index() == 0:
        for name, x in (("a", a), ("b", b), ("s", s), ("q", q), ("d", d)):
            jw.from_numpy(x, f"{root}/{name}", (8, 8), overwrite=True)
    multihost_utils.sync_global_devices("inputs written")
    A, B, S, Q, D = (jw.BigMatrix.open(f"{root}/{n}") for n in "absqd")

    c = jw.matmul(A, B, f"{root}/c")
    np.testing.assert_allclose(c.numpy(), a @ b, rtol=1e-10, atol=1e-10)
    c2 = jw.matmul(A, B, f"{root}/c2", memory_budget=20_000)  # out-of-core
    np.testing.assert_allclose(c2.numpy(), a @ b, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gather(jw.matmul(A, B)), a @ b, rtol=1e-10, atol=1e-10)
    # save: shards of 37 rows over 2 processes cut the 8-row blocks -> written whole
    saved = jw.save(jw.matmul(A, B), f"{root}/c-saved", (8, 8))
    np.testing.assert_allclose(saved.numpy(), a @ b, rtol=1e-10, atol=1e-10)
    # C's row shards split its 8-row blocks between the processes: C is gathered and
    # written whole by process 0 (parts of one block from two processes: not atomic on S3)
    res = run(Matmul(), (A, B), f"{root}/c-whole", RunSpec())
    np.testing.assert_allclose(res.value.numpy(), a @ b, rtol=1e-10, atol=1e-10)
    written = multihost_utils.process_allgather(np.array([res.report.bytes_written])).ravel()
    assert written[0] == 37 * 23 * 8 and written[1] == 0, written

    ref = np.linalg.cholesky(s)
    for budget in (None, 15_000):  # in-core; out-of-core (5x5 tiles, several K widths)
        low = jw.cholesky(S, f"{root}/l{budget}", memory_budget=budget)
        np.testing.assert_allclose(low.numpy(), ref, rtol=1e-9, atol=1e-10)
    # out-of-core, every finished tile is gathered and stored whole by one process (no
    # chunk written in parts by two processes: not atomic on S3)
    res = run(Cholesky(), (S,), f"{root}/l-whole", RunSpec(memory_budget=15_000))
    np.testing.assert_allclose(res.value.numpy(), ref, rtol=1e-9, atol=1e-10)
    written = multihost_utils.process_allgather(np.array([res.report.bytes_written])).ravel()
    assert written[0] > 0 and written[1] == 0, written
    x = jw.cho_solve(jw.BigMatrix.open(f"{root}/lNone"), np.ones((37, 8)))
    np.testing.assert_allclose(gather(x), np.linalg.solve(s, np.ones((37, 8))), rtol=1e-8)

    idx, dist = jw.nearest_neighbors(Q, D, k=3)
    full = ((q[:, None, :] - d[None, :, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(gather(idx), np.argsort(full, axis=1, kind="stable")[:, :3])
    np.testing.assert_allclose(gather(dist), np.sort(full, axis=1)[:, :3], rtol=1e-9)
    ring_idx, _ = jw.nearest_neighbors(Q, D, k=3, memory_budget=20_000)
    np.testing.assert_array_equal(gather(ring_idx), np.argsort(full, axis=1, kind="stable")[:, :3])
    nn_idx, _ = jw.nearest_neighbors(Q, D, k=3, out=f"{root}/nn", memory_budget=20_000)
    np.testing.assert_array_equal(nn_idx.numpy(), np.argsort(full, axis=1, kind="stable")[:, :3])

    dm = jw.pairwise_sq_distances(Q, D, f"{root}/dist")
    np.testing.assert_allclose(dm.numpy(), full, rtol=1e-9, atol=1e-9)
    am, _ = jw.argmin(dm, axis=1)
    np.testing.assert_array_equal(gather(am), full.argmin(axis=1))
    doubled = jw.map_blocks(lambda blk: 2 * blk, A, out=f"{root}/twice")
    np.testing.assert_allclose(doubled.numpy(), 2 * a)
    rows = [gather(batch) for batch in A.iter_row_batches(8)]
    np.testing.assert_allclose(np.concatenate(rows), a)
    tri = jw.solve_triangular(np.tril(s), np.ones((37, 8)))
    np.testing.assert_allclose(gather(tri), np.linalg.solve(np.tril(s), np.ones((37, 8))),
                               rtol=1e-8)  # fmt: skip
    tall_qr(root, rng)
    tables(root)
    print(f"process {jax.process_index()}: all operations match numpy on {root}", flush=True)


def tall_qr(root: str, rng: np.random.Generator) -> None:
    t, y = rng.standard_normal((4500, 7)), rng.standard_normal((4500, 2))
    if jax.process_index() == 0:
        jw.from_numpy(t, f"{root}/t", (1000, 7), overwrite=True)
    multihost_utils.sync_global_devices("tall written")
    T = jw.BigMatrix.open(f"{root}/t")
    ref_r = np.linalg.qr(t, mode="r")
    ref_r *= np.sign(np.diag(ref_r))[:, None]
    for budget in (None, 800_000):  # one tile; several (two passes for Q)
        r = gather(jw.qr(T, mode="r", memory_budget=budget))
        np.testing.assert_allclose(r, ref_r, rtol=1e-9, atol=1e-10)
        q, r = jw.qr(T, f"{root}/qr{budget}", memory_budget=budget)
        qn = q.numpy()
        np.testing.assert_allclose(qn @ gather(r), t, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(qn.T @ qn, np.eye(7), atol=1e-12)
    x = gather(jw.lstsq(T, y))
    np.testing.assert_allclose(x, np.linalg.lstsq(t, y, rcond=None)[0], rtol=1e-8, atol=1e-10)
    s_ref = np.linalg.svd(t, compute_uv=False)
    np.testing.assert_allclose(gather(jw.svd(T, compute_uv=False)), s_ref, rtol=1e-9)
    _, s, _ = jw.randomized_svd(T, 7)
    np.testing.assert_allclose(gather(s), s_ref, rtol=1e-8)


def tables(root: str) -> None:
    if jax.process_index() == 0 and not root.startswith("s3://"):
        os.makedirs(f"{root}/parts", exist_ok=True)
    multihost_utils.sync_global_devices("parts dir")
    from jaxwren.storage.backend import open_kvstore
    from jaxwren.storage.urls import parse_url
    from jaxwren.storage.validate import resolve_storage

    vals = np.arange(40 * 3, dtype=np.float64).reshape(40, 3)
    if jax.process_index() == 0:
        kv = open_kvstore(parse_url(f"{root}/parts"), resolve_storage(None))
        for i in range(4):  # four equal parts: 10 rows each
            text = "a,b,c\n" + "".join(
                f"{r[0]},{r[1]},{r[2]}\n" for r in vals[10 * i : 10 * i + 10]
            )
            kv.write(f"p{i}.csv", text.encode()).result()
        kv.write("bad/p0.csv", b"a,b\n1,x\n").result()
        for i, rows in enumerate((10, 10, 10, 5)):  # process 0 reads 20 rows, process 1 15
            text = "a\n" + "".join(f"{r}\n" for r in range(rows))
            kv.write(f"uneven/p{i}.csv", text.encode()).result()
    multihost_utils.sync_global_devices("parts written")
    try:  # process 0 parses; every process gets its error, none waits for ever
        jw.from_csv(f"{root}/parts/bad/p*.csv", f"{root}/bad")
        raise AssertionError("from_csv accepted a non-numeric cell")
    except jw.TableParseError as e:
        assert "p0.csv" in str(e), e
    m = jw.from_csv(f"{root}/parts/p*.csv", f"{root}/table", dtype="float64", overwrite=True)
    np.testing.assert_array_equal(m.numpy(), vals)
    got = [gather(b) for b in jw.iter_table_batches(f"{root}/parts/p*.csv", 8, dtype="float64")]
    assert sum(len(g) for g in got) == 40, [g.shape for g in got]
    np.testing.assert_array_equal(np.sort(np.concatenate(got), axis=0), vals)
    seen = 0
    try:
        for _b in jw.iter_table_batches(f"{root}/parts/uneven/p*.csv", 8):
            seen += 1
        raise AssertionError("uneven parts gave global batches")
    except jw.ShapeMismatchError as e:
        assert "same number of rows" in str(e) and seen <= 3, (seen, e)  # 3 agreed


if __name__ == "__main__":
    for store_root in sys.argv[1:]:
        main(store_root)
