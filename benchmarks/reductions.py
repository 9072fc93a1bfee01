"""jaxwren reductions (``jw.mean(A, axis=0)`` by default) against numpy, same data, same run.

Usage::

    python -m benchmarks.reductions                      # 20000 x 4000 float32, file store
    python -m benchmarks.reductions --fn=var --axis=1 --store=s3 --budget_fraction=8

Modes (jaxwren): ``incore`` (stored matrix, default budget: the tiling the engine picks),
``outofcore`` (stored matrix at ``memory_budget`` = 1/``--budget_fraction`` of its bytes),
``device`` (the matrix already a jax.Array on the devices: no IO). Peers: ``numpy`` (the
same array in memory, pays no IO) and ``dask`` (``from_zarr`` of the stored matrix, same
chunks, threaded scheduler; file store only). Each is timed best-of-``--repeats`` after a
first call; the first call's extra time (compilation included) is reported apart. Ratios
are speed ratios (> 1: faster than the peer).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import app, flags

import jaxwren as jw
from benchmarks import common  # noqa: I001  (sets the emulated devices before jax)
from jaxwren.config import RunSpec
from jaxwren.engine.run import run as run_op
from jaxwren.linalg.reductions import Reduce, Stat, acc_dtype

MODES = ("incore", "outofcore", "device")
PEERS = ("numpy", "dask")
FNS = ("sum", "mean", "min", "max", "var", "norm")

_M = flags.DEFINE_integer("m", 20000, "Rows.")
_N = flags.DEFINE_integer("n", 4000, "Columns.")
_BLOCK = flags.DEFINE_list("block", ["1024", "1024"], "Stored block shape (rows,cols).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "float64"], "dtype")
_FN = flags.DEFINE_enum("fn", "mean", list(FNS), "The reduction (norm: vector 2-norms).")
_AXIS = flags.DEFINE_enum("axis", "0", ["0", "1", "None"], "Reduced axis.")
_STORE = flags.DEFINE_enum("store", "file", list(common.STORES), "Where A lives.")
_FRACTION = flags.DEFINE_integer("budget_fraction", 8, "outofcore: budget = bytes / this.")
_MODES = flags.DEFINE_list("modes", list(MODES), f"jaxwren modes: {','.join(MODES)}")
_PEERS = flags.DEFINE_list("peers", list(PEERS), f"Peers: {','.join(PEERS)}")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats after the first call.")
_FILE_DIR = flags.DEFINE_string("file_dir", None, "Directory for the file store.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "One JSON line per result.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    m: int = 20000
    n: int = 4000
    block: tuple[int, int] = (1024, 1024)
    dtype: str = "float32"
    fn: str = "mean"
    axis: int | None = 0
    store: str = "file"
    budget_fraction: int = 8
    modes: tuple[str, ...] = MODES
    peers: tuple[str, ...] = PEERS
    repeats: int = 3
    file_dir: str | None = None


def _write_random(store: common.Store, cfg: Config) -> jw.BigMatrix:
    """A random stored matrix written block by block (never whole in memory)."""
    a = jw.BigMatrix.create(store.url("A"), (cfg.m, cfg.n), cfg.block, cfg.dtype,
                            storage=store.config)  # fmt: skip
    rng = np.random.default_rng(0)
    for i, j in a.block_idxs:
        r0, r1, c0, c1 = a.block_bounds(i, j)
        block = 3.0 + rng.standard_normal((r1 - r0, c1 - c0), dtype=np.float32)
        a.put_block(block.astype(a.dtype), i, j)
    return a


def _jw(cfg: Config, x: object, budget: int | None) -> np.ndarray:
    kw = {"memory_budget": budget, "progress": False}
    if cfg.fn == "norm":
        return jw.norm(x, None, cfg.axis if cfg.axis is not None else 0, **kw)
    return getattr(jw, cfg.fn)(x, cfg.axis, **kw)


def _numpy(cfg: Config, x: np.ndarray) -> np.ndarray:
    if cfg.fn == "norm":
        return np.linalg.norm(x, None, cfg.axis if cfg.axis is not None else 0)
    return getattr(np, cfg.fn)(x, axis=cfg.axis)


def _steps(cfg: Config, a: jw.BigMatrix, budget: int | None) -> dict:
    """The plan the engine runs at ``budget`` (steps, prefetch, bytes read), untimed."""
    kind = {"sum": "sum", "mean": "sum", "min": "min", "max": "max", "var": "moments"}
    stat = Stat(kind.get(cfg.fn, "sumsq"))
    axis = cfg.axis if cfg.axis is not None else int(cfg.m < cfg.n)
    op = Reduce(stat, axis, acc_dtype(stat, a.dtype, where=cfg.fn), cfg.fn)
    stats = run_op(op, (a,), None, RunSpec(memory_budget=budget, progress=False)).stats
    return {"steps": stats.steps_run, "prefetch": stats.prefetch, "bytes_read": stats.bytes_read}


def run(cfg: Config) -> list[dict]:
    """Times every mode and peer on the same stored matrix."""
    nbytes = cfg.m * cfg.n * np.dtype(cfg.dtype).itemsize
    results: list[dict] = []
    with common.open_store(cfg.store, cfg.file_dir) as store:
        a = _write_random(store, cfg)
        x = a.numpy()
        ref = _numpy(cfg, x.astype(np.float64))

        def record(name: str, first: float, best: float, got: object, extra: dict) -> None:
            err = float(np.max(np.abs(np.asarray(got, np.float64) - ref) / np.abs(ref).max()))
            row = {"name": name, "fn": cfg.fn, "axis": cfg.axis, "m": cfg.m, "n": cfg.n,
                   "block": list(cfg.block), "dtype": cfg.dtype, "store": cfg.store,
                   "seconds": best, "gb_per_s": nbytes / best / 1e9,
                   "first_call_extra_s": max(first - best, 0.0), "rel_err": err,
                   **extra}  # fmt: skip
            results.append(row)
            print(f"{name:>10}: {best:8.4f} s  {row['gb_per_s']:6.2f} GB/s  (first call "
                  f"+{row['first_call_extra_s']:.2f} s)  rel_err={err:.1e}  {extra}",
                  flush=True)  # fmt: skip

        for mode in cfg.modes:
            record(mode, *_mode(mode, cfg, a, nbytes))
        for peer in cfg.peers:
            timing = _peer(peer, cfg, a, x, store)
            if timing is not None:
                record(peer, *timing)
    by = {r["name"]: r["seconds"] for r in results}
    for r in results:
        r["peak_rss_bytes"] = common.peak_rss_bytes()  # of the whole run so far
        for peer in cfg.peers:
            if peer in by and r["name"] != peer:
                r[f"x_{peer}"] = by[peer] / r["seconds"]
    return results


def _timed(fn, repeats: int) -> tuple[float, float, object]:  # noqa: ANN001
    box: list[object] = []
    first, best = common.warm_and_best(lambda: box.append(fn()), repeats)
    return first, best, box[-1]


def _mode(mode: str, cfg: Config, a: jw.BigMatrix, nbytes: int) -> tuple:
    if mode == "incore":
        return (*_timed(lambda: _jw(cfg, a, None), cfg.repeats), _steps(cfg, a, None))
    if mode == "outofcore":
        budget = nbytes // cfg.budget_fraction
        extra = {"memory_budget": budget, **_steps(cfg, a, budget)}
        return (*_timed(lambda: _jw(cfg, a, budget), cfg.repeats), extra)
    if mode == "device":
        xd = a.to_jax()
        return (*_timed(lambda: _jw(cfg, xd, None), cfg.repeats), {})
    raise app.UsageError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")


def _peer(peer: str, cfg: Config, a: jw.BigMatrix, x: np.ndarray,
          store: common.Store) -> tuple | None:  # fmt: skip
    if peer == "numpy":
        return (*_timed(lambda: _numpy(cfg, x), cfg.repeats), {})
    if peer == "dask":
        if store.kind != "file" or cfg.fn == "norm":
            print("dask: skipped (file store and sum/mean/min/max/var only)")
            return None
        import dask
        import dask.array as da

        def h() -> np.ndarray:
            with dask.config.set(scheduler="threads"):
                d = da.from_zarr(store.path(a.url))
                return getattr(d, cfg.fn)(axis=cfg.axis).compute()

        return (*_timed(h, cfg.repeats), {})
    raise app.UsageError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")


COLUMNS = [("name", "name", ""), ("fn", "fn", ""), ("store", "store", ""),
           ("seconds", "seconds", ".4f"), ("GB/s", "gb_per_s", ".2f"),
           ("first call extra s", "first_call_extra_s", ".2f"), ("x numpy", "x_numpy", ".2f"),
           ("x dask", "x_dask", ".2f"), ("steps", "steps", "d"),
           ("rel err", "rel_err", ".1e")]  # fmt: skip


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    block = tuple(int(b) for b in _BLOCK.value)
    if len(block) != 2:
        raise app.UsageError(f"--block takes two sizes (rows,cols), got {_BLOCK.value}")
    cfg = Config(m=_M.value, n=_N.value, block=block, dtype=_DTYPE.value, fn=_FN.value,  # type: ignore[arg-type]
                 axis=None if _AXIS.value == "None" else int(_AXIS.value), store=_STORE.value,
                 budget_fraction=_FRACTION.value, modes=tuple(_MODES.value),
                 peers=tuple(_PEERS.value), repeats=_REPEATS.value,
                 file_dir=_FILE_DIR.value)  # fmt: skip
    title = f"{cfg.fn} axis={cfg.axis} {cfg.m}x{cfg.n} {cfg.dtype}"
    common.run_and_report(run, cfg, COLUMNS, json_out=_JSON_OUT.value, plot=None, title=title)


if __name__ == "__main__":
    app.run(main)
