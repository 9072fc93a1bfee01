"""A stored matrix's state beside its data: generation token, freshness, completion records.

:class:`StoredState` is the part of :class:`~jaxwren.storage.bigmatrix.BigMatrix` that
reads and writes jaxwren's own keys (see :mod:`jaxwren.storage.records`) and checks that a
handle still matches the stored header.
"""

from __future__ import annotations

from typing import Any

import tensorstore as ts

from jaxwren.errors import MatrixChangedError, MatrixNotFoundError
from jaxwren.storage import lifecycle, records
from jaxwren.storage.backend import layout, parse_json, read_json_async, translate_errors
from jaxwren.storage.urls import Location

__all__ = ["StoredState"]


class StoredState:
    """Generation token, freshness and completion records of one stored matrix.

    Needs ``_base`` (the TensorStore array), ``_loc`` and ``_metadata`` (the stored
    zarr.json as the handle saw it when opened).
    """

    _base: ts.TensorStore
    _loc: Location
    _metadata: dict[str, Any]
    url: str

    def generation(self) -> str | None:
        """The matrix's generation token (``jaxwren/generation``), replaced by every
        jaxwren write (create, put_block, write_region, delete_block, free, write_blocks,
        save; a run's own writes replace it once per run). None for arrays no jaxwren
        call has written (e.g. by zarr-python). Reading never changes it."""
        with translate_errors("BigMatrix.generation", self._loc):
            return records.read_generation(self._base.kvstore)

    def data_stamp(self) -> str:
        """A digest of the storage generations of the matrix's chunks and header: it
        changes with any write to them, by jaxwren or by another tool (which
        :meth:`generation` cannot see). See :func:`records.generations` for the cost."""
        return records.digest(self.chunk_generations())

    def new_generation(self) -> str:
        """Writes and returns a fresh generation token: results and completion records
        derived from the matrix's earlier contents no longer match it."""
        with translate_errors("BigMatrix.new_generation", self._loc):
            token, fut = records.write_generation_async(self._base.kvstore)
            fut.result()
        return token

    def begin_write(self) -> str:
        """What every user-facing write does once before writing data: checks that this
        handle is fresh (:meth:`check_fresh`) and replaces the generation token (both
        requests in flight together). Returns the new token.

        Raises:
          MatrixChangedError, MatrixNotFoundError: as :meth:`check_fresh`.
        """
        kv = self._base.kvstore
        with translate_errors("BigMatrix.write", self._loc):
            header = read_json_async(kv)
            token, fut = records.write_generation_async(kv)
            got, _ = header.result(), fut.result()
            if parse_json(got) is None:  # deleted: leave no token behind
                kv.delete_range(records.GENERATION_RANGE).result()
            self._check_header(got)
        return token

    def check_fresh(self, *, complete: bool = True) -> None:
        """Checks that the stored header is still the one this handle opened and (with
        ``complete``) that no jaxwren writer left the matrix uncommitted: two small reads
        in flight together. Reads (get_block, read_region, numpy, to_jax) and writes
        through this handle check it themselves; the engine calls it once per operand per
        run. A matrix recreated with the same layout is still fresh (the handle reads the
        new data correctly); attributes other than jaxwren's header do not count.

        Raises:
          MatrixChangedError: recreated with another shape, dtype or layout; reopen it
            with ``jw.BigMatrix.open(url)``.
          MatrixNotFoundError: the matrix was deleted.
          IncompleteMatrixError: a jaxwren writer did not finish it (``complete=True``).
        """
        kv = self._base.kvstore
        with translate_errors("BigMatrix.check_fresh", self._loc):
            header, state = read_json_async(kv), lifecycle.read_state_async(kv)
            self._check_header(header.result())
            if complete:
                lifecycle.check_complete(lifecycle.parse_state(state.result()), repr(self))

    def read_token_async(self) -> tuple[ts.Future, ts.Future]:
        """Starts reading what a read validates against: the generation token and the
        writing state (see :meth:`check_unchanged`)."""
        kv = self._base.kvstore
        return kv.read(records.GENERATION_KEY), lifecycle.read_state_async(kv)

    def check_unchanged(self, before: tuple[Any, Any], after: tuple[Any, Any] | None,
                        op: str) -> None:  # fmt: skip
        """Validates a read: the writing state must be clear and the generation token
        the same before and after it (futures from :meth:`read_token_async`), else the
        data may be torn by a writer (a recreate with ``overwrite=True``, put_block,
        another run's out ...).

        Raises:
          IncompleteMatrixError: a writer had not finished the matrix before the read.
          MatrixChangedError: a jaxwren writer changed the matrix during the read.
        """
        tok0, st0 = (f.result() for f in before)
        lifecycle.check_complete(lifecycle.parse_state(st0), f"{op} of {self!r}")
        if after is None:  # only the check before the read
            return
        tok1, st1 = (f.result() for f in after)
        if st1.state == "value" or tok0.value != tok1.value or tok0.state != tok1.state:
            raise MatrixChangedError(
                f"{op} of {self!r}: the matrix was written (or recreated) by another call "
                "while it was being read, so the data read may be torn; read it again once "
                "that writer has finished."
            )

    # ---------------------------------------------------------------- the lifecycle
    def begin_writing(self, writer: str, note: str = "") -> str:
        """Marks the matrix uncommitted, written by ``writer`` (``note``: why, shown in
        the error of a read); returns the claim (see :mod:`jaxwren.storage.lifecycle`)."""
        with translate_errors(f"{writer}: begin", self._loc):
            return lifecycle.begin(self._base.kvstore, writer, note)

    def commit_writing(self, claim: str, where: str) -> None:
        """Commits what the writer holding ``claim`` wrote (see :func:`lifecycle.commit`)."""
        with translate_errors(f"{where}: commit", self._loc):
            lifecycle.commit(self._base.kvstore, claim, what=repr(self), where=where)

    def writing_state(self) -> dict[str, Any] | None:
        """``{"writer", "claim"}`` while a jaxwren writer has not committed the matrix;
        None when it is complete."""
        with translate_errors("BigMatrix.writing_state", self._loc):
            return lifecycle.parse_state(lifecycle.read_state_async(self._base.kvstore).result())

    def owns(self, claim: str) -> bool:
        """Whether ``claim`` still holds the matrix's writing state."""
        with translate_errors("BigMatrix.owns", self._loc):
            return lifecycle.owns(self._base.kvstore, claim)

    def chunk_generations(self, keys: list[str] | None = None) -> dict[str, str]:
        """``{chunk key: storage generation (hex)}`` of ``keys`` (None: every stored key
        but jaxwren's own, header included; one LIST); zero-byte reads in flight
        together, ``""`` for an absent key."""
        with translate_errors("BigMatrix.chunk_generations", self._loc):
            return records.generations(self._base.kvstore, keys)

    def _check_header(self, got: ts.KvStore.ReadResult) -> None:
        stored = parse_json(got)
        if stored is None:
            raise MatrixNotFoundError(
                f"{self!r}: the matrix was deleted after this handle was opened; "
                "create it again (jw.BigMatrix.create / jw.from_numpy)."
            )
        if layout(stored) != layout(self._metadata):
            raise MatrixChangedError(
                f"{self!r}: the stored matrix was recreated (shape, dtype or layout changed) "
                f"after this handle was opened; reopen it with jw.BigMatrix.open({self.url!r})."
            )

    # -------------------------------------------------------------- completion records
    def mark(self, key: str, value: str = "1") -> None:
        """Records that part ``key`` of a computation writing this matrix is stored.

        Records live beside the blocks (``jaxwren/done/KEY``); written only after the
        data they vouch for, they let an interrupted run resume without trusting
        half-written output. :meth:`free` and ``overwrite=True`` clear them. ``value``:
        what the record holds (e.g. the result's :meth:`data_stamp`).
        """
        with translate_errors("BigMatrix.mark", self._loc):
            records.write_mark(self._base.kvstore, key, value.encode())

    def mark_value(self, key: str) -> str | None:
        """What record ``key`` holds; None when it is absent."""
        with translate_errors("BigMatrix.mark_value", self._loc):
            got = records.read_mark(self._base.kvstore, key)
        return None if got is None else got.decode()

    def note(self, key: str, value: str | None = None) -> str | None:
        """Writes (``value``) or reads a run's note beside the records, e.g. the tiling
        it chose (cleared with the records; not a record itself)."""
        with translate_errors("BigMatrix.note", self._loc):
            if value is not None:
                records.write_note(self._base.kvstore, key, value)
                return value
            return records.read_note(self._base.kvstore, key)

    def marks(self) -> set[str]:
        """The completion records present (one LIST of the store)."""
        with translate_errors("BigMatrix.marks", self._loc):
            return records.list_marks(self._base.kvstore)

    def clear_marks(self) -> None:
        """Deletes every completion record."""
        with translate_errors("BigMatrix.clear_marks", self._loc):
            records.clear_marks(self._base.kvstore)
