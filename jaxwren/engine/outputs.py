"""Where a run's results go: resolving ``out``, refusing aliases, creating, cleaning up.

Everything here is checked before the first write: ``out`` must not be, contain or lie
inside an input or another stored matrix (file paths compared through symlinks), an
existing output must already have the result's shape and dtype, and a prefix that holds
other data is never taken over. On failure :func:`discard` removes exactly the matrices
this call created (their own keys), never a prefix.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorstore as ts

from jaxwren.config import StorageConfig
from jaxwren.engine.problem import Output
from jaxwren.errors import MatrixNotFoundError, OutputConflictError, ShapeMismatchError
from jaxwren.sharding import multihost
from jaxwren.storage.backend import open_kvstore, parse_json, translate_errors
from jaxwren.storage.bigmatrix import BigMatrix, resolve_storage
from jaxwren.storage.urls import Location, parse_url

__all__ = ["Slot", "resolve_outputs", "materialize", "discard", "place_key"]


@dataclasses.dataclass
class Slot:
    """One output of a run: returned (``url is None``) or stored at ``url``."""

    output: Output
    url: str | None = None
    matrix: BigMatrix | None = None  # the stored matrix (existing, or once created)
    created: bool = False  # created by this call (removed again if the call fails)
    block_shape: tuple[int, int] | None = None
    claim: str | None = None  # this run's writing claim on the matrix (lifecycle)
    committed: bool = False  # this run committed it (a later refusal still discards it)

    @property
    def stored(self) -> bool:
        return self.url is not None


def place_key(loc: Location) -> tuple[str, str]:
    """A location's identity: scheme and full path (file paths through symlinks)."""
    if loc.scheme == "file":
        return "file", os.path.realpath(loc.path.rstrip("/")) + "/"
    return loc.scheme, f"{loc.bucket or ''}/{loc.path}"


def resolve_outputs(
    where: str,
    out: Any,
    outputs: Sequence[Output],
    inputs: Sequence[Any],
    *,
    storage: StorageConfig | None,
    block_shape: tuple[int, int] | None,
    prefix_out: bool,
) -> list[Slot]:
    """Checks ``out`` against the outputs and inputs; opens existing outputs; writes
    nothing. ``out=None``: every output returned."""
    if out is None:
        return [Slot(o) for o in outputs]
    if not isinstance(out, BigMatrix | str | os.PathLike):
        raise ShapeMismatchError(
            f"{where}: out must be None, a storage URL or a BigMatrix, got {type(out).__name__}."
        )
    if prefix_out and isinstance(out, BigMatrix):
        raise ShapeMismatchError(
            f"{where}: out names a prefix for the results ({', '.join(o.name for o in outputs)}); "
            "pass a URL, not a BigMatrix."
        )
    slots = []
    for o in outputs:
        if prefix_out:
            url: Any = f"{parse_url(out).url}/{o.name}"
        else:
            url = out
        slots.append(_slot(where, o, url, inputs, storage, block_shape))
    return slots


def _slot(where: str, o: Output, out: Any, inputs: Sequence[Any],
          storage: StorageConfig | None, block_shape: Any) -> Slot:  # fmt: skip
    if isinstance(out, BigMatrix) and out.view.read_only:
        raise OutputConflictError(
            f"{where}: out {out!r} is a region or cast view, which is read-only; pass a "
            "URL or a whole matrix (a transposed one is fine)."
        )
    loc = out.location if isinstance(out, BigMatrix) else parse_url(out)
    config = out.storage if isinstance(out, BigMatrix) else resolve_storage(storage)
    _check_not_aliased(where, loc, inputs)
    matrix = out if isinstance(out, BigMatrix) else _open_existing(where, out, loc, config)
    if matrix is None:
        bs = block_shape or o.block_shape or (1024, 1024)
        bs = (min(bs[0], o.shape[0]), min(bs[1], o.shape[1]))
        return Slot(o, loc.url, None, False, bs)
    matrix.check_fresh(complete=False)  # an unfinished out is resumed or replaced
    if matrix.shape != o.shape or matrix.dtype != o.dtype:
        raise ShapeMismatchError(
            f"{where}: out {matrix!r} must have shape {o.shape} and dtype {o.dtype.name} to "
            f"hold the result, got shape {matrix.shape} and dtype {matrix.dtype.name}; pass "
            "a new URL, or destroy it first (BigMatrix.destroy())."
        )
    return Slot(o, loc.url, matrix, False, matrix.block_shape)


def _check_not_aliased(where: str, loc: Location, inputs: Sequence[Any]) -> None:
    scheme, path = place_key(loc)
    for i, x in enumerate(inputs):
        if not isinstance(x, BigMatrix):
            continue
        s2, p2 = place_key(x.location)
        if s2 != scheme:
            continue
        how = ("is" if path == p2 else "lies inside" if path.startswith(p2)
               else "contains" if p2.startswith(path) else None)  # fmt: skip
        if how is not None:
            raise OutputConflictError(
                f"{where}: out ({loc.url}) {how} input #{i} ({x.url}); writing the result "
                "there would corrupt an input while it is read (or delete it on failure). "
                "Pass an out URL of its own."
            )


