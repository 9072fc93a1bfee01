"""The steps of the LU tile plans (:mod:`.lu_tiles` has the schedule and its kernels).

In-core (``"tiles"``): one step per column (its A panel read; every finished column
swept over it from host memory; the panel factored), then one step that puts every
column's rows in the final order while it assembles the factor, and writes it. Not
resumable (as the kernel).

Out-of-core (``"out-of-core"``, the device sweep's plan: accelerators; CPU devices of
one process take :mod:`.lu_ooc`, the same schedule in pieces): per column, a step that
reads its A panel, then one
per finished column (its rows from the diagonal tile down, read back from the store,
swept over the panel), the last of which also factors the panel and writes the column
as it is and its pivots (two records); then one fix-up step per column (its rows below
the diagonal tile read, put in the final order, written back; a record). A rerun skips
what is recorded. A fix-up rewrites a column in place, so once every column is recorded
a column without its fix-up record may be half rewritten: such a column is factored
again (the same pivots) before its fix-up.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.engine.plan import Plan, Read, Step, Write
from jaxwren.engine.problem import Resume
from jaxwren.linalg.lu_host import HostSweep
from jaxwren.linalg.lu_plans import available, stripe_width
from jaxwren.linalg.lu_tiles import Pivots, Sweep, factor_panel
from jaxwren.sharding.mesh import COLS, ROWS
from jaxwren.storage.buffers import aligned_empty

__all__ = ["Setup", "incore_plan", "ooc_plan", "solve_plan"]


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

    def __init__(self, s: Setup, t: int, host: bool = False) -> None:
        """``host``: the sweep on host BLAS (:mod:`.lu_host`: CPU devices of one process,
        where the in-core plans run and the out-of-core plan takes it), else on the
        devices."""
        self.s, self.t = s, t
        self.nt = -(-s.n // t)
        self.n_pad = self.nt * t
        self.piv = Pivots(self.n_pad, t)
        self.sweep: Any = (HostSweep(t, self.nt, self.piv) if host
                           else Sweep(s.mesh, t, self.nt, self.piv))  # fmt: skip
        self.maxa: list[Any] = []
        self.maxu: list[Any] = []
        self.info = -1
        self.col = NamedSharding(s.mesh, P(None, (ROWS, COLS)))
        self.rep = NamedSharding(s.mesh, P())

    def panel_read(self, jj: int, float64: bool = False) -> Read:
        """A's panel ``jj`` (in float64 when a refined solve keeps it, else in the
        factor's dtype)."""
        t, n = self.t, self.s.n
        dtype = np.dtype(np.float64) if float64 else self.s.dtype
        sharding = self.rep if self.sweep.host else self.col  # (host: one shared buffer)
        return Read(self.s.src, (0, n, jj * t, min(n, jj * t + t)), (self.n_pad, t), sharding,
                    dtype)  # fmt: skip

    def start(self, p: jax.Array) -> Any:
        """The panel in the factor's dtype (a copy when cast: the read is kept; on the
        host sweep always a writable host copy)."""
        p = self.sweep.start(p, self.s.dtype)
        self.maxa.append(self.sweep.absmax(p, self.s.n))
        return p

    def factor(self, p: Any, jj: int) -> np.ndarray:
        """The swept panel (in row order ``jj``) factored on the host: the column."""
        self.maxu.append(self.sweep.absmax(p, jj * self.t))
        col = self.sweep.column(p)
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


