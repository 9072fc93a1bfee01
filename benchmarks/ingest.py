"""Ingest throughput: CSV and Parquet part files -> BigMatrix, against pyarrow, pandas and dask.

Usage::

    python -m benchmarks.ingest --rows=2000000 --parts=16 --stores=memory,file,s3 \
        --s3_rows=500000 --repeats=3 --rss_gb=1 --json_out=out.jsonl

For each store (``memory``, ``file``, ``s3`` on a local moto server) it writes ``--parts``
part files of DC-taxi-like rows (a fare and 8 features: 9 numeric columns) as CSV and as
Parquet, then times, best of ``--repeats`` after a warm-up, interleaved:

* ``jaxwren``  -- ``jw.from_csv(pattern, url)`` / ``jw.from_parquet``: parts read through
  the store's TensorStore kvstore, parsed, checked, written as a float32 BigMatrix
* ``pyarrow``  -- ``pyarrow.csv.read_csv`` / ``pyarrow.parquet.read_table`` of every part
  into memory (the limit: parsing only, nothing written); on the file store it reads the
  paths, elsewhere the parts' bytes already in memory
* ``pandas``   -- ``pandas.read_csv`` of every part (same inputs as pyarrow)
* ``dask``     -- ``dd.read_csv(parts).to_dask_array(lengths=True).to_zarr(dir)`` (file
  store only: dask reads S3 through s3fs, which jaxwren does not use)

Ratios are throughput ratios in the same run: ``vs pyarrow`` = pyarrow seconds / jaxwren
seconds (1.0 = as fast as pyarrow's in-memory read). ``CPU-s`` columns: process CPU
seconds (all threads) of each kind of call, the least of the timed repeats.
``--rss_gb`` also ingests that many GB of CSV from the file store in a fresh process with
``--rss_window`` and reports its peak RSS next to the RSS of the same process before the
ingest (jax and jaxwren loaded).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import tensorstore as ts
from absl import app, flags

import jaxwren as jw
from benchmarks import common  # noqa: I001  (sets the emulated devices before jax)
from jaxwren.config import parse_bytes
from jaxwren.storage.backend import shared_context

STORES = common.STORES
FORMATS = ("csv", "parquet")

_ROWS = flags.DEFINE_integer("rows", 2_000_000, "Rows in all (memory and file stores).")
_S3_ROWS = flags.DEFINE_integer("s3_rows", 500_000, "Rows in all on the s3 (moto) store.")
_PARTS = flags.DEFINE_integer("parts", 16, "Part files.")
_STORES = flags.DEFINE_list("stores", ["memory", "file", "s3"], "Stores: memory,file,s3.")
_FORMATS = flags.DEFINE_list("formats", ["csv", "parquet"], "Formats: csv,parquet.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats (best is kept) after a warm-up.")
_DASK = flags.DEFINE_bool("dask", True, "Time dask's read_csv -> to_zarr (file store).")
_RSS_GB = flags.DEFINE_float("rss_gb", 0.0, "GB of CSV for the peak-RSS run (0: skip).")
_RSS_WINDOW = flags.DEFINE_string("rss_window", "128MiB", "window_bytes of the RSS run.")
_FILE_DIR = flags.DEFINE_string("file_dir", None, "Directory for the file store (default tmp).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write one JSON line per result here.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Benchmark settings (built from flags in ``main``; construct directly to call ``run``)."""

    rows: int = 2_000_000
    s3_rows: int = 500_000
    parts: int = 16
    stores: tuple[str, ...] = STORES
    formats: tuple[str, ...] = FORMATS
    repeats: int = 3
    dask: bool = True
    rss_gb: float = 0.0
    rss_window: str = "128MiB"
    file_dir: str | None = None
    json_out: str | None = None

    def __post_init__(self) -> None:
        if bad := [s for s in self.stores if s not in STORES]:
            raise ValueError(f"unknown stores {bad}; choose from {', '.join(STORES)}")
        if bad := [f for f in self.formats if f not in FORMATS]:
            raise ValueError(f"unknown formats {bad}; choose from {', '.join(FORMATS)}")
        if min(self.rows, self.s3_rows, self.parts, self.repeats) < 1:
            raise ValueError("rows, s3_rows, parts and repeats must be >= 1")


