"""Run by tests/test_multiprocess.py under ``python -m jaxwren.launch``: every public
operation on a 2-process mesh, compared with numpy on every process."""

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

    ref = np.linalg.cholesky(s)
    for budget in (None, 120_000):
        low = jw.cholesky(S, f"{root}/l{budget}", memory_budget=budget)
        np.testing.assert_allclose(low.numpy(), ref, rtol=1e-9, atol=1e-10)
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
    print(f"process {jax.process_index()}: all operations match numpy", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
