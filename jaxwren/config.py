"""Configuration objects: frozen, keyword-only, validated dataclasses.

The environment's settings are read here: :meth:`StorageConfig.resolve` (which the public
entry points call once; everything below them receives a resolved config) and
:func:`platform_setting` (``JAXWREN_PLATFORM``, read when a platform profile is computed).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from jaxwren import aws_config
from jaxwren.errors import ConfigError

__all__ = [
    "PLATFORMS",
    "RUN_KEYWORDS",
    "RunSpec",
    "StorageConfig",
    "format_bytes",
    "parse_bytes",
    "platform_setting",
    "run_spec",
]

_CREDENTIAL_TYPES = ("default", "anonymous", "environment", "profile", "imds", "ecs")
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(value: int | float | str | None, *, what: str = "memory_budget") -> int | None:
    """Parses a byte count such as ``1 << 30``, ``"2GiB"`` or ``"500 MB"``.

    Args:
      value: an integer number of bytes, a string with a unit, or None.
      what: the argument's name, used in the error message.

    Returns:
      The number of bytes, or None when ``value`` is None.

    Raises:
      ConfigError: the value is not a positive size.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{what}={value!r} is not a size; give bytes (int) or e.g. '2GiB'.")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ConfigError(f"{what}={value!r} is not a finite size; give bytes or e.g. '2GiB'.")
        nbytes = int(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if m is None or m.group(2).lower() not in _UNITS:
            raise ConfigError(
                f"{what}={value!r} is not a size; give bytes (int) or e.g. '2GiB', '512MB'."
            )
        nbytes = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if nbytes <= 0:
        raise ConfigError(f"{what}={value!r} must be positive.")
    return nbytes


PLATFORMS = ("auto", "cpu", "accelerator")  # the values JAXWREN_PLATFORM accepts


def platform_setting(environ: Mapping[str, str] | None = None) -> str:
    """``JAXWREN_PLATFORM``: which platform profile to use (see
    ``jaxwren.sharding.platform``): ``"auto"`` (unset or empty: the devices' own),
    ``"cpu"`` or ``"accelerator"`` (``accelerator`` on CPU devices runs the accelerator code
    paths, as CI's second lane does).

    Raises:
      ConfigError: any other value.
    """
    environ = os.environ if environ is None else environ
    value = environ.get("JAXWREN_PLATFORM", "").strip().lower() or "auto"
    if value not in PLATFORMS:
        raise ConfigError(
            f"JAXWREN_PLATFORM={environ['JAXWREN_PLATFORM']!r} is not a platform; use one of "
            f"{', '.join(PLATFORMS)} (or leave it unset for auto)."
        )
    return value


def format_bytes(nbytes: int) -> str:
    """``123456789`` -> ``'117.7 MiB (123456789 bytes)'``: readable and exact."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit} ({nbytes} bytes)"
    return f"{nbytes} bytes"


@dataclasses.dataclass(frozen=True, kw_only=True)
class StorageConfig:
    """How to reach the object store, and how hard to push it.

    Attributes:
      s3_endpoint: S3-compatible endpoint URL (``http://127.0.0.1:9000`` for MinIO).
        None: as the AWS SDKs and CLI resolve it: ``AWS_ENDPOINT_URL_S3``, then
        ``AWS_ENDPOINT_URL``, then the AWS shared config file (``AWS_CONFIG_FILE`` or
        ``~/.aws/config``; the profile of ``AWS_PROFILE``, else ``default``): the s3
        ``endpoint_url`` of its ``services`` section, then its ``endpoint_url``; else
        AWS itself. ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`` (or
        ``ignore_configured_endpoint_urls = true`` in the profile) skips all but an
        explicit value.
      s3_region: region used in request signatures. None: ``AWS_REGION``, then
        ``AWS_DEFAULT_REGION``, then the profile's ``region`` in the shared config file
        (with a custom endpoint and no region, ``us-east-1``).
      s3_host_header: optional Host header override (only with an endpoint).
      credentials: a TensorStore ``aws_credentials`` type (``"default"``, ``"environment"``,
        ``"anonymous"``, ``"profile"``, ``"imds"``, ``"ecs"``) or a full ``aws_credentials``
        JSON object such as ``{"type": "profile", "profile": "minio"}``. ``"default"`` is
        resolved the AWS SDK's way by :meth:`resolve`: keys in the environment
        (``AWS_ACCESS_KEY_ID``) -> ``"environment"``; else a shared credentials file
        (``AWS_SHARED_CREDENTIALS_FILE`` or ``~/.aws/credentials``) -> that file's
        ``AWS_PROFILE`` (or ``default``) profile; else ``AWS_PROFILE`` alone -> the default
        chain with that profile; else TensorStore's default chain (which probes files,
        ECS and IMDS and logs an error line for each source that fails).
      s3_request_concurrency: at most this many concurrent S3 requests.
      s3_max_retries: attempts on transient S3 and GCS errors (TensorStore retries with
        exponential backoff between ``s3_retry_initial_delay`` and ``s3_retry_max_delay``);
        with the defaults an unreachable store fails within about 30 s.
      s3_retry_initial_delay: first backoff delay, a TensorStore duration (``"0.1s"``).
      s3_retry_max_delay: longest backoff delay.
      s3_stall_timeout: seconds (> 0, rounded up to whole seconds) an s3:// or gs://
        request may go on transferring less than 256 bytes/s (a frozen endpoint that
        accepted the connection and says nothing) before it is aborted; each of the
        ``s3_max_retries`` attempts may wait this long, so a stalled store fails with a
        StorageError after about ``(s3_max_retries + 1) * s3_stall_timeout`` seconds.
        Process-wide: TensorStore reads it once, when its HTTP transport starts (the
        process's first s3/gcs request), so the value of the first StorageConfig used
        with s3:// or gs:// holds for the whole process (jaxwren passes it through the
        ``TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS`` environment variable, which, when
        already set, wins). Raise it for requests that legitimately stay silent longer
        (e.g. listing a huge prefix through a slow proxy).
      file_io_concurrency: at most this many concurrent local-file operations.
      file_sync: fsync each file write (durable against power loss, slower).
      file_memmap: read local files through ``mmap`` (TensorStore's ``file_io_mode``
        ``memmap``): less CPU per byte read and faster reads (docs/decisions.md:
        local files read through mmap). A file that another program truncates in
        place *while* it is being read would end the process with SIGBUS; TensorStore
        (hence jaxwren) and zarr-python replace files atomically, so their writes are
        safe. Set False for stores that other tools rewrite in place during reads.
    """

    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_host_header: str | None = None
    credentials: str | Mapping[str, Any] = "default"
    s3_request_concurrency: int = 32
    s3_max_retries: int = 8
    s3_retry_initial_delay: str = "0.1s"
    s3_retry_max_delay: str = "8s"
    s3_stall_timeout: float = 60.0
    file_io_concurrency: int = 32
    file_sync: bool = False
    file_memmap: bool = True

    def __post_init__(self) -> None:
        if self.s3_endpoint is not None and not re.match(r"^https?://[^/]+", self.s3_endpoint):
            raise ConfigError(
                f"StorageConfig(s3_endpoint={self.s3_endpoint!r}) must be an http(s) URL "
                "such as 'http://127.0.0.1:9000'."
            )
        if self.s3_host_header is not None and self.s3_endpoint is None:
            raise ConfigError("StorageConfig(s3_host_header=...) needs s3_endpoint as well.")
        cred_type = (
            self.credentials.get("type")
            if isinstance(self.credentials, Mapping)
            else self.credentials
        )
        if cred_type not in _CREDENTIAL_TYPES:
            raise ConfigError(
                f"StorageConfig(credentials=...) has type {cred_type!r}; expected one of "
                f"{', '.join(_CREDENTIAL_TYPES)} (a TensorStore aws_credentials type)."
            )
        for name in ("s3_request_concurrency", "s3_max_retries", "file_io_concurrency"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(
                    f"StorageConfig({name}={getattr(self, name)!r}) must be an int >= 1."
                )
        stall = self.s3_stall_timeout
        if (
            isinstance(stall, bool)
            or not isinstance(stall, int | float)
            or not math.isfinite(stall)
            or stall <= 0
        ):
            raise ConfigError(
                f"StorageConfig(s3_stall_timeout={stall!r}) must be a positive number of "
                "seconds, e.g. 60."
            )
        for name in ("file_sync", "file_memmap"):  # "false" would read as True
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"StorageConfig({name}={getattr(self, name)!r}) must be True or False."
                )
        if isinstance(self.credentials, Mapping):  # keep the dataclass hashable
            object.__setattr__(self, "credentials", _FrozenDict(self.credentials))

    def resolve(self, environ: Mapping[str, str]) -> StorageConfig:
        """Fills unset endpoint and region from AWS SDK environment variables, then the
        AWS shared config file (see the attributes).

        Explicit fields win over the environment. Called once by the public entry points.

        Raises:
          ConfigError: the shared config file cannot be parsed, or its endpoint is not
            an http(s) URL (the message names the file and the variables that override it).
        """
        ignore = aws_config.true(environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"))
        endpoint = self.s3_endpoint or (
            None
            if ignore
            else environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None
        )
        region = self.s3_region or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
        if region is None or (endpoint is None and not ignore):
            shared = aws_config.shared_config(environ)
            region = region or shared.get("region")
            if (
                endpoint is None
                and not ignore
                and not aws_config.true(shared.get("ignore_endpoints"))
            ):
                endpoint = shared.get("s3_endpoint") or shared.get("endpoint_url")
        if region is None and endpoint is not None:
            region = "us-east-1"
        credentials = self.credentials
        if credentials == "default":
            credentials = aws_config.default_credentials(environ)
        elif isinstance(credentials, Mapping) and credentials.get("type") == "profile":
            credentials = aws_config.with_profile_files(credentials, environ)
        return dataclasses.replace(
            self, s3_endpoint=endpoint, s3_region=region or None, credentials=credentials
        )

    def __repr__(self) -> str:  # never print credential objects' contents
        cred = self.credentials if isinstance(self.credentials, str) else "<aws_credentials>"
        return (
            f"StorageConfig(s3_endpoint={self.s3_endpoint!r}, s3_region={self.s3_region!r}, "
            f"credentials={cred!r})"
        )


class _FrozenDict(dict):
    """A read-only, hashable dict for credential specs inside a frozen dataclass."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted((k, repr(v)) for k, v in self.items())))

    def __reduce__(self) -> tuple:  # unpickling must not go through __setitem__
        return (_FrozenDict, (dict(self),))

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("StorageConfig.credentials is read-only")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _readonly  # type: ignore[assignment]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSpec:
    """How one operation runs: where, within how much memory, how it reports.

    Validated once, here; ``jaxwren.engine.run.run`` is the only reader.

    Attributes:
      mesh: a 2-D ``jax.sharding.Mesh`` with axes ``('rows', 'cols')`` (Auto or Explicit
        axis types); None: all devices in a mesh as square as possible.
      memory_budget: bytes (or ``"2GiB"``) the run may hold on the devices and in host
        staging; None: from the devices' memory (40% of host RAM on CPU).
      storage: StorageConfig for ``out`` URLs; None: the environment's AWS settings.
      progress: progress bar for multi-step runs (None: when the session is
        interactive: stderr is a terminal, or a Jupyter/IPython kernel).
      prefetch: steps of reads in flight ahead of the computing step (>= 0); lowered to
        0 when the budget only fits an unpipelined run.
      block_shape: the block shape of an ``out`` this run creates (None: from the inputs).

    Every public operation takes one as ``spec=``; its keywords of the same names are
    copies of these fields (see :func:`run_spec`).
    """

    mesh: Any = None
    memory_budget: int | float | str | None = None
    storage: StorageConfig | None = None
    progress: bool | None = None
    prefetch: int = 1
    block_shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        parse_bytes(self.memory_budget, what="memory_budget")
        if (
            isinstance(self.prefetch, bool)
            or not isinstance(self.prefetch, int)
            or (self.prefetch < 0)
        ):
            raise ConfigError(f"prefetch={self.prefetch!r} must be an int >= 0.")
        if self.progress is not None and not isinstance(self.progress, bool):
            raise ConfigError(f"progress={self.progress!r} must be True, False or None.")
        if self.storage is not None and not isinstance(self.storage, StorageConfig):
            raise ConfigError(
                f"storage must be a jw.StorageConfig or None, got {type(self.storage).__name__}."
            )
        if self.block_shape is not None:
            bs = self.block_shape
            ok = (
                isinstance(bs, tuple | list)
                and len(bs) == 2
                and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in bs)
            )
            if not ok:
                raise ConfigError(
                    f"block_shape={bs!r} must be two positive ints (rows, cols) or None."
                )
            object.__setattr__(self, "block_shape", (int(bs[0]), int(bs[1])))

    @property
    def budget_bytes(self) -> int | None:
        """The user's budget in bytes (None: choose from the devices)."""
        return parse_bytes(self.memory_budget, what="memory_budget")