def trips(rows: int, seed: int) -> pa.Table:
    """DC-taxi-like rows: a fare with 2 decimals, 4 coordinates with 6, 4 small ints."""
    rng = np.random.default_rng(seed)
    cols: dict[str, Any] = {"fare_amount": rng.uniform(3, 60, rows).round(2)}
    for name, lo, hi in (("origin_lat", 38.8, 39.0), ("origin_lon", -77.1, -76.9),
                         ("dest_lat", 38.8, 39.0), ("dest_lon", -77.1, -76.9)):  # fmt: skip
        cols[name] = rng.uniform(lo, hi, rows).round(6)
    for name, lo, hi in (("year", 2015, 2020), ("month", 1, 13), ("dow", 0, 7), ("hour", 0, 24)):
        cols[name] = rng.integers(lo, hi, rows)
    return pa.table(cols)


def encode(table: pa.Table, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "csv":
        pacsv.write_csv(table, buf)
    else:
        pq.write_table(table, buf)
    return buf.getvalue()


def make_parts(rows: int, parts: int, fmt: str) -> list[bytes]:
    step = -(-rows // parts)
    return [encode(trips(min(step, rows - r0), seed=i), fmt)
            for i, r0 in enumerate(range(0, rows, step))]  # fmt: skip


def put_parts(store: common.Store, blobs: list[bytes], fmt: str) -> str:
    """Writes the parts under a fresh directory URL of ``store``; returns the URL."""
    url = store.url(f"{fmt}-parts")
    kv = ts.KvStore.open(store.spec(url), context=shared_context()).result()
    for fut in [kv.write(f"part-{i:05d}.{fmt}", b) for i, b in enumerate(blobs)]:
        fut.result()
    return url


# ------------------------------------------------------------------------------- peers
def pyarrow_read(fmt: str, inputs: list[Any]) -> None:
    for src in inputs:
        src = src if isinstance(src, str) else pa.BufferReader(src)
        pacsv.read_csv(src) if fmt == "csv" else pq.read_table(src)


def pandas_read(fmt: str, inputs: list[Any]) -> None:
    import pandas as pd

    for src in inputs:
        src = src if isinstance(src, str) else io.BytesIO(src)
        pd.read_csv(src) if fmt == "csv" else pd.read_parquet(src)


def dask_to_zarr(paths: list[str], out: str) -> None:
    import dask.dataframe as dd

    dd.read_csv(paths).to_dask_array(lengths=True).astype("float32").to_zarr(out)


# ---------------------------------------------------------------------------- benchmark
def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cpu_timed(fn: Any, into: list[float]) -> Any:
    """``fn`` recording the process CPU seconds (all threads) of each call in ``into``:
    on a 2-core machine the ingest is CPU-bound, so CPU-s says where a ratio comes from."""

    def call() -> None:
        c0 = _cpu_seconds()
        fn()
        into.append(_cpu_seconds() - c0)

    return call


def bench_format(store: common.Store, rows: int, fmt: str, config: Config) -> dict:
    blobs = make_parts(rows, config.parts, fmt)
    nbytes = sum(len(b) for b in blobs)
    parts_url = put_parts(store, blobs, fmt)
    local = store.path(parts_url)
    paths = [f"{local}/part-{i:05d}.{fmt}" for i in range(len(blobs))] if local else None
    inputs = paths or blobs
    ingest = jw.from_csv if fmt == "csv" else jw.from_parquet
    pattern = f"{parts_url}/part-*.{fmt}"
    written: list[str] = []  # jaxwren outputs, newest last
    tmp = tempfile.mkdtemp(prefix="jaxwren-dask-")

    def fresh() -> None:  # untimed: earlier outputs go (the newest stays, to be checked)
        while len(written) > 1:
            store.delete(written.pop(0))
        shutil.rmtree(f"{tmp}/z", ignore_errors=True)

    def jaxwren() -> None:
        written.append(store.url("m"))
        ingest(pattern, written[-1], storage=store.config, progress=False)

    fns = {
        "jaxwren": jaxwren,
        "pyarrow": lambda: pyarrow_read(fmt, inputs),
        "pandas": lambda: pandas_read(fmt, inputs),
    }
    if config.dask and fmt == "csv" and paths:
        fns["dask"] = lambda: dask_to_zarr(paths, f"{tmp}/z")
    cpu: dict[str, list[float]] = {name: [] for name in fns}  # process CPU-s per call
    secs = common.best_of({name: _cpu_timed(fn, cpu[name]) for name, fn in fns.items()},
                          config.repeats, setup=fresh)  # fmt: skip
    got = jw.BigMatrix.open(written[-1], storage=store.config)
    if got.shape != (rows, 9):
        raise AssertionError(f"{store.kind}/{fmt}: ingested {got.shape}, expected ({rows}, 9)")
    store.delete(written[-1])
    store.delete(parts_url)
    shutil.rmtree(tmp, ignore_errors=True)
    row: dict[str, Any] = {"store": store.kind, "format": fmt, "rows": rows,
                           "parts": len(blobs), "mbytes": nbytes / 1e6}  # fmt: skip
    for name, s in secs.items():
        row[f"{name}_s"] = s
        row[f"{name}_cpu_s"] = min(cpu[name][1:])  # the warm-up call left out
    row["mb_per_s"] = nbytes / 1e6 / secs["jaxwren"]
    row["mrows_per_s"] = rows / 1e6 / secs["jaxwren"]
    for peer in ("pyarrow", "pandas", "dask"):
        if peer in secs:
            row[f"vs_{peer}"] = secs[peer] / secs["jaxwren"]
    print(json.dumps(row))
    return row


# VmHWM (this process's peak RSS; ru_maxrss would carry the parent's peak across fork)
_RSS_CHILD = """
import json, sys
import jaxwren as jw
def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
before = hwm()
a = jw.from_csv(sys.argv[1], sys.argv[2], window_bytes=sys.argv[3], progress=False)
after = hwm()
print(json.dumps({"rss_before": before, "rss_peak": after, "shape": list(a.shape)}))
"""


def bench_rss(config: Config) -> dict:
    """Peak RSS of a fresh process ingesting ``rss_gb`` GB of CSV from the file store."""
    per_part = trips(200_000, seed=0)
    part = encode(per_part, "csv")
    n_parts = max(1, round(config.rss_gb * 1e9 / len(part)))
    with tempfile.TemporaryDirectory(prefix="jaxwren-rss-") as tmp:
        os.makedirs(f"{tmp}/csv")
        for i in range(n_parts):
            with open(f"{tmp}/csv/part-{i:05d}.csv", "wb") as f:
                f.write(part)
        proc = subprocess.run([sys.executable, "-c", _RSS_CHILD, f"{tmp}/csv/part-*.csv",
                               f"{tmp}/m", config.rss_window], capture_output=True, text=True,
                              check=True)  # fmt: skip
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    window = parse_bytes(config.rss_window)
    row = {"store": "file", "format": "csv-rss", "mbytes": n_parts * len(part) / 1e6,
           "parts": n_parts, "rows": got["shape"][0], "window": window,
           "rss_before_mib": got["rss_before"] / 2**20, "rss_peak_mib": got["rss_peak"] / 2**20,
           "limit_mib": (window + 1.5 * 2**30) / 2**20}  # fmt: skip
    print(json.dumps(row))
    return row


def run(config: Config) -> list[dict]:
    results = []
    for kind in config.stores:
        with common.open_store(kind, config.file_dir) as store:
            rows = config.s3_rows if kind == "s3" else config.rows
            for fmt in config.formats:
                results.append(bench_format(store, rows, fmt, config))
    if config.rss_gb > 0:
        results.append(bench_rss(config))
    return results


COLUMNS = (
    ("store", "store", ""), ("format", "format", ""), ("MB", "mbytes", ".0f"),
    ("rows", "rows", "d"), ("jaxwren s", "jaxwren_s", ".3f"), ("MB/s", "mb_per_s", ".0f"),
    ("Mrows/s", "mrows_per_s", ".2f"), ("CPU-s", "jaxwren_cpu_s", ".2f"),
    ("pyarrow s", "pyarrow_s", ".3f"), ("pyarrow CPU-s", "pyarrow_cpu_s", ".2f"),
    ("vs pyarrow", "vs_pyarrow", ".2f"), ("pandas s", "pandas_s", ".3f"),
    ("vs pandas", "vs_pandas", ".2f"), ("dask s", "dask_s", ".3f"), ("vs dask", "vs_dask", ".2f"),
    ("peak RSS MiB", "rss_peak_mib", ".0f"), ("RSS before MiB", "rss_before_mib", ".0f"),
    ("limit MiB", "limit_mib", ".0f"),
)  # fmt: skip


def main(argv: list[str]) -> None:
    del argv
    config = Config(rows=_ROWS.value, s3_rows=_S3_ROWS.value, parts=_PARTS.value,
                    stores=tuple(_STORES.value), formats=tuple(_FORMATS.value),
                    repeats=_REPEATS.value, dask=_DASK.value, rss_gb=_RSS_GB.value,
                    rss_window=_RSS_WINDOW.value, file_dir=_FILE_DIR.value,
                    json_out=_JSON_OUT.value)  # fmt: skip
    common.run_and_report(run, config, COLUMNS, json_out=config.json_out, plot=None,
                          title="ingest")  # fmt: skip


if __name__ == "__main__":
    app.run(main)
