"""``map_blocks``: PyWren's ``pwex.map`` over the block indices of an output matrix.

``fn`` receives the input blocks aligned with one output block (and the block index when
its signature asks for ``block_idx``) and returns that block. It runs on the engine: the
output's blocks fall into at most four shape classes (interior, ragged right column,
ragged bottom row, corner), and each step loads a group of same-shape blocks as one tile
with one block per device, so ``fn`` is compiled once per class and every device
computes its own block (``jax.shard_map``):

=============  ====================  ==========================
class          tile (blocks)         output tile sharding
=============  ====================  ==========================
interior       rows x cols of mesh   ``P('rows', 'cols')``
right column   all devices x 1       ``P(('rows', 'cols'), None)``
bottom row     1 x all devices       ``P(None, ('rows', 'cols'))``
corner         1 x 1                 ``P(None, None)`` (each device computes it)
=============  ====================  ==========================

Tiles at the grid's edge may hold fewer blocks than devices; the spare devices compute
``fn`` on zero blocks and their results are dropped.

The operation is :class:`MapBlocks` on the pipeline (``engine.run``): the output's block
shape is an existing ``out``'s (its blocks are what ``fn`` maps), else ``block_shape``,
else the inputs'. A user function cannot be identified, so a stored result is never
reused: every call computes.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.config import RunSpec, StorageConfig, run_spec
from jaxwren.dtypes import check_representable
from jaxwren.engine.memory import Buffer, Footprint
from jaxwren.engine.plan import Plan, Step, Write
from jaxwren.engine.problem import Candidate, Output, Problem, Resume, Targets
from jaxwren.engine.run import run
from jaxwren.errors import ConfigError, ShapeMismatchError
from jaxwren.linalg.base import Op
from jaxwren.linalg.block_grid import (
    BlockClass,
    block_classes,
    check_align,
    default_block,
    grid_tiles,
    out_shape,
    tile_read,
    tile_specs,
)
from jaxwren.sharding.mesh import default_sharding
from jaxwren.sharding.multihost import to_host
from jaxwren.storage.bigmatrix import BigMatrix, check_dtype

__all__ = ["MapBlocks", "map_blocks"]


def _wants_block_idx(fn: Callable) -> bool:
    try:
        return "block_idx" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def _block_of(fn: Callable, cls: BlockClass, inputs: Sequence[Any], align: Sequence[str],
              dtypes: Sequence[Any]) -> jax.ShapeDtypeStruct:  # fmt: skip
    """What ``fn`` returns for one block of ``cls`` (traced abstractly, nothing runs)."""
    args = []
    for (shape, _), a in zip(tile_specs(cls, inputs, align), align, strict=True):
        per = tuple(e if lab == "." else cls.block["ij".index(lab)]
                    for e, lab in zip(shape, a, strict=True))  # fmt: skip
        args.append(jax.ShapeDtypeStruct(per, dtypes[len(args)]))
    kw = {"block_idx": (jnp.int32(0), jnp.int32(0))} if _wants_block_idx(fn) else {}
    try:
        out = jax.eval_shape(functools.partial(fn, **kw), *args)
    except Exception as e:  # noqa: BLE001 - re-raised with the call named
        raise ConfigError(
            f"map_blocks: fn could not be traced on blocks of shapes "
            f"{[a.shape for a in args]}: {type(e).__name__}: {e}; fn must be a jax-traceable "
            "function of the blocks (and of block_idx, a pair of int32 scalars, if asked)."
        ) from e
    if not hasattr(out, "shape") or tuple(out.shape) != cls.block:
        raise ShapeMismatchError(
            f"map_blocks: fn must return a block of the output block's shape {cls.block} "
            f"({cls.name} blocks), got {getattr(out, 'shape', type(out).__name__)}; "
            "map_blocks maps blocks to blocks of the same shape."
        )
    return out


@functools.lru_cache(maxsize=64)  # bounded: keyed by user functions
def _kernel(fn: Callable, cls: BlockClass, mesh: Mesh, in_specs: tuple, wants_idx: bool,
            dtype: Any) -> Callable:  # fmt: skip
    """One compiled step per class: each device applies fn to its own block."""

    def per_device(*args):  # noqa: ANN002, ANN202
        *blocks, bi0, bj0 = args
        idx = tuple(b0 if ax is None else b0 + lax.axis_index(ax)
                    for b0, ax in zip((bi0, bj0), cls.axes, strict=True))  # fmt: skip
        kw = {"block_idx": idx} if wants_idx else {}
        return fn(*blocks, **kw).astype(dtype)

    out_spec = P(*cls.axes)
    mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(*in_specs, P(), P()),
                           out_specs=out_spec, check_vma=False)  # fmt: skip
    shard = functools.partial(NamedSharding, mesh)
    jitted = jax.jit(mapped, in_shardings=(*map(shard, in_specs), shard(P()), shard(P())),
                     out_shardings=shard(out_spec))  # fmt: skip

    def step(_carry, *tiles, origin):  # noqa: ANN001, ANN202
        return None, (jitted(*tiles, *origin),)

    return step


@dataclasses.dataclass(frozen=True)
class _Data:
    """What ``check`` found: the alignment, input dtypes, output shape and the block
    shape of an output that does not exist yet (explicit or from the inputs)."""

    align: tuple[str, ...]
    dtypes: tuple[np.dtype, ...]
    shape: tuple[int, int]
    block: tuple[int, int]


def _footprint(classes: Sequence[BlockClass], inputs: Sequence[Any], data: _Data, mesh: Mesh,
               out_dtype: np.dtype, returned: bool) -> Footprint:  # fmt: skip
    """The largest class's input tiles read and output tile emitted (laid out as its
    kernel takes them); a returned result held whole, in its tiles and assembled. ``fn``'s
    own temporaries are not counted (the engine cannot see them)."""
    shard = functools.partial(NamedSharding, mesh)
    options = []
    for cls in classes:
        specs = tile_specs(cls, inputs, data.align)
        reads = tuple(Buffer(s, t, shard(p)) for (s, p), t in zip(specs, data.dtypes, strict=True))
        out_tile = (cls.count[0] * cls.block[0], cls.count[1] * cls.block[1])
        options.append((reads, Buffer(out_tile, out_dtype, shard(P(*cls.axes)))))
    reads, out = max(options, key=lambda o: sum(b.on_devices for b in (*o[0], o[1])))
    held = (Buffer(data.shape, out_dtype),) * 2 if returned else ()
    return Footprint(reads=reads, writes=(out,), held=held)


class MapBlocks(Op):
    """``out[I, J] = fn(*aligned input blocks, block_idx=(I, J))``, one block per device.

    Args:
      fn: the block function (see :func:`map_blocks`).
      n_inputs: how many input matrices ``run`` gets.
      align: per-input alignment strings (None: ``'ij'`` for every input).
      block_shape: the output's block shape (None: an existing out's, else the inputs').
    """

    name = "map_blocks"

    def __init__(self, fn: Callable[..., Any], n_inputs: int, *, align: Any = None,
                 block_shape: tuple[int, int] | None = None) -> None:  # fmt: skip
        self.fn = fn
        self.align = align
        self.block_shape = block_shape
        self.operand_names = tuple(f"input #{i}" for i in range(n_inputs))

    def check(self, operands: Sequence[Any], mesh: Mesh) -> Problem:
        if not operands:
            raise ConfigError("map_blocks: pass at least one input matrix after fn.")
        align = check_align(self.align, operands)
        shape = out_shape(operands, align)
        dtypes = tuple(np.dtype(x.dtype) for x in operands)
        for i, dt in enumerate(dtypes):
            check_representable(dt, where=f"map_blocks(input #{i})")
        block = self.block_shape or default_block(operands, align, shape)
        data = _Data(align, dtypes, shape, (min(block[0], shape[0]), min(block[1], shape[1])))
        first = block_classes(shape, data.block, mesh)[0]
        out_dtype = np.dtype(_block_of(self.fn, first, operands, align, dtypes).dtype)
        check_dtype(out_dtype, where="map_blocks(fn's result)")
        out = Output("out", shape, out_dtype, data.block)
        return Problem(tuple(operands), (out,), None, mesh, data)  # params None: never reused

    def _block(self, problem: Problem, stored: tuple[int, int] | None) -> tuple[int, int]:
        """The output's block shape: a stored output's (an existing one's own), which an
        explicit ``block_shape`` must agree with."""
        data: _Data = problem.data
        if stored is None:
            return data.block
        if self.block_shape is not None and tuple(stored) != data.block:
            raise ShapeMismatchError(
                f"map_blocks: block_shape={tuple(self.block_shape)} differs from the block "
                f"shape {tuple(stored)} of out, whose blocks fn maps; leave block_shape out "
                "to map out's blocks, or pass a new out URL."
            )
        return tuple(stored)  # type: ignore[return-value]

    def tilings(self, problem: Problem, targets: Targets) -> list[Candidate]:
        """One tiling: the output's blocks, one per device (fn is traced on every block
        shape here, so a wrong result shape is refused before anything is written)."""
        data: _Data = problem.data
        (out,), stored = problem.outputs, targets["out"]
        block = self._block(problem, stored)
        classes = block_classes(data.shape, block, problem.mesh)
        for cls in classes:
            _block_of(self.fn, cls, problem.sources, data.align, data.dtypes)
        fp = _footprint(classes, problem.sources, data, problem.mesh, out.dtype, stored is None)
        return [Candidate(block, fp, 0, True)]

    def plan(self, problem: Problem, tiling: Any, targets: Targets, resume: Resume,
             prefetch: int) -> Plan:  # fmt: skip
        """A step per tile of every class; each writes its blocks (or returns them)."""
        data: _Data = problem.data
        mesh, out_dtype, target = problem.mesh, problem.outputs[0].dtype, targets["out"]
        classes = block_classes(data.shape, tiling, mesh)
        wants_idx, kernels, steps = _wants_block_idx(self.fn), {}, []
        for cls, (bi0, bj0), nb, origin, size in grid_tiles(classes, tiling):
            specs = tile_specs(cls, problem.sources, data.align)
            if cls not in kernels:
                in_specs = tuple(p for _, p in specs)
                kernels[cls] = _kernel(self.fn, cls, mesh, in_specs, wants_idx, out_dtype)
            reads = tuple(tile_read(x, a, cls, origin, nb, s, p, t, mesh) for x, a, (s, p), t
                          in zip(problem.sources, data.align, specs, data.dtypes,
                                 strict=True))  # fmt: skip
            rec = resume.key(f"{tiling[0]}x{tiling[1]}-{bi0}-{bj0}")
            kernel = functools.partial(kernels[cls], origin=(np.int32(bi0), np.int32(bj0)))
            steps.append(Step(reads, kernel, (Write(target, origin, size, record=rec),),
                              label=f"{cls.name} block ({bi0}, {bj0})",
                              skip=resume.done(rec)))  # fmt: skip
        tiles = f"{len(steps)} tiles of {tiling} blocks in {len(classes)} block shape(s)"
        return Plan("map_blocks", steps, None, tiles=tiles)

    def finish(self, problem: Problem, returned: list, targets: Targets) -> Any:
        """The stored out, or the returned tiles assembled (sharded ``default_sharding``)."""
        if targets["out"] is not None:
            return targets["out"]
        data: _Data = problem.data
        (out,) = problem.outputs
        result = np.empty(data.shape, out.dtype)
        tiles = grid_tiles(block_classes(data.shape, data.block, problem.mesh), data.block)
        for tile, (*_, (r0, c0), (h, w)) in zip(returned, tiles, strict=True):
            result[r0 : r0 + h, c0 : c0 + w] = to_host(tile)[:h, :w]
        return jax.device_put(result, default_sharding(data.shape, problem.mesh))


def map_blocks(
    fn: Callable[..., Any],
    *inputs: Any,
    out: Any = None,
    align: str | Sequence[str] | None = None,
    block_shape: tuple[int, int] | None = None,
    mesh: Mesh | None = None,
    memory_budget: int | str | None = None,
    storage: StorageConfig | None = None,
    progress: bool | None = None,
    prefetch: int | None = None,
    spec: RunSpec | None = None,
) -> jax.Array | BigMatrix:
    """Applies ``fn`` to every block of the output: PyWren's ``pwex.map`` over block indices.

    ``out[I, J] = fn(*blocks_of_inputs_aligned_with(I, J), block_idx=(I, J))`` — the same
    result as a numpy loop over ``BigMatrix.block_idxs``. Edge blocks are ragged: ``fn``
    sees them at their true (smaller) size, like ``BigMatrix.get_block``, and is compiled
    once per block shape (at most 4). Groups of same-shape blocks run one per device.

    Alignment rule: by default every input has the output's shape and is cut into the
    output's blocks. ``align`` gives, per input, one letter per axis: ``'i'`` (the axis
    follows the output's block rows), ``'j'`` (its block columns) or ``'.'`` (passed
    whole). The notebook's distance matrix, D[I, J] from row blocks of x and y::

        map_blocks(lambda xb, yb: sqdist(xb, yb), x, y, align=("i.", "j."))

    The output shape is the inputs' extent along their ``'i'`` and ``'j'`` axes.

    Args:
      fn: a jax-traceable function of the blocks (jax.Arrays) returning the output block
        (same shape; its dtype is the result's). If its signature has a ``block_idx``
        parameter it gets the block index as a pair of traced int32 scalars.
      *inputs: BigMatrix, jax.Array or numpy arrays (2-D, non-empty).
      out: None to return a jax.Array (sharded as ``default_sharding``); a URL or
        BigMatrix to store the result (an existing one must match shape and dtype, and
        its blocks are the blocks ``fn`` maps). A user function cannot be identified, so
        a stored result is always recomputed, never reused.
      align: per-input alignment strings (one string: the same for all); default ``'ij'``.
      block_shape: the output's block shape (default: an existing ``out``'s, else the
        block of the first BigMatrix input along each aligned axis, else 1024).
      mesh, memory_budget, storage, progress, prefetch, spec: as in :func:`jaxwren.matmul`;
        the budget covers the tiles and outputs, not ``fn``'s own temporaries.

    Returns:
      The result: a jax.Array or the BigMatrix ``out``.

    Raises:
      ConfigError: bad ``align`` or ``block_shape``, no inputs, or ``fn`` cannot be
        traced on the blocks.
      ShapeMismatchError: inputs that do not agree on the output extent, ``fn`` returning
        another shape, ``out`` of the wrong shape/dtype, ``block_shape`` differing from an
        existing ``out``'s.
      OutputConflictError: ``out`` is, contains or lies inside an input or another matrix.
      DTypeMismatchError: 64-bit inputs while JAX runs 32-bit.
      MemoryBudgetError: the tiles do not fit ``memory_budget`` (try a smaller
        ``block_shape``). Every check runs before anything is written.
    """
    if not inputs:
        raise ConfigError("map_blocks: pass at least one input matrix after fn.")
    spec = run_spec("map_blocks", spec, mesh=mesh, memory_budget=memory_budget,
                    storage=storage, progress=progress, prefetch=prefetch,
                    block_shape=block_shape)  # fmt: skip
    op = MapBlocks(fn, len(inputs), align=align, block_shape=spec.block_shape)
    return run(op, inputs, out, spec).value
