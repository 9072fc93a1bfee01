"""The out-of-core LU plan on host BLAS (CPU devices of one process): the schedule of
:func:`.lu_steps.ooc_plan` with everything but the panel moved in pieces.

The budget holds one panel (``n_pad x t``, :class:`.lu_host.HostSweep`)
and a few pieces of ``h`` rows (:func:`.lu_plans.piece_rows`, whole tiles): A's panel is read in
pieces into it; each finished column is read back a piece at a time, its diagonal tile's
piece solving ``U[K, J]`` and every piece updating its rows of the panel (one ``gemm``);
``getrf`` factors the panel in place (:mod:`.host_blas`), and the panel itself is the
column written, settled (``Write.settle``: stored before the next panel is allocated,
so no copy of it waits behind). A fix-up holds a column's rows below its diagonal tile
(read in pieces) and writes them back in the final order a piece at a time, each piece
recorded. So the widest tile that fits is about twice that of a plan moving whole
panels (measured: BUILD_NOTES, "Out-of-core LU").

Resume: as the device plan; a fix-up is done when all its pieces are recorded, and a
column whose fix-up began is factored again (it may be half rewritten).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from jaxwren.engine.plan import Plan, Read, Step, Write
from jaxwren.linalg.lu_plans import piece_rows
from jaxwren.linalg.lu_steps import Setup, _first, _host, _Run, resumed_columns
from jaxwren.storage.buffers import aligned_empty

__all__ = ["host_ooc_plan"]


def host_ooc_plan(s: Setup, t: int) -> Plan:
    r = _Run(s, t, host=True)
    nt, n, h = r.nt, s.n, piece_rows(s.n, t)
    key = s.resume.key
    cols = [(key(f"c{t}-{j}"), key(f"p{t}-{j}")) for j in range(nt)]
    fixes = [[key(f"f{t}-{k}-{a}") for a in range((k + 1) * t, n, h)] for k in range(nt)]
    fixed = [bool(f) and all(s.resume.done(x) for x in f) for f in fixes]
    done, state = resumed_columns(s, cols, fixed)
    steps: list[Step] = []
    for jj in range(nt):
        c0, w = jj * t, min(t, n - jj * t)
        for a in range(0, n, h):
            read = Read(s.src, (a, min(n, a + h), c0, c0 + w), (h, t), None, s.dtype)
            steps.append(Step((read,), functools.partial(_a_piece, r=r, a=a),
                              label=f"column {jj}: A rows {a}:", skip=done[jj]))  # fmt: skip
        for k in range(jj):
            for a in range(k * t, n, h):
                read = Read(s.lu, (a, min(n, a + h), k * t, k * t + t), (h, t), None, s.dtype)
                steps.append(Step((read,), functools.partial(_sweep, r=r, k=k, a=a, state=state),
                                  label=f"column {jj} -= column {k} rows {a}:",
                                  skip=done[jj]))  # fmt: skip
        last = steps[-1]  # the getrf joins it
        writes = (Write(s.lu, (0, c0), (n, w), record=cols[jj][0], settle=True),
                  Write(s.piv, (c0, 0), (w, 1), record=cols[jj][1]))  # fmt: skip
        steps[-1] = dataclasses.replace(
            last, kernel=functools.partial(_factor, r=r, last=last.kernel, jj=jj),
            writes=writes, label=f"{last.label}; getrf")  # fmt: skip
    for k in range(nt - 1):
        r0 = (k + 1) * t
        for a in range(r0, n, h):
            read = Read(s.lu, (a, min(n, a + h), k * t, k * t + t), (h, t), None, s.dtype)
            steps.append(Step((read,), functools.partial(_hold, r=r, k=k, r0=r0, a=a),
                              label=f"fix-up {k}: rows {a}:", skip=fixed[k]))  # fmt: skip
        for i, a in enumerate(range(r0, n, h)):
            rows = min(h, n - a)
            kern = functools.partial(_fix, r=r, r0=r0, a=a, rows=rows, fresh=not any(done),
                                     final=k == nt - 2 and a + h >= n)  # fmt: skip
            steps.append(Step((), kern, (Write(s.lu, (a, k * t), (rows, t), record=fixes[k][i]),),
                              label=f"fix-up {k}: write rows {a}:", skip=fixed[k]))  # fmt: skip
    first = next((i for i, st in enumerate(steps) if not st.skip), None)
    if first is not None:  # the stored pivots of the finished columns, when resumed
        steps[first : first + 1] = _first(steps[first], r, s, [s.resume.done(p) for _, p in cols])
    desc = (f"out-of-core: left-looking LU over the store, {nt} column tiles of {t}, the panel "
            f"resident on host BLAS, finished columns read back in pieces of {h} rows, "
            "interchanges applied lazily")  # fmt: skip
    return Plan(s.where, steps, lambda: None, tiles=desc, reason=s.why)


def _a_piece(carry: Any, tile: Any, r: _Run, a: int) -> tuple[Any, tuple]:
    """A's rows ``a : a + h`` of the panel into the carry (a new panel at ``a = 0``)."""
    n_pad, n = r.n_pad, r.s.n
    if a == 0:
        p = aligned_empty((n_pad, r.t), r.s.dtype)
        p[n:] = 0
        carry = (p, 0)
    x = _host(tile)
    rows = min(len(x), n_pad - a)
    carry[0][a : a + rows] = x[:rows]
    r.maxa.append(r.sweep.absmax(carry[0][a : min(n, a + rows)], n))
    return carry, ()


