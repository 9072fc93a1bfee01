"""Storage URLs -> TensorStore kvstore specs (pure functions, no environment reads).

Supported: ``s3://bucket/prefix``, ``gs://bucket/prefix``, ``file:///abs/path`` or a plain
path, ``memory://name``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from jaxwren.config import StorageConfig
from jaxwren.errors import UnsupportedURLError

__all__ = ["Location", "parse_url", "kvstore_spec"]

_SCHEMES = ("s3", "gs", "file", "memory")
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]")


@dataclasses.dataclass(frozen=True)
class Location:
    """A parsed storage URL.

    Attributes:
      scheme: one of ``s3``, ``gs``, ``file``, ``memory``.
      bucket: the bucket (s3/gs) or None.
      path: the key prefix inside the bucket, the absolute file path, or the memory name;
        always ends with ``/``.
      url: the normalised URL.
    """

    scheme: str
    bucket: str | None
    path: str
    url: str


def parse_url(url: str | os.PathLike[str]) -> Location:
    """Parses a storage URL or a plain filesystem path.

    Raises:
      UnsupportedURLError: unknown scheme, missing bucket or empty path; an s3/gs key or
        a memory name with an empty, ``.`` or ``..`` segment (only one trailing ``/`` is
        allowed). File paths are normalised instead (``os.path.normpath``).
    """
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str) or not url:
        raise UnsupportedURLError(
            f"storage URL {url!r} is not a non-empty string; use s3://bucket/prefix, "
            "gs://bucket/prefix, file:///abs/path, a plain path or memory://name."
        )
    if "://" not in url:
        return _file_location(os.path.abspath(os.path.expanduser(url)))
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme not in _SCHEMES:
        raise UnsupportedURLError(
            f"storage URL {url!r} has unknown scheme {scheme!r}://; supported: "
            + ", ".join(f"{s}://" for s in _SCHEMES)
            + " or a plain path."
        )
    if scheme == "file":
        if not rest.startswith("/"):
            raise UnsupportedURLError(
                f"file URL {url!r} must be absolute (file:///abs/path); or pass a plain path."
            )
        return _file_location(os.path.normpath(rest))
    if scheme == "memory":
        name = rest.removesuffix("/")
        if not name:
            raise UnsupportedURLError(f"memory URL {url!r} needs a name: memory://name.")
        _refuse_odd_segments(url, name, "memory://" + _plain(name))
        return Location("memory", None, name + "/", f"memory://{name}")
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.removesuffix("/")
    if not bucket or not prefix.strip("/"):
        raise UnsupportedURLError(
            f"{scheme} URL {url!r} needs a bucket and a prefix: {scheme}://bucket/prefix."
        )
    if not _BUCKET_RE.fullmatch(bucket):
        raise UnsupportedURLError(
            f"{scheme} URL {url!r}: {bucket!r} is not a valid bucket name (3-63 characters: "
            "lowercase letters, digits, '.', '-'; starting and ending with a letter or digit)."
        )
    _refuse_odd_segments(url, prefix, f"{scheme}://{bucket}/{_plain(prefix)}")
    return Location(scheme, bucket, prefix + "/", f"{scheme}://{bucket}/{prefix}")


def _refuse_odd_segments(url: str, key: str, plain: str) -> None:
    """Refuses a key (or memory name) with an empty, ``.`` or ``..`` segment.

    HTTP clients (TensorStore's S3 and GCS drivers included) normalise such paths, so
    ``s3://b/x/../B`` would read and write ``s3://b/B``: an ``out`` could overwrite an
    input it does not seem to name. A single trailing ``/`` was dropped by the caller.
    """
    for seg in key.split("/"):
        if seg in ("", ".", ".."):
            what = "an empty segment ('//')" if not seg else f"a {seg!r} segment"
            raise UnsupportedURLError(
                f"storage URL {url!r} has {what} in its key; S3 and GCS requests resolve "
                "such keys to another one (an out could overwrite an input it does not "
                f"seem to name), so jaxwren refuses them. Spell the key plainly, e.g. {plain!r}."
            )


def _plain(key: str) -> str:
    """``key`` with ``.``, ``..`` and empty segments resolved, for the error message."""
    out: list[str] = []
    for seg in key.split("/"):
        if seg == "..":
            if out:
                out.pop()
        elif seg not in ("", "."):
            out.append(seg)
    return "/".join(out) or "name"


def _file_location(path: str) -> Location:
    path = path.rstrip("/")
    if not path:
        raise UnsupportedURLError("file path '/' is not a matrix location; name a directory.")
    return Location("file", None, path + "/", f"file://{path}")


def kvstore_spec(loc: Location, config: StorageConfig) -> dict[str, Any]:
    """Builds the TensorStore kvstore JSON spec for a location.

    Args:
      loc: a parsed URL.
      config: a resolved StorageConfig (see :meth:`StorageConfig.resolve`).

    Returns:
      A kvstore spec with its context resources (credentials, retries, concurrency) inline.
    """
    if loc.scheme == "memory":
        return {"driver": "memory", "path": loc.path}
    if loc.scheme == "file":
        return {
            "driver": "file",
            "path": loc.path,
            "file_io_concurrency": {"limit": config.file_io_concurrency},
            "file_io_sync": config.file_sync,
            "file_io_mode": {"mode": "memmap" if config.file_memmap else "default"},
        }
    retries = {
        "max_retries": config.s3_max_retries,
        "initial_delay": config.s3_retry_initial_delay,
        "max_delay": config.s3_retry_max_delay,
    }
    if loc.scheme == "gs":  # bounded like S3: an unreachable store fails in seconds
        return {"driver": "gcs", "bucket": loc.bucket, "path": loc.path,
                "gcs_request_retries": retries}  # fmt: skip
    spec: dict[str, Any] = {
        "driver": "s3",
        "bucket": loc.bucket,
        "path": loc.path,
        "aws_credentials": (
            {"type": config.credentials}
            if isinstance(config.credentials, str)
            else dict(config.credentials)
        ),
        "s3_request_concurrency": {"limit": config.s3_request_concurrency},
        "s3_request_retries": retries,
    }
    if config.s3_endpoint:
        spec["endpoint"] = config.s3_endpoint
    if config.s3_region:
        spec["aws_region"] = config.s3_region
    if config.s3_host_header:
        spec["host_header"] = config.s3_host_header
    return spec
