"""Provenance: what a stored result (or a finished tile of one) vouches for, in one place.

A stored output carries three kinds of jaxwren keys (see :mod:`jaxwren.storage.records`
and :mod:`jaxwren.storage.lifecycle`):

* the run's **identity**, hashed into the name of every record: the operation, its
  parameters, every input's place, view (transposition), shape, dtype, generation token
  and *data stamp* (the storage generations of its chunks and header), and every output's
  shape, dtype, block shape, **view** (``out=C.T`` is another result than ``out=C``) and
  generation token;
* **tile records** (``jaxwren/done/<identity>-<tile>``), written after a tile's data is
  stored, holding the storage generations of exactly the chunks that tile wrote: a rerun
  after an interruption skips the tile only while those chunks are still what the run
  wrote (a chunk rewritten by zarr-python, deleted by ``rm``/boto3, or written by another
  run voids the tile);
* a **completion record** holding the data stamp of the whole result, checked before a
  complete result is returned again.

At commit the run also checks that every chunk it recorded is still its own (another
run or tool writing the same ``out`` meanwhile raises ConcurrentWriteError).

Stamps are read only when something is stored or reused: ``out=None`` reads none. A run
whose inputs cannot be identified (arrays in memory, ``parent_fn`` matrices, user
functions) keeps no records and always computes.

What voids what (each row is tested in tests/test_provenance.py):

=====================================================  ==================================
write                                                  voids
=====================================================  ==================================
any jaxwren write to an input (put_block, save ...)    every record derived from it
                                                       (generation token and data stamp)
zarr-python / TensorStore / boto3 write to an input    every record derived from it
                                                       (data stamp)
any write to a chunk of a stored result                that tile's record; the
                                                       completion record (result stamp)
deleting a chunk of a stored result (rm, boto3)        the same
a fresh run or failed run on ``out``                   all of ``out``'s records (cleared,
                                                       new generation token)
another run claiming ``out`` while this one writes     this run's commit
                                                       (ConcurrentWriteError)
=====================================================  ==================================

The generation token stays although the data stamps cover every write: it is one small
read where the stamp is one per chunk, so reads validate against it (a read that saw the
token change was torn), and a run's own writes replace it once per run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from jaxwren.engine.outputs import Slot, place_key
from jaxwren.engine.problem import Problem, Resume
from jaxwren.errors import ConcurrentWriteError
from jaxwren.sharding import multihost
from jaxwren.sharding.multihost import finished_records
from jaxwren.storage.bigmatrix import BigMatrix

__all__ = [
    "COMPLETE",
    "check_written",
    "fresh_resume",
    "identity",
    "record_tiling",
    "recorded_tiling",
    "resume_state",
]

COMPLETE = "complete"
TILING = "tiling"  # the record of the tiling a run chose (a rerun resumes with it)


def identity(
    name: str, problem: Problem, operands: Sequence[Any], slots: Sequence[Slot]
) -> str | None:
    """What determines the result, as text; None when nothing is stored (no stamp is
    read) or the inputs cannot be identified."""
    if problem.params is None or not any(s.stored for s in slots):
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
        parts.append(f"{place_key(x.location)}|{x.view.key()}|{gen}|{stamp}|{x.shape}|"
                     f"{x.dtype}")  # fmt: skip
    for s in slots:
        view = int(bool(s.matrix is not None and s.matrix.transposed))
        parts.append(f"{s.output.name}|{s.output.shape}|{s.output.dtype.name}|"
                     f"{s.block_shape}|{view}")  # fmt: skip
    return "\n".join(parts)


def _prefix(name: str, ident: str, slots: Sequence[Slot]) -> str:
    gens = "|".join(str(s.matrix.generation()) for s in slots if s.matrix is not None)
    digest = hashlib.sha256(f"{ident}\n{gens}".encode()).hexdigest()[:20]
    return f"{name}-{digest}"


def resume_state(name: str, ident: str | None, slots: Sequence[Slot]) -> tuple[Resume, str]:
    """``(resume, state)`` for outputs that all exist: state ``"complete"`` (the stored
    result is this computation's, committed and unchanged), ``"partial"`` (some tiles are
    and their chunks are still as written: resume them) or ``"fresh"``."""
    stored = [s for s in slots if s.stored]
    if ident is None or not stored or any(s.matrix is None for s in stored):
        return Resume(), "fresh"
    prefix = _prefix(name, ident, stored)
    per_output = [s.matrix.marks() for s in stored]  # one LIST per output
    if all(f"{prefix}-{COMPLETE}" in m for m in per_output):
        key = f"{prefix}-{COMPLETE}"

        def unchanged() -> str:
            return str(int(all(s.matrix.mark_value(key) == s.matrix.data_stamp()
                               and s.matrix.writing_state() is None
                               for s in stored)))  # fmt: skip

        if multihost.shared_text(f"{name}: result unchanged", unchanged) == "1":
            return Resume(prefix), COMPLETE
        return Resume(), "fresh"  # another tool wrote the stored result: compute again
    marks = set().union(*per_output)
    mine = {m.split(".p")[0] for m in marks if m.startswith(prefix + "-")}
    if not mine:
        return Resume(), "fresh"
    finished = finished_records(marks, mine)

    def still_there() -> str:  # the tiles whose chunks are still as they were written
        return json.dumps(sorted(k for k in finished if _intact(stored, per_output, k)))

    intact = json.loads(multihost.shared_text(f"{name}: intact tiles", still_there))
    return Resume(prefix, frozenset(intact)), "partial"


def _intact(stored: Sequence[Slot], marks: Sequence[set[str]], key: str) -> bool:
    """Whether every record of tile ``key`` (on every output and process that wrote
    one) names chunks whose storage generations are unchanged."""
    for s, listed in zip(stored, marks, strict=True):
        for rec in [m for m in listed if m == key or m.startswith(key + ".p")]:
            value = s.matrix.mark_value(rec)
            try:
                gens = json.loads(value) if value is not None else None
            except ValueError:
                gens = None
            if not isinstance(gens, dict) or s.matrix.chunk_generations(list(gens)) != gens:
                return False
    return True


def fresh_resume(name: str, ident: str | None, slots: Sequence[Slot]) -> Resume:
    """The records of a run that starts from scratch (after its outputs got a new
    generation); no records when the inputs cannot be identified."""
    stored = [s for s in slots if s.stored]
    if ident is None or not stored:
        return Resume()
    return Resume(_prefix(name, ident, stored))


def record_tiling(slots: Sequence[Slot], resume: Resume, tiling: Any) -> None:
    """Records the tiling of a resumable run on its first stored output (process 0), so a
    rerun with another prefetch or budget resumes the same tiles."""
    key = resume.key(TILING)
    first = next((s.matrix for s in slots if s.matrix is not None), None)
    if key is not None and first is not None:
        multihost.once(f"tiling {first.url}", lambda: first.note(key, repr(tiling)))


def recorded_tiling(slots: Sequence[Slot], resume: Resume) -> str | None:
    """The tiling an interrupted run recorded (see :func:`record_tiling`), or None."""
    key = resume.key(TILING)
    first = next((s.matrix for s in slots if s.matrix is not None), None)
    if key is None or first is None:
        return None
    return multihost.shared_text(f"tiling of {first.url}", lambda: first.note(key) or "")


def check_written(where: str, matrix: BigMatrix, written: dict[str, str]) -> None:
    """At commit: the chunks this run wrote (``{key: generation}`` from its tile records)
    must still be its own.

    Raises:
      ConcurrentWriteError: another run or tool wrote one of them meanwhile.
    """
    if not written:
        return
    now = matrix.chunk_generations(list(written))
    changed = [k for k, g in written.items() if now.get(k) != g]
    if changed:
        raise ConcurrentWriteError(
            f"{where}: {len(changed)} chunk(s) of {matrix!r} (e.g. {changed[0]!r}) were "
            "written by another run or tool while this call was writing it; its contents "
            "are not (only) this call's result. Rerun this call alone (or give each job "
            "its own out)."
        )