def _columns(r: _Run, kept: dict[int, np.ndarray], keep_a: list | None = None) -> list[Step]:
    """The in-core column steps (host sweep). Step ``jj`` factors panel ``jj - 1``
    (carried from the step before), then sweeps panel ``jj`` by columns ``0 .. jj-1``,
    every BLAS call on every core (a getrf beside the sweep on a second thread measured
    slower: BUILD_NOTES); the last panel is left in the carry. ``keep_a``: the A panels
    as read are kept there (a refined solve's residuals)."""
    t = r.t

    def kern(carry: Any, p: jax.Array, jj: int) -> tuple[Any, tuple]:
        if keep_a is not None:
            keep_a.append(p)
        p = r.start(p)
        with r.sweep.threads():
            if jj:  # the last panel factored, then every finished column swept over p
                kept[jj - 1] = r.factor(carry, jj - 1)
            for k in range(jj):  # (p in row order k before column k sweeps it)
                p = r.sweep.apply(p, k, k, kept[k][k * t :], k + 1)
        return p, ()

    warm = functools.partial(r.sweep.warm, r.n_pad, r.s.dtype)
    return [Step((r.panel_read(jj, keep_a is not None),), functools.partial(kern, jj=jj),
                 label=f"column {jj}", warm=warm if jj == 0 else None)
            for jj in range(r.nt)]  # fmt: skip


def _last(r: _Run, kept: dict[int, np.ndarray], carry: Any) -> None:
    """Factors the last panel (every pivot is known after it)."""
    with r.sweep.threads():
        kept[r.nt - 1] = r.factor(carry, r.nt - 1)
    r.finish_details(True)


def _final(r: _Run, kept: dict[int, np.ndarray], k: int, out: np.ndarray) -> None:
    """Column ``k`` put in the final row order into ``out`` (``n x w``; freed)."""
    n, nt = r.s.n, r.nt
    idx = r.piv.between(k + 1, nt)[:n] if k < nt - 1 else slice(0, n)
    out[...] = kept.pop(k)[idx, : out.shape[1]]


def _assemble(r: _Run, kept: dict[int, np.ndarray], carry: Any,
              fortran: bool = False) -> np.ndarray:  # fmt: skip
    """Factors the last panel and puts every column in the final row order: ``lu``
    (``fortran``: Fortran-ordered, for LAPACK)."""
    n, t = r.s.n, r.t
    _last(r, kept, carry)
    lu = aligned_empty((n, n), r.s.dtype).T if fortran else aligned_empty((n, n), r.s.dtype)
    for k in range(r.nt):
        _final(r, kept, k, lu[:, k * t : min(n, k * t + t)])
    return lu


