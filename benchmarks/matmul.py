"""jaxwren matmul against numpy, dask.array and plain jax, same data, same run.

Usage::

    python -m benchmarks.matmul --n=4096 --dtype=float32 --store=file
    python -m benchmarks.matmul --n=8192 --block=1024 --memory_budget=96MiB \
        --modes=jaxwren_store --peers=numpy,dask --json_out=mm.jsonl

Modes (jaxwren): ``jaxwren_store`` store -> store (out-of-core when ``--memory_budget``
is below what the in-core plan needs), ``jaxwren_incore`` device arrays -> device array.
Peers: ``numpy`` (in memory, pays no IO), ``dask`` (``from_zarr`` -> ``@`` -> ``to_zarr``,
same chunks, threaded scheduler; file store only), ``jax`` (``jax.jit(jnp.dot)`` on one
device). Each is timed best-of-``--repeats`` after a first call; the first call's extra
time (compilation included) is reported apart. Ratios are speed ratios (> 1: faster).
"""

from __future__ import annotations

import dataclasses  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import jaxwren as jw  # noqa: E402
from benchmarks import common  # noqa: I001  (sets the emulated devices before jax)
from jaxwren.config import parse_bytes  # noqa: E402

MODES = ("jaxwren_store", "jaxwren_incore")
PEERS = ("numpy", "dask", "jax")

