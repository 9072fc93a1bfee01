"""jaxwren.lax inside the user's jit against JAX's own linear algebra, same data, same run.

Usage::

    python -m benchmarks.jaxnative --n=4096 --dtype=float64
    python -m benchmarks.jaxnative --n=2048 --modes=gp --peers=jnp_one

Modes: ``forward`` (``jax.jit(jaxwren.lax.cholesky)`` on an SPD matrix sharded
``P('rows', 'cols')``), ``gp`` (``jax.jit(jax.value_and_grad(nll))`` of the exact GP's
negative log marginal likelihood of ``examples/gaussian_process.py`` with respect to its
three hyperparameters: kernel matrix built sharded, ``jaxwren.lax.cholesky`` /
``cho_solve`` / ``cho_logdet``). Peers, the same function written with ``jnp.linalg`` /
``jax.scipy.linalg``: ``jnp_sharded`` on the same sharded input (XLA gathers the matrix
and factors it replicated), ``jnp_one`` on one device, unsharded. Each is timed best-of-
``--repeats`` after a first call (its extra time, compilation included, is reported
apart); jaxwren runs under ``single_threaded_blas`` (CPU devices in one process), the
peers with the default BLAS threads. The result (factor / value and gradient) is compared
with ``jnp_one``'s. GFLOP/s counts n^3/3 for the forward.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxwren as jw
import jaxwren.lax as wl
from benchmarks import common  # noqa: I001  (sets the emulated devices before jax)
from jaxwren.engine.lapack_threads import single_threaded_blas

MODES = ("forward", "gp")
PEERS = ("jnp_sharded", "jnp_one")

_N = flags.DEFINE_integer("n", 4096, "Matrix size.")
_DTYPE = flags.DEFINE_enum("dtype", "float64", ["float32", "float64"], "dtype")
_BLOCK = flags.DEFINE_integer("block", 0, "jaxwren.lax block size (0: its default).")
_MODES = flags.DEFINE_list("modes", list(MODES), f"Modes: {','.join(MODES)}")
_PEERS = flags.DEFINE_list("peers", list(PEERS), f"Peers: {','.join(PEERS)}")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed repeats after the first call.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "One JSON line per result.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    n: int = 4096
    dtype: str = "float64"
    block: int | None = None
    modes: tuple[str, ...] = MODES
    peers: tuple[str, ...] = PEERS
    repeats: int = 2


def _example() -> Any:
    """examples/gaussian_process.py as a module (the likelihood both sides compute)."""
    path = pathlib.Path(__file__).parents[1] / "examples" / "gaussian_process.py"
    spec = importlib.util.spec_from_file_location("gaussian_process_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _spd(n: int, dtype: str) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((n, n))
    return (x @ x.T / n + np.eye(n)).astype(dtype)


def _timed(name: str, fn: Any, cfg: Config, ours: bool) -> dict[str, Any]:
    box: list = []

    def call() -> None:
        box[:] = [jax.block_until_ready(fn())]

    with single_threaded_blas() if ours else contextlib.nullcontext():
        first, best = common.warm_and_best(call, cfg.repeats)
    return {"name": name, "n": cfg.n, "dtype": cfg.dtype, "seconds": best,
            "first_call_extra_s": max(first - best, 0.0), "out": box[0]}  # fmt: skip


def forward(cfg: Config, mesh: Any) -> list[dict]:
    a = _spd(cfg.n, cfg.dtype)
    xs = jax.device_put(a, NamedSharding(mesh, P("rows", "cols")))
    x1 = jax.device_put(a, jax.devices()[0])
    fns = {"jaxwren_lax": (jax.jit(functools.partial(wl.cholesky, block=cfg.block)), xs),
           "jnp_sharded": (jax.jit(jnp.linalg.cholesky), xs),
           "jnp_one": (jax.jit(jnp.linalg.cholesky), x1)}  # fmt: skip
    rows = []
    for name in ("jaxwren_lax", *cfg.peers):
        fn, x = fns[name]
        rows.append(_timed(f"forward/{name}", lambda fn=fn, x=x: fn(x), cfg, name == "jaxwren_lax"))
        rows[-1]["gflops"] = cfg.n**3 / 3 / rows[-1]["seconds"] / 1e9
    ref = np.asarray(rows[-1]["out"]) if cfg.peers[-1:] == ("jnp_one",) else np.linalg.cholesky(a)
    for r in rows:
        r["max_abs_diff_vs_ref"] = float(np.max(np.abs(np.asarray(r.pop("out")) - ref)))
    return rows


def gp(cfg: Config, mesh: Any) -> list[dict]:
    ex = _example()
    x, y = (v.astype(cfg.dtype) for v in ex.make_data(cfg.n))
    rep = NamedSharding(mesh, P())
    theta = np.log([0.5, 1.0, 0.1]).astype(cfg.dtype)
    ours = jax.jit(jax.value_and_grad(functools.partial(ex.nll, mesh=mesh)))
    sharded = NamedSharding(mesh, P("rows", "cols"))
    jnp_sh = jax.jit(jax.value_and_grad(functools.partial(ex.nll_jnp, sharding=sharded)))
    jnp_one = jax.jit(jax.value_and_grad(ex.nll_jnp))
    args_rep = jax.device_put((theta, x, y), rep)
    args_one = jax.device_put((theta, x, y), jax.devices()[0])
    fns = {"jaxwren_lax": (ours, args_rep), "jnp_sharded": (jnp_sh, args_rep),
           "jnp_one": (jnp_one, args_one)}  # fmt: skip
    rows = []
    for name in ("jaxwren_lax", *cfg.peers):
        fn, args = fns[name]
        rows.append(_timed(f"gp_value_and_grad/{name}", lambda fn=fn, a=args: fn(*a), cfg,
                           name == "jaxwren_lax"))  # fmt: skip
    ref = [np.asarray(v) for v in rows[-1]["out"]]  # jnp_one's when it runs (last peer)
    for r in rows:
        val, grad = (np.asarray(v) for v in r.pop("out"))
        r["value_rel_diff_vs_ref"] = float(abs(val - ref[0]) / abs(ref[0]))
        r["grad_rel_diff_vs_ref"] = float(np.max(np.abs(grad - ref[1]) / np.abs(ref[1])))
    return rows


def run(cfg: Config) -> list[dict]:
    """Times jaxwren.lax and the peers in each mode; ratios ``x_<peer>`` = peer seconds /
    jaxwren seconds (above 1: jaxwren is faster)."""
    mesh = jw.default_mesh()
    return common.run_modes(cfg.modes, MODES,
                            lambda mode: (forward if mode == "forward" else gp)(cfg, mesh),
                            lambda mode: cfg.peers)  # fmt: skip


COLUMNS = [("name", "name", ""), ("n", "n", "d"), ("dtype", "dtype", ""),
           ("seconds", "seconds", ".3f"), ("GFLOP/s", "gflops", ".1f"),
           ("first call extra s", "first_call_extra_s", ".2f"),
           ("x jnp sharded", "x_jnp_sharded", ".2f"), ("x jnp one device", "x_jnp_one", ".2f"),
           ("max |L - ref|", "max_abs_diff_vs_ref", ".1e"),
           ("value rel diff", "value_rel_diff_vs_ref", ".1e"),
           ("grad rel diff", "grad_rel_diff_vs_ref", ".1e")]  # fmt: skip


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    peers = tuple(p for p in PEERS if p in _PEERS.value)  # jnp_one last: the reference
    for p in peers:
        if p not in PEERS:
            raise app.UsageError(f"unknown peer {p!r}; choose from {', '.join(PEERS)}")
    cfg = Config(n=_N.value, dtype=_DTYPE.value, block=_BLOCK.value or None,
                 modes=tuple(_MODES.value), peers=peers, repeats=_REPEATS.value)  # fmt: skip
    common.run_and_report(run, cfg, COLUMNS, json_out=_JSON_OUT.value, plot=None,
                          title=f"jaxwren.lax n={cfg.n} {cfg.dtype}")  # fmt: skip


if __name__ == "__main__":
    app.run(main)
