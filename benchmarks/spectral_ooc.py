"""Out-of-core polar and eigh (``jaxwren/linalg/spectral_ooc.py``) against the in-core
``jw.polar`` / ``jw.eigh`` (QDWH, QDWH-eig) and scipy/numpy, same data, same run.

Usage::

    python -m benchmarks.spectral_ooc --n=2048 --block=256
    python -m benchmarks.spectral_ooc --n=4096 --block=512 --modes=polar --skip=scipy

The matrix (a Gaussian one for polar, its symmetric part for eigh, float64) is stored in a
local file store; the out-of-core run gets ``memory_budget`` = ``--fraction`` (default
1/4) of the matrix's bytes and stores its factors (and ``OUT/work``) next to it; the
in-core run gets the default budget and returns its factors. Each is one timed call (the
out-of-core route compiles its kernels inside it); then the out-of-core call is repeated
on the stored pieces (``rerun_s``: every piece reused). Reported: seconds, QDWH steps
(polar; in core: ``jaxwren.lax.qdwh.polar_kernel``'s count), pipeline runs, splits and
leaves (eigh), the accuracy as in ``benchmarks/eigh.py``, the load average.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import Any

import jax
import numpy as np
import scipy.linalg as sl
from absl import app, flags

import jaxwren as jw
from benchmarks import common  # noqa: I001  (sets the emulated devices before jax)

MODES = ("polar", "eigh")

_N = flags.DEFINE_integer("n", 2048, "Matrix size.")
_BLOCK = flags.DEFINE_integer("block", 256, "Stored block size of the input.")
_FRACTION = flags.DEFINE_float("fraction", 0.25, "memory_budget / the matrix's bytes.")
_MODES = flags.DEFINE_list("modes", list(MODES), f"Modes: {','.join(MODES)}")
_SKIP = flags.DEFINE_list("skip", [], "Peers not to run: incore, scipy, numpy.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "One JSON line per result.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    n: int = 2048
    block: int = 256
    fraction: float = 0.25
    modes: tuple[str, ...] = MODES
    skip: tuple[str, ...] = ()
    dtype: str = "float64"  # (x64 on, in common.run_and_report)


def _ooc(fn: Any, cfg: Config, *args: Any) -> tuple[dict, Any]:
    budget = int(cfg.fraction * cfg.n * cfg.n * 8)
    t0 = time.perf_counter()
    with jw.observe() as runs:
        out = fn(*args, memory_budget=budget)
    row = {"seconds": time.perf_counter() - t0, "budget": budget, **runs[-1].details}
    t0 = time.perf_counter()
    fn(*args, memory_budget=budget)
    row["rerun_s"] = time.perf_counter() - t0
    return row, out


def polar(cfg: Config, d: str) -> list[dict]:
    a = np.random.default_rng(1).standard_normal((cfg.n, cfg.n))
    A = jw.from_numpy(a, f"{d}/A", (cfg.block, cfg.block))
    rows = []
    row, (u, h) = _ooc(jw.polar, cfg, A, f"{d}/P")
    u, h = u.numpy(), h.numpy()
    row.update(name="polar/out_of_core", orth_err=float(np.abs(u.T @ u - np.eye(cfg.n)).max()),
               residual=float(np.linalg.norm(u @ h - a) / np.linalg.norm(a)))  # fmt: skip
    rows.append(row)
    if "incore" not in cfg.skip:
        from jaxwren.lax.layout import block_size
        from jaxwren.lax.qdwh import polar_kernel

        t = common.timed(lambda: jax.block_until_ready(jw.polar(A)))
        mesh = jw.default_mesh()
        k = polar_kernel(jax.device_put(a), mesh, block_size(cfg.n, mesh), 60, want_h=False)[2]
        rows.append({"name": "polar/in_core", "seconds": t, "iterations": int(k)})
    if "scipy" not in cfg.skip:
        rows.append({"name": "polar/scipy", "seconds": common.timed(lambda: sl.polar(a))})
    return rows


def eigh(cfg: Config, d: str) -> list[dict]:
    x = np.random.default_rng(0).standard_normal((cfg.n, cfg.n))
    a = (x + x.T) / 2
    A = jw.from_numpy(a, f"{d}/S", (cfg.block, cfg.block))
    row, (w, v) = _ooc(jw.eigh, cfg, A, f"{d}/E")
    w, v = np.asarray(w), v.numpy()
    row.pop("split_iterations", None)
    row.update(name="eigh/out_of_core",
               eig_err=float(np.abs(w - np.linalg.eigvalsh(a)).max() / np.linalg.norm(a, 2)),
               orth_err=float(np.abs(v.T @ v - np.eye(cfg.n)).max()),
               residual=float(np.linalg.norm(a @ v - v * w) / np.linalg.norm(a)))  # fmt: skip
    rows = [row]
    if "incore" not in cfg.skip:
        t = common.timed(lambda: jax.block_until_ready(jw.eigh(A)))
        rows.append({"name": "eigh/in_core", "seconds": t})
    if "numpy" not in cfg.skip:
        rows.append({"name": "eigh/numpy", "seconds": common.timed(lambda: np.linalg.eigh(a))})
    return rows


def run(cfg: Config) -> list[dict]:
    """Times the out-of-core route and its peers in each mode, the load average around."""
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as d:
        for mode in cfg.modes:
            if mode not in MODES:
                raise app.UsageError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
            load0 = common.os.getloadavg()[0]
            rows = (polar if mode == "polar" else eigh)(cfg, d)
            load = (load0 + common.os.getloadavg()[0]) / 2
            for r in rows:
                r.update(n=cfg.n, load_avg_1m=load, x_out_of_core=r["seconds"] / rows[0]["seconds"])
                print(f"{r['name']:>20}: {r['seconds']:8.2f} s", flush=True)
            results += rows
    return results


COLUMNS = [("name", "name", ""), ("n", "n", "d"), ("seconds", "seconds", ".1f"),
           ("peer s / ooc s", "x_out_of_core", ".2f"), ("rerun s", "rerun_s", ".1f"),
           ("steps", "iterations", ""), ("runs", "runs", ""), ("splits", "splits", ""),
           ("eig err", "eig_err", ".1e"), ("orth err", "orth_err", ".1e"),
           ("residual", "residual", ".1e"), ("load", "load_avg_1m", ".1f")]  # fmt: skip


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = Config(n=_N.value, block=_BLOCK.value, fraction=_FRACTION.value,
                 modes=tuple(_MODES.value), skip=tuple(_SKIP.value))  # fmt: skip
    common.run_and_report(run, cfg, COLUMNS, json_out=_JSON_OUT.value, plot=None,
                          title=f"out-of-core polar/eigh n={cfg.n}")  # fmt: skip


if __name__ == "__main__":
    app.run(main)
