"""IO throughput of BigMatrix against raw TensorStore on the same zarr v3 array.

Usage::

    python -m benchmarks.io --n=8192 --block=1024 --stores=memory,file,s3 --repeats=3 \
        --json_out=out.jsonl

For each store (``memory``, ``file``, ``s3`` on a local moto server) it times, on an
``n x n`` matrix with ``block x block`` blocks:

* ``from_numpy``  -- ``jw.from_numpy(x, url, block)``        vs raw ``ts_array.write(x)``
* ``numpy``       -- ``A.numpy()``                           vs raw ``ts_array.read()``
* ``to_jax``      -- ``A.to_jax()`` on the default mesh      vs raw ``ts_array.read()``
* ``save``        -- ``jw.save(sharded_array, url, block)``  vs raw ``ts_array.write(x)``

Raw TensorStore is the limit: the same zarr3 array, opened with the same kvstore spec and
the shared context, read or written in one call. Each timing is the best of ``--repeats``
after one warm-up; raw and jaxwren timings are interleaved. Writes go to a fresh array
each time (the previous one is deleted outside the timed region). Reads are warm-cache:
the OS page cache cannot be dropped here, so ``file`` reads come from memory. No
compilation happens in these paths (``to_jax`` assembles shards; nothing is jitted).
"""

from __future__ import annotations

import os

# 8 emulated CPU devices when no accelerator (before jax is imported; the library itself
# never does this). Ignored by JAX when a GPU/TPU is the default backend.
_DEVICE_FLAG = "--xla_force_host_platform_device_count"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {_DEVICE_FLAG}=8").strip()

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tensorstore as ts  # noqa: E402
from absl import app, flags  # noqa: E402

import jaxwren as jw  # noqa: E402
from jaxwren.storage.backend import shared_context  # noqa: E402
from jaxwren.storage.urls import kvstore_spec, parse_url  # noqa: E402

STORES = ("memory", "file", "s3")
BUCKET = "jaxwren-bench"
# (op, raw op it is compared with)
OPS = (("from_numpy", "write"), ("numpy", "read"), ("to_jax", "read"), ("save", "write"))

_N = flags.DEFINE_integer("n", 8192, "Matrix size (n x n) for memory and file stores.")
_S3_N = flags.DEFINE_integer("s3_n", 4096, "Matrix size for the s3 (moto) store.")
_BLOCK = flags.DEFINE_integer("block", 1024, "Block size (block x block).")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Element dtype.")
_STORES = flags.DEFINE_list("stores", ["memory", "file", "s3"], "Stores: memory,file,s3.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats (best is kept) after a warm-up.")
_FILE_DIR = flags.DEFINE_string("file_dir", None, "Directory for the file store (default tmp).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write one JSON line per result here.")
_PLOT = flags.DEFINE_string("plot", None, "Save a bar chart of GB/s here (needs matplotlib).")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Benchmark settings (built from flags in ``main``; construct directly to call ``run``)."""

    n: int = 8192
    s3_n: int = 4096
    block: int = 1024
    dtype: str = "float32"
    stores: tuple[str, ...] = STORES
    repeats: int = 3
    file_dir: str | None = None
    json_out: str | None = None
    plot: str | None = None

    def __post_init__(self) -> None:
        bad = [s for s in self.stores if s not in STORES]
        if bad:
            raise ValueError(f"unknown stores {bad}; choose from {', '.join(STORES)}")
        if min(self.n, self.s3_n, self.block, self.repeats) < 1:
            raise ValueError("n, s3_n, block and repeats must be >= 1")


# ------------------------------------------------------------------------------- helpers
def machine_info() -> dict[str, Any]:
    mem = None
    with contextlib.suppress(OSError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = round(int(line.split()[1]) / 2**20, 1)
    cpu = platform.processor() or None
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    devices = jax.devices()
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "mem_gib": mem,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "tensorstore": _version("tensorstore"),
        "devices": f"{len(devices)} x {devices[0].platform}",
    }


def _version(pkg: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Runs moto's S3 server on 127.0.0.1 (dummy credentials) with a bucket; yields the
    endpoint and stops the server afterwards."""
    import boto3

    os.environ["AWS_ACCESS_KEY_ID"] = "bench-dummy-key-id"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "bench-dummy-secret"
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=BUCKET
        )
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_data(n: int, dtype: str) -> np.ndarray:
    dt = np.dtype(jax.numpy.dtype(dtype))
    rng = np.random.default_rng(0)
    if dt.kind in "iub":
        return rng.integers(0, 100, size=(n, n)).astype(dt)
    return rng.standard_normal((n, n), dtype=np.float32).astype(dt)


