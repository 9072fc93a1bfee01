"""jaxwren quick start: store a matrix, reopen it by URL, compute on the device mesh, save.

Runs on a local file store under a temporary directory (no server needed):

    python examples/quickstart.py
    python examples/quickstart.py --store=/data/jw          # a directory of your choice
    python examples/quickstart.py --store=s3://bucket/jw    # any S3 endpoint
        (AWS_ENDPOINT_URL_S3=http://127.0.0.1:9000 for MinIO; credentials as for the AWS SDK)
"""

from __future__ import annotations

import os
import sys

# Without an accelerator, emulate 8 CPU devices so the sharding is real (before jax starts).
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )

import argparse
import contextlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxwren as jw
from jaxwren.compile_cache import CompileCounter


@contextlib.contextmanager
def step(name: str):
    t0 = time.perf_counter()
    yield
    print(f"  {name:<52s} {time.perf_counter() - t0:8.3f} s")


def run(root: str, n: int, block: int) -> None:
    print(f"jaxwren quickstart: n={n}, block={block}, store={root}")
    try:
        cache = jw.enable_compilation_cache()  # a second run loads every kernel from disk
    except jw.ConfigError as e:  # e.g. a read-only home: run without the cache
        cache = f"off ({e})"
    with CompileCounter() as compiles:
        _steps(root, n, block)
    print(f"XLA compilations this run: {compiles.count} (persistent cache: {cache})")
    print("done.")


def _steps(root: str, n: int, block: int) -> None:
    print(f"  devices: {len(jax.devices())} x {jax.devices()[0].platform}")
    rng = np.random.default_rng(0)
    with step(f"create {n}x{n} float32 and write it (from_numpy)"):
        x = rng.standard_normal((n, n), dtype=np.float32)
        a = jw.from_numpy(x, f"{root}/A", (block, block), overwrite=True)
    with step("reopen by URL"):
        a = jw.BigMatrix.open(a.url)
    print(f"    {a}")
    mesh = jw.default_mesh()
    with step(f"load sharded over a {mesh.shape['rows']}x{mesh.shape['cols']} mesh (to_jax)"):
        xa = a.to_jax()
        xa.block_until_ready()
    print(f"    sharding: {xa.sharding.spec}")
    with step("compute on the devices: A - mean(A, axis=0) (jit)"):
        centred = jax.jit(lambda m: m - jnp.mean(m, axis=0))(xa)
        centred.block_until_ready()
    with step("save the sharded result (save)"):
        c = jw.save(centred, f"{root}/centred", (block, block), overwrite=True)
    with step("check against numpy"):
        err = float(np.max(np.abs(c.numpy() - (x - x.mean(axis=0)))))
    print(f"    max |jaxwren - numpy| = {err:.2e}")
    check(err < 1e-4, "centring", err)
    with step("matmul store -> store: G = A^T A (jw.matmul)"):
        g = jw.matmul(a.T, a, f"{root}/G")  # an earlier G there is overwritten
    ref = x.T.astype(np.float64) @ x / n
    err = float(np.max(np.abs(g.numpy() / n - ref)) / np.max(np.abs(ref)))
    print(f"    relative error vs numpy = {err:.2e}")
    check(err < 1e-5, "matmul", err)
    with step("Cholesky of G/n + I, store -> store (jw.cholesky)"):
        s = jw.from_numpy(g.numpy() / n + np.eye(n, dtype=np.float32), f"{root}/S",
                          (block, block), overwrite=True)  # fmt: skip
        chol = jw.cholesky(s, f"{root}/L")
    with step("solve S z = 1 from the factor (jw.cho_solve)"):
        z = np.asarray(jw.cho_solve(chol, np.ones(n, np.float32)))
    res = float(np.linalg.norm(s.numpy() @ z - 1) / np.sqrt(n))
    print(f"    ||S z - 1|| / sqrt(n) = {res:.2e}, log det S = {jw.cho_logdet(chol):.3f}")
    check(res < 1e-3, "cholesky solve", res)
    with step("leave-one-out nearest neighbour of every row (jw.nearest_neighbors)"):
        idx, _ = jw.nearest_neighbors(a, a, k=1, exclude_self=True)
    x64 = x.astype(np.float64)
    sq = (x64**2).sum(1)
    d2 = sq[:, None] - 2 * x64 @ x64.T + sq[None, :]
    np.fill_diagonal(d2, np.inf)  # exclude_self
    same = float(np.mean(np.asarray(idx)[:, 0] == d2.argmin(axis=1)))
    print(f"    equal to a float64 brute force for {100 * same:.1f} % of rows")
    check(same > 0.99, "nearest neighbours", 1 - same)


def check(ok: bool, what: str, err: float) -> None:
    if not ok:
        sys.exit(f"quickstart: {what} differs from numpy by {err}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="URL or directory (default: a temp dir)")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--block", type=int, default=512)
    args = parser.parse_args()
    if args.store:
        run(args.store.rstrip("/"), args.n, args.block)
    else:
        with tempfile.TemporaryDirectory(prefix="jaxwren-") as tmp:
            run(tmp, args.n, args.block)


if __name__ == "__main__":
    main()
