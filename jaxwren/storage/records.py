"""jaxwren's own keys beside a matrix's chunks: its generation token and completion records.

Everything lives under ``jaxwren/`` inside the matrix's prefix (zarr ignores it):

* ``jaxwren/generation``: a random token (uuid4 hex) replaced by every jaxwren write to
  the matrix. A result derived from the matrix records the token it read; a different
  token means the data may have changed. Absent for arrays no jaxwren call has written.
* ``jaxwren/done/KEY``: completion records of a computation writing the matrix (written
  after the data they vouch for, so an interrupted run resumes without trusting
  half-written output).
"""

from __future__ import annotations

import hashlib
import uuid

import tensorstore as ts

__all__ = [
    "GENERATION_KEY",
    "digest",
    "generations",
    "GENERATION_RANGE",
    "RECORDS_RANGE",
    "clear_marks",
    "list_marks",
    "read_mark",
    "read_note",
    "write_note",
    "read_generation",
    "write_generation_async",
    "write_mark",
]

GENERATION_KEY = "jaxwren/generation"
GENERATION_RANGE = ts.KvStore.KeyRange(GENERATION_KEY, GENERATION_KEY + "\0")
RECORDS_RANGE = ts.KvStore.KeyRange("jaxwren/", "jaxwren0")  # every jaxwren/ key
_MARKS_PREFIX = "jaxwren/done/"
_MARKS = ts.KvStore.KeyRange(_MARKS_PREFIX, "jaxwren/done0")
_NOTES_PREFIX = "jaxwren/notes/"
_NOTES = ts.KvStore.KeyRange(_NOTES_PREFIX, "jaxwren/notes0")


def read_generation(kv: ts.KvStore) -> str | None:
    """The stored generation token, or None when there is none."""
    got = kv.read(GENERATION_KEY).result()
    return got.value.decode() if got.state == "value" else None


def write_generation_async(kv: ts.KvStore) -> tuple[str, ts.Future]:
    """Starts writing a fresh token; returns it and the write's future."""
    token = uuid.uuid4().hex
    return token, kv.write(GENERATION_KEY, token.encode())


def write_mark(kv: ts.KvStore, key: str, value: bytes = b"1") -> None:
    kv.write(_MARKS_PREFIX + key, value).result()


def read_mark(kv: ts.KvStore, key: str) -> bytes | None:
    """A record's value, or None when it is absent."""
    got = kv.read(_MARKS_PREFIX + key).result()
    return got.value if got.state == "value" else None


def list_marks(kv: ts.KvStore) -> set[str]:
    """The completion records present (one LIST)."""
    return {k.decode()[len(_MARKS_PREFIX) :] for k in kv.list(_MARKS).result()}


def clear_marks(kv: ts.KvStore) -> None:
    """Deletes every completion record and run note."""
    kv.delete_range(_MARKS).result()
    kv.delete_range(_NOTES).result()


def write_note(kv: ts.KvStore, key: str, value: str) -> None:
    """A run's note beside its records (e.g. the tiling it chose), not a record."""
    kv.write(_NOTES_PREFIX + key, value.encode()).result()


def read_note(kv: ts.KvStore, key: str) -> str | None:
    got = kv.read(_NOTES_PREFIX + key).result()
    return got.value.decode() if got.state == "value" else None


def generations(kv: ts.KvStore, keys: list[str] | None = None) -> dict[str, str]:
    """``{key: storage generation as hex}`` for ``keys`` (None: every key of the matrix
    but jaxwren's own -- its chunks and ``zarr.json``, found by one LIST); one zero-byte
    read per key, all in flight together; ``""`` for an absent key. Any write changes a
    key's generation, by jaxwren or by another tool (zarr-python does not replace the
    generation token); so does a chunk appearing or vanishing. Cost: docs/decisions.md
    (stamps are storage generations)."""
    if keys is None:
        keys = sorted(k.decode() for k in kv.list().result() if not k.startswith(b"jaxwren/"))
    reads = [kv.read(k, byte_range=slice(0, 0)) for k in keys]
    out = {}
    for key, read in zip(keys, reads, strict=True):
        got = read.result()
        out[key] = got.stamp.generation.hex() if got.state == "value" else ""
    return out


def digest(gens: dict[str, str]) -> str:
    """One digest of :func:`generations` (the *data stamp* of a matrix or a region)."""
    h = hashlib.sha256()
    for key in sorted(gens):
        h.update(f"{len(key)}:{key}{len(gens[key])}:{gens[key]}".encode())
    return h.hexdigest()
