"""jaxwren LU, solve, lu_solve and inv against scipy, dask.array and jnp, same data, same run.

Usage::

    python -m benchmarks.lu --n=4096 --block=1024
    python -m benchmarks.lu --n=2048 --groups=factor,solve --peers=scipy,jax_sharded

Groups, each timed interleaved (best of ``--repeats`` after a warm-up round, so every row
of a group sees the same load):

* ``factor``: ``jaxwren_lu_store`` (store -> store ``jw.lu_factor``), ``scipy_lu_factor``
  (in memory), ``dask_lu`` (``da.linalg.lu`` of ``from_zarr``, square chunks of
  ``--block``, the factors written back with ``to_zarr``; threaded), ``jnp_lu_sharded``
  (``jax.scipy.linalg.lu_factor`` on the input sharded ``P('rows', 'cols')``).
* ``solve``: ``jaxwren_solve`` (store -> returned, float64), ``jaxwren_solve_refine``
  (``refine=True``: float32 factor, float64 refinement), ``scipy_solve``, ``dask_solve``
  (``da.linalg.solve`` from zarr), ``jnp_solve_sharded``; ``k`` = ``--rhs`` columns.
  ``--plans`` adds store -> store rows forced onto one algorithm (``jaxwren_lu_<plan>``:
  ``kernel``, ``tiles``, ``out-of-core``, optionally ``:tile``, e.g. ``tiles:512``);
  ``--ooc_fraction=f`` adds ``jaxwren_lu_ooc_1/f``: the default store -> store run under a
  ``memory_budget`` of 1/f of the matrix's bytes, the factor stored in blocks of
  ``--ooc_block`` (0, the default: the run's choice, the input's blocks or, when no
  tiling fits them, smaller ones; the out-of-core plan's column tiles are multiples of
  the factor's blocks), and its ratio to the in-core default (``x_jaxwren_lu_store``).
* ``lu_solve``: from the stored factor against ``scipy.linalg.lu_solve``.
* ``inv``: ``jw.inv`` against ``scipy.linalg.inv``.

Ratios ``x_<peer>`` are the peer's seconds over the row's (above 1: faster than the
peer). Correctness columns: the factor's ``||P L U - A|| / ||A||`` and the solves'
backward error ``max_j ||A x_j - b_j|| / (||A|| ||x_j||)`` (inf norms); the refined
solve's iterations come from its run report. ``--compile_scan`` compiles the sharded LU
kernel at several block-column counts (flat: compiled once, a loop over panels).
"""

from __future__ import annotations

import dataclasses  # noqa: E402
import functools  # noqa: E402
import itertools  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import scipy.linalg as sl  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxwren as jw  # noqa: E402
from benchmarks import common  # noqa: I001  (sets the emulated devices before jax)
from jaxwren.config import RunSpec  # noqa: E402
from jaxwren.engine.run import run as run_op  # noqa: E402
from jaxwren.linalg.lu import LUFactor  # noqa: E402

GROUPS = ("factor", "solve", "lu_solve", "inv")
PEERS = ("scipy", "dask", "jax_sharded")

