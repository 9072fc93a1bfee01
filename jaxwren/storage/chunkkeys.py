"""The keys of a zarr array's chunks, from its stored ``chunk_key_encoding``.

zarr v3 names chunk ``(i, j)`` ``c/i/j`` (``default``, separator ``/``), ``c.i.j``
(``default`` with ``.``), or ``i.j`` / ``i/j`` (``v2``); zarr v2 arrays name it ``i.j`` or
``i/j`` (their ``dimension_separator``). Block-level operations (exists, delete, free) act on
exactly the keys of the matrix's chunks (a sharded array's chunk is its shard, which is
jaxwren's block), never on neighbours or on other objects under the same prefix.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import tensorstore as ts

__all__ = ["ChunkKeys"]


@dataclasses.dataclass(frozen=True)
class ChunkKeys:
    """Chunk key naming of one array (hashable; built from its zarr.json)."""

    name: str = "default"
    separator: str = "/"
    rank: int = 2

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> ChunkKeys:
        """From a zarr v3 ``zarr.json`` document."""
        enc = metadata.get("chunk_key_encoding") or {"name": "default"}
        name = enc.get("name", "default")
        default_sep = "/" if name == "default" else "."
        sep = (enc.get("configuration") or {}).get("separator", default_sep)
        return cls(name, sep, len(metadata.get("shape", (0, 0))))

    @classmethod
    def from_v2(cls, zarray: dict[str, Any]) -> ChunkKeys:
        """From a zarr v2 ``.zarray`` document."""
        return cls("v2", zarray.get("dimension_separator") or ".", len(zarray.get("shape", ())))

    @property
    def _lead(self) -> str:
        return f"c{self.separator}" if self.name == "default" else ""

    def key(self, *idx: int) -> str:
        """The key of chunk ``idx`` of the stored (untransposed) array."""
        return self._lead + self.separator.join(str(int(i)) for i in idx)

    def parse(self, key: str) -> tuple[int, ...] | None:
        """The chunk index of ``key``, or None for any other key."""
        sep = re.escape(self.separator)
        pattern = rf"{re.escape(self._lead)}\d+" + rf"(?:{sep}\d+)" * (self.rank - 1)
        if self.rank < 1 or not re.fullmatch(pattern, key):
            return None
        return tuple(int(p) for p in key[len(self._lead) :].split(self.separator))

    def key_range(self) -> ts.KvStore.KeyRange:
        """A key range holding every chunk key (and possibly other keys: filter with
        :meth:`parse`)."""
        if self._lead:  # "c/" .. "c0" or "c." .. "c/": the next character after the lead
            lead = self._lead
            return ts.KvStore.KeyRange(lead, lead[:-1] + chr(ord(lead[-1]) + 1))
        return ts.KvStore.KeyRange()

    def existing_async(self, kvstore: ts.KvStore) -> ts.Future:
        """Starts the one LIST behind :meth:`existing`; pass its result to :meth:`collect`."""
        return kvstore.list(self.key_range())

    def collect(self, listed: list[bytes]) -> dict[tuple[int, ...], str]:
        """``{index: key}`` of the chunk keys among ``listed``."""
        out = {}
        for raw in listed:
            key = raw.decode()
            idx = self.parse(key)
            if idx is not None:
                out[idx] = key
        return out

    def existing(self, kvstore: ts.KvStore) -> dict[tuple[int, ...], str]:
        """The stored chunks: ``{index: key}`` (one LIST)."""
        return self.collect(self.existing_async(kvstore).result())

    def delete_all(self, kvstore: ts.KvStore) -> None:
        """Deletes every chunk and nothing else (one DeleteRange for ``c/`` keys; else one
        LIST and a delete per chunk)."""
        if self.name == "default" and self.separator == "/":
            kvstore.delete_range(self.key_range()).result()  # exactly the c/ keys
            return
        futures = [kvstore.delete_range(ts.KvStore.KeyRange(k, k + "\0"))
                   for k in self.existing(kvstore).values()]  # fmt: skip
        for f in futures:
            f.result()
