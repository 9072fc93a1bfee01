"""Symmetric eigendecomposition and polar decomposition against numpy/scipy/jnp, same data,
same run.

Usage::

    python -m benchmarks.eigh --n=4096 --dtype=float64
    python -m benchmarks.eigh --n=2048 --modes=polar --repeats=1

Modes: ``eigh`` (``jaxwren.lax.eigh``, QDWH-eig spectral divide and conquer on the input
sharded ``P('rows', 'cols')``; ``jw_host``: ``jw.eigh`` on the same input by its default
route, LAPACK ``syevd`` on the host on CPU devices; ``jw_qdwh``: ``jw.eigh(...,
algorithm='qdwh')``) against ``numpy`` (``np.linalg.eigh``), ``scipy``
(``scipy.linalg.eigh(driver='evd')``), ``jnp_sharded`` (``jax.jit(jnp.linalg.eigh)`` on
the same sharded input: XLA gathers it and solves it replicated) and ``jnp_one``
(``jnp.linalg.eigh`` on one device; numpy and scipy are timed by one call, as nothing
compiles); ``polar`` (``jaxwren.lax.polar``, QDWH) against
``scipy`` (``scipy.linalg.polar``, by SVD). The input is a random symmetric matrix (eigh)
or a random square one (polar). Each is timed best-of-``--repeats`` after a first call
(its extra time, compilation included, is reported apart; ``--repeats=0``: the first call
only, compilation included); ``first_call_s`` is the first call in this process (a cold
compilation cache only where the cache directory is new). jaxwren runs under
``single_threaded_blas`` (CPU devices in one process), the peers with the default BLAS
threads. Accuracy: the eigenvalues' largest difference from numpy's over ``||A||_2``,
``max |V^T V - I|``, ``||A V - V diag(w)||_F / ||A||_F``; polar: ``max |U^T U - I|``,
``||U H - A||_F / ||A||_F``. Ratios ``x_<peer>`` = peer seconds / jaxwren seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg as sl
from absl import app, flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxwren as jw
import jaxwren.lax as wl
from benchmarks import common  # noqa: I001  (sets the emulated devices before jax)
from jaxwren.engine.lapack_threads import single_threaded_blas

MODES = ("eigh", "polar")
HOST = ("numpy", "scipy")  # host libraries: timed once (no compilation to warm up)
PEERS = {"eigh": ("numpy", "scipy", "jnp_sharded", "jnp_one"), "polar": ("scipy",)}
OURS = {"eigh": ("jaxwren_lax", "jw_host", "jw_qdwh"), "polar": ("jaxwren_lax",)}

_N = flags.DEFINE_integer("n", 4096, "Matrix size.")
_DTYPE = flags.DEFINE_enum("dtype", "float64", ["float32", "float64"], "dtype")
_MODES = flags.DEFINE_list("modes", list(MODES), f"Modes: {','.join(MODES)}")
_SKIP = flags.DEFINE_list("skip", [], "Peers not to run (e.g. jnp_sharded at large n).")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Timed repeats after the first call (0: none).")
_TERMINATION = flags.DEFINE_integer("termination", 768, "jaxwren.lax.eigh leaf size.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "One JSON line per result.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    n: int = 4096
    dtype: str = "float64"
    modes: tuple[str, ...] = MODES
    skip: tuple[str, ...] = ()
    repeats: int = 1
    termination: int = 768


def _timed(name: str, fn: Any, cfg: Config, ours: bool) -> dict[str, Any]:
    box: list = []

    def call() -> None:
        box[:] = [jax.block_until_ready(fn())]

    with single_threaded_blas() if ours else contextlib.nullcontext():
        if name.split("/")[1] in HOST or cfg.repeats == 0:  # one call is the timing
            first = best = common.timed(call)
        else:
            first, best = common.warm_and_best(call, cfg.repeats)
    print(f"  {name}: {best:.3f} s (first call {first:.2f} s, load "
          f"{common.os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
    return {"name": name, "n": cfg.n, "dtype": cfg.dtype, "seconds": best,
            "first_call_s": first, "first_call_extra_s": max(first - best, 0.0),
            "out": box[0]}  # fmt: skip


def _eigh_accuracy(a: np.ndarray, w: Any, v: Any, w_ref: np.ndarray) -> dict[str, float]:
    w, v = np.asarray(w, np.float64), np.asarray(v, np.float64)
    return {"eig_err": float(np.abs(w - w_ref).max() / np.linalg.norm(a, 2)),
            "orth_err": float(np.abs(v.T @ v - np.eye(len(w))).max()),
            "residual": float(np.linalg.norm(a @ v - v * w) / np.linalg.norm(a))}  # fmt: skip


def eigh(cfg: Config, mesh: Any) -> list[dict]:
    x = np.random.default_rng(0).standard_normal((cfg.n, cfg.n))
    a = ((x + x.T) / 2).astype(cfg.dtype)
    xs = jax.device_put(a, NamedSharding(mesh, P("rows", "cols")))
    x1 = jax.device_put(a, jax.devices()[0])
    jeigh = jax.jit(jnp.linalg.eigh)
    fns = {"jaxwren_lax": lambda: wl.eigh(xs, termination_size=cfg.termination),
           "numpy": lambda: np.linalg.eigh(a),
           "scipy": lambda: sl.eigh(a, driver="evd"),
           "jw_host": lambda: jw.eigh(xs),
           "jw_qdwh": lambda: jw.eigh(xs, algorithm="qdwh", termination_size=cfg.termination),
           "jnp_sharded": lambda: tuple(jeigh(xs)),
           "jnp_one": lambda: tuple(jeigh(x1))}  # fmt: skip
    rows = []
    for name in (*OURS["eigh"], *PEERS["eigh"]):
        if name not in cfg.skip:
            rows.append(_timed(f"eigh/{name}", fns[name], cfg, name == "jaxwren_lax"))
    w_ref = np.linalg.eigvalsh(a.astype(np.float64))
    for r in rows:
        r.update(_eigh_accuracy(a.astype(np.float64), *r.pop("out"), w_ref))
    return rows


def polar(cfg: Config, mesh: Any) -> list[dict]:
    a = np.random.default_rng(1).standard_normal((cfg.n, cfg.n)).astype(cfg.dtype)
    xs = jax.device_put(a, NamedSharding(mesh, P("rows", "cols")))
    fns = {"jaxwren_lax": lambda: wl.polar(xs), "scipy": lambda: sl.polar(a)}
    rows = []
    for name in ("jaxwren_lax", *PEERS["polar"]):
        if name not in cfg.skip:
            rows.append(_timed(f"polar/{name}", fns[name], cfg, name == "jaxwren_lax"))
    for r in rows:
        u, h = (np.asarray(t, np.float64) for t in r.pop("out"))
        r["orth_err"] = float(np.abs(u.T @ u - np.eye(cfg.n)).max())
        r["residual"] = float(np.linalg.norm(u @ h - a) / np.linalg.norm(a))
    return rows


def run(cfg: Config) -> list[dict]:
    """Times jaxwren and the peers in each mode (the load average is recorded around)."""
    mesh = jw.default_mesh()
    return common.run_modes(cfg.modes, MODES,
                            lambda mode: (eigh if mode == "eigh" else polar)(cfg, mesh),
                            PEERS.__getitem__, OURS.__getitem__)  # fmt: skip


COLUMNS = [("name", "name", ""), ("n", "n", "d"), ("dtype", "dtype", ""),
           ("seconds", "seconds", ".2f"), ("first call s", "first_call_s", ".2f"),
           ("x numpy", "x_numpy", ".2f"), ("x scipy", "x_scipy", ".2f"),
           ("x jnp sharded", "x_jnp_sharded", ".2f"), ("x jnp one", "x_jnp_one", ".2f"),
           ("eig err", "eig_err", ".1e"), ("orth err", "orth_err", ".1e"),
           ("residual", "residual", ".1e"), ("load", "load_avg_1m", ".1f")]  # fmt: skip


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = Config(n=_N.value, dtype=_DTYPE.value, modes=tuple(_MODES.value),
                 skip=tuple(_SKIP.value), repeats=_REPEATS.value,
                 termination=_TERMINATION.value)  # fmt: skip
    common.run_and_report(run, cfg, COLUMNS, json_out=_JSON_OUT.value, plot=None,
                          title=f"eigh/polar n={cfg.n} {cfg.dtype}")  # fmt: skip


if __name__ == "__main__":
    app.run(main)
