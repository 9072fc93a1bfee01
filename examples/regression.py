"""Linear regression on a dataset streamed from object storage, two ways.

(a) SGD over row batches streamed with ``A.iter_row_batches`` (the serverless-PyTorch
seed's ObjectStorageDataset, for JAX); (b) exactly, by the normal equations: ``X^T X`` and
``X^T y`` with ``jw.matmul`` (streamed under a memory budget), then ``jw.cholesky`` and
``jw.cho_solve``; (c) exactly and without squaring the condition number, by ``jw.lstsq``
(one TSQR pass over ``[X | y]``). All are compared with ``numpy.linalg.lstsq``.

    python examples/regression.py                       # a temporary file store
    python examples/regression.py --store=s3://bucket/jw --rows=200000
"""

from __future__ import annotations

import os
import sys

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxwren as jw


def make_data(root: str, rows: int, dim: int, block: int) -> tuple[jw.BigMatrix, ...]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, dim))
    w_true = rng.standard_normal((dim, 1))
    y = x @ w_true + 0.1 * rng.standard_normal((rows, 1))
    xm = jw.from_numpy(x, f"{root}/X", (block, dim), overwrite=True)
    ym = jw.from_numpy(y, f"{root}/y", (block, 1), overwrite=True)
    return xm, ym, x, y


def sgd(xm: jw.BigMatrix, ym: jw.BigMatrix, epochs: int, batch: int, lr: float) -> np.ndarray:
    @jax.jit
    def update(w: jax.Array, xb: jax.Array, yb: jax.Array) -> jax.Array:
        grad = jax.grad(lambda w: jnp.mean((xb @ w - yb) ** 2))(w)
        return w - lr * grad

    w = jnp.zeros((xm.shape[1], 1), xm.dtype)
    for epoch in range(epochs):
        batches = zip(
            xm.iter_row_batches(batch, shuffle=True, seed=epoch, drop_remainder=True),
            ym.iter_row_batches(batch, shuffle=True, seed=epoch, drop_remainder=True),
            strict=True,
        )
        for xb, yb in batches:
            w = update(w, xb, yb)
    return np.asarray(w)


def normal_equations(xm: jw.BigMatrix, ym: jw.BigMatrix, root: str, budget: str) -> np.ndarray:
    gram = jw.matmul(xm.T, xm, f"{root}/XtX", memory_budget=budget, progress=False)
    rhs = jw.matmul(xm.T, ym, memory_budget=budget, progress=False)
    low = jw.cholesky(gram, f"{root}/L")
    return np.asarray(jw.cho_solve(low, rhs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="URL or directory (default: a temp dir)")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--block", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--memory_budget", default="16MiB")
    args = parser.parse_args()
    jw.enable_compilation_cache()  # a second run loads its kernels from disk
    jax.config.update("jax_enable_x64", True)  # the exact fit is checked to 1e-8
    with tempfile.TemporaryDirectory(prefix="jaxwren-") as tmp:
        root = (args.store or tmp).rstrip("/")
        xm, ym, x, y = make_data(root, args.rows, args.dim, args.block)
        w_ref = np.linalg.lstsq(x, y, rcond=None)[0]
        t0 = time.perf_counter()
        w_sgd = sgd(xm, ym, args.epochs, batch=1000, lr=0.05)
        t1 = time.perf_counter()
        w_ne = normal_equations(xm, ym, root, args.memory_budget)
        t2 = time.perf_counter()
        w_qr = np.asarray(jw.lstsq(xm, ym, memory_budget=args.memory_budget, progress=False))
        t3 = time.perf_counter()
    err_sgd = float(np.linalg.norm(w_sgd - w_ref) / np.linalg.norm(w_ref))
    err_ne = float(np.linalg.norm(w_ne - w_ref) / np.linalg.norm(w_ref))
    err_qr = float(np.linalg.norm(w_qr - w_ref) / np.linalg.norm(w_ref))
    print(f"data: {args.rows} x {args.dim} float64, {len(jax.devices())} devices")
    print(f"(a) SGD, {args.epochs} epochs of streamed batches: {t1 - t0:6.2f} s, "
          f"relative error vs lstsq {err_sgd:.2e}")  # fmt: skip
    print(f"(b) normal equations (matmul + cholesky + cho_solve): {t2 - t1:6.2f} s, "
          f"relative error vs lstsq {err_ne:.2e}")  # fmt: skip
    print(f"(c) jw.lstsq (TSQR of [X | y]): {t3 - t2:6.2f} s, relative error vs lstsq "
          f"{err_qr:.2e}")  # fmt: skip
    if not err_ne <= 1e-8 or not err_qr <= 1e-10 or not err_sgd <= 1e-2:
        sys.exit("regression: a fit differs from numpy.linalg.lstsq more than expected")


if __name__ == "__main__":
    main()
