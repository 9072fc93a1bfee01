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
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.config import StorageConfig, format_bytes
from jaxwren.engine.plan import Plan, Read, Step, Write, resolve_budget
from jaxwren.engine.runner import execute
from jaxwren.errors import ConfigError, MemoryBudgetError, ShapeMismatchError
from jaxwren.linalg.common import operand, prepare_out
from jaxwren.sharding.mesh import COLS, ROWS, check_mesh, default_sharding
from jaxwren.sharding.multihost import to_host
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = ["map_blocks"]

ALL = (ROWS, COLS)
_LABELS = frozenset("ij.")


@dataclasses.dataclass(frozen=True)
class _Class:
    """Blocks of one shape, taken ``count`` at a time along each axis of the tile."""

    name: str
    rows: range  # block-row indices of the class
    cols: range  # block-column indices
    block: tuple[int, int]  # (bh, bw): the blocks' true shape
    count: tuple[int, int]  # blocks per tile along rows, cols
    axes: tuple[Any, Any]  # mesh axis (or axes, or None) along rows, cols


def _classes(shape: tuple[int, int], block: tuple[int, int], mesh: Mesh) -> list[_Class]:
    (m, n), (bm, bn) = shape, block
    fi, fj = m // bm, n // bn  # full block rows / cols
    rm, rn = m - fi * bm, n - fj * bn
    r, c, nd = mesh.shape[ROWS], mesh.shape[COLS], mesh.size
    out = [
        _Class("interior", range(fi), range(fj), (bm, bn), (r, c), (ROWS, COLS)),
        _Class("right", range(fi), range(fj, fj + 1), (bm, rn), (nd, 1), (ALL, None)),
        _Class("bottom", range(fi, fi + 1), range(fj), (rm, bn), (1, nd), (None, ALL)),
        _Class("corner", range(fi, fi + 1), range(fj, fj + 1), (rm, rn), (1, 1), (None, None)),
    ]
    return [k for k in out if len(k.rows) and len(k.cols) and min(k.block) > 0]


def _check_align(align: Any, inputs: Sequence[Any]) -> tuple[str, ...]:
    if align is None:
        return ("ij",) * len(inputs)
    given = align
    align = (align,) * len(inputs) if isinstance(align, str) else tuple(align)
    ok = len(align) == len(inputs) and all(
        isinstance(a, str) and len(a) == 2 and set(a) <= _LABELS and a.count("i") < 2
        and a.count("j") < 2 for a in align
    )  # fmt: skip
    if not ok:
        raise ConfigError(
            f"map_blocks: align must give one 2-letter string per input ({len(inputs)}) "
            "made of 'i' (this axis follows the output's block rows), 'j' (its block "
            f"columns) and '.' (passed whole), e.g. ('ij', 'i.', 'j.'); got {given!r}."
        )
    return align


def _out_shape(inputs: Sequence[Any], align: Sequence[str]) -> tuple[int, int]:
    """The output extent along rows ('i') and columns ('j'), agreed by every input."""
    extent: dict[str, set[int]] = {"i": set(), "j": set()}
    for x, a in zip(inputs, align, strict=True):
        for label, size in zip(a, x.shape, strict=True):
            if label != ".":
                extent[label].add(size)
    for label, what in (("i", "rows"), ("j", "columns")):
        if len(extent[label]) != 1:
            shapes = [tuple(x.shape) for x in inputs]
            raise ShapeMismatchError(
                f"map_blocks: the inputs (shapes {shapes}, align {tuple(align)}) must agree "
                f"on one output extent along {what} ('{label}'), got "
                f"{sorted(extent[label]) or 'none'}; give every input the output's shape, "
                "or align at least one axis of some input with each output axis."
            )
    return extent["i"].pop(), extent["j"].pop()


def _default_block(inputs: Sequence[Any], align: Sequence[str],
                   shape: tuple[int, int]) -> tuple[int, int]:  # fmt: skip
    found: dict[str, int] = {}
    for x, a in zip(inputs, align, strict=True):
        for ax, label in enumerate(a):
            if isinstance(x, BigMatrix) and label != "." and label not in found:
                found[label] = x.block_shape[ax]
    return min(found.get("i", 1024), shape[0]), min(found.get("j", 1024), shape[1])


