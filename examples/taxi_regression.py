"""Taxi fares from CSV part files in object storage: ingest, then regress two ways.

The serverless-PyTorch workflow on DC-taxi-like data (a fare and 8 features per trip in
``part-*.csv`` files): (a) ``jw.from_csv`` ingests the parts into matrices and the
regression is solved exactly by the normal equations (``jw.matmul`` for the Gram matrix,
an intercept through a column of ones that is never stored, then ``jw.cholesky`` and
``jw.cho_solve``); (b) SGD streams batches straight from the part files with
``jw.iter_table_batches``. Both are printed next to ``numpy.linalg.lstsq`` on the same data.

    python examples/taxi_regression.py                    # parts in a temporary directory
    python examples/taxi_regression.py --store=s3://bucket/taxi --rows=2000000 --parts=16
"""

from __future__ import annotations

import os

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
import pyarrow as pa
import pyarrow.csv as pacsv

import jaxwren as jw
from jaxwren.storage.backend import open_kvstore
from jaxwren.storage.urls import parse_url
from jaxwren.storage.validate import resolve_storage

LABEL = "fare_amount"
FEATURES = ["origin_lat", "origin_lon", "dest_lat", "dest_lon", "year", "month", "dow", "hour"]


def trips(rows: int, seed: int) -> dict[str, np.ndarray]:
    """DC-taxi-like trips: the fare grows with distance and in rush hours, plus noise."""
    rng = np.random.default_rng(seed)
    t = {
        "origin_lat": rng.uniform(38.82, 38.99, rows).round(6),
        "origin_lon": rng.uniform(-77.11, -76.91, rows).round(6),
        "dest_lat": rng.uniform(38.82, 38.99, rows).round(6),
        "dest_lon": rng.uniform(-77.11, -76.91, rows).round(6),
        "year": rng.integers(2015, 2020, rows),
        "month": rng.integers(1, 13, rows),
        "dow": rng.integers(0, 7, rows),
        "hour": rng.integers(0, 24, rows),
    }
    km = 111 * np.hypot(t["dest_lat"] - t["origin_lat"], 0.78 * (t["dest_lon"] - t["origin_lon"]))
    fare = 3.25 + 1.4 * km + 0.15 * (t["year"] - 2015) + 0.05 * t["hour"]
    fare += 40 * (t["dest_lat"] - 38.9) + rng.normal(0, 1.0, rows)
    return {LABEL: fare.round(2), **t}