def _sweep(carry: Any, tile: Any, r: _Run, k: int, a: int, state: list[int]) -> tuple[Any, tuple]:
    """Column ``k``'s rows ``a : a + h`` (read back) swept over the panel."""
    x = _host(tile)
    with r.sweep.threads():
        p = r.sweep.apply(carry[0], carry[1], k, x[: r.n_pad - a], state[k], row=a)
    return (p, state[k]), ()


def _factor(carry: Any, *tiles: Any, r: _Run, last: Any, jj: int) -> tuple[None, tuple]:
    """The column's last step, then its getrf in place: the column and its pivots."""
    carry, _ = last(carry, *tiles)
    p = r.sweep.to_state(carry[0], carry[1], jj)
    with r.sweep.threads():
        col = r.factor(p, jj)
    if r.nt == 1:
        r.finish_details(True)
    n, c0 = r.s.n, jj * r.t
    w = min(r.t, n - c0)
    return None, (col[:n, :w], r.piv.piv[c0 : c0 + w, None].astype(np.int32))


def _hold(carry: Any, tile: Any, r: _Run, k: int, r0: int, a: int) -> tuple[Any, tuple]:
    """A fix-up's rows ``a : a + h`` into the held rows (new ones at ``a = r0``, with
    column ``k``'s final row order below its diagonal tile, once per fix-up)."""
    n = r.s.n
    if a == r0:
        carry = (aligned_empty((n - r0, r.t), r.s.dtype),
                 r.piv.between(k + 1, r.nt)[r0:n] - r0)  # fmt: skip
    x = _host(tile)
    rows = min(len(x), n - a)
    carry[0][a - r0 : a - r0 + rows] = x[:rows]
    return carry, ()


def _fix(held: Any, r: _Run, r0: int, a: int, rows: int, final: bool,
         fresh: bool) -> tuple[Any, tuple]:  # fmt: skip
    """Rows ``a : a + rows`` of the held column in the final row order (the last piece
    frees the held rows)."""
    out = aligned_empty((rows, r.t), r.s.dtype)
    np.take(held[0], held[1][a - r0 : a - r0 + rows], axis=0, out=out)
    if final:
        r.finish_details(fresh)
    return (None if a + rows >= r.s.n else held), (out,)