def _open_existing(where: str, url: Any, loc: Location, config: StorageConfig) -> BigMatrix | None:
    """The matrix at ``url``, or None when its place is free (else refused); every
    process looks between two barriers, so all decide on the same state."""
    multihost.sync(f"look {url}")
    try:
        return BigMatrix.open(url, storage=config)
    except MatrixNotFoundError:
        _check_free_place(where, loc, config)
        return None
    finally:
        multihost.sync(f"looked {url}")


def _kvstore(loc: Location, config: StorageConfig, path: str) -> ts.KvStore:
    return open_kvstore(loc, config, path=path)  # the store's one driver and context


def _check_free_place(where: str, loc: Location, config: StorageConfig) -> None:
    """A new output's place must hold nothing and lie inside no other matrix."""
    with translate_errors(where, loc):
        keys = _kvstore(loc, config, loc.path).list().result()
    if keys:
        raise OutputConflictError(
            f"{where}: out ({loc.url}) is not a matrix but already holds {len(keys)} "
            f"object(s) (e.g. {keys[0].decode()!r}: other matrices or data); a result is "
            "only written to an empty place or over a matrix. Pass another URL."
        )
    for parent in _ancestors(loc):
        if _holds_matrix(loc, config, parent):
            raise OutputConflictError(
                f"{where}: out ({loc.url}) lies inside the stored matrix at {parent!r}; "
                "writing there would change that matrix. Pass an out URL outside it."
            )


def _ancestors(loc: Location) -> list[str]:
    parts = [p for p in loc.path.split("/") if p]
    lead = "/" if loc.scheme == "file" else ""
    return [lead + "/".join(parts[:i]) + "/" for i in range(1, len(parts))]


def _holds_matrix(loc: Location, config: StorageConfig, prefix: str) -> bool:
    """Whether an array is stored at ``prefix`` (a zarr group is not: a matrix may live
    inside one, as xarray datasets do)."""
    with translate_errors("checking out", loc):
        kv = _kvstore(loc, config, "/" if loc.scheme == "file" else "")
        key = prefix.lstrip("/") if loc.scheme == "file" else prefix
        v3, v2 = kv.read(key + "zarr.json"), kv.read(key + ".zarray")
        header = parse_json(v3.result())
        if header is not None:
            return header.get("node_type", "array") == "array"
        return v2.result().state == "value"


def materialize(slot: Slot, storage: StorageConfig | None, where: str) -> BigMatrix:
    """Creates a stored output that does not exist yet, uncommitted (once, on process 0)."""
    if slot.matrix is None:
        o, url = slot.output, slot.url

        def create() -> tuple[BigMatrix, str | None]:
            return BigMatrix.create_uncommitted(url, o.shape, slot.block_shape, o.dtype,
                                                writer=where, storage=storage)  # fmt: skip

        slot.matrix, slot.claim = multihost.once(
            f"create {url}", create, lambda: (BigMatrix.open(url, storage=storage), None)
        )
        slot.created = True
    return slot.matrix


def claim(slot: Slot, where: str) -> None:
    """Takes an existing output over for this run (uncommitted until :func:`commit`)."""
    m = slot.matrix
    slot.claim = multihost.once(f"claim {m.url}", lambda: m.begin_writing(where))


def fill_absent(slot: Slot) -> None:
    """Writes zero blocks where the result left blocks unwritten (e.g. above a Cholesky
    factor's diagonal) when absent blocks of ``out`` would not read as zeros for every
    reader (a zarr ``fill_value`` of 7 or NaN, a ``parent_fn``): a result never relies
    on a fill value that is not zero. Costs nothing for matrices jaxwren created."""
    m = slot.matrix
    if m is None or m.absent_reads_zero:
        return

    def fill() -> None:
        base = m.T if m.transposed else m
        stored = base.block_idxs_exist
        with translate_errors("writing zeros", m.location):
            futures = []
            for i, j in base.block_idxs:
                if (i, j) not in stored:
                    r0, r1, c0, c1 = base.block_bounds(i, j)
                    zeros = np.zeros((r1 - r0, c1 - c0), base.dtype)
                    futures.append(base.write_region_async(r0, c0, zeros))
            for f in futures:
                f.result()

    multihost.once(f"fill {m.url}", fill)


def commit(slot: Slot, where: str) -> None:
    """Ends this run's lifecycle on ``slot`` (process 0; raises ConcurrentWriteError when
    another writer took it over)."""
    m = slot.matrix
    if m is not None and slot.claim is not None:
        m.commit_writing(slot.claim, where)
        slot.committed = True


def discard(slots: Sequence[Slot], where: str) -> None:
    """After a failed run: removes the outputs this call created (exactly their keys);
    outputs that existed before keep their bytes, lose every record (a new generation)
    and stay uncommitted, so nothing partial is ever taken for a result. An output that
    another writer took over meanwhile is left alone."""
    for slot in slots:
        m = slot.matrix
        if m is None:
            continue

        def drop(m: BigMatrix = m, slot: Slot = slot) -> None:
            if slot.claim is not None and not slot.committed and not m.owns(slot.claim):
                # another writer took it over while this run still wrote into it: its
                # contents are mixed, so no one may read them as a result (a rival
                # still running fails at its own commit)
                m.clear_marks()
                m.begin_writing(where, "two runs wrote this out at once")
                return
            if slot.created:
                m.destroy()
            else:
                m.clear_marks()
                m.new_generation()
                if slot.committed:  # a result refused after its commit is not one
                    m.begin_writing(where)

        multihost.once(f"discard {m.url}", drop)