def _tile_axis(label: str, cls: _Class, extent: int) -> tuple[int, Any]:
    """(tile extent, mesh axis) of an input axis aligned by ``label`` in class ``cls``."""
    if label == ".":
        return extent, None
    ax = "ij".index(label)
    return cls.count[ax] * cls.block[ax], cls.axes[ax]


def _specs(cls: _Class, inputs: Sequence[Any], align: Sequence[str]) -> list[tuple]:
    """Per input: (tile shape, PartitionSpec)."""
    out = []
    for x, a in zip(inputs, align, strict=True):
        t = [_tile_axis(label, cls, size) for label, size in zip(a, x.shape, strict=True)]
        out.append(((t[0][0], t[1][0]), P(t[0][1], t[1][1])))
    return out


def _wants_block_idx(fn: Callable) -> bool:
    try:
        return "block_idx" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def _block_of(fn: Callable, cls: _Class, inputs: Sequence[Any], align: Sequence[str],
              dtypes: Sequence[Any]) -> jax.ShapeDtypeStruct:  # fmt: skip
    """What ``fn`` returns for one block of ``cls`` (traced abstractly, nothing runs)."""
    args = []
    for (shape, _), a in zip(_specs(cls, inputs, align), align, strict=True):
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
def _kernel(fn: Callable, cls: _Class, mesh: Mesh, in_specs: tuple, wants_idx: bool,
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


def _tile_bytes(shape: tuple[int, int], spec: P, mesh: Mesh, itemsize: int) -> int:
    """Bytes of a tile on the devices: replicated along mesh axes its spec does not use."""
    used = [a for p in spec if p is not None for a in (p if isinstance(p, tuple) else (p,))]
    shards = math.prod(mesh.shape[a] for a in used)
    return math.prod(shape) * itemsize * (mesh.size // shards)


def _plan(fn: Callable, inputs: Sequence[Any], align: Sequence[str], dtypes: Sequence[Any],
          classes: list[_Class], block: tuple[int, int], target: Any, mesh: Mesh,
          out_dtype: np.dtype, prefetch: int,
          returned: int) -> tuple[Plan, list[tuple[int, ...]]]:  # fmt: skip
    """Steps over every tile of every class; also each step's (r0, c0, rows, cols)."""
    steps, places, worst = [], [], 0
    for cls in classes:
        specs = _specs(cls, inputs, align)
        kern = _kernel(fn, cls, mesh, tuple(p for _, p in specs), _wants_block_idx(fn),
                       out_dtype)  # fmt: skip
        out_shape = (cls.count[0] * cls.block[0], cls.count[1] * cls.block[1])
        dev = sum(_tile_bytes(s, p, mesh, np.dtype(t).itemsize)
                  for (s, p), t in zip(specs, dtypes, strict=True))  # fmt: skip
        host = sum(
            math.prod(s) * np.dtype(t).itemsize for (s, _), t in zip(specs, dtypes, strict=True)
        )
        outb = _tile_bytes(out_shape, P(*cls.axes), mesh, out_dtype.itemsize)
        worst = max(worst, (prefetch + 1) * (dev + outb) + prefetch * host + 2 * outb)
        for bi0, bj0 in itertools.product(cls.rows[:: cls.count[0]], cls.cols[:: cls.count[1]]):
            nb = (min(cls.count[0], cls.rows.stop - bi0), min(cls.count[1], cls.cols.stop - bj0))
            origin = (bi0 * block[0], bj0 * block[1])  # full blocks come first
            size = (nb[0] * cls.block[0], nb[1] * cls.block[1])
            reads = tuple(_read(x, a, cls, origin, nb, s, p, t, mesh) for x, a, (s, p), t
                          in zip(inputs, align, specs, dtypes, strict=True))  # fmt: skip
            kernel = functools.partial(kern, origin=(np.int32(bi0), np.int32(bj0)))
            steps.append(Step(reads, kernel, (Write(target, origin, size),),
                              label=f"{cls.name} block ({bi0}, {bj0})"))  # fmt: skip
            places.append((*origin, *size))
    projected = worst + returned
    return Plan("map_blocks", steps, None, projected, projected,
                f"{len(steps)} tiles in {len(classes)} block shape(s)"), places  # fmt: skip


def _read(x: Any, a: str, cls: _Class, origin: tuple[int, int], nb: tuple[int, int],
          shape: tuple[int, int], spec: P, dtype: Any, mesh: Mesh) -> Read:  # fmt: skip
    region = []
    for label, size in zip(a, x.shape, strict=True):
        if label == ".":
            region += [0, size]
        else:
            ax = "ij".index(label)
            region += [origin[ax], origin[ax] + nb[ax] * cls.block[ax]]
    return Read(x, tuple(region), shape, NamedSharding(mesh, spec), dtype)  # type: ignore[arg-type]


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
    prefetch: int = 1,
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
        BigMatrix to store the result (an existing one must match shape and dtype).
      align: per-input alignment strings (one string: the same for all); default ``'ij'``.
      block_shape: the output's block shape (default: an existing ``out``'s, else the
        block of the first BigMatrix input along each aligned axis, else 1024).
      mesh, memory_budget, storage, progress, prefetch: as in :func:`jaxwren.matmul`;
        the budget covers the tiles and outputs, not ``fn``'s own temporaries.

    Returns:
      The result: a jax.Array or the BigMatrix ``out``.

    Raises:
      ConfigError: bad ``align``, no inputs, or ``fn`` cannot be traced on the blocks.
      ShapeMismatchError: inputs that do not agree on the output extent, ``fn`` returning
        another shape, ``out`` of the wrong shape/dtype or aliasing an input.
      MemoryBudgetError: the tiles do not fit ``memory_budget`` (try a smaller
        ``block_shape``). Every check runs before anything is written.
    """
    if not inputs:
        raise ConfigError("map_blocks: pass at least one input matrix after fn.")
    srcs = [operand(x, name=f"input #{i}", where="map_blocks") for i, x in enumerate(inputs)]
    align = _check_align(align, srcs)
    shape = _out_shape(srcs, align)
    if isinstance(out, BigMatrix):
        block_shape = out.block_shape
    block = tuple(block_shape) if block_shape is not None else _default_block(srcs, align, shape)
    mesh = check_mesh(mesh, where="map_blocks")
    budget = resolve_budget(memory_budget, list(mesh.devices.flat))
    dtypes = [np.dtype(x.dtype) for x in srcs]
    classes = _classes(shape, block, mesh)  # type: ignore[arg-type]
    out_dtype = np.dtype(_block_of(fn, classes[0], srcs, align, dtypes).dtype)
    for cls in classes[1:]:
        _block_of(fn, cls, srcs, align, dtypes)
    target = prepare_out(out, shape=shape, dtype=out_dtype, block_shape=block,  # type: ignore[arg-type]
                         inputs=srcs, where="map_blocks", storage=storage)  # fmt: skip
    returned = 2 * math.prod(shape) * out_dtype.itemsize if target.returned else 0
    plan, places = _plan(fn, srcs, align, dtypes, classes, block, None, mesh, out_dtype,  # type: ignore[arg-type]
                         prefetch, returned)  # fmt: skip
    if plan.projected_bytes > budget:
        raise MemoryBudgetError(
            f"map_blocks: tiles of {block} blocks need {format_bytes(plan.projected_bytes)} "
            f"but memory_budget is {format_bytes(budget)}; pass a smaller block_shape"
            f"{' or store the result with out=URL' if target.returned else ''}."
        )
    matrix = target.materialize()
    if matrix is not None:  # the same plan, writing to the store
        plan, _ = _plan(fn, srcs, align, dtypes, classes, block, matrix, mesh, out_dtype,  # type: ignore[arg-type]
                        prefetch, returned)  # fmt: skip
    outs, _ = execute(plan, budget=budget, prefetch=prefetch, progress=progress)
    if matrix is not None:
        return matrix
    result = np.empty(shape, out_dtype)
    for tile, (r0, c0, h, w) in zip(outs, places, strict=True):
        result[r0 : r0 + h, c0 : c0 + w] = to_host(tile)[:h, :w]
    return jax.device_put(result, default_sharding(shape, mesh))
