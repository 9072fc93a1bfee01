"""jaxwren Cholesky against numpy, scipy, dask.array and jnp.linalg.cholesky, same data.

Usage::

    python -m benchmarks.cholesky --n=4096 --dtype=float64 --peers=numpy,scipy,jax_sharded
    python -m benchmarks.cholesky --n=8192 --block=2048 --peers=numpy,scipy,dask
    python -m benchmarks.cholesky --n=8192 --block=512 --memory_budget=64MiB \
        --modes=jaxwren_store --peers=
    python -m benchmarks.cholesky --n=1024 --modes= --peers= --compile_scan=8,16,32,64
    python -m benchmarks.cholesky --n=4096 --block=512 --modes=jaxwren_store \
        --ooc_fractions=4,8 --peers=numpy

Modes (jaxwren): ``jaxwren_store`` store -> store (the selector's algorithm: on CPU
devices the in-core tile plan; out-of-core when ``--memory_budget`` is below what it
needs), ``jaxwren_kernel_store`` store -> store on the in-core ``shard_map`` kernel (the
default on accelerators), ``jaxwren_tiles_store`` store -> store on a tile plan
(``Cholesky(plan="tiles")``), ``jaxwren_incore`` sharded device array -> device array (the
kernel). ``--tilings`` adds store -> store runs forced onto exact tilings (e.g.
``tiles:512:2`` = the in-core tile plan on work tiles of 512, K panels of 2 tiles;
``out-of-core:2048:1``; ``kernel:128``), rows ``forced_<tiling>``: the default against the
best plan the benchmark can force.
Peers: ``numpy`` / ``scipy`` (in memory), ``dask`` (``from_zarr`` ->
``da.linalg.cholesky`` -> ``to_zarr``, same blocks, threaded; file store), ``jax_sharded``
(``jnp.linalg.cholesky`` on the input sharded ``P('rows', 'cols')`` over all devices).
Each is timed best-of-``--repeats`` after a first call (the extra first-call time,
compilation included, is reported apart); the repeats are interleaved (one call of each
in turn), so a busy machine's drift reaches every row alike. GFLOP/s counts n^3/3. The residual is
``||L L^T - A||_F / ||A||_F`` for n <= 4096, else a 4-vector probe ``||L (L^T V) - A V|| /
||A V||`` (named in the ``residual_kind`` column).
"""

from __future__ import annotations

import dataclasses  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxwren as jw  # noqa: E402
from benchmarks import common  # noqa: I001  (sets the emulated devices before jax)
from jaxwren.config import RunSpec, parse_bytes  # noqa: E402
from jaxwren.engine.run import run as run_op  # noqa: E402
from jaxwren.lax import cholesky_kernel as ck  # noqa: E402
from jaxwren.linalg.cholesky import Cholesky  # noqa: E402
from jaxwren.linalg.cholesky.kernel import incore_block as _incore_block  # noqa: E402

MODES = ("jaxwren_store", "jaxwren_kernel_store", "jaxwren_tiles_store", "jaxwren_incore")
PEERS = ("numpy", "scipy", "dask", "jax_sharded")

