"""TensorStore handles for stored matrices: create, open, probe, and error translation.

One process-wide ``tensorstore.Context`` is shared by every matrix so that ``memory://``
matrices can be reopened by URL and all matrices share one cache pool and IO limits.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorstore as ts

from jaxwren.config import StorageConfig
from jaxwren.errors import (
    BucketNotFoundError,
    CredentialsError,
    ForkError,
    JaxwrenError,
    MatrixChangedError,
    MatrixExistsError,
    MatrixNotFoundError,
    StorageError,
    UnsupportedURLError,
)
from jaxwren.storage.chunkkeys import ChunkKeys
from jaxwren.storage.records import RECORDS_RANGE
from jaxwren.storage.urls import Location, kvstore_spec

__all__ = [
    "HEADER_KEY",
    "create_array",
    "delete_matrix",
    "layout",
    "open_array",
    "open_kvstore",
    "parse_json",
    "read_json_async",
    "shared_context",
    "store_spec",
    "translate_errors",
]

HEADER_KEY = "jaxwren"
FORMAT_VERSION = 1
_CRED_WORDS = re.compile(
    r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|PERMISSION_DENIED|UNAUTHENTICATED"
    r"|Forbidden|ExpiredToken|InvalidToken"
)
# TensorStore's curl transport reads this once, when it starts (the first s3/gcs request).
_STALL_ENV = "TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS"
_forked_after_use = False  # this process was forked after its parent used TensorStore


def _after_fork_in_child() -> None:
    global _forked_after_use
    _forked_after_use = _forked_after_use or shared_context.cache_info().currsize > 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@functools.cache
def shared_context() -> ts.Context:
    """The one TensorStore context of this process (created on first use, not on import)."""
    return ts.Context({"cache_pool": {"total_bytes_limit": 0}})


_RESOURCES = ("file_io_concurrency", "file_io_sync", "file_io_mode", "s3_request_concurrency",
              "s3_request_retries", "gcs_request_retries", "aws_credentials")  # fmt: skip


@functools.cache
def _context_for(resources: str) -> ts.Context:
    return ts.Context(json.loads(resources), parent=shared_context())


def store_spec(loc: Location, config: StorageConfig) -> tuple[dict[str, Any], ts.Context]:
    """The kvstore spec of ``loc`` and the context to open it in.

    Refuses (ForkError) in a child forked after this process used TensorStore. Before
    the first s3/gcs open it sets TensorStore's stall limit from
    ``config.s3_stall_timeout`` (process-wide; an explicit environment value wins).

    The spec's context resources (IO limits, retries, credentials) move into one context
    per distinct set of them, a child of :func:`shared_context`: every handle on a store
    then shares TensorStore's driver and caches (a handle sees a header rewritten in this
    process) and one set of IO limits. Resources written inline in a spec would make a
    new driver, cache and limit for every open.
    """
    if _forked_after_use:  # TensorStore would abort the process on its first request
        raise ForkError(
            f"storage ({loc.url}) used in a process forked after its parent used "
            "TensorStore, whose threads do not survive fork (os.fork, or multiprocessing's "
            "'fork' start method, the default on Linux); use multiprocessing start method "
            "'spawn' or 'forkserver': multiprocessing.get_context('spawn'), or "
            "ProcessPoolExecutor(mp_context=multiprocessing.get_context('spawn'))."
        )
    if loc.scheme in ("s3", "gs"):  # before TensorStore's HTTP transport starts
        os.environ.setdefault(_STALL_ENV, str(math.ceil(config.s3_stall_timeout)))
    spec = kvstore_spec(loc, config)
    resources = {k: spec.pop(k) for k in _RESOURCES if k in spec}
    return spec, _context_for(json.dumps(resources, sort_keys=True))


def open_kvstore(loc: Location, config: StorageConfig, *, path: str | None = None) -> ts.KvStore:
    """The kvstore at ``loc`` (or at ``path`` in the same bucket), opened as in
    :func:`store_spec`."""
    spec, context = store_spec(loc, config)
    return ts.KvStore.open(
        spec if path is None else dict(spec, path=path), context=context
    ).result()


def _clean(msg: str) -> str:
    """Drops TensorStore's echoed spec (it can hold endpoints and credential settings)."""
    msg = re.sub(r"\s*\[tensorstore_spec=.*", "", msg, flags=re.S)
    msg = re.sub(r"\s*\[http_response_body=.*", "", msg, flags=re.S)
    return msg[:500]