_N = flags.DEFINE_integer("n", 4096, "Matrix size.")
_BLOCK = flags.DEFINE_integer("block", 1024, "Block (zarr chunk) size of the stored matrices.")
_RHS = flags.DEFINE_integer("rhs", 1, "Right-hand sides of the solves.")
_STORE = flags.DEFINE_enum("store", "file", list(common.STORES), "Where A and the factor live.")
_GROUPS = flags.DEFINE_list("groups", list(GROUPS), f"Groups: {','.join(GROUPS)}")
_PEERS = flags.DEFINE_list("peers", list(PEERS), f"Peers: {','.join(PEERS)}")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed rounds after the warm-up round.")
_FILE_DIR = flags.DEFINE_string("file_dir", None, "Directory for the file store.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "One JSON line per result.")
_PLOT = flags.DEFINE_string("plot", None, "Bar chart of GFLOP/s to this PNG.")
_PLANS = flags.DEFINE_list("plans", [], "Forced algorithms (kernel, tiles, out-of-core[:tile]).")
_OOC = flags.DEFINE_integer("ooc_fraction", 0, "Also run out-of-core at 1/f of the bytes.")
_OOC_BLOCK = flags.DEFINE_integer(
    "ooc_block", 0, "Block of the out-of-core run's factor (0: the run's choice)."
)
_SCAN = flags.DEFINE_list("compile_scan", [], "Block-column counts to compile the kernel at.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    n: int = 4096
    block: int = 1024
    rhs: int = 1
    store: str = "file"
    groups: tuple[str, ...] = GROUPS
    peers: tuple[str, ...] = PEERS
    repeats: int = 2
    file_dir: str | None = None
    compile_scan: tuple[int, ...] = ()
    plans: tuple[str, ...] = ()
    ooc_fraction: int = 0
    ooc_block: int = 0


def backward_error(a: np.ndarray, x: np.ndarray, b: np.ndarray) -> float:
    x, b = x.reshape(len(b), -1), b.reshape(len(b), -1)
    r = np.abs(a @ x - b).max(axis=0)
    return float((r / (np.abs(a).sum(axis=1).max() * np.abs(x).max(axis=0))).max())


def factor_residual(lu: np.ndarray, piv: np.ndarray, a: np.ndarray) -> float:
    perm = np.arange(len(piv))
    for i, p in enumerate(piv):
        perm[[i, p]] = perm[[p, i]]
    prod = (np.tril(lu, -1) + np.eye(len(lu))) @ np.triu(lu)
    return float(np.linalg.norm(prod - a[perm]) / np.linalg.norm(a))


def _factor_fns(a: jw.BigMatrix, x: np.ndarray, store: common.Store, cfg: Config) -> tuple:
    """The factor rows; each run writes a fresh factor, the ones it replaces deleted by
    ``box["setup"]`` (untimed, before every call)."""
    box: dict = {"trash": [], "count": itertools.count()}

    def setup() -> None:
        for m in box["trash"]:
            store.delete(m.url)
        box["trash"].clear()

    def ours() -> None:
        if "ours" in box:
            box["trash"].extend(box["ours"])
        box["ours"] = jw.lu_factor(a, store.url(f"F{next(box['count'])}"))

    box["setup"] = setup

    fns = {"jaxwren_lu_store": ours}
    for name in cfg.plans:  # forced algorithms, store -> store
        plan, _, tile = name.partition(":")
        op = functools.partial(LUFactor, plan=plan, tile=int(tile) if tile else None)
        fns[f"jaxwren_lu_{name}"] = functools.partial(_forced, op, a, store, f"P{name}", box)
    if cfg.ooc_fraction:
        budget = cfg.n**2 * x.dtype.itemsize // cfg.ooc_fraction
        blocks = (cfg.ooc_block, cfg.ooc_block) if cfg.ooc_block else None
        spec = RunSpec(memory_budget=budget, block_shape=blocks)
        fns[f"jaxwren_lu_ooc_1/{cfg.ooc_fraction}"] = functools.partial(
            _forced, LUFactor, a, store, "Pooc", box, spec
        )
    if "scipy" in cfg.peers:
        fns["scipy_lu_factor"] = lambda: box.__setitem__("scipy", sl.lu_factor(x))
    if "dask" in cfg.peers:
        import dask
        import dask.array as da

        def dask_lu() -> None:
            _, low, up = da.linalg.lu(da.from_zarr(store.path(a.url)))
            with dask.config.set(scheduler="threads"):
                da.to_zarr(low, store.path(store.url("Ldask")))
                da.to_zarr(up, store.path(store.url("Udask")))

        fns["dask_lu"] = dask_lu
    if "jax_sharded" in cfg.peers:
        xs = jax.device_put(x, NamedSharding(jw.default_mesh(), P("rows", "cols")))
        f = jax.jit(jax.scipy.linalg.lu_factor)
        fns["jnp_lu_sharded"] = lambda: jax.block_until_ready(f(xs))
    return fns, box


def _forced(op: Any, a: jw.BigMatrix, store: common.Store, name: str, box: dict,
            spec: RunSpec | None = None) -> None:  # fmt: skip
    """One store -> store run of ``op()`` to a fresh URL; its report kept in ``box[name]``
    (the factor it replaces left for ``box["setup"]`` to delete, untimed)."""
    if name in box:
        box["trash"].extend(box[name].value)
    url = store.url(f"{name}-{next(box['count'])}")
    box[name] = run_op(op(), (a,), url, spec or RunSpec())


def _solve_fns(a: jw.BigMatrix, x: np.ndarray, b: np.ndarray, store: common.Store,
               cfg: Config) -> tuple:  # fmt: skip
    box: dict = {}

    def ours(refine: bool) -> None:
        with jw.observe() as runs:
            box["refine" if refine else "ours"] = np.asarray(jw.solve(a, b, refine=refine))
        if refine:
            box["iterations"] = runs[0].details["refine_iterations"]

    fns = {"jaxwren_solve": lambda: ours(False), "jaxwren_solve_refine": lambda: ours(True)}
    if "scipy" in cfg.peers:
        fns["scipy_solve"] = lambda: box.__setitem__("scipy", sl.solve(x, b))
    if "dask" in cfg.peers:
        import dask
        import dask.array as da

        def dask_solve() -> None:
            with dask.config.set(scheduler="threads"):
                da.linalg.solve(da.from_zarr(store.path(a.url)), b).compute()

        fns["dask_solve"] = dask_solve
    if "jax_sharded" in cfg.peers:
        xs = jax.device_put(x, NamedSharding(jw.default_mesh(), P("rows", "cols")))
        f = jax.jit(jax.numpy.linalg.solve)
        fns["jnp_solve_sharded"] = lambda: jax.block_until_ready(f(xs, b))
    return fns, box


def _group(name: str, fns: dict, repeats: int, flops: float, extra: dict,
           setup: Any = None) -> list[dict]:  # fmt: skip
    t0 = time.perf_counter()
    best = common.best_of(fns, repeats, setup)
    print(f"[{name}] {len(fns)} rows, {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for key, sec in best.items():
        row = {"group": name, "name": key, "seconds": sec, "gflops": flops / sec / 1e9}
        row.update(extra.get(key, {}))
        rows.append(row)
    for r in rows:
        for other in rows:
            if other is not r and not other["name"].startswith("jaxwren"):
                r[f"x_{other['name']}"] = other["seconds"] / r["seconds"]
    if "jaxwren_solve" in best:  # the mixed-precision speed-up over the float64 solve
        for r in rows:
            r["x_jaxwren_solve"] = best["jaxwren_solve"] / r["seconds"]
    return rows


def compile_scan(counts: tuple[int, ...]) -> list[dict]:
    from jaxwren.lax.lu import _geometry, _lu_factor

    rows, mesh = [], jw.default_mesh()
    for count in counts:
        n = count * 32
        spec = jax.ShapeDtypeStruct((n, n), np.float64, sharding=jw.default_sharding((n, n)))
        t0 = time.perf_counter()
        _lu_factor.lower(spec, _geometry(n, mesh, 32)).compile()
        rows.append({"group": "compile", "name": f"compile@{count}", "n": n,
                     "compile_s": time.perf_counter() - t0})  # fmt: skip
        print(f"  kernel at {count} block columns (n={n}): {rows[-1]['compile_s']:.2f} s")
    return rows


def run(cfg: Config) -> list[dict]:
    """Times every group on the same stored random matrix."""
    n, results = cfg.n, []
    with common.open_store(cfg.store, cfg.file_dir) as store:
        x = np.random.default_rng(0).standard_normal((n, n))
        a = jw.from_numpy(x, store.url("A"), (cfg.block, cfg.block))
        b = np.random.default_rng(1).standard_normal((n, cfg.rhs))
        if "factor" in cfg.groups:
            fns, box = _factor_fns(a, x, store, cfg)
            with jw.observe() as runs:
                box["ours"] = jw.lu_factor(a, store.url("F0"))
            lu, piv = box["ours"][0].numpy(), box["ours"][1].numpy()[:, 0]
            extra = {"jaxwren_lu_store": {"residual": factor_residual(lu, piv, x),
                                          "growth": runs[-1].details["growth_factor"]}}  # fmt: skip
            rows = _group("factor", fns, cfg.repeats, 2 * n**3 / 3, extra, box["setup"])
            store_s = next(r["seconds"] for r in rows if r["name"] == "jaxwren_lu_store")
            for r in rows:
                got = box.get({"jaxwren_lu_store": "F0"}.get(r["name"], "P" + r["name"][11:]))
                if r["name"].startswith("jaxwren_lu_ooc"):
                    got = box.get("Pooc")
                    r["x_jaxwren_lu_store"] = store_s / r["seconds"]
                if got is not None and hasattr(got, "report"):
                    r["tiling"] = str(got.report.tiling)
                    lu_, piv_ = got.value[0].numpy(), got.value[1].numpy()[:, 0]
                    r["residual"] = factor_residual(lu_, piv_, x)
            results += rows
        if "solve" in cfg.groups:
            fns, box = _solve_fns(a, x, b, store, cfg)
            rows = _group("solve", fns, cfg.repeats, 2 * n**3 / 3, {})
            for r in rows:
                got = box.get({"jaxwren_solve": "ours", "jaxwren_solve_refine": "refine",
                               "scipy_solve": "scipy"}.get(r["name"], ""))  # fmt: skip
                if got is not None:
                    r["backward_error"] = backward_error(x, got, b)
                if r["name"] == "jaxwren_solve_refine":
                    r["iterations"] = box["iterations"]
            results += rows
        if "lu_solve" in cfg.groups:
            f = jw.lu_factor(a, store.url("F1"))
            ref = sl.lu_factor(x)
            fns = {"jaxwren_lu_solve": lambda: np.asarray(jw.lu_solve(f, b)),
                   "scipy_lu_solve": lambda: sl.lu_solve(ref, b)}  # fmt: skip
            results += _group("lu_solve", fns, cfg.repeats, 2 * n * n * cfg.rhs, {})
        if "inv" in cfg.groups:
            fns = {"jaxwren_inv": lambda: jax.block_until_ready(jw.inv(a)),
                   "scipy_inv": lambda: sl.inv(x)}  # fmt: skip
            results += _group("inv", fns, cfg.repeats, 2 * n**3, {})
    return results + compile_scan(cfg.compile_scan)


COLUMNS = [("group", "group", ""), ("name", "name", ""), ("seconds", "seconds", ".3f"),
           ("GFLOP/s", "gflops", ".1f"), ("x scipy lu_factor", "x_scipy_lu_factor", ".2f"),
           ("x dask lu", "x_dask_lu", ".2f"), ("x in-core", "x_jaxwren_lu_store", ".2f"),
           ("tiling", "tiling", ""), ("x jnp lu sharded", "x_jnp_lu_sharded", ".1f"),
           ("x scipy solve", "x_scipy_solve", ".2f"), ("x dask solve", "x_dask_solve", ".2f"),
           ("x jnp solve sharded", "x_jnp_solve_sharded", ".1f"),
           ("x jaxwren_solve", "x_jaxwren_solve", ".2f"),
           ("x scipy", "x_scipy_lu_solve", ".2f"), ("x scipy inv", "x_scipy_inv", ".2f"),
           ("residual", "residual", ".1e"), ("growth", "growth", ".1f"),
           ("backward error", "backward_error", ".1e"), ("iterations", "iterations", "d"),
           ("compile s", "compile_s", ".2f")]  # fmt: skip


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = Config(n=_N.value, block=_BLOCK.value, rhs=_RHS.value, store=_STORE.value,
                 groups=tuple(_GROUPS.value), peers=tuple(p for p in _PEERS.value if p),
                 repeats=_REPEATS.value, file_dir=_FILE_DIR.value,
                 compile_scan=tuple(int(c) for c in _SCAN.value), plans=tuple(_PLANS.value),
                 ooc_fraction=_OOC.value, ooc_block=_OOC_BLOCK.value)  # fmt: skip
    jax.config.update("jax_enable_x64", True)  # float64 data, in main only
    common.run_and_report(run, cfg, COLUMNS, json_out=_JSON_OUT.value, plot=_PLOT.value,
                          title=f"lu n={cfg.n}")  # fmt: skip


if __name__ == "__main__":
    app.run(main)
