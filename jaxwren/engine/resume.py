"""Resume that cannot lie: records bound to the operation, its inputs' data and its outputs.

A run's records are named by a prefix that hashes the operation, its parameters, every
input's place, view, shape, dtype, *generation* (a token every jaxwren write to a matrix
replaces) and *data stamp* (the storage generations of its chunks: writes by other
tools, which leave the token alone, change it), the outputs' shapes and dtypes, and the
outputs' own generations; a complete result's record holds the outputs' data stamps when
it was finished, and a reuse checks them. A
record is reused only under the same prefix: change an input (put_block, overwrite,
being another run's out ...) or write to an output and the prefix no longer matches, so
its old records are never believed. A run that cannot identify its inputs (arrays in
memory, ``parent_fn`` matrices, arrays written by other tools, user functions) keeps no
records and always computes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from jaxwren.engine.outputs import Slot, place_key
from jaxwren.engine.problem import Problem, Resume
from jaxwren.sharding import multihost
from jaxwren.sharding.multihost import finished_records
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = ["identity", "resume_state", "COMPLETE"]

COMPLETE = "complete"


def identity(
    name: str, problem: Problem, operands: Sequence[Any], slots: Sequence[Slot]
) -> str | None:
    """What determines the result, as text; None when the inputs cannot be identified."""
    if problem.params is None:
        return None
    parts = [name, repr(problem.params)]
    stamps: dict[str, str] = {}  # by matrix: A and A.T share one
    for x in operands:
        if not isinstance(x, BigMatrix) or x.parent_fn is not None:
            return None
        gen = x.generation()
        if gen is None:
            return None
        # writes by other tools leave the token as it was; process 0 reads the stamps
        if x.url not in stamps:
            stamps[x.url] = multihost.shared_text(f"data stamp of {x.url}", x.data_stamp)
        stamp = stamps[x.url]
        parts.append(f"{place_key(x.location)}|{int(x.transposed)}|{gen}|{stamp}|{x.shape}|"
                     f"{x.dtype}")  # fmt: skip
    for s in slots:
        parts.append(f"{s.output.name}|{s.output.shape}|{s.output.dtype.name}|{s.block_shape}")
    return "\n".join(parts)


def _prefix(name: str, ident: str, slots: Sequence[Slot]) -> str:
    gens = "|".join(str(s.matrix.generation()) for s in slots if s.matrix is not None)
    digest = hashlib.sha256(f"{ident}\n{gens}".encode()).hexdigest()[:20]
    return f"{name}-{digest}"


def resume_state(name: str, ident: str | None, slots: Sequence[Slot]) -> tuple[Resume, str]:
    """``(resume, state)`` for outputs that all exist: state ``"complete"`` (the stored
    result is this computation's), ``"partial"`` (some tiles are: resume them) or
    ``"fresh"`` (nothing stored belongs to it)."""
    stored = [s for s in slots if s.stored]
    if ident is None or not stored or any(s.matrix is None for s in stored):
        return Resume(), "fresh"
    prefix = _prefix(name, ident, stored)
    per_output = [s.matrix.marks() for s in stored]  # one LIST per output
    if all(f"{prefix}-{COMPLETE}" in m for m in per_output):
        key = f"{prefix}-{COMPLETE}"

        def unchanged() -> str:
            return str(int(all(s.matrix.mark_value(key) == s.matrix.data_stamp()
                               for s in stored)))  # fmt: skip

        if multihost.shared_text(f"{name}: result unchanged", unchanged) == "1":
            return Resume(prefix), COMPLETE
        return Resume(), "fresh"  # another tool wrote the stored result: compute again
    marks = set().union(*per_output)
    mine = {m.split(".p")[0] for m in marks if m.startswith(prefix + "-")}
    if not mine:
        return Resume(), "fresh"
    return Resume(prefix, frozenset(finished_records(marks, mine))), "partial"


def fresh_resume(name: str, ident: str | None, slots: Sequence[Slot]) -> Resume:
    """The records of a run that starts from scratch (after its outputs got a new
    generation); no records when the inputs cannot be identified."""
    stored = [s for s in slots if s.stored]
    if ident is None or not stored:
        return Resume()
    return Resume(_prefix(name, ident, stored))
