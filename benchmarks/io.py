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

import dataclasses  # noqa: E402
import json  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tensorstore as ts  # noqa: E402
from absl import app, flags  # noqa: E402

import jaxwren as jw  # noqa: E402
from benchmarks import common  # noqa: I001  (sets the emulated devices before jax)
from jaxwren.storage.backend import shared_context  # noqa: E402

STORES = common.STORES
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


def make_data(n: int, dtype: str) -> np.ndarray:
    dt = np.dtype(jax.numpy.dtype(dtype))
    rng = np.random.default_rng(0)
    if dt.kind in "iub":
        return rng.integers(0, 100, size=(n, n)).astype(dt)
    return rng.standard_normal((n, n), dtype=np.float32).astype(dt)


class Store(common.Store):
    """A benchmark store that also opens raw TensorStore handles on the same arrays."""

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
    timings["from_numpy"] = common.best_of(
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

    timings["numpy"] = common.best_of(
        {"raw": raw_read, "into": raw_read_into, "jw": matrix.numpy}, config.repeats
    )
    timings["to_jax"] = common.best_of(
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

    timings["save"] = common.best_of({"raw": raw_write, "jw": jw_save}, config.repeats, setup=fresh)
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
    info = common.machine_info()
    results: list[dict] = []
    for kind in config.stores:
        with common.open_store(kind, config.file_dir) as base:
            store = Store(kind, base.root, base.config if kind == "s3" else None)
            n = config.s3_n if kind == "s3" else config.n
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
    info = common.machine_info()
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