class Store:
    """One store under test: fresh URLs, raw TensorStore handles, deletion."""

    def __init__(self, kind: str, root: str, config: jw.StorageConfig | None) -> None:
        self.kind, self.root = kind, root.rstrip("/")
        self.config = (config or jw.StorageConfig()).resolve(os.environ)
        self._counter = itertools.count()

    def url(self, name: str) -> str:
        return f"{self.root}/{name}-{next(self._counter)}"

    def spec(self, url: str) -> dict[str, Any]:
        return kvstore_spec(parse_url(url), self.config)

    def raw_create(self, url: str, x: np.ndarray, block: int) -> ts.TensorStore:
        """A fresh zarr3 array with the same layout BigMatrix writes (chunk = block)."""
        return ts.open(
            {
                "driver": "zarr3",
                "kvstore": self.spec(url),
                "metadata": {
                    "shape": list(x.shape),
                    "chunk_grid": {
                        "name": "regular",
                        "configuration": {"chunk_shape": [block, block]},
                    },
                    "chunk_key_encoding": {"name": "default"},
                    "data_type": ts.dtype(x.dtype).name,
                    "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
                },
            },
            create=True,
            delete_existing=True,
            context=shared_context(),
        ).result()

    def raw_open(self, url: str) -> ts.TensorStore:
        return ts.open(
            {"driver": "zarr3", "kvstore": self.spec(url)}, open=True, context=shared_context()
        ).result()

    def delete(self, url: str) -> None:
        kv = ts.KvStore.open(self.spec(url), context=shared_context()).result()
        kv.delete_range(ts.KvStore.KeyRange()).result()


def _timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def best_of(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    setup: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Best-of-``repeats`` seconds of each function, interleaved, after one warm-up round.

    ``setup`` runs (untimed) before every call, e.g. to give writes a fresh target.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats + 1):
        for name, fn in fns.items():
            if setup is not None:
                setup()
            t = _timed(fn)
            if i:  # the first round is the warm-up
                times[name].append(t)
    return {name: min(v) for name, v in times.items()}


# ---------------------------------------------------------------------------- benchmark
def bench_store(store: Store, n: int, config: Config, info: dict[str, Any]) -> list[dict]:
    x = make_data(n, config.dtype)
    nbytes = x.nbytes
    block = (config.block, config.block)
    storage = store.config
    sharding = jw.default_sharding(x.shape)
    out: list[dict] = []

    # Writes: a fresh array for every call; the previous one is deleted untimed.
    last: dict[str, str | None] = {"jw": None, "raw": None}
    targets: dict[str, Any] = {}

    def fresh() -> None:
        for key in ("jw", "raw"):
            if last[key] is not None:
                store.delete(last[key])  # type: ignore[arg-type]
        last["jw"] = targets["jw_url"] = store.url("jw")
        last["raw"] = store.url("raw")
        targets["raw"] = store.raw_create(last["raw"], x, config.block)

    def raw_write() -> None:
        targets["raw"].write(x).result()

    def jw_from_numpy() -> None:
        jw.from_numpy(x, targets["jw_url"], block, storage=storage)

    timings: dict[str, dict[str, float]] = {}
    timings["from_numpy"] = best_of(
        {"raw": raw_write, "jw": jw_from_numpy}, config.repeats, setup=fresh
    )

    # Reads: one stored matrix, read through jaxwren and through a raw handle.
    url = store.url("read")
    matrix = jw.from_numpy(x, url, block, storage=storage)
    raw = store.raw_open(url)
    got = matrix.numpy()
    if not np.array_equal(got, x):
        raise AssertionError(f"{store.kind}: A.numpy() differs from the data written")
    del got

    def raw_read() -> None:
        raw.read().result()

    def raw_read_into() -> None:  # informational: into a fresh numpy buffer
        out = np.empty(x.shape, x.dtype)
        ts.array(out, copy=False, write=True).write(raw).result()

    timings["numpy"] = best_of(
        {"raw": raw_read, "into": raw_read_into, "jw": matrix.numpy}, config.repeats
    )
    timings["to_jax"] = best_of(
        {
            "raw": raw_read,
            "into": raw_read_into,
            "jw": lambda: matrix.to_jax(sharding).block_until_ready(),
        },
        config.repeats,
    )

    xs = matrix.to_jax(sharding).block_until_ready()
    if not np.array_equal(np.asarray(xs), x):
        raise AssertionError(f"{store.kind}: A.to_jax() differs from the data written")

    def jw_save() -> None:
        jw.save(xs, targets["jw_url"], block, storage=storage)

    timings["save"] = best_of({"raw": raw_write, "jw": jw_save}, config.repeats, setup=fresh)
    for key in ("jw", "raw"):
        if last[key] is not None:
            store.delete(last[key])  # type: ignore[arg-type]
    store.delete(url)

    for op, raw_op in OPS:
        secs, raw_secs = timings[op]["jw"], timings[op]["raw"]
        into_secs = timings[op].get("into")
        row = {
            "store": store.kind,
            "op": op,
            "raw_op": raw_op,
            "n": n,
            "block": config.block,
            "dtype": config.dtype,
            "nbytes": nbytes,
            "seconds": secs,
            "gbps": nbytes / secs / 1e9,
            "raw_seconds": raw_secs,
            "raw_gbps": nbytes / raw_secs / 1e9,
            "ratio": raw_secs / secs,
            "raw_into_seconds": into_secs,
            "raw_into_gbps": None if into_secs is None else nbytes / into_secs / 1e9,
            "repeats": config.repeats,
            "warm_cache": True,
            "machine": info,
        }
        print(
            f"{store.kind:>6} {op:>10}: {secs:8.4f} s {row['gbps']:7.3f} GB/s | raw {raw_op:5} "
            f"{raw_secs:8.4f} s {row['raw_gbps']:7.3f} GB/s | ratio {row['ratio']:.2f}x"
            + ("" if into_secs is None else f" | ts_into {row['raw_into_gbps']:.3f} GB/s"),
            flush=True,
        )
        out.append(row)
    return out


