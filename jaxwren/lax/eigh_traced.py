"""QDWH-eig spectral divide and conquer as one traceable program (``jaxwren.lax.eigh``
inside ``jit``).

The eager driver (:mod:`jaxwren.lax.divide_conquer`) reads each split's rank back to the
host; here the ranks stay traced, so the recursion is a ``lax.while_loop`` over an agenda
of ``(offset, size)`` sub-problems (as ``jax._src.tpu.linalg.eigh``), each handled by a
``lax.switch`` branch for the smallest rung of the size ladder that holds it. The current
sub-problems live as diagonal blocks of one ``N x N`` workspace, and a block is cut out
and put back by products with 0/1 selection matrices at traced offsets (a dynamic slice
of a sharded array would gather it). This costs ``O(N^2 B)`` per sub-problem of rung
``B`` on top of the eager driver's work (about 30% more at ``n = 4096``), and the program
holds every rung's kernels (a longer compile).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.lax import eigh_kernels as ek
from jaxwren.lax.divide_conquer import _kernel_block
from jaxwren.lax.qdwh import _constrain, _mm

__all__ = ["eigh_traced"]

_DEPTH = 64  # agenda capacity: pending sub-problems (a split pushes two, pops one)


def _place(ws: jax.Array, sel: jax.Array, new: jax.Array, old: jax.Array, mesh: Any) -> Any:
    """``ws`` with the block ``sel^T ws sel`` (``old``) replaced by ``new``."""
    return _constrain(ws + _mm(_mm(sel, new - old, mesh), sel.T, mesh), mesh)


def _leaf(state: tuple, h: jax.Array, sel: jax.Array, off: Any, b: Any, mesh: Any,
          diagonal: Any = True) -> tuple:  # fmt: skip
    """Eigenpairs of the block written out: sorted when ``diagonal``, else by
    ``jnp.linalg.eigh`` on one device (``diagonal=True`` statically: no eigh, no gather)."""
    ws, v, w, agenda, key, ok = state
    k, dt = h.shape[0], h.dtype
    live = jnp.arange(k) < b
    big = 2 * jnp.linalg.norm(h) + 1
    d = jnp.where(live, ek._diag(h), big)
    order = jnp.argsort(d)
    wb, z = d[order], _constrain(jax.nn.one_hot(order, k, dtype=dt).T, mesh)
    if diagonal is not True:
        whole = lax.with_sharding_constraint(h, NamedSharding(mesh, P()))
        ew, ez = jnp.linalg.eigh(whole + jnp.diag(jnp.where(live, 0, big).astype(dt)))
        wb, z = jnp.where(diagonal, wb, ew), jnp.where(diagonal, z, ez)
    eye = jnp.eye(k, dtype=dt)
    z = jnp.where(live[None, :] & live[:, None], z, eye)
    v = _constrain(v + _mm(_mm(v, sel, mesh), _mm(z - eye, sel.T, mesh), mesh), mesh)
    idx = jnp.arange(w.shape[0]) - off
    w = jnp.where((idx >= 0) & (idx < b), wb[jnp.clip(idx, 0, k - 1)], w)
    return ws, v, w, agenda, key, ok


def _branch(rung: int, leaves: bool, n_top: int, termination: int, norm0: Any, mesh: Any,
            iters: int, state: tuple, off: Any, b: Any) -> tuple:  # fmt: skip
    """One sub-problem held in a ``rung x rung`` block: a leaf or a split. ``leaves``:
    whether a block of at most the termination size can land on this rung (else its
    one-device leaf, a gather of the rung, is left out of the program)."""
    ws, v, w, (offs, sizes, top), key, ok = state
    dt = ws.dtype
    i = lax.broadcasted_iota(jnp.int32, (n_top, rung), 0)
    j = lax.broadcasted_iota(jnp.int32, (n_top, rung), 1)
    sel = jnp.where((i == off + j) & (j < b), 1.0, 0.0).astype(dt)
    h = _constrain(_mm(sel.T, _mm(ws, sel, mesh), mesh), mesh)
    off_norm = jnp.linalg.norm(jnp.where(jnp.eye(rung, dtype=bool), 0, h))
    norm = jnp.linalg.norm(h)
    eps = jnp.finfo(dt).eps
    diagonal = (off_norm <= 5 * eps * norm) | (norm <= eps * norm0)
    if rung <= termination:  # every block this small is a leaf
        return _leaf(state, h, sel, off, b, mesh, diagonal)

    def split(state: tuple) -> tuple:
        ws, v, w, (offs, sizes, top), key, ok = state
        key, sub = jax.random.split(key)
        q, hq, r, _ = ek.divide(h, b, sub, mesh, _kernel_block(rung, mesh), iters)
        fine = (r > 0) & (r < b)
        ws = _place(ws, sel, jnp.where(fine, hq, h), h, mesh)
        eye = jnp.eye(rung, dtype=dt)
        v = _constrain(v + _mm(_mm(v, sel, mesh), _mm(jnp.where(fine, q, eye) - eye, sel.T,
                                                     mesh), mesh), mesh)  # fmt: skip
        offs = offs.at[top].set(off + r).at[top + 1].set(off)
        sizes = sizes.at[top].set(b - r).at[top + 1].set(r)
        return ws, v, w, (offs, sizes, top + jnp.where(fine, 2, 0)), key, ok & fine

    def small(state: tuple) -> tuple:  # at most the termination size: one device
        return _leaf(state, h, sel, off, b, mesh, diagonal=False)

    def sorted_diagonal(state: tuple) -> tuple:
        return _leaf(state, h, sel, off, b, mesh)

    if not leaves:
        return lax.cond(diagonal, sorted_diagonal, split, state)
    which = jnp.where(diagonal, 0, jnp.where(b <= termination, 1, 2))
    return lax.switch(which, [sorted_diagonal, small, split], state)


@functools.partial(jax.jit, static_argnames=("mesh", "rungs", "termination", "iters", "n"))
def eigh_traced(h: jax.Array, key: jax.Array, mesh: Any, rungs: tuple, termination: int,
                iters: int, n: int) -> tuple:  # fmt: skip
    """``(w, V, ok)`` of the prepared ``N x N`` block ``h`` (true size ``n``, zero padded;
    ``N = rungs[0]``); ``ok`` is False when a split failed (then the results are NaN)."""
    top_n, dt = h.shape[0], h.dtype
    norm0 = jnp.linalg.norm(h)
    offs = jnp.zeros((_DEPTH,), jnp.int32)
    sizes = jnp.zeros((_DEPTH,), jnp.int32).at[0].set(n)
    v = _constrain(jnp.eye(top_n, dtype=dt), mesh)
    state = (h, v, jnp.zeros((top_n,), dt), (offs, sizes, jnp.asarray(1, jnp.int32)), key,
             jnp.asarray(True))  # fmt: skip
    up = sorted(rungs)
    ladder = jnp.asarray(up, jnp.int32)
    branches = [functools.partial(_branch, r, i == 0 or up[i - 1] < termination, top_n,
                                  termination, norm0, mesh, iters)
                for i, r in enumerate(up)]  # fmt: skip

    def more(state: tuple) -> Any:
        return (state[3][2] > 0) & (state[3][2] < _DEPTH - 2)

    def body(state: tuple) -> tuple:
        ws, v, w, (offs, sizes, top), key, ok = state
        top = top - 1
        off, b = offs[top], sizes[top]
        which = jnp.argmax(ladder >= b)  # the smallest rung that holds the block
        state = (ws, v, w, (offs, sizes, top), key, ok)
        return lax.switch(which, branches, state, off, b)

    ws, v, w, (_, _, top), _, ok = lax.while_loop(more, body, state)
    ok = ok & (top == 0)
    nan = jnp.asarray(jnp.nan, dt)
    return jnp.where(ok, w, nan)[:n], jnp.where(ok, v, nan)[:n, :n], ok