def translate(exc: BaseException, op: str, loc: Location) -> StorageError:
    """Maps a TensorStore exception to a typed StorageError naming the operation and fix."""
    msg = _clean(str(exc))
    where = loc.url
    if "NoSuchBucket" in str(exc):
        return BucketNotFoundError(
            f"{op}: bucket {loc.bucket!r} of {where} does not exist; create it first "
            "(e.g. `aws s3 mb s3://BUCKET`, or the MinIO console) or fix the URL."
        )
    if _CRED_WORDS.search(str(exc)):
        return CredentialsError(
            f"{op}: the object store refused the credentials for {where} ({msg.split(':')[0]}). "
            "Check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the profile, or "
            "StorageConfig(credentials=...)."
        )
    if "Failed to create credentials provider" in msg:  # aws-c-auth, before any request
        code = re.search(r"AWS_ERROR_[A-Z_]+", msg)
        return CredentialsError(
            f"{op}: TensorStore could not load the AWS credentials for {where} "
            f"({code.group(0) if code else msg.split(':')[0]}). A profile (the 'profile' "
            "setting of StorageConfig(credentials={'type': 'profile', 'profile': NAME}), or "
            "AWS_PROFILE) must be a [NAME] section of the shared credentials file "
            "(AWS_SHARED_CREDENTIALS_FILE, default ~/.aws/credentials), and that file must "
            "exist; fix the profile name or the file, or use credentials='environment' with "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY."
        )
    if "is incompatible with existing metadata" in msg:
        return MatrixChangedError(
            f"{op}: the stored matrix at {where} was recreated (shape, dtype or layout "
            "changed) after this handle was opened; reopen it with jw.BigMatrix.open(url)."
        )
    if msg.startswith("ALREADY_EXISTS"):
        return MatrixExistsError(
            f"{op}: a matrix already exists at {where}; pass overwrite=True to replace it "
            "or choose another URL."
        )
    if 'received: "group"' in msg:
        return MatrixNotFoundError(
            f"{op}: {where} holds a zarr group, not a matrix (an array); open or write a "
            f"matrix inside it, e.g. {where}/NAME."
        )
    if msg.startswith("NOT_FOUND"):
        return MatrixNotFoundError(
            f"{op}: no matrix at {where} (its zarr.json is missing); create it with "
            "jw.BigMatrix.create / jw.from_numpy, or fix the URL."
        )
    if "Operation too slow" in msg:  # curl's low-speed limit: s3_stall_timeout
        return StorageError(
            f"{op} on {where} failed: the store stalled: it took the connection but did not "
            "answer (under 256 bytes/s) for StorageConfig.s3_stall_timeout seconds on each "
            "of its StorageConfig.s3_max_retries attempts. Check the endpoint (a frozen "
            "server or proxy?), then rerun: stored results resume where they stopped. Raise "
            f"s3_stall_timeout only if its requests legitimately stay silent longer. ({msg})"
        )
    hint = ""
    if "retry attempts failed" in msg or "CURL error" in msg or msg.startswith("UNAVAILABLE"):
        hint = (
            " The store did not answer within TensorStore's retries (StorageConfig "
            "s3_max_retries / s3_retry_initial_delay / s3_retry_max_delay, used for s3:// "
            "and gs://); check the endpoint, then rerun: stored results resume where they "
            "stopped."
        )
    return StorageError(f"{op} on {where} failed: {msg}.{hint}")


@contextlib.contextmanager
def translate_errors(op: str, loc: Location) -> Iterator[None]:
    """Context manager turning TensorStore ValueErrors into typed StorageErrors."""
    try:
        yield
    except JaxwrenError:  # already typed (e.g. a parent_fn block of the wrong shape)
        raise
    except ValueError as exc:
        raise translate(exc, op, loc) from None