def write_parts(root: str, rows: int, parts: int) -> np.ndarray:
    """Writes ``parts`` CSV files under ``root`` (any store URL); returns the data."""
    kv = open_kvstore(parse_url(root), resolve_storage(None))
    tables = []
    for i, r0 in enumerate(range(0, rows, -(-rows // parts))):
        t = pa.table(trips(min(-(-rows // parts), rows - r0), seed=i))
        buf = pa.BufferOutputStream()
        pacsv.write_csv(t, buf)
        kv.write(f"part-{i:05d}.csv", buf.getvalue().to_pybytes()).result()
        tables.append(t)
    return pa.concat_tables(tables).to_pandas()[[LABEL, *FEATURES]].to_numpy(np.float64)


def normal_equations(x: jw.BigMatrix, y: jw.BigMatrix, root: str) -> tuple[np.ndarray, ...]:
    """Exact least squares with an intercept: X^T X, X^T y and X^T 1 by jw.matmul (the
    ones are a parent_fn column, computed on read, never stored). Returns the
    coefficients (intercept last) and the features' mean and standard deviation."""
    m, br = x.shape[0], x.block_shape[0]

    def ones_block(mat: jw.BigMatrix, i: int, j: int) -> np.ndarray:
        r0, r1, _, _ = mat.block_bounds(i, j)
        return np.ones((r1 - r0, 1), mat.dtype)

    ones = jw.BigMatrix.create(f"{root}/ones", (m, 1), (br, 1), x.dtype, parent_fn=ones_block,
                               overwrite=True)  # fmt: skip
    xtx, xty = np.asarray(jw.matmul(x.T, x)), np.asarray(jw.matmul(x.T, y))
    xt1, yt1 = np.asarray(jw.matmul(x.T, ones)), np.asarray(jw.matmul(y.T, ones))
    gram = np.block([[xtx, xt1], [xt1.T, np.full((1, 1), m)]])
    rhs = np.vstack([xty, yt1])
    low = jw.cholesky(gram)
    mean = xt1[:, 0] / m
    std = np.sqrt(np.diag(xtx) / m - mean**2)
    return np.asarray(jw.cho_solve(low, rhs))[:, 0], mean, std


def sgd(pattern: str, stats: tuple[np.ndarray, np.ndarray], epochs: int, batch: int,
        lr: float) -> np.ndarray:  # fmt: skip
    """SGD on standardised features over batches streamed from the part files; returns
    the coefficients on the raw scale (intercept last)."""
    mean, std = (jnp.asarray(s) for s in stats)

    @jax.jit
    def update(w: jax.Array, b: jax.Array) -> jax.Array:
        xb, yb = (b[:, 1:] - mean) / std, b[:, :1]

        def loss(w: jax.Array) -> jax.Array:
            return jnp.mean((xb @ w[:-1] + w[-1] - yb) ** 2)

        return w - lr * jax.grad(loss)(w)

    w = jnp.zeros((len(FEATURES) + 1, 1), jnp.float64)
    for epoch in range(epochs):
        for b in jw.iter_table_batches(pattern, batch, columns=[LABEL, *FEATURES],
                                       dtype="float64", shuffle=True, seed=epoch):  # fmt: skip
            w = update(w, b)
    w = np.asarray(w)[:, 0]
    coef = w[:-1] / np.asarray(std)
    return np.append(coef, w[-1] - coef @ np.asarray(mean))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="URL or directory (default: a temp dir)")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--parts", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args()
    jw.enable_compilation_cache()
    jax.config.update("jax_enable_x64", True)  # the exact fit is compared to 1e-6
    with tempfile.TemporaryDirectory(prefix="jaxwren-taxi-") as tmp:
        root = (args.store or tmp).rstrip("/")
        t0 = time.perf_counter()
        data = write_parts(f"{root}/csv", args.rows, args.parts)
        print(f"wrote {args.parts} CSV parts, {len(data)} trips: {time.perf_counter() - t0:.1f} s")
        pattern = f"{root}/csv/part-*.csv"
        t0 = time.perf_counter()
        x = jw.from_csv(pattern, f"{root}/X", columns=FEATURES, dtype="float64", overwrite=True)
        y = jw.from_csv(pattern, f"{root}/y", columns=[LABEL], dtype="float64", overwrite=True)
        print(f"ingested {x!r} and y: {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        exact, *stats = normal_equations(x, y, root)
        print(f"(a) normal equations (jw.matmul + cholesky + cho_solve): "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        t0 = time.perf_counter()
        approx = sgd(pattern, tuple(stats), args.epochs, args.batch, lr=0.05)
        print(f"(b) SGD over jw.iter_table_batches, {args.epochs} epochs: "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        design = np.hstack([data[:, 1:], np.ones((len(data), 1))])
        ref = np.linalg.lstsq(design, data[:, 0], rcond=None)[0]
        print(f"\n{'coefficient':>12} {'numpy lstsq':>14} {'(a) normal eq':>14} {'(b) SGD':>14}")
        for name, r, e, s in zip([*FEATURES, "intercept"], ref, exact, approx, strict=True):
            print(f"{name:>12} {r:14.6f} {e:14.6f} {s:14.6f}")
        err = np.abs(exact - ref).max() / np.abs(ref).max()
        print(f"\nnormal equations vs numpy: max relative difference {err:.1e}")
        if err > 1e-6:
            raise SystemExit(f"the exact fit differs from numpy's lstsq by {err:.1e}")


if __name__ == "__main__":
    main()