def incore_plan(s: Setup, t: int) -> Plan:
    """The column steps, then the last getrf (the pivots written), then the factor in
    stripes of whole stored chunks, one step each: the writer stores a stripe while
    the next is put in order."""
    r = _Run(s, t, host=True)
    kept: dict[int, np.ndarray] = {}
    n = s.n
    if s.lu is None:  # a returned factor: one host array

        def whole(carry: Any) -> tuple[None, tuple]:
            return None, (_assemble(r, kept, carry), r.piv.piv[:n, None].astype(np.int32))

        steps = [*_columns(r, kept), Step((), whole, (Write(None), Write(None)),
                                          label="getrf and assemble")]  # fmt: skip
        return Plan(s.where, steps, lambda: None, tiles=_describe(r), reason=s.why)
    width = stripe_width(n, t, s.lu.block_shape[1])

    def last(carry: Any) -> tuple[None, tuple]:
        _last(r, kept, carry)
        return None, (r.piv.piv[:n, None].astype(np.int32),)

    def stripe(carry: Any, c0: int) -> tuple[None, tuple]:
        out = aligned_empty((n, min(n, c0 + width) - c0), s.dtype)
        for k in range(c0 // t, min(r.nt, (c0 + width) // t)):
            _final(r, kept, k, out[:, k * t - c0 : min(n, k * t + t) - c0])
        return None, (out,)

    steps = _columns(r, kept)
    steps.append(Step((), last, (Write(s.piv, (0, 0), (n, 1)),), label="getrf"))
    steps += [Step((), functools.partial(stripe, c0=c0),
                   (Write(s.lu, (0, c0), (n, min(n, c0 + width) - c0)),),
                   label=f"columns {c0}:{min(n, c0 + width)} in order")
              for c0 in range(0, n, width)]  # fmt: skip
    return Plan(s.where, steps, lambda: None, tiles=_describe(r), reason=s.why)


def _describe(r: _Run) -> str:
    return (
        f"tiles: in-core left-looking LU, {r.nt} column tiles of {r.t} (n padded to "
        f"{r.n_pad}), finished columns kept in memory, panels on host LAPACK getrf"
    )


def solve_plan(s: Setup, t: int, b: Any, k: int, refine: bool, x: Any,
               check: Any) -> Plan:  # fmt: skip
    """``x`` of ``A x = b`` on the in-core tile plan: the factor in ``s.dtype`` (float32
    when ``refine``, the A panels read in float64 and kept), then on the host LAPACK
    ``getrs`` and, when ``refine``, float64 residuals with the kept panels until the
    backward error reaches float64 level (:func:`.lu_tiles.refine`); ``b`` None: the
    identity (``inv``). ``check`` gets
    ``(x, [info, corrections, backward error])``."""
    from jaxwren.linalg.lu_tiles import inverse
    from jaxwren.linalg.lu_tiles import refine as refine_x

    r = _Run(s, t, host=True)
    kept: dict[int, np.ndarray] = {}
    panels: list | None = [] if refine else None
    data = np.dtype(np.float64) if refine else s.dtype

    def finish(carry: Any, *bt: jax.Array) -> tuple[None, tuple]:
        lu = _assemble(r, kept, carry, fortran=True)
        piv = r.piv.piv[: s.n]
        with r.sweep.threads():
            if not bt:  # inv: LAPACK getri from the factor, in place
                return None, (inverse(lu, piv, r.info), np.array([r.info, 0, 0.0]))
            rhs = np.array(_host(bt[0])[: s.n], data)
            sol, it, err = refine_x(lu, piv, rhs, panels if refine else None, t, r.info)
        return None, (sol, np.array([r.info, it, err]))

    steps = _columns(r, kept, panels)
    rep = NamedSharding(s.mesh, P())
    read_b = () if b is None else (Read(b, (0, s.n, 0, k), (s.n, k), rep, data),)
    steps.append(Step(read_b, finish, (Write(x, (0, 0), (s.n, k)), Write(None)),
                      label="getrf, getrs" + (" and refinement" if refine else ""),
                      check=check))  # fmt: skip
    return Plan(s.where, steps, lambda: None, tiles=_describe(r), reason=s.why)


def resumed_columns(s: Setup, cols: list[tuple[Any, Any]],
                    fixed: list[bool]) -> tuple[list[bool], list[int]]:  # fmt: skip
    """``(done, state)`` of the out-of-core plans' columns from their records (``cols``:
    each column's and its pivots' keys; ``fixed``: its fix-up recorded, which voids the
    column's record): whether it is stored, and the row order it is stored in."""
    nt = len(cols)
    done = [f or (s.resume.done(c) and s.resume.done(p))
            for (c, p), f in zip(cols, fixed, strict=True)]  # fmt: skip
    if all(done):  # the fix-ups may have begun: redo every column not fixed up
        done = [d and (f or j == nt - 1) for j, (d, f) in enumerate(zip(done, fixed, strict=True))]
    return done, [nt if fixed[k] else k + 1 for k in range(nt)]


def ooc_plan(s: Setup, t: int) -> Plan:
    r = _Run(s, t, host=available(s.mesh))  # CPU devices of one process: host BLAS
    nt, n = r.nt, s.n
    keys = [(s.resume.key(f"c{t}-{j}"), s.resume.key(f"p{t}-{j}"), s.resume.key(f"f{t}-{j}"))
            for j in range(nt)]  # fmt: skip
    fixed = [s.resume.done(f) for _, _, f in keys]
    done, state = resumed_columns(s, [(c, p) for c, p, _ in keys], fixed)
    steps: list[Step] = []
    for jj in range(nt):
        skip = done[jj]
        steps.append(Step((r.panel_read(jj),), lambda c, p: ((r.start(p), 0), ()),
                          label=f"column {jj}: A", skip=skip))  # fmt: skip
        for k in range(jj):  # one finished column read back per step (measured faster
            # than two: no copy of each column out of a shared read)
            read = Read(s.lu, (k * t, n, k * t, k * t + t), (r.n_pad - k * t, t), r.rep,
                        s.dtype)  # fmt: skip

            def sweep(carry: Any, low: jax.Array, k: int = k) -> tuple[tuple, tuple]:
                with r.sweep.threads():
                    p = r.sweep.apply(carry[0], carry[1], k, _host(low), state[k])
                return (p, state[k]), ()

            steps.append(Step((read,), sweep, label=f"column {jj} -= column {k}", skip=skip))

        def factor(carry: Any, *tiles: jax.Array, last: Any, jj: int) -> tuple[None, tuple]:
            carry, _ = last(carry, *tiles)  # the column's last step, then its getrf
            p = r.sweep.to_state(carry[0], carry[1], jj)
            with r.sweep.threads():
                col = r.factor(p, jj)
            if nt == 1:
                r.finish_details(True)
            c0, w = jj * t, min(t, n - jj * t)
            return None, (col[:n, :w], r.piv.piv[c0 : c0 + w, None].astype(np.int32))

        c0, w = jj * t, min(t, n - jj * t)
        writes = (Write(s.lu, (0, c0), (n, w), record=keys[jj][0]),
                  Write(s.piv, (c0, 0), (w, 1), record=keys[jj][1]))  # fmt: skip
        last = steps[-1]  # the getrf joins it: one step (and one wait) less per column
        steps[-1] = dataclasses.replace(
            last, kernel=functools.partial(factor, last=last.kernel, jj=jj), writes=writes,
            label=f"{last.label}; getrf")  # fmt: skip
    for k in range(nt - 1):
        r0 = (k + 1) * t
        read = Read(s.lu, (r0, n, k * t, k * t + t), (n - r0, t), r.rep, s.dtype)

        def fix(carry: Any, low: jax.Array, k: int = k, r0: int = r0) -> tuple[None, tuple]:
            idx = r.piv.between(k + 1, nt)[r0:n] - r0
            out = aligned_empty((n - r0, t), s.dtype)
            np.take(_host(low), idx, axis=0, out=out)
            if k == nt - 2:
                r.finish_details(not any(done))
            return None, (out,)

        write = Write(s.lu, (r0, k * t), (n - r0, t), record=keys[k][2])
        steps.append(Step((read,), fix, (write,), label=f"fix-up {k}", skip=fixed[k]))
    first = next((i for i, st in enumerate(steps) if not st.skip), None)
    if first is not None:  # compile ahead; the stored pivots of the finished columns
        # (of every column with a pivots record: a column factored again after the
        # fix-ups began is swept in the final row order, which needs them all)
        steps[first : first + 1] = _first(
            steps[first], r, s, [s.resume.done(p) for _, p, _ in keys]
        )
    desc = (
        f"out-of-core: left-looking LU over the store, {nt} column tiles of {t}, the "
        "panel resident, finished columns read back, interchanges applied lazily"
    )
    return Plan(s.where, steps, lambda: None, tiles=desc, reason=s.why)


def _host(x: jax.Array | np.ndarray) -> np.ndarray:
    """A host tile, or a replicated tile's host data (on CPU devices its shared buffer,
    no copy)."""
    if isinstance(x, np.ndarray):
        return x
    shard = x.addressable_shards[0].data
    return np.asarray(shard)


def _first(step: Step, r: _Run, s: Setup, done: list[bool]) -> list[Step]:
    """The first step to run, compiling the kernels ahead, after a step of its own that
    reads the stored pivots of the columns ``done`` (no step reads more than a panel)."""
    first = dataclasses.replace(step, warm=functools.partial(r.sweep.warm, r.n_pad, s.dtype))
    if not any(done):
        return [first]
    read = Read(s.piv, (0, s.n, 0, 1), (s.n, 1), r.rep, np.dtype(np.int32))

    def kern(carry: Any, piv: jax.Array) -> tuple[Any, tuple]:
        stored = _host(piv)[:, 0].astype(np.int64)
        for jj, d in enumerate(done):
            if d:
                c0 = jj * r.t
                w = min(r.t, s.n - c0)
                r.piv.set(jj, stored[c0 : c0 + w] - c0)
        return carry, ()

    return [Step((read,), kern, label="stored pivots"), first]