_N = flags.DEFINE_integer("n", 4096, "Matrix size.")
_BLOCK = flags.DEFINE_integer("block", 1024, "Block size of the stored matrices.")
_DTYPE = flags.DEFINE_enum("dtype", "float64", ["float32", "float64"], "dtype")
_STORE = flags.DEFINE_enum("store", "file", list(common.STORES), "Where A and L live.")
_BUDGET = flags.DEFINE_string("memory_budget", None, "jaxwren memory_budget (e.g. 64MiB).")
_MODES = flags.DEFINE_list("modes", list(MODES), f"jaxwren modes: {','.join(MODES)}")
_PEERS = flags.DEFINE_list("peers", ["numpy", "scipy", "dask"], f"Peers: {','.join(PEERS)}")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed repeats after the first call.")
_FILE_DIR = flags.DEFINE_string("file_dir", None, "Directory for the file store.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "One JSON line per result.")
_PLOT = flags.DEFINE_string("plot", None, "Bar chart of GFLOP/s to this PNG.")
_OOC = flags.DEFINE_list(
    "ooc_fractions",
    [],
    "Also run store -> store out-of-core with a memory_budget of 1/f of the matrix's bytes "
    "for each f (e.g. 4,8): rows jaxwren_ooc_1/f, compared with jaxwren_store in the same "
    "run (column x jaxwren_store; --block must let such tiles fit, e.g. --block=512).",
)
_TILINGS = flags.DEFINE_list(
    "tilings",
    [],
    "Exact tilings to force store -> store (algorithm:size[:K tiles], e.g. tiles:512:2, "
    "out-of-core:1024:2, kernel:128): rows forced_<tiling>.",
)
_SCAN = flags.DEFINE_list(
    "compile_scan",
    [],
    "Block-column counts (e.g. 8,16,32,64): compile the in-core kernel "
    "at n = count x its block and report the compile seconds (flat = compiled once).",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    n: int = 4096
    block: int = 1024
    dtype: str = "float64"
    store: str = "file"
    memory_budget: int | None = None
    modes: tuple[str, ...] = MODES
    peers: tuple[str, ...] = ("numpy", "scipy", "dask")
    repeats: int = 2
    file_dir: str | None = None
    compile_scan: tuple[int, ...] = ()
    ooc_fractions: tuple[int, ...] = ()
    tilings: tuple[str, ...] = ()


def write_spd(store: common.Store, cfg: Config) -> jw.BigMatrix:
    """A symmetric, strictly diagonally dominant (so SPD) matrix, written block by block."""
    a = jw.BigMatrix.create(store.url("A"), (cfg.n, cfg.n), (cfg.block, cfg.block), cfg.dtype,
                            storage=store.config)  # fmt: skip
    rng = np.random.default_rng(0)
    for i, j in a.block_idxs:
        if j > i:
            continue
        r0, r1, c0, c1 = a.block_bounds(i, j)
        blk = rng.uniform(-1, 1, (r1 - r0, c1 - c0))
        if i == j:
            blk = (blk + blk.T) / 2 + cfg.n * np.eye(r1 - r0)
        else:
            a.put_block(blk.T.astype(a.dtype), j, i)
        a.put_block(blk.astype(a.dtype), i, j)
    return a


def residual(l_mat: jw.BigMatrix | jax.Array | np.ndarray, a: np.ndarray) -> tuple[float, str]:
    """Relative residual of ``L L^T`` against ``A`` (exact up to n=4096, else probed)."""
    lm = l_mat.numpy() if isinstance(l_mat, jw.BigMatrix) else np.asarray(l_mat)
    lm, a64 = lm.astype(np.float64), a.astype(np.float64)
    if a.shape[0] <= 4096:
        return float(np.linalg.norm(lm @ lm.T - a64) / np.linalg.norm(a64)), "frobenius"
    v = np.random.default_rng(1).standard_normal((a.shape[0], 4))
    av = a64 @ v
    return float(np.linalg.norm(lm @ (lm.T @ v) - av) / np.linalg.norm(av)), "probe"


class Forced(Cholesky):
    """The Cholesky op offering exactly one tiling (``"tiles:512:2"`` -> ``("tiles", 512,
    2)``), whatever the selector would rank first."""

    def __init__(self, tiling: str) -> None:
        super().__init__("auto")
        name, *sizes = tiling.split(":")
        self.want = (name, *map(int, sizes))

    def tilings(self, problem, targets):  # noqa: ANN001, ANN201
        cands = super().tilings(problem, targets)
        got = [dataclasses.replace(c, cost=0) for c in cands if c.tiling == self.want]
        if not got:
            raise app.UsageError(f"--tilings: {self.want} is not offered here")
        return got


def _mode(mode: str, a: jw.BigMatrix, store: common.Store, cfg: Config, out: str = "L") -> tuple:
    """``(f, result)``: ``f`` times one call; ``result()`` gives the last output and its IO."""
    box: list = []
    plans = {"jaxwren_store": "auto", "jaxwren_kernel_store": "kernel",
             "jaxwren_tiles_store": "tiles"}  # fmt: skip
    if mode in plans or mode.startswith("forced_"):
        op = Forced(mode[7:]) if mode.startswith("forced_") else Cholesky(plans[mode])

        def f() -> None:  # each call factors afresh into an emptied out
            if box:
                store.delete(box.pop().value.url)
            spec = RunSpec(memory_budget=cfg.memory_budget, progress=False)
            box.append(run_op(op, (a,), store.url(out), spec))
            assert box[-1].stats.steps_run > 0, "a stored result was reused: not a timing"

    elif mode == "jaxwren_incore":
        x = a.to_jax(NamedSharding(jw.default_mesh(), P("rows", "cols")))

        def f() -> None:
            out = run_op(Cholesky(), (x,), None, RunSpec(progress=False))
            out.value.block_until_ready()
            box[:] = [out]
    else:
        raise app.UsageError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")

    def result() -> tuple:
        stats = box[-1].stats
        io = {"read_mib": stats.bytes_read / 2**20, "written_mib": stats.bytes_written / 2**20,
              "tiling": box[-1].report.tiling}  # fmt: skip
        return box[-1].value, io

    return f, result


def _peer(peer: str, a: jw.BigMatrix, x: np.ndarray, store: common.Store, cfg: Config) -> tuple:
    """As :func:`_mode`, for a peer."""
    box: list = []
    if peer == "numpy":

        def f() -> None:
            box[:] = [np.linalg.cholesky(x)]
    elif peer == "scipy":
        import scipy.linalg

        def f() -> None:
            box[:] = [scipy.linalg.cholesky(x, lower=True)]
    elif peer == "jax_sharded":
        xs = jax.device_put(x, NamedSharding(jw.default_mesh(), P("rows", "cols")))
        chol = jax.jit(jnp.linalg.cholesky)

        def f() -> None:
            box[:] = [chol(xs).block_until_ready()]
    elif peer == "dask":
        if store.kind != "file":
            raise app.UsageError("the dask peer reads zarr from a local directory: --store=file")
        import dask
        import dask.array as da

        def f() -> None:
            url = store.url("Ldask")
            lower = da.linalg.cholesky(da.from_zarr(store.path(a.url)), lower=True)
            with dask.config.set(scheduler="threads"):
                da.to_zarr(lower, store.path(url))
            box[:] = [jw.BigMatrix.open(url)]
    else:
        raise app.UsageError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")
    return f, lambda: (box[-1], {})


def compile_scan(counts: tuple[int, ...], dtype: str) -> list[dict]:
    """Compile seconds of the in-core kernel at ``count`` block columns (lower + XLA
    compile, nothing run): flat when the program does not grow with the count."""
    mesh = jw.default_mesh()
    rows = []
    for count in counts:
        n = count * 128
        block = _incore_block(n, mesh)
        n = count * block
        spec = jax.ShapeDtypeStruct((n, n), dtype, sharding=NamedSharding(mesh, P("rows", "cols")))
        t0 = time.perf_counter()
        ck._factor_fn(n, n, block, mesh).lower(spec).compile()
        rows.append({"block_columns": count, "n": n, "block": block,
                     "compile_s": time.perf_counter() - t0})  # fmt: skip
        print(f"  kernel at {count:3d} block columns (n={n}, block {block}): "
              f"{rows[-1]['compile_s']:.2f} s to compile", flush=True)  # fmt: skip
    return rows


def run(cfg: Config) -> list[dict]:
    """Times every mode and peer on the same stored SPD matrix."""
    flops = cfg.n**3 / 3
    results: list[dict] = []
    with common.open_store(cfg.store, cfg.file_dir) as store:
        a = write_spd(store, cfg)
        x = a.numpy()
        modes = list(cfg.modes) + [f"forced_{t}" for t in cfg.tilings]
        runs = [(m, cfg, lambda m=m: _mode(m, a, store, cfg, out=f"L-{m}")) for m in modes]
        for f in cfg.ooc_fractions:  # the same store -> store run under 1/f of the bytes
            ooc = dataclasses.replace(cfg, memory_budget=cfg.n**2 * a.dtype.itemsize // f)
            runs.append((f"jaxwren_ooc_1/{f}", ooc,
                         lambda ooc=ooc, f=f: _mode("jaxwren_store", a, store, ooc,
                                                    out=f"L-ooc{f}")))  # fmt: skip
        runs += [(p, cfg, lambda p=p: _peer(p, a, x, store, cfg)) for p in cfg.peers]
        jobs = [(name, run_cfg, *make()) for name, run_cfg, make in runs]
        first, times = {}, {name: [] for name, *_ in jobs}
        for name, _, fn, _ in jobs:  # first calls (compiles), then interleaved repeats
            try:
                first[name] = common.timed(fn)
            except jw.MemoryBudgetError as err:  # an --ooc_fractions budget below any plan
                raise app.UsageError(f"{name}: {err}") from None
        for _ in range(max(cfg.repeats, 1)):
            for name, _, fn, _ in jobs:
                times[name].append(common.timed(fn))
        for name, run_cfg, _, result in jobs:
            out, io = result()
            best = min(times[name])
            res, kind = residual(out, x)
            row = {"name": name, "n": cfg.n, "block": cfg.block, "dtype": cfg.dtype,
                   "store": cfg.store, "memory_budget": run_cfg.memory_budget, "seconds": best,
                   "first_call_extra_s": max(first[name] - best, 0.0),
                   "gflops": flops / best / 1e9, "residual": res, "residual_kind": kind,
                   **io}  # fmt: skip
            results.append(row)
            extra = row["first_call_extra_s"]
            print(f"{name:>16}: {best:8.3f} s {row['gflops']:7.1f} GFLOP/s (first call "
                  f"+{extra:.2f} s) residual {res:.1e} ({kind}) {io.get('tiling', '')}",
                  flush=True)  # fmt: skip
    for row in compile_scan(cfg.compile_scan, cfg.dtype):
        results.append({"name": f"compile@{row['block_columns']}", "n": row["n"],
                        "block": row["block"], "dtype": cfg.dtype,
                        "first_call_extra_s": row["compile_s"]})  # fmt: skip
    by = {r["name"]: r["seconds"] for r in results if "seconds" in r}
    for r in results:
        for ref in PEERS + ("jaxwren_store",):
            if ref in by and r["name"] != ref and "seconds" in r:
                r[f"x_{ref}"] = by[ref] / r["seconds"]
    return results


COLUMNS = [("name", "name", ""), ("n", "n", "d"), ("block", "block", "d"),
           ("dtype", "dtype", ""), ("seconds", "seconds", ".3f"), ("GFLOP/s", "gflops", ".1f"),
           ("first call extra s", "first_call_extra_s", ".2f"), ("x numpy", "x_numpy", ".2f"),
           ("x scipy", "x_scipy", ".2f"), ("x dask", "x_dask", ".2f"),
           ("x jnp sharded", "x_jax_sharded", ".1f"),
           ("x jaxwren_store", "x_jaxwren_store", ".2f"), ("tiling", "tiling", ""),
           ("residual", "residual", ".1e"),
           ("read MiB", "read_mib", ".0f"), ("written MiB", "written_mib", ".0f")]  # fmt: skip


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = Config(n=_N.value, block=_BLOCK.value, dtype=_DTYPE.value, store=_STORE.value,
                 memory_budget=parse_bytes(_BUDGET.value), modes=tuple(_MODES.value),
                 peers=tuple(p for p in _PEERS.value if p), repeats=_REPEATS.value,
                 file_dir=_FILE_DIR.value,
                 compile_scan=tuple(int(c) for c in _SCAN.value),
                 ooc_fractions=tuple(int(f) for f in _OOC.value),
                 tilings=tuple(_TILINGS.value))  # fmt: skip

    common.run_and_report(
        run,
        cfg,
        COLUMNS,
        json_out=_JSON_OUT.value,
        plot=_PLOT.value,
        title=f"cholesky n={cfg.n} {cfg.dtype}",
    )


if __name__ == "__main__":
    app.run(main)
