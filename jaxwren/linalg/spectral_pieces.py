"""Store-backed pieces of the out-of-core polar and eigh (:mod:`jaxwren.linalg.spectral_ooc`).

Two pipeline operations the spectral drivers need besides matmul, cholesky and the
triangular solves, both resumable by the engine's provenance (their results are
identified by their parameters and their stored inputs' data stamps):

* :class:`Blockwise`: an elementwise map over blocks (``jw.map_blocks`` with a fixed
  function of this module and its scalars in a tiny stored ``(1, k)`` matrix, so that the
  kernel compiles once per block shape and the result can be identified): ``s0 x + s1 y``,
  ``s0 x + s1 I``, the sign mix of a sketch, a Gaussian block, the lower-triangle mirror.
* :class:`Columns`: the columns of several stored matrices (column ranges, in order)
  written side by side into one stored matrix, one output strip of whole stored blocks
  per step (no block is written in parts).

And :func:`incore_fits`: whether an operation's in-core plan fits the run's budget (the
engine's own projection, so the route follows whatever the in-core tilings declare).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.config import RunSpec
from jaxwren.engine.choice import choose, refusal
from jaxwren.engine.memory import Buffer, Footprint
from jaxwren.engine.plan import Plan, Read, Step, Write, resolve_budget
from jaxwren.engine.problem import Candidate, Output, Problem, Resume, Targets
from jaxwren.engine.run import operand, run
from jaxwren.errors import MemoryBudgetError, ShapeMismatchError
from jaxwren.linalg.base import Op
from jaxwren.linalg.map_blocks import MapBlocks
from jaxwren.sharding.mesh import check_mesh
from jaxwren.storage.bigmatrix import BigMatrix
from jaxwren.storage.ingest import from_numpy

__all__ = ["Blockwise", "Columns", "blockwise", "columns", "incore_fits", "scalars"]


# ----------------------------------------------------------------------- block functions
def _global(block: jax.Array, s: jax.Array, block_idx: tuple) -> tuple[jax.Array, jax.Array]:
    """Global row and column indices of a block (``s[0, -2:]``: the nominal block shape)."""
    bh, bw = s[0, -2].astype(jnp.int32), s[0, -1].astype(jnp.int32)
    i = jax.lax.broadcasted_iota(jnp.int32, block.shape, 0) + block_idx[0] * bh
    j = jax.lax.broadcasted_iota(jnp.int32, block.shape, 1) + block_idx[1] * bw
    return i, j


def _axpby(x: jax.Array, y: jax.Array, s: jax.Array) -> jax.Array:
    return s[0, 0] * x + s[0, 1] * y


def _scale(x: jax.Array, s: jax.Array) -> jax.Array:
    return s[0, 0] * x


def _shift(x: jax.Array, s: jax.Array, block_idx: tuple) -> jax.Array:
    """``s0 x + s1 I``."""
    i, j = _global(x, s, block_idx)
    return s[0, 0] * x + jnp.where(i == j, s[0, 1], 0).astype(x.dtype)


def _signs(g: jax.Array, ug: jax.Array, s: jax.Array, block_idx: tuple) -> jax.Array:
    """``(g - ug) / 2`` in the first ``s0`` columns (``P_- g``), ``(g + ug) / 2`` after."""
    _, j = _global(g, s, block_idx)
    return (g + jnp.where(j < s[0, 0], -1, 1).astype(g.dtype) * ug) / 2


def _offdiag(x: jax.Array, s: jax.Array, block_idx: tuple) -> jax.Array:
    i, j = _global(x, s, block_idx)
    return jnp.where(i == j, 0, x)


def _lower(x: jax.Array, xt: jax.Array, s: jax.Array, block_idx: tuple) -> jax.Array:
    """The symmetric matrix of ``x``'s lower triangle (``xt``: the same block of x^T)."""
    i, j = _global(x, s, block_idx)
    return jnp.where(i >= j, x, xt)


def _gauss(x: jax.Array, s: jax.Array, block_idx: tuple) -> jax.Array:
    """A standard normal block, a function of the seed ``s0`` and the block index."""
    key = jax.random.fold_in(jax.random.key(s[0, 0].astype(jnp.uint32)), block_idx[0])
    key = jax.random.fold_in(key, block_idx[1])
    return jax.random.normal(key, x.shape, x.dtype)


_FNS = {"axpby": _axpby, "scale": _scale, "shift": _shift, "signs": _signs, "lower": _lower,
        "gauss": _gauss, "offdiag": _offdiag}  # fmt: skip


class Blockwise(MapBlocks):
    """:class:`MapBlocks` of a named function of this module: identified by its name (the
    scalars are a stored input), so a stored result is reused like any other."""

    def __init__(self, kind: str, n_inputs: int, block_shape: tuple[int, int] | None) -> None:
        super().__init__(_FNS[kind], n_inputs, align=("ij",) * (n_inputs - 1) + ("..",),
                         block_shape=block_shape)  # fmt: skip
        self.kind = kind

    def check(self, operands: Sequence[Any], mesh: Mesh) -> Problem:
        problem = super().check(operands, mesh)
        return dataclasses.replace(problem, params=("spectral-ooc", self.kind))


def scalars(url: str, values: Sequence[float], dtype: Any, spec: RunSpec) -> BigMatrix:
    """The ``(1, k)`` matrix of ``values`` at ``url``: the stored one when it already holds
    them (so that what was derived from it stays valid), else written anew."""
    row = np.asarray([values], dtype=dtype)
    try:
        old = BigMatrix.open(url, storage=spec.storage)
        if old.shape == row.shape and old.dtype == row.dtype and np.array_equal(old.numpy(), row):
            return old
    except Exception:  # noqa: BLE001 - absent, unfinished or another matrix: write it
        pass
    return from_numpy(row, url, row.shape, storage=spec.storage, overwrite=True)