def run(config: Config) -> list[dict]:
    """Runs the benchmark for every store in ``config``; returns one dict per result."""
    info = machine_info()
    results: list[dict] = []
    with contextlib.ExitStack() as stack:
        for kind in config.stores:
            if kind == "memory":
                store = Store(kind, "memory://bench", None)
                n = config.n
            elif kind == "file":
                root = config.file_dir or stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="jaxwren-bench-")
                )
                store = Store(kind, os.path.abspath(root), None)
                n = config.n
            else:
                endpoint = stack.enter_context(moto_server())
                s3 = jw.StorageConfig(
                    s3_endpoint=endpoint, s3_region="us-east-1", credentials="environment"
                )
                store = Store(kind, f"s3://{BUCKET}/bench", s3)
                n = config.s3_n
            results.extend(bench_store(store, n, config, info))
    return results


def markdown_table(results: list[dict]) -> str:
    lines = [
        "| store | op | n | block | dtype | seconds | GB/s | raw op | raw seconds | raw GB/s "
        "| jaxwren/raw | ts_into GB/s |",
        "|---|---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['store']} | {r['op']} | {r['n']} | {r['block']} | {r['dtype']} "
            f"| {r['seconds']:.4f} | {r['gbps']:.3f} | {r['raw_op']} | {r['raw_seconds']:.4f} "
            f"| {r['raw_gbps']:.3f} | {r['ratio']:.2f}x "
            f"| {'-' if r['raw_into_gbps'] is None else format(r['raw_into_gbps'], '.3f')} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot: matplotlib is not installed (pip install matplotlib); {path} not written.")
        return
    labels = [f"{r['store']}\n{r['op']}" for r in results]
    xs = np.arange(len(results))
    fig, ax = plt.subplots(figsize=(max(6, len(results) * 0.9), 4))
    ax.bar(xs - 0.2, [r["gbps"] for r in results], 0.4, label="jaxwren")
    ax.bar(xs + 0.2, [r["raw_gbps"] for r in results], 0.4, label="raw TensorStore")
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_ylabel("GB/s")
    ax.set_title("jaxwren IO throughput (warm cache)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot written to {path}")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = Config(
        n=_N.value,
        s3_n=_S3_N.value,
        block=_BLOCK.value,
        dtype=_DTYPE.value,
        stores=tuple(_STORES.value),
        repeats=_REPEATS.value,
        file_dir=_FILE_DIR.value,
        json_out=_JSON_OUT.value,
        plot=_PLOT.value,
    )
    info = machine_info()
    print(f"machine: {json.dumps(info)}")
    print("reads are warm-cache (the OS page cache cannot be dropped here)", flush=True)
    results = run(config)
    print()
    print(markdown_table(results))
    if config.json_out:
        with open(config.json_out, "w") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
        print(f"\n{len(results)} results written to {config.json_out}")
    if config.plot:
        plot(results, config.plot)


if __name__ == "__main__":
    app.run(main)
