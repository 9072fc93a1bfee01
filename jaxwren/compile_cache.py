"""JAX's persistent compilation cache, set up for jaxwren's kernels.

jaxwren's kernels compile once per geometry (matrix size, block, mesh, dtype), but a new
process compiles them again: about a second for the Cholesky kernel on a small CPU. With
the cache on, a second process with the same geometry loads the executables from disk and
compiles nothing (``RunStats.compiles`` is 0).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax

from jaxwren.errors import ConfigError

__all__ = ["CompileCounter", "default_cache_dir", "enable_compilation_cache"]


def default_cache_dir() -> Path:
    """``$JAXWREN_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxwren/jax`` (``~/.cache/...``)."""
    if os.environ.get("JAXWREN_CACHE_DIR"):
        return Path(os.environ["JAXWREN_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "jaxwren" / "jax"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path:
    """Turns on JAX's persistent compilation cache for this process (all jit compiles,
    jaxwren's and yours).

    Every compiled program is cached, however small or quick to compile (the thresholds
    are set to zero: a second run of the same job then compiles nothing at all). Call it
    before the first computation; calling it again with another path switches the cache.
    The cache is trusted code: keep it in a directory only you can write to.

    Args:
      path: a local directory (created if missing); None: :func:`default_cache_dir`.

    Returns:
      The cache directory.

    Raises:
      ConfigError: ``path`` is not a path, exists and is not a directory, or cannot be
        created.
    """
    if path is not None and not isinstance(path, str | os.PathLike):
        raise ConfigError(
            f"enable_compilation_cache: path must be a directory path (str or os.PathLike) "
            f"or None, got {type(path).__name__} {path!r}."
        )
    where = default_cache_dir() if path is None else Path(os.fspath(path)).expanduser()
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"enable_compilation_cache: cannot use {str(where)!r} as the cache directory "
            f"({e.strerror or e}); pass a writable directory, e.g. path='~/.cache/jaxwren'."
        ) from e
    jax.config.update("jax_compilation_cache_dir", str(where))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()  # re-initialised with this directory at the next compile
    return where


class CompileCounter:
    """Counts XLA compilations while it is entered, programs loaded from the persistent
    cache not included (jax.monitoring listeners, registered while entered only)."""

    def __init__(self) -> None:
        self.count = 0

    def _listen(self, event: str, duration: float, **_: Any) -> None:
        if "backend_compile" in event:  # fired around every compile, cache hits included
            self.count += 1

    def _hit(self, event: str, **_: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits":  # loaded from the persistent cache
            self.count -= 1

    def __enter__(self) -> CompileCounter:
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        jax.monitoring.register_event_listener(self._hit)
        return self

    def __exit__(self, *_: object) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)
        jax.monitoring.unregister_event_listener(self._hit)
