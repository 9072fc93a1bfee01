"""jaxwren TSQR against numpy, scipy and dask.array on the same tall-skinny matrix, same run.

Usage::

    python -m benchmarks.qr --m=1000000 --n=64 --modes=jaxwren_r,jaxwren_r_ooc,jaxwren_q \
        --peers=numpy,scipy,dask
    python -m benchmarks.qr --m=1000000 --n=64 --memory_budget=64MiB --modes=jaxwren_r --peers=

Modes (jaxwren, A stored): ``jaxwren_r`` ``jw.qr(A, mode="r")`` (one pass, R only);
``jaxwren_r_ooc`` the same with ``memory_budget`` = A's bytes / ``--ooc_fraction`` (row
tiles streamed; ``x in-core`` compares it with ``jaxwren_r``); ``jaxwren_q``
``jw.qr(A, OUT)`` (Q stored, R returned; checked for ||QᵀQ - I|| and ||QR - A|| / ||A||).
Peers: ``numpy`` / ``scipy`` ``qr(mode="r")`` on the array in memory (no IO); ``dask``
``da.linalg.tsqr(da.from_zarr(A))`` computing R only (threaded scheduler; file store
only). Each is timed best-of-``--repeats`` after a first call; ratios are speed ratios
(> 1: jaxwren faster). ``rel_err``: R against numpy's, signs normalised.
"""

from __future__ import annotations

import dataclasses

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import jaxwren as jw  # noqa: E402
from benchmarks import common  # noqa: I001  (sets the emulated devices before jax)
from jaxwren.config import parse_bytes  # noqa: E402

MODES = ("jaxwren_r", "jaxwren_r_ooc", "jaxwren_q")
PEERS = ("numpy", "scipy", "dask")