def blockwise(kind: str, inputs: Sequence[Any], values: Sequence[float], out: str,
              spec: RunSpec) -> BigMatrix:  # fmt: skip
    """``out = fn(*inputs)`` block by block (``fn`` named by ``kind``; ``values``: its
    scalars, the nominal block shape appended)."""
    first = inputs[0]
    bs = spec.block_shape or first.block_shape
    s = scalars(out + "-s", [*values, *bs], np.dtype(first.dtype), spec)
    op = Blockwise(kind, len(inputs) + 1, tuple(bs))
    return run(op, (*inputs, s), out, spec).value


# ---------------------------------------------------------------------------- columns
class Columns(Op):
    """``out = [x_0[:, a_0:b_0], x_1[:, a_1:b_1], ...]``: pieces of stored matrices of
    the same rows, side by side; a step per output strip of ``rows x block width``."""

    name = "columns"

    def __init__(self, pieces: Sequence[tuple[int, int, int]],
                 block_shape: tuple[int, int]) -> None:  # fmt: skip
        self.pieces = tuple((int(k), int(a), int(b)) for k, a, b in pieces)
        self.block_shape = block_shape
        self.operand_names = tuple(f"piece source #{i}" for i in
                                   range(1 + max(k for k, _, _ in self.pieces)))  # fmt: skip

    def check(self, operands: Any, mesh: Mesh) -> Problem:
        m = operands[0].shape[0]
        if any(x.shape[0] != m or x.dtype != operands[0].dtype for x in operands):
            raise ShapeMismatchError("columns: the pieces' sources must share rows and dtype.")
        width = sum(b - a for _, a, b in self.pieces)
        out = Output("out", (m, width), np.dtype(operands[0].dtype), self.block_shape)
        return Problem(tuple(operands), (out,), ("columns", self.pieces), mesh)

    def _rows(self, problem: Problem, rows: int) -> int:
        m, bh = problem.outputs[0].shape[0], self.block_shape[0]
        return min(m, max(bh, rows // bh * bh))

    def tilings(self, problem: Problem, targets: Targets) -> list[Candidate]:
        (out,), bw = problem.outputs, self.block_shape[1]
        rep = NamedSharding(problem.mesh, P())  # the strip's reads, replicated
        cands = []
        for rows in sorted({self._rows(problem, r) for r in (out.shape[0], 4096, 1024, 256, 1)},
                           reverse=True):  # fmt: skip
            fp = Footprint(
                reads=(Buffer((rows, bw), out.dtype, rep),), writes=(Buffer((rows, bw), out.dtype),)
            )  # a host result
            cands.append(Candidate(rows, fp, -rows, False))
        return cands

    def plan(self, problem: Problem, tiling: Any, targets: Targets, resume: Resume,
             prefetch: int) -> Plan:  # fmt: skip
        (out,), target, bw = problem.outputs, targets["out"], self.block_shape[1]
        (m, width), rows = out.shape, int(tiling)
        starts = np.cumsum([0] + [b - a for _, a, b in self.pieces])
        rep = NamedSharding(problem.mesh, P())
        steps = []
        for c0 in range(0, width, bw):
            c1 = min(c0 + bw, width)
            parts = []  # (source, column range) overlapping the strip [c0, c1)
            for (k, a, _), s0, s1 in zip(self.pieces, starts[:-1], starts[1:], strict=True):
                lo, hi = max(c0, s0), min(c1, s1)
                if lo < hi:
                    parts.append((problem.sources[k], a + lo - s0, a + hi - s0))
            for r0 in range(0, m, rows):
                r1 = min(r0 + rows, m)
                reads = tuple(Read(x, (r0, r1, a, b), (r1 - r0, b - a), rep, out.dtype)
                              for x, a, b in parts)  # fmt: skip
                key = resume.key(f"strip-{r0}-{c0}")
                steps.append(Step(reads, _concat, (Write(target, (r0, c0), (r1 - r0, c1 - c0),
                                                         record=key),),
                                  label="columns", skip=resume.done(key)))  # fmt: skip
        return Plan(self.name, steps, None, f"strips of {rows} x {bw}")


def _concat(_carry: Any, *tiles: jax.Array) -> tuple:
    return None, (np.concatenate([np.asarray(t) for t in tiles], axis=1),)


def columns(pieces: Sequence[tuple[Any, int, int]], out: str, spec: RunSpec) -> BigMatrix:
    """Stores the column ranges ``(matrix, a, b)`` side by side at ``out``."""
    sources: list[Any] = []
    index = []
    for x, a, b in pieces:
        k = next((i for i, s in enumerate(sources) if s is x), None)
        if k is None:
            sources.append(x)
            k = len(sources) - 1
        index.append((k, a, b))
    bs = spec.block_shape or sources[0].block_shape
    return run(Columns(index, tuple(bs)), tuple(sources), out, spec).value


# ------------------------------------------------------------------------------ budget
def incore_fits(op: Op, a: Any, spec: RunSpec) -> MemoryBudgetError | None:
    """None when ``op``'s in-core plan for ``a`` (outputs stored) fits the budget, else
    the engine's refusal (naming the smallest workable budget)."""
    mesh = check_mesh(spec.mesh, where=op.name)
    src = operand(a, name="a", where=op.name, storage=spec.storage)
    problem = op.check([src], mesh)
    budget = resolve_budget(spec.memory_budget, list(mesh.devices.flat))
    cands = op.tilings(problem, {o.name: None for o in problem.outputs})
    choice = choose(cands, budget, spec.prefetch, False, mesh)
    return None if choice.cand is not None else refusal(op.name, cands, choice, budget,
                                                        False, mesh)  # fmt: skip
