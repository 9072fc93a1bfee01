"""The steps of the LU tile plans (:mod:`.lu_tiles` has the schedule and its kernels).

In-core (``"tiles"``): one step per column (its A panel read; every finished column
swept over it from host memory; the panel factored), then one step that puts every
column's rows in the final order while it assembles the factor, and writes it. Not
resumable (as the kernel).

Out-of-core (``"out-of-core"``): per column, a step that reads its A panel, one per
finished column (its rows from the diagonal tile down, read back from the store, swept
over the panel), and one that factors the panel and writes the column as it is and its
pivots (two records); then one fix-up step per column (its rows below the diagonal
tile read, put in the final order, written back; a record). A rerun skips what is
recorded. A fix-up rewrites a column in place, so once every column is recorded a
column without its fix-up record may be half rewritten: such a column is factored
again (the same pivots) before its fix-up.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.engine.plan import Plan, Read, Step, Write
from jaxwren.engine.problem import Resume
from jaxwren.linalg.lu_tiles import Pivots, Sweep, factor_panel, host_column
from jaxwren.sharding.mesh import COLS, ROWS
from jaxwren.storage.buffers import aligned_empty

__all__ = ["Setup", "incore_plan", "ooc_plan"]


@dataclasses.dataclass
class Setup:
    """One planned run: the source, size, dtype, mesh, the targets (None: returned),
    the resume records, the selector's reason, the op's name and whether an exact zero
    pivot is allowed; ``details`` receives the growth factor."""

    src: Any
    n: int
    dtype: np.dtype
    mesh: Mesh
    lu: Any
    piv: Any
    resume: Resume
    why: str
    where: str
    allow_singular: bool
    details: dict


class _Run:
    """What the steps of one run share on the host."""

    def __init__(self, s: Setup, t: int) -> None:
        self.s, self.t = s, t
        self.nt = -(-s.n // t)
        self.n_pad = self.nt * t
        self.piv = Pivots(self.n_pad, t)
        self.sweep = Sweep(s.mesh, t, self.nt, self.piv)
        self.maxa: list[Any] = []
        self.maxu: list[Any] = []
        self.info = -1
        self.col = NamedSharding(s.mesh, P(None, (ROWS, COLS)))
        self.rep = NamedSharding(s.mesh, P())

    def panel_read(self, jj: int) -> Read:
        t, n = self.t, self.s.n
        return Read(self.s.src, (0, n, jj * t, min(n, jj * t + t)), (self.n_pad, t), self.col,
                    self.s.dtype)  # fmt: skip

    def start(self, p: jax.Array) -> jax.Array:
        self.maxa.append(self.sweep.k["absmax"](p, np.int32(self.s.n)))
        return p

    def factor(self, p: jax.Array, jj: int) -> np.ndarray:
        """The swept panel (in row order ``jj``) factored on the host: the column."""
        self.maxu.append(self.sweep.k["absmax"](p, np.int32(jj * self.t)))
        col = host_column(p)
        s = self.s
        info, mu = factor_panel(col, jj, s.n, self.t, self.piv, s.where, s.allow_singular)
        self.maxu.append(mu)
        if self.info < 0:
            self.info = info
        return col

    def finish_details(self, complete: bool) -> None:
        maxa = max((float(x) for x in self.maxa), default=0.0)
        maxu = max((float(x) for x in self.maxu), default=0.0)
        self.s.details.update(growth_factor=maxu / maxa if maxa else 1.0, tile=self.t,
                              growth_over_all_columns=complete)  # fmt: skip


def incore_plan(s: Setup, t: int) -> Plan:
    r = _Run(s, t)
    nt, n, n_pad = r.nt, s.n, r.n_pad
    kept: dict[int, np.ndarray] = {}
    steps = []
    for jj in range(nt):

        def kern(carry: Any, p: jax.Array, jj: int = jj) -> tuple[None, tuple]:
            p = r.start(p)
            for k in range(jj):
                p = r.sweep.apply(p, k, k, kept[k][k * t :], k + 1, cache=True)
            kept[jj] = r.factor(p, jj)
            return None, ()

        steps.append(Step((r.panel_read(jj),), kern, label=f"column {jj}"))

    def assemble(carry: Any) -> tuple[None, tuple]:
        lu = aligned_empty((n, n), s.dtype)
        for k in range(nt):
            c0, w = k * t, min(t, n - k * t)
            idx = r.piv.between(k + 1, nt)[:n] if k < nt - 1 else np.arange(n)
            lu[:, c0 : c0 + w] = kept.pop(k)[idx, :w]
        r.finish_details(True)
        return None, (lu, r.piv.piv[:n, None].astype(np.int32))

    writes = (Write(s.lu, (0, 0), (n, n)), Write(s.piv, (0, 0), (n, 1)))
    steps.append(Step((), assemble, writes, label="assemble"))
    desc = (f"tiles: in-core left-looking LU, {nt} column tiles of {t} (n padded to {n_pad}), "
            "finished columns kept in memory, panels on host LAPACK getrf")  # fmt: skip
    return Plan(s.where, steps, None, tiles=desc, reason=s.why)


def ooc_plan(s: Setup, t: int) -> Plan:
    r = _Run(s, t)
    nt, n = r.nt, s.n
    keys = [(s.resume.key(f"c{t}-{j}"), s.resume.key(f"p{t}-{j}"), s.resume.key(f"f{t}-{j}"))
            for j in range(nt)]  # fmt: skip
    done = [s.resume.done(c) and s.resume.done(p) for c, p, _ in keys]
    fixed = [s.resume.done(f) for _, _, f in keys]
    if all(done):  # the fix-ups may have begun: redo every column not fixed up
        done = [d and (f or j == nt - 1) for j, (d, f) in enumerate(zip(done, fixed))]
    state = [nt if fixed[k] else k + 1 for k in range(nt)]  # each stored column's row order
    steps: list[Step] = []
    for jj in range(nt):
        if done[jj]:
            continue
        steps.append(Step((r.panel_read(jj),), lambda c, p: ((r.start(p), 0), ()),
                          label=f"column {jj}: A"))  # fmt: skip
        for k in range(jj):
            read = Read(s.lu, (k * t, n, k * t, k * t + t), (r.n_pad - k * t, t), r.rep,
                        s.dtype)  # fmt: skip

            def sweep(carry: Any, low: jax.Array, k: int = k) -> tuple[tuple, tuple]:
                p = r.sweep.apply(carry[0], carry[1], k, _host(low), state[k], cache=False)
                return (p, state[k]), ()

            steps.append(Step((read,), sweep, label=f"column {jj} -= column {k}"))

        def factor(carry: Any, jj: int = jj) -> tuple[None, tuple]:
            p = r.sweep.to_state(carry[0], carry[1], jj)
            col = r.factor(p, jj)
            if nt == 1:
                r.finish_details(True)
            c0, w = jj * t, min(t, n - jj * t)
            return None, (col[:n, :w], r.piv.piv[c0 : c0 + w, None].astype(np.int32))

        c0, w = jj * t, min(t, n - jj * t)
        writes = (Write(s.lu, (0, c0), (n, w), record=keys[jj][0]),
                  Write(s.piv, (c0, 0), (w, 1), record=keys[jj][1]))  # fmt: skip
        steps.append(Step((), factor, writes, label=f"column {jj}: getrf"))
    for k in range(nt - 1):
        if fixed[k]:
            continue
        r0 = (k + 1) * t
        read = Read(s.lu, (r0, n, k * t, k * t + t), (n - r0, t), r.rep, s.dtype)

        def fix(carry: Any, low: jax.Array, k: int = k, r0: int = r0) -> tuple[None, tuple]:
            idx = r.piv.between(k + 1, nt)[r0:n] - r0
            out = aligned_empty((n - r0, t), s.dtype)
            np.take(_host(low), idx, axis=0, out=out)
            if k == nt - 2:
                r.finish_details(not any(done))
            return None, (out,)

        steps.append(Step((read,), fix, (Write(s.lu, (r0, k * t), (n - r0, t),
                                               record=keys[k][2]),), label=f"fix-up {k}"))  # fmt: skip
    if any(done) and steps:  # the stored pivots of the finished columns, first
        steps[0] = _with_pivots(steps[0], r, s, done)
    desc = (f"out-of-core: left-looking LU over the store, {nt} column tiles of {t}, the "
            "panel resident, finished columns read back, interchanges applied lazily")
    return Plan(s.where, steps, lambda: None, tiles=desc, reason=s.why)


def _host(x: jax.Array) -> np.ndarray:
    """A replicated tile's host data (on CPU devices its shared buffer, no copy)."""
    shard = x.addressable_shards[0].data
    return np.asarray(shard)


def _with_pivots(step: Step, r: _Run, s: Setup, done: list[bool]) -> Step:
    read = Read(s.piv, (0, s.n, 0, 1), (s.n, 1), r.rep, np.dtype(np.int32))

    def kern(carry: Any, *tiles: jax.Array) -> Any:
        stored = _host(tiles[0])[:, 0].astype(np.int64)
        for jj, d in enumerate(done):
            if d:
                c0 = jj * r.t
                w = min(r.t, s.n - c0)
                r.piv.set(jj, stored[c0 : c0 + w] - c0)
        return step.kernel(carry, *tiles[1:])

    return Step((read, *step.reads), kern, step.writes, step.label, step.skip, step.check,
                step.warm)  # fmt: skip