_M = flags.DEFINE_integer("m", 1_000_000, "Rows of A.")
_N = flags.DEFINE_integer("n", 64, "Columns of A.")
_BLOCK = flags.DEFINE_integer("block_rows", 62_500, "Rows per stored block (all columns).")
_DTYPE = flags.DEFINE_enum("dtype", "float64", ["float32", "float64"], "dtype")
_STORE = flags.DEFINE_enum("store", "file", list(common.STORES), "Where A lives.")
_BUDGET = flags.DEFINE_string("memory_budget", None, "jaxwren memory_budget (e.g. 64MiB).")
_OOC = flags.DEFINE_integer("ooc_fraction", 8, "jaxwren_r_ooc: budget = A's bytes / this.")
_MODES = flags.DEFINE_list("modes", ["jaxwren_r"], f"jaxwren modes: {','.join(MODES)}")
_PEERS = flags.DEFINE_list("peers", list(PEERS), f"Peers: {','.join(PEERS)}")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed repeats after the first call.")
_FILE_DIR = flags.DEFINE_string("file_dir", None, "Directory for the file store.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "One JSON line per result.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    m: int = 1_000_000
    n: int = 64
    block_rows: int = 62_500
    dtype: str = "float64"
    store: str = "file"
    memory_budget: int | None = None
    modes: tuple[str, ...] = ("jaxwren_r",)
    peers: tuple[str, ...] = PEERS
    repeats: int = 2
    file_dir: str | None = None
    ooc_fraction: int = 8


def _write(store: common.Store, cfg: Config) -> jw.BigMatrix:
    a = jw.BigMatrix.create(store.url("A"), (cfg.m, cfg.n), (cfg.block_rows, cfg.n), cfg.dtype,
                            storage=store.config)  # fmt: skip
    rng = np.random.default_rng(0)
    for i, j in a.block_idxs:
        r0, r1, _, _ = a.block_bounds(i, j)
        a.put_block(rng.standard_normal((r1 - r0, cfg.n)).astype(a.dtype), i, j)
    return a


def _signed(r: np.ndarray) -> np.ndarray:
    r = np.asarray(r, np.float64)
    return np.where(np.diag(r) < 0, -1.0, 1.0)[:, None] * r


def run(cfg: Config) -> list[dict]:
    flops = 2.0 * cfg.m * cfg.n**2 - 2.0 / 3.0 * cfg.n**3
    results: list[dict] = []
    with common.open_store(cfg.store, cfg.file_dir) as store:
        a = _write(store, cfg)
        ref: list[np.ndarray] = []

        def record(name: str, first: float, best: float, r: np.ndarray, **extra) -> None:
            if not ref:
                ref.append(_signed(r))
            err = float(np.abs(_signed(r) - ref[0]).max() / np.abs(ref[0]).max())
            row = {"name": name, "m": cfg.m, "n": cfg.n, "dtype": cfg.dtype, "store": cfg.store,
                   "seconds": best, "first_call_extra_s": max(first - best, 0.0),
                   "gflops": flops / best / 1e9, "rel_err": err, **extra}  # fmt: skip
            results.append(row)
            print(f"{name:>12}: {best:8.3f} s  {row['gflops']:6.1f} GFLOP/s  (first call "
                  f"+{row['first_call_extra_s']:.2f} s)  R vs first: {err:.1e} {extra}",
                  flush=True)  # fmt: skip

        for mode in cfg.modes:
            first, best, r, *extra = _mode(mode, a, store, cfg)
            record(mode, first, best, r, **(extra[0] if extra else {}))
        host = a.numpy() if cfg.peers else None
        for peer in cfg.peers:
            record(peer, *_peer(peer, a, host, store, cfg))
    by = {r["name"]: r["seconds"] for r in results}
    for r in results:
        r["memory_budget"] = cfg.memory_budget
        for peer in PEERS:
            if peer in by and r["name"] != peer:
                r[f"x_{peer}"] = by[peer] / r["seconds"]
        if r["name"] == "jaxwren_r_ooc" and "jaxwren_r" in by:
            r["x_incore"] = by["jaxwren_r"] / r["seconds"]
    return results


def _mode(mode: str, a: jw.BigMatrix, store: common.Store, cfg: Config) -> tuple:
    box: list = []
    if mode in ("jaxwren_r", "jaxwren_r_ooc"):
        budget = cfg.memory_budget
        if mode == "jaxwren_r_ooc":
            budget = cfg.m * cfg.n * np.dtype(cfg.dtype).itemsize // cfg.ooc_fraction

        def f() -> None:
            box[:] = [np.asarray(jw.qr(a, mode="r", memory_budget=budget))]

        first, best = common.warm_and_best(f, cfg.repeats)
        return first, best, box[0], {"budget_bytes": budget}
    if mode == "jaxwren_q":
        outs: list[str] = []

        def g() -> None:
            if outs:
                store.delete(outs.pop())  # the prefix: Q and R
            url = store.url("QR")
            outs.append(url)
            box[:] = list(jw.qr(a, url, memory_budget=cfg.memory_budget, progress=False))

        first, best = common.warm_and_best(g, cfg.repeats)
        q, r = box[0].numpy(), np.asarray(box[1])
        orth = float(np.abs(q.T @ q - np.eye(cfg.n)).max())
        x = a.numpy()
        recon = float(np.linalg.norm(q @ r - x) / np.linalg.norm(x))
        return first, best, r, {"orth_err": orth, "recon_err": recon}
    raise app.UsageError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")


def _peer(peer: str, a: jw.BigMatrix, host: np.ndarray, store: common.Store,
          cfg: Config) -> tuple:  # fmt: skip
    box: list = []
    if peer == "numpy":
        first, best = common.warm_and_best(
            lambda: box.__setitem__(slice(None), [np.linalg.qr(host, mode="r")]), cfg.repeats
        )
        return first, best, box[0]
    if peer == "scipy":
        import scipy.linalg

        first, best = common.warm_and_best(
            lambda: box.__setitem__(slice(None), [scipy.linalg.qr(host, mode="r")[0][: cfg.n]]),
            cfg.repeats)  # fmt: skip
        return first, best, box[0]
    if peer == "dask":
        if store.kind != "file":
            raise app.UsageError("the dask peer reads zarr from a local directory: --store=file")
        import dask
        import dask.array as da

        def h() -> None:
            x = da.from_zarr(store.path(a.url))
            _, r = da.linalg.tsqr(x)
            with dask.config.set(scheduler="threads"):
                box[:] = [r.compute()]

        first, best = common.warm_and_best(h, cfg.repeats)
        return first, best, box[0]
    raise app.UsageError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")


COLUMNS = [("name", "name", ""), ("m", "m", "d"), ("n", "n", "d"), ("dtype", "dtype", ""),
           ("seconds", "seconds", ".3f"), ("GFLOP/s", "gflops", ".1f"),
           ("first call extra s", "first_call_extra_s", ".2f"), ("x numpy", "x_numpy", ".2f"),
           ("x scipy", "x_scipy", ".2f"), ("x dask", "x_dask", ".2f"),
           ("x in-core", "x_incore", ".2f"),
           ("R rel err", "rel_err", ".1e"), ("QᵀQ-I", "orth_err", ".1e"),
           ("QR-A rel", "recon_err", ".1e")]  # fmt: skip


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = Config(m=_M.value, n=_N.value, block_rows=_BLOCK.value, dtype=_DTYPE.value,
                 store=_STORE.value, memory_budget=parse_bytes(_BUDGET.value),
                 modes=tuple(_MODES.value), peers=tuple(_PEERS.value), repeats=_REPEATS.value,
                 file_dir=_FILE_DIR.value, ooc_fraction=_OOC.value)  # fmt: skip
    common.run_and_report(run, cfg, COLUMNS, json_out=_JSON_OUT.value, plot=None,
                          title=f"TSQR {cfg.m}x{cfg.n}")  # fmt: skip


if __name__ == "__main__":
    app.run(main)
