"""The output's block grid for :func:`jaxwren.map_blocks`: alignment, block-shape classes,
tile specs, reads and tile sizes (see that module for the classes' table)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.engine.plan import Read
from jaxwren.errors import ConfigError, ShapeMismatchError
from jaxwren.sharding.mesh import COLS, ROWS
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = ["BlockClass", "block_classes", "check_align", "default_block", "grid_tiles",
           "out_shape", "tile_read", "tile_specs"]  # fmt: skip

ALL = (ROWS, COLS)
_LABELS = frozenset("ij.")


@dataclasses.dataclass(frozen=True)
class BlockClass:
    """Blocks of one shape, taken ``count`` at a time along each axis of the tile."""

    name: str
    rows: range  # block-row indices of the class
    cols: range  # block-column indices
    block: tuple[int, int]  # (bh, bw): the blocks' true shape
    count: tuple[int, int]  # blocks per tile along rows, cols
    axes: tuple[Any, Any]  # mesh axis (or axes, or None) along rows, cols


def block_classes(shape: tuple[int, int], block: tuple[int, int], mesh: Mesh) -> list[BlockClass]:
    """The (at most four) classes of same-shape output blocks, full blocks first."""
    (m, n), (bm, bn) = shape, block
    fi, fj = m // bm, n // bn  # full block rows / cols
    rm, rn = m - fi * bm, n - fj * bn
    r, c, nd = mesh.shape[ROWS], mesh.shape[COLS], mesh.size
    out = [
        BlockClass("interior", range(fi), range(fj), (bm, bn), (r, c), (ROWS, COLS)),
        BlockClass("right", range(fi), range(fj, fj + 1), (bm, rn), (nd, 1), (ALL, None)),
        BlockClass("bottom", range(fi, fi + 1), range(fj), (rm, bn), (1, nd), (None, ALL)),
        BlockClass("corner", range(fi, fi + 1), range(fj, fj + 1), (rm, rn), (1, 1), (None, None)),
    ]
    return [k for k in out if len(k.rows) and len(k.cols) and min(k.block) > 0]


def check_align(align: Any, inputs: Sequence[Any]) -> tuple[str, ...]:
    """One validated alignment string per input (default ``'ij'``)."""
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


def out_shape(inputs: Sequence[Any], align: Sequence[str]) -> tuple[int, int]:
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


def default_block(inputs: Sequence[Any], align: Sequence[str],
                  shape: tuple[int, int]) -> tuple[int, int]:  # fmt: skip
    """The first BigMatrix input's block along each aligned axis (else 1024), clipped."""
    found: dict[str, int] = {}
    for x, a in zip(inputs, align, strict=True):
        for ax, label in enumerate(a):
            if isinstance(x, BigMatrix) and label != "." and label not in found:
                found[label] = x.block_shape[ax]
    return min(found.get("i", 1024), shape[0]), min(found.get("j", 1024), shape[1])


def _tile_axis(label: str, cls: BlockClass, extent: int) -> tuple[int, Any]:
    """(tile extent, mesh axis) of an input axis aligned by ``label`` in class ``cls``."""
    if label == ".":
        return extent, None
    ax = "ij".index(label)
    return cls.count[ax] * cls.block[ax], cls.axes[ax]


def tile_specs(cls: BlockClass, inputs: Sequence[Any], align: Sequence[str]) -> list[tuple]:
    """Per input: (tile shape, PartitionSpec)."""
    out = []
    for x, a in zip(inputs, align, strict=True):
        t = [_tile_axis(label, cls, size) for label, size in zip(a, x.shape, strict=True)]
        out.append(((t[0][0], t[1][0]), P(t[0][1], t[1][1])))
    return out


def tile_read(x: Any, a: str, cls: BlockClass, origin: tuple[int, int], nb: tuple[int, int],
              shape: tuple[int, int], spec: P, dtype: Any, mesh: Mesh) -> Read:  # fmt: skip
    """The read of input ``x`` (aligned by ``a``) for ``nb`` blocks of ``cls`` at ``origin``."""
    region = []
    for label, size in zip(a, x.shape, strict=True):
        if label == ".":
            region += [0, size]
        else:
            ax = "ij".index(label)
            region += [origin[ax], origin[ax] + nb[ax] * cls.block[ax]]
    return Read(x, tuple(region), shape, NamedSharding(mesh, spec), dtype)  # type: ignore[arg-type]


def grid_tiles(classes: Sequence[BlockClass], block: tuple[int, int]) -> Iterator[tuple]:
    """Every tile, class by class: ``(cls, (bi0, bj0), blocks per axis, origin, size)``."""
    for cls in classes:
        for bi0, bj0 in itertools.product(cls.rows[:: cls.count[0]], cls.cols[:: cls.count[1]]):
            nb = (min(cls.count[0], cls.rows.stop - bi0), min(cls.count[1], cls.cols.stop - bj0))
            origin = (bi0 * block[0], bj0 * block[1])  # full blocks come first
            yield cls, (bi0, bj0), nb, origin, (nb[0] * cls.block[0], nb[1] * cls.block[1])
