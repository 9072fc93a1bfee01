"""The keys of a zarr v3 array's chunks, from its stored ``chunk_key_encoding``.

zarr v3 names chunk ``(i, j)`` ``c/i/j`` (``default``, separator ``/``), ``c.i.j``
(``default`` with ``.``), or ``i.j`` / ``i/j`` (``v2``). Block-level operations (exists,
delete, free) act on exactly the keys of the matrix's chunks (a sharded array's chunk is
its shard, which is jaxwren's block), never on neighbours or on other objects.
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

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> ChunkKeys:
        enc = metadata.get("chunk_key_encoding") or {"name": "default"}
        name = enc.get("name", "default")
        default_sep = "/" if name == "default" else "."
        return cls(name, (enc.get("configuration") or {}).get("separator", default_sep))

    @property
    def _lead(self) -> str:
        return f"c{self.separator}" if self.name == "default" else ""

    def key(self, i: int, j: int) -> str:
        """The key of chunk ``(i, j)`` of the stored (untransposed) array."""
        return f"{self._lead}{i}{self.separator}{j}"

    def parse(self, key: str) -> tuple[int, int] | None:
        """``(i, j)`` of a chunk key, or None for any other key."""
        sep = re.escape(self.separator)
        m = re.fullmatch(rf"{re.escape(self._lead)}(\d+){sep}(\d+)", key)
        return (int(m.group(1)), int(m.group(2))) if m else None

    def key_range(self) -> ts.KvStore.KeyRange:
        """A key range holding every chunk key (and possibly other keys: filter with
        :meth:`parse`)."""
        if self._lead:  # "c/" .. "c0" or "c." .. "c/": the next character after the lead
            lead = self._lead
            return ts.KvStore.KeyRange(lead, lead[:-1] + chr(ord(lead[-1]) + 1))
        return ts.KvStore.KeyRange()

    def existing(self, kvstore: ts.KvStore) -> dict[tuple[int, int], str]:
        """The stored chunks: ``{(i, j): key}`` (one LIST)."""
        out = {}
        for raw in kvstore.list(self.key_range()).result():
            key = raw.decode()
            idx = self.parse(key)
            if idx is not None:
                out[idx] = key
        return out

    def delete_all(self, kvstore: ts.KvStore) -> None:
        """Deletes every chunk and nothing else."""
        if self.name == "default" and self.separator == "/":
            kvstore.delete_range(self.key_range()).result()  # exactly the c/ keys
            return
        futures = [kvstore.delete_range(ts.KvStore.KeyRange(k, k + "\0"))
                   for k in self.existing(kvstore).values()]  # fmt: skip
        for f in futures:
            f.result()