def probe_bucket(loc: Location, config: StorageConfig, op: str) -> None:
    """Checks that an S3/GCS bucket exists and the credentials work (one LIST request).

    TensorStore alone retries writes into a missing bucket for a long time, so this
    check runs before anything is created. On the file store it refuses a path that is
    a regular file (see :func:`_refuse_regular_file`).
    """
    _refuse_regular_file(loc, op)
    if loc.scheme not in ("s3", "gs"):
        return
    with translate_errors(op, loc):
        kv = open_kvstore(loc, config, path="")
        kv.list(ts.KvStore.KeyRange(loc.path, loc.path + "zarr.json\0")).result()


def _array_spec(loc: Location, config: StorageConfig) -> tuple[dict[str, Any], ts.Context]:
    kv, context = store_spec(loc, config)
    # Blocks equal to the fill value are still stored: a written block always exists
    # (parent_fn and resumable algorithms rely on it).
    return {"driver": "zarr3", "kvstore": kv, "store_data_equal_to_fill_value": True}, context


def create_array(
    loc: Location,
    config: StorageConfig,
    shape: tuple[int, int],
    block_shape: tuple[int, int],
    dtype: np.dtype,
    *,
    overwrite: bool,
    dims: list[str] | None = None,
    attrs: dict[str, Any] | None = None,
) -> ts.TensorStore:
    """Creates the zarr v3 array (chunk = block) with jaxwren's header in its attributes
    (beside the user's ``attrs``) and ``dims`` as its ``dimension_names`` (default
    ``NAME_row``, ``NAME_col``, NAME the last segment of the URL).

    ``overwrite`` deletes the array stored there first: exactly its keys (see
    :func:`delete_matrix`), never other objects under the same prefix.
    """
    probe_bucket(loc, config, "BigMatrix.create")
    metadata = {
        "shape": list(shape),
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(block_shape)}},
        "chunk_key_encoding": {"name": "default"},
        "data_type": ts.dtype(dtype).name,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "attributes": {
            **(attrs or {}),
            HEADER_KEY: {"format": FORMAT_VERSION, "block_shape": list(block_shape)},
        },
    }
    # xarray needs dimension names to open a zarr v3 array: the user's, else names of
    # this matrix's own (a group of jaxwren matrices then opens as a Dataset)
    name = loc.path.rstrip("/").rsplit("/", 1)[-1] or "m"
    metadata["dimension_names"] = list(dims) if dims is not None else [f"{name}_row",
                                                                       f"{name}_col"]  # fmt: skip
    spec, context = _array_spec(loc, config)
    with translate_errors("BigMatrix.create", loc):
        if overwrite:
            delete_matrix(open_kvstore(loc, config), loc, "BigMatrix.create")
        return ts.open(dict(spec, metadata=metadata), create=True, context=context).result()


def open_array(loc: Location, config: StorageConfig) -> ts.TensorStore:
    """Opens an existing zarr v3 array from its stored metadata alone."""
    probe_bucket(loc, config, "BigMatrix.open")
    try:
        with translate_errors("BigMatrix.open", loc):
            spec, context = _array_spec(loc, config)
            return ts.open(spec, open=True, context=context).result()
    except MatrixNotFoundError:
        _refuse_zarr_v2(loc, config)
        raise


def _refuse_regular_file(loc: Location, op: str) -> None:
    """A file-store matrix is a directory: refuses a path that is, or lies below, a
    regular file (or anything else that is not a directory). Reads only."""
    if loc.scheme != "file":
        return
    path = place = loc.path.rstrip("/")
    while not os.path.isdir(place):
        if os.path.exists(place):
            what = "a regular file" if os.path.isfile(place) else "not a directory"
            which = loc.url if place == path else f"{place!r}, above {loc.url},"
            raise UnsupportedURLError(
                f"{op}: {which} is {what}, not a matrix directory (a matrix on the file "
                "store is a directory holding zarr.json). Choose a path that is a directory "
                "or does not exist yet; nothing was written or deleted."
            )
        parent = os.path.dirname(place)
        if parent == place:
            return
        place = parent


