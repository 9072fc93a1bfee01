"""The AWS SDK's shared files, read as the SDKs read them: the active profile's S3
settings in ``~/.aws/config`` and which credential source applies.

Part of the configuration layer: only :meth:`jaxwren.config.StorageConfig.resolve` calls
these, with the environment it was given.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Mapping
from typing import Any

from jaxwren.errors import ConfigError

__all__ = ["default_credentials", "shared_config", "true", "with_profile_files"]


def default_credentials(environ: Mapping[str, str]) -> str | dict[str, str]:
    """``credentials="default"`` resolved in the AWS SDK's order to the one source that
    applies. TensorStore's own default chain probes every source in turn (logging an
    error line per source that fails, on every store opened) and, in TensorStore 0.1.x,
    reads ``~/.aws`` profiles only when given both files' paths explicitly."""
    if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        return "environment"
    profile = environ.get("AWS_PROFILE") or environ.get("AWS_DEFAULT_PROFILE")
    if environ.get("AWS_WEB_IDENTITY_TOKEN_FILE"):  # comes before profiles in the chain
        return {"type": "default", "profile": profile} if profile else "default"
    cred_file, config_file = _shared_files(environ)
    name = profile or "default"
    if _profile_in(cred_file, name):
        cred_file = os.path.abspath(cred_file)
        return {"type": "profile", "profile": name, "credentials_file": cred_file,
                "config_file": config_file}  # fmt: skip
    if profile:
        return {"type": "default", "profile": profile}
    return "default"


def true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _nested(value: str) -> dict[str, str]:
    """A sub-section value of an AWS config file (``s3 =`` followed by indented
    ``key = value`` lines) as a dict."""
    out = {}
    for line in value.splitlines():
        key, eq, val = line.partition("=")
        if eq:
            out[key.strip().lower()] = val.strip()
    return out


def shared_config(environ: Mapping[str, str]) -> dict[str, str]:
    """What the AWS shared config file (``AWS_CONFIG_FILE`` or ``~/.aws/config``) sets for
    S3 in the active profile (``AWS_PROFILE``, else ``default``), as the AWS SDKs read it:
    ``region``, ``endpoint_url`` (all services), ``s3_endpoint`` (the ``endpoint_url`` of
    the s3 sub-section of the profile's ``services`` section), ``ignore_endpoints``.

    Raises:
      ConfigError: the file exists but cannot be parsed, or names an endpoint that is
        not an http(s) URL.
    """
    _, path = _shared_files(environ)
    if path == os.devnull:
        return {}
    parser = configparser.RawConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as e:
        raise ConfigError(
            f"The AWS config file {path} cannot be read ({str(e).splitlines()[0]}); fix it, "
            "or set AWS_ENDPOINT_URL_S3 and AWS_REGION (which take precedence), or point "
            "AWS_CONFIG_FILE at another file."
        ) from None
    profile = environ.get("AWS_PROFILE") or environ.get("AWS_DEFAULT_PROFILE") or "default"
    names = ["default", "profile default"] if profile == "default" else [f"profile {profile}"]
    section = next((n for n in names if parser.has_section(n)), None)
    if section is None:
        return {}
    got = {k.lower(): v.strip() for k, v in parser.items(section)}
    out = {k: got[k] for k in ("region", "endpoint_url") if got.get(k)}
    out["ignore_endpoints"] = got.get("ignore_configured_endpoint_urls", "")
    services = got.get("services")
    where = f"[{section}]"
    if services and parser.has_section(f"services {services}"):
        s3 = dict(parser.items(f"services {services}")).get("s3", "")
        if _nested(s3).get("endpoint_url"):
            out["s3_endpoint"] = _nested(s3)["endpoint_url"]
            where = f"[services {services}] s3"
    for key in ("s3_endpoint", "endpoint_url"):
        if out.get(key) and not re.match(r"^https?://[^/]+", out[key]):
            raise ConfigError(
                f"The AWS config file {path} sets endpoint_url = {out[key]!r} "
                f"({where if key == 's3_endpoint' else f'[{section}]'}), which is not an "
                "http(s) URL such as 'http://127.0.0.1:9000'; fix it there, or set "
                "AWS_ENDPOINT_URL_S3 (which takes precedence)."
            )
    return out


def _shared_files(environ: Mapping[str, str]) -> tuple[str, str]:
    """The AWS shared credentials and config files (the config file: os.devnull when
    absent)."""
    aws_dir = os.path.join(
        environ.get("HOME") or environ.get("USERPROFILE") or "/nonexistent", ".aws"
    )
    cred_file = environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(aws_dir, "credentials")
    config_file = environ.get("AWS_CONFIG_FILE") or os.path.join(aws_dir, "config")
    return cred_file, config_file if os.path.isfile(config_file) else os.devnull


def with_profile_files(credentials: Mapping[str, Any], environ: Mapping[str, str]) -> dict:
    """An explicit ``{"type": "profile", ...}`` with the shared files' paths filled in
    where not given: TensorStore 0.1.x finds no profile at all (not even an existing one)
    without both paths."""
    if "credentials_file" in credentials and "config_file" in credentials:
        return dict(credentials)
    cred_file, config_file = _shared_files(environ)
    return {"credentials_file": os.path.abspath(cred_file), "config_file": config_file,
            **credentials}  # fmt: skip


def _profile_in(credentials_file: str, profile: str) -> bool:
    """Whether a shared credentials file exists and has a ``[profile]`` section."""
    parser = configparser.RawConfigParser()
    try:
        return bool(parser.read(credentials_file)) and parser.has_section(profile)
    except (configparser.Error, OSError, UnicodeDecodeError):
        return False
