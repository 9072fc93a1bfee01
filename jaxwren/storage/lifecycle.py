"""One lifecycle for every writer that promises a whole matrix: begin -> write -> commit.

The pipeline's stored outputs, ``from_numpy``, ``save``, ``from_csv``/``from_parquet`` and
``map_blocks`` all take this road. :func:`begin` writes ``jaxwren/writing`` (who writes and
a random *claim*) **before** the matrix's header exists (or before an existing matrix is
changed); :func:`commit` checks that the claim is still this writer's and deletes the key.
While the key exists the matrix is *uncommitted*: every read through jaxwren raises
:class:`~jaxwren.errors.IncompleteMatrixError` naming the writer, and rerunning that writer
resumes or replaces it (no ``overwrite=True`` needed). A kill -9 at any point therefore
leaves either nothing, or a matrix that refuses to be read -- never one whose missing
blocks silently read as zeros.

The claim doubles as the lock-free answer to two runs writing one ``out``: the later run
takes the claim over, and the earlier one finds a foreign claim at its commit and raises
:class:`~jaxwren.errors.ConcurrentWriteError` instead of returning.

``BigMatrix.create`` + ``put_block`` (numpywren's block-by-block filling) is outside this
lifecycle on purpose: such a matrix is committed from birth and unwritten blocks read as
the fill value (or ``parent_fn``).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import tensorstore as ts

from jaxwren.errors import ConcurrentWriteError, IncompleteMatrixError

__all__ = [
    "WRITING_KEY",
    "abandon",
    "committing",
    "begin",
    "check_complete",
    "commit",
    "owns",
    "parse_state",
    "read_state_async",
]

WRITING_KEY = "jaxwren/writing"


def begin(kv: ts.KvStore, writer: str, note: str = "") -> str:
    """Marks the matrix in ``kv`` as being written by ``writer`` (``note``: why, for the
    message); returns the new claim (taking over any earlier claim)."""
    claim = uuid.uuid4().hex
    state = {"writer": writer, "claim": claim, "note": note}
    kv.write(WRITING_KEY, json.dumps(state).encode()).result()
    return claim


def read_state_async(kv: ts.KvStore) -> ts.Future:
    """Starts reading the writing state (to pass to :func:`parse_state`)."""
    return kv.read(WRITING_KEY)


def parse_state(got: ts.KvStore.ReadResult) -> dict[str, Any] | None:
    """``{"writer": ..., "claim": ...}`` of an uncommitted matrix; None when committed."""
    if got.state != "value":
        return None
    try:
        state = json.loads(got.value)
    except ValueError:
        state = None
    return state if isinstance(state, dict) else {"writer": "an unknown writer", "claim": ""}


def owns(kv: ts.KvStore, claim: str) -> bool:
    """Whether ``claim`` is still the matrix's writing claim."""
    state = parse_state(read_state_async(kv).result())
    return state is not None and state.get("claim") == claim


def commit(kv: ts.KvStore, claim: str, *, what: str, where: str) -> None:
    """Ends the writer's lifecycle: the claim must still be its own, then the matrix is
    complete (the writing key is deleted).

    Raises:
      ConcurrentWriteError: another run or writer took the matrix over meanwhile.
    """
    got = read_state_async(kv).result()
    state = parse_state(got)
    if state is None or state.get("claim") != claim:
        other = "no writer (it was committed or deleted)" if state is None else state["writer"]
        raise ConcurrentWriteError(
            f"{where}: another writer ({other}) took over {what} while this call was writing "
            "it; its contents are not (only) this call's result. Do not run two jobs on one "
            "out at once; rerun this call alone (or give each job its own out)."
        )
    kv.write(WRITING_KEY, None).result()  # (S3 stores differ on conditional deletes)


def abandon(kv: ts.KvStore, claim: str) -> None:
    """Deletes the writing state if ``claim`` still holds it (a writer that failed before
    anything else was stored)."""
    if owns(kv, claim):
        kv.write(WRITING_KEY, None).result()


def check_complete(state: dict[str, Any] | None, what: str) -> None:
    """Raises IncompleteMatrixError when ``state`` (from :func:`parse_state`) is set."""
    if state is None:
        return
    writer = state.get("writer", "a jaxwren writer")
    why = state.get("note") or "it was interrupted or failed"
    raise IncompleteMatrixError(
        f"{what}: {writer} did not finish writing this matrix ({why}), so blocks it "
        "never wrote would read as zeros or hold mixed data. Rerun the same "
        f"{writer} call to resume or replace it (no overwrite=True needed), or delete it "
        "with BigMatrix.destroy()."
    )


@contextlib.contextmanager
def committing(matrix: Any, claim: str | None, where: str, *,
               created: bool = True) -> Iterator[None]:  # fmt: skip
    """Runs a writer's writes into ``matrix`` (created or begun with ``claim``): on
    success the matrix is committed; on any failure, Ctrl-C included, a matrix the writer
    created and still owns is destroyed (an existing one is left uncommitted, so it
    refuses to be read: nothing a call did not create is deleted) and the error
    propagates. ``claim=None``: process != 0 of a multi-process run (process 0 commits)."""
    try:
        yield
    except BaseException:
        if claim is not None and created:
            with contextlib.suppress(Exception):
                if matrix.owns(claim):
                    matrix.destroy()
        raise
    if claim is not None:
        matrix.commit_writing(claim, where)