_M = flags.DEFINE_integer("m", None, "Rows of A (default --n).")
_K = flags.DEFINE_integer("k", None, "Columns of A / rows of B (default --n).")
_N = flags.DEFINE_integer("n", 4096, "Columns of B.")
_BLOCK = flags.DEFINE_integer("block", 1024, "Block size of the stored matrices.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "float64", "bfloat16"], "dtype")
_STORE = flags.DEFINE_enum("store", "file", list(common.STORES), "Where A, B and C live.")
_BUDGET = flags.DEFINE_string("memory_budget", None, "jaxwren memory_budget (e.g. 96MiB).")
_MODES = flags.DEFINE_list("modes", list(MODES), f"jaxwren modes: {','.join(MODES)}")
_PEERS = flags.DEFINE_list("peers", list(PEERS), f"Peers: {','.join(PEERS)}")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed repeats after the first call.")
_FILE_DIR = flags.DEFINE_string("file_dir", None, "Directory for the file store.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "One JSON line per result.")
_PLOT = flags.DEFINE_string("plot", None, "Bar chart of GFLOP/s to this PNG.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    m: int = 4096
    k: int = 4096
    n: int = 4096
    block: int = 1024
    dtype: str = "float32"
    store: str = "file"
    memory_budget: int | None = None
    modes: tuple[str, ...] = MODES
    peers: tuple[str, ...] = PEERS
    repeats: int = 2
    file_dir: str | None = None


def _write_random(store: common.Store, name: str, shape: tuple[int, int], cfg: Config,
                  seed: int) -> jw.BigMatrix:  # fmt: skip
    """A random stored matrix written block by block (never whole in memory)."""
    a = jw.BigMatrix.create(store.url(name), shape, (cfg.block, cfg.block), cfg.dtype,
                            storage=store.config)  # fmt: skip
    rng = np.random.default_rng(seed)
    for i, j in a.block_idxs:
        r0, r1, c0, c1 = a.block_bounds(i, j)
        a.put_block(rng.standard_normal((r1 - r0, c1 - c0), dtype=np.float32).astype(a.dtype), i, j)
    return a


def _check(c: np.ndarray | jw.BigMatrix | jax.Array, a: jw.BigMatrix, b: jw.BigMatrix) -> float:
    """Relative error of a few rows of C against numpy (float64) on the same rows."""
    rows = np.linspace(0, a.shape[0] - 1, 4).astype(int)
    ref = np.stack([a.read_region(r, r + 1, 0, a.shape[1])[0] for r in rows]).astype(np.float64)
    ref = ref @ b.numpy().astype(np.float64)
    if isinstance(c, jw.BigMatrix):
        got = np.stack([c.read_region(r, r + 1, 0, c.shape[1])[0] for r in rows])
    else:
        got = np.asarray(c)[rows]
    return float(np.linalg.norm(got.astype(np.float64) - ref) / np.linalg.norm(ref))


def run(cfg: Config) -> list[dict]:
    """Times every mode and peer on the same stored A (m x k) and B (k x n)."""
    flops = 2.0 * cfg.m * cfg.n * cfg.k
    results: list[dict] = []
    with common.open_store(cfg.store, cfg.file_dir) as store:
        a = _write_random(store, "A", (cfg.m, cfg.k), cfg, 1)
        b = _write_random(store, "B", (cfg.k, cfg.n), cfg, 2)

        def record(name: str, first: float, best: float, err: float | None, **extra) -> None:
            row = {"name": name, "m": cfg.m, "k": cfg.k, "n": cfg.n, "block": cfg.block,
                   "dtype": cfg.dtype, "store": cfg.store, "seconds": best,
                   "first_call_extra_s": max(first - best, 0.0), "gflops": flops / best / 1e9,
                   "rel_err": err, **extra}  # fmt: skip
            results.append(row)
            print(
                f"{name:>16}: {best:8.3f} s  {row['gflops']:7.1f} GFLOP/s  "
                f"(first call +{row['first_call_extra_s']:.2f} s)  rel_err={err}",
                flush=True,
            )

        for mode in cfg.modes:
            record(mode, *_mode(mode, a, b, store, cfg))
        for peer in cfg.peers:
            record(peer, *_peer(peer, a, b, store, cfg))
    for r in results:
        r["peak_rss_bytes"] = common.peak_rss_bytes()  # of the whole run so far
        r["memory_budget"] = cfg.memory_budget
    by = {r["name"]: r["seconds"] for r in results}
    for r in results:
        for ref in ("numpy", "dask", "jax"):
            if ref in by and r["name"] != ref:
                r[f"x_{ref}"] = by[ref] / r["seconds"]
    return results


def _mode(mode: str, a: jw.BigMatrix, b: jw.BigMatrix, store: common.Store,
          cfg: Config) -> tuple[float, float, float | None]:  # fmt: skip
    if mode == "jaxwren_store":
        outs: list[jw.BigMatrix] = []

        def store_to_store() -> None:
            if outs:
                store.delete(outs.pop().url)
            outs.append(jw.matmul(a, b, store.url("C"), memory_budget=cfg.memory_budget,
                                  progress=False))  # fmt: skip

        first, best = common.warm_and_best(store_to_store, cfg.repeats)
        return first, best, _check(outs[-1], a, b)
    if mode == "jaxwren_incore":
        xa, xb = a.to_jax(), b.to_jax()
        box: list[jax.Array] = []

        def incore() -> None:
            box[:] = [jw.matmul(xa, xb).block_until_ready()]

        first, best = common.warm_and_best(incore, cfg.repeats)
        return first, best, _check(box[0], a, b)
    raise app.UsageError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")


def _peer(peer: str, a: jw.BigMatrix, b: jw.BigMatrix, store: common.Store,
          cfg: Config) -> tuple[float, float, float | None]:  # fmt: skip
    if peer == "numpy":
        xa, xb = a.numpy(), b.numpy()
        box = [None]

        def f() -> None:
            box[0] = xa @ xb

        first, best = common.warm_and_best(f, cfg.repeats)
        return first, best, _check(box[0], a, b)
    if peer == "jax":
        dev = jax.devices()[0]
        xa, xb = jax.device_put(a.numpy(), dev), jax.device_put(b.numpy(), dev)
        dot = jax.jit(jnp.dot)
        box = [None]

        def g() -> None:
            box[0] = dot(xa, xb).block_until_ready()

        first, best = common.warm_and_best(g, cfg.repeats)
        return first, best, _check(box[0], a, b)
    if peer == "dask":
        if store.kind != "file":
            raise app.UsageError("the dask peer reads zarr from a local directory: --store=file")
        import dask
        import dask.array as da

        outs: list[str] = []

        def h() -> None:
            url = store.url("Cdask")
            outs.append(url)
            c = da.from_zarr(store.path(a.url)) @ da.from_zarr(store.path(b.url))
            with dask.config.set(scheduler="threads"):
                da.to_zarr(c, store.path(url))

        first, best = common.warm_and_best(h, cfg.repeats)
        return first, best, _check(jw.BigMatrix.open(outs[-1]), a, b)
    raise app.UsageError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")


COLUMNS = [("name", "name", ""), ("store", "store", ""), ("m=k=n", "n", "d"),
           ("dtype", "dtype", ""), ("seconds", "seconds", ".3f"), ("GFLOP/s", "gflops", ".1f"),
           ("first call extra s", "first_call_extra_s", ".2f"), ("x numpy", "x_numpy", ".2f"),
           ("x dask", "x_dask", ".2f"), ("x jax 1-dev", "x_jax", ".2f"),
           ("rel err", "rel_err", ".1e")]  # fmt: skip


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    n = _N.value
    cfg = Config(m=_M.value or n, k=_K.value or n, n=n, block=_BLOCK.value, dtype=_DTYPE.value,
                 store=_STORE.value, memory_budget=parse_bytes(_BUDGET.value),
                 modes=tuple(_MODES.value), peers=tuple(_PEERS.value), repeats=_REPEATS.value,
                 file_dir=_FILE_DIR.value)  # fmt: skip
    common.run_and_report(
        run,
        cfg,
        COLUMNS,
        json_out=_JSON_OUT.value,
        plot=_PLOT.value,
        title=f"matmul n={n} {cfg.dtype}",
    )


if __name__ == "__main__":
    app.run(main)