RUN_KEYWORDS = tuple(f.name for f in dataclasses.fields(RunSpec))


def run_spec(where: str, spec: RunSpec | None = None, **keywords: Any) -> RunSpec:
    """The RunSpec of one public call: ``spec`` with the keyword copies it was given.

    A keyword left at None is not given. A given keyword fills a field that ``spec``
    leaves at its default; where ``spec`` sets the same field to another value the call
    is refused (it would be ambiguous which one wins).

    Args:
      where: the public function, for messages.
      spec: the caller's RunSpec (None: defaults).
      **keywords: the keyword copies (names of RunSpec fields), None when not given.

    Raises:
      ConfigError: ``spec`` is not a RunSpec; a keyword is invalid (as RunSpec checks);
        a keyword and ``spec`` give one setting different values.
    """
    if spec is None:
        spec = RunSpec()
    elif not isinstance(spec, RunSpec):
        raise ConfigError(
            f"{where}: spec must be a jw.RunSpec, got {type(spec).__name__}; build one with "
            "jw.RunSpec(memory_budget=..., prefetch=...)."
        )
    given = {k: v for k, v in keywords.items() if v is not None}
    copies = RunSpec(**given)  # validates the keywords as RunSpec does
    default = RunSpec()
    for name in given:
        ours, theirs = _setting(copies, name), _setting(spec, name)
        if theirs != _setting(default, name) and theirs != ours:
            raise ConfigError(
                f"{where}: {name}={getattr(copies, name)!r} and spec.{name}="
                f"{getattr(spec, name)!r} disagree; give {name} once, as a keyword or in spec."
            )
    return dataclasses.replace(spec, **{k: getattr(copies, k) for k in given})


def _setting(spec: RunSpec, name: str) -> Any:
    """A field as compared by :func:`run_spec` (budgets in bytes: ``"1KiB"`` is 1024)."""
    return spec.budget_bytes if name == "memory_budget" else getattr(spec, name)