def _refuse_zarr_v2(loc: Location, config: StorageConfig) -> None:
    """A zarr v2 array (``.zarray``) gets a message that says so, not "no matrix"."""
    with translate_errors("BigMatrix.open", loc):
        found = open_kvstore(loc, config).read(".zarray").result().state == "value"
    if found:
        raise MatrixNotFoundError(
            f"BigMatrix.open: {loc.url} holds a zarr v2 array (.zarray); jaxwren reads zarr "
            "v3. Convert it with zarr-python, e.g. old = zarr.open_array(old_path); "
            "zarr.create_array(new_path, data=old[:], chunks=old.chunks, zarr_format=3), "
            "then open new_path."
        )


def stored_block_shape(array: ts.TensorStore) -> tuple[int, ...]:
    """The block shape: jaxwren's header if present, else the zarr chunk shape."""
    attrs = array.spec().to_json().get("metadata", {}).get("attributes", {})
    header = attrs.get(HEADER_KEY)
    if header and "block_shape" in header:
        return tuple(int(b) for b in header["block_shape"])
    # a block is the unit stored under one key: the shard of a sharded array
    return tuple(int(c) for c in array.chunk_layout.write_chunk.shape)


# ------------------------------------------------------------------ the stored header
def read_json_async(kv: ts.KvStore, key: str = "zarr.json") -> ts.Future:
    """Starts reading a JSON document (the array's header by default)."""
    return kv.read(key)


def parse_json(got: ts.KvStore.ReadResult) -> dict | None:
    """The document of a finished :func:`read_json_async`, or None when it is absent."""
    return json.loads(got.value) if got.state == "value" else None


def layout(metadata: dict) -> dict:
    """What decides how a handle maps bytes to elements: zarr.json less user attributes
    (jaxwren's header counts; zarr-python users may add attributes freely) and dimension
    names, in a normal form (zarr-python rewrites the document when attributes change:
    explicit default separator, empty storage transformers)."""
    keys = ChunkKeys.from_metadata(metadata)
    skip = ("attributes", "chunk_key_encoding", "dimension_names")
    out = {k: v for k, v in metadata.items() if k not in skip and v not in ([], None)}
    out["chunk_key_encoding"] = [keys.name, keys.separator]
    out[HEADER_KEY] = (metadata.get("attributes") or {}).get(HEADER_KEY)
    return out


def delete_matrix(kv: ts.KvStore, loc: Location, op: str) -> None:
    """Deletes exactly the keys of the array stored in ``kv``: its chunks (named by its
    stored chunk key encoding, and any in the default ``c/`` namespace, which a new array
    there would read as its own), jaxwren's ``jaxwren/`` records, and last its header
    (``zarr.json``, or a zarr v2 array's ``.zarray``/``.zattrs``). Other objects under
    the same prefix (nested matrices, files) are kept. Nothing stored: nothing to do.

    Raises:
      MatrixExistsError: ``zarr.json`` there describes a zarr group, not an array.
    """
    v3, v2 = (parse_json(f.result()) for f in (read_json_async(kv), read_json_async(kv, ".zarray")))
    if v3 is not None and v3.get("node_type", "array") != "array":
        raise MatrixExistsError(
            f"{op}: {loc.url} holds a zarr {v3.get('node_type')}, not an array; jaxwren "
            "deletes arrays only. Choose another URL, or delete the group yourself."
        )
    kinds = [ChunkKeys()]
    kinds += [ChunkKeys.from_metadata(v3)] if v3 is not None else []
    kinds += [ChunkKeys.from_v2(v2)] if v2 is not None else []
    for keys in dict.fromkeys(kinds):
        keys.delete_all(kv)
    kv.delete_range(RECORDS_RANGE).result()
    for key in (".zattrs", ".zarray", "zarr.json") if v2 is not None else ("zarr.json",):
        kv.delete_range(ts.KvStore.KeyRange(key, key + "\0")).result()
