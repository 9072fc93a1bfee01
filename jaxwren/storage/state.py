"""A stored matrix's state beside its data: generation token, freshness, completion records.

:class:`StoredState` is the part of :class:`~jaxwren.storage.bigmatrix.BigMatrix` that
reads and writes jaxwren's own keys (see :mod:`jaxwren.storage.records`) and checks that a
handle still matches the stored header.
"""

from __future__ import annotations

from typing import Any

import tensorstore as ts

from jaxwren.errors import MatrixChangedError, MatrixNotFoundError
from jaxwren.storage import records
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
        :meth:`generation` cannot see). See :func:`records.data_stamp` for the cost."""
        with translate_errors("BigMatrix.data_stamp", self._loc):
            return records.data_stamp(self._base.kvstore)

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

    def check_fresh(self) -> None:
        """Checks that the stored header is still the one this handle opened: one small
        read of ``zarr.json``. Reads (get_block, read_region, numpy, to_jax) and writes
        through this handle check it themselves; the engine calls it once per operand per
        run. A matrix recreated with the same layout is still fresh (the handle reads the
        new data correctly); attributes other than jaxwren's header do not count.

        Raises:
          MatrixChangedError: recreated with another shape, dtype or layout; reopen it
            with ``jw.BigMatrix.open(url)``.
          MatrixNotFoundError: the matrix was deleted.
        """
        with translate_errors("BigMatrix.check_fresh", self._loc):
            self._check_header(read_json_async(self._base.kvstore).result())

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

    def marks(self) -> set[str]:
        """The completion records present (one LIST of the store)."""
        with translate_errors("BigMatrix.marks", self._loc):
            return records.list_marks(self._base.kvstore)

    def clear_marks(self) -> None:
        """Deletes every completion record."""
        with translate_errors("BigMatrix.clear_marks", self._loc):
            records.clear_marks(self._base.kvstore)
