"""What the benchmark binaries share: device setup, stores (a local moto S3 server),
timing, machine info, JSON lines, markdown tables and plots.

Import this module before jax: without an accelerator it asks XLA for 8 emulated CPU
devices (the library itself never does this).
"""

from __future__ import annotations

import os

_DEVICE_FLAG = "--xla_force_host_platform_device_count"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {_DEVICE_FLAG}=8").strip()

import contextlib  # noqa: E402
import gc  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tensorstore as ts  # noqa: E402
from absl import app, flags  # noqa: E402

import jaxwren as jw  # noqa: E402
from jaxwren.storage.backend import shared_context  # noqa: E402
from jaxwren.storage.urls import kvstore_spec, parse_url  # noqa: E402

STORES = ("memory", "file", "s3")
BUCKET = "jaxwren-bench"


def machine_info() -> dict[str, Any]:
    """CPU, memory, versions and devices of this run."""
    mem = None
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    cpu = platform.processor() or None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    devices = jax.devices()
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "mem_gib": mem,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "tensorstore": _version("tensorstore"),
        "devices": f"{len(devices)} x {devices[0].platform}",
    }


def _version(pkg: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Runs moto's S3 server on 127.0.0.1 (dummy credentials) with a bucket; yields the
    endpoint and stops the server afterwards."""
    import boto3

    os.environ["AWS_ACCESS_KEY_ID"] = "bench-dummy-key-id"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "bench-dummy-secret"
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=BUCKET
        )
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Store:
    """One store under test: fresh URLs, its StorageConfig, deletion."""

    def __init__(self, kind: str, root: str, config: jw.StorageConfig | None) -> None:
        self.kind, self.root = kind, root.rstrip("/")
        self.config = (config or jw.StorageConfig()).resolve(os.environ)
        self._counter = itertools.count()

    def url(self, name: str) -> str:
        return f"{self.root}/{name}-{next(self._counter)}"

    def path(self, url: str) -> str | None:
        """The local directory of a file-store URL (for peers that read zarr themselves)."""
        loc = parse_url(url)
        return loc.path.rstrip("/") if loc.scheme == "file" else None

    def spec(self, url: str) -> dict[str, Any]:
        return kvstore_spec(parse_url(url), self.config)

    def delete(self, url: str) -> None:
        kv = ts.KvStore.open(self.spec(url), context=shared_context()).result()
        kv.delete_range(ts.KvStore.KeyRange()).result()


@contextlib.contextmanager
def open_store(kind: str, file_dir: str | None = None) -> Iterator[Store]:
    """A Store of ``kind`` (memory, file in a temp dir or ``file_dir``, s3 on moto)."""
    if kind == "memory":
        yield Store(kind, "memory://bench", None)
    elif kind == "file":
        if file_dir:
            yield Store(kind, os.path.abspath(file_dir), None)
        else:
            with tempfile.TemporaryDirectory(prefix="jaxwren-bench-") as root:
                yield Store(kind, root, None)
    elif kind == "s3":
        with moto_server() as endpoint:
            cfg = jw.StorageConfig(
                s3_endpoint=endpoint, s3_region="us-east-1", credentials="environment"
            )
            yield Store(kind, f"s3://{BUCKET}/bench", cfg)
    else:
        raise ValueError(f"unknown store {kind!r}; choose from {', '.join(STORES)}")


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes (after a garbage collection)."""
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def best_of(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    setup: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Best-of-``repeats`` seconds of each function, interleaved, after one warm-up round.

    ``setup`` runs (untimed) before every call, e.g. to give writes a fresh target.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats + 1):
        for name, fn in fns.items():
            if setup is not None:
                setup()
            t = timed(fn)
            if i:  # the first round is the warm-up
                times[name].append(t)
    return {name: min(v) for name, v in times.items()}


def warm_and_best(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """``(first_call_seconds, best_of_repeats_seconds)``: the first call includes
    compilation, so ``first - best`` estimates the compile time."""
    first = timed(fn)
    return first, min(timed(fn) for _ in range(max(repeats, 1)))


def run_modes(
    modes: Sequence[str],
    known: Sequence[str],
    bench: Callable[[str], list[dict]],
    peers: Callable[[str], Sequence[str]],
    ours: Callable[[str], Sequence[str]] = lambda mode: ("jaxwren_lax",),
) -> list[dict]:
    """Runs ``bench(mode)`` for each of ``modes`` (rows named ``mode/impl``, with
    ``seconds`` and ``first_call_extra_s``) and prints a line per row. Each row records the
    1-minute load average around its mode; each of ``ours(mode)``'s rows (default the
    ``jaxwren_lax`` row) gets ``x_<peer>`` = peer seconds / jaxwren seconds (above 1:
    jaxwren is faster) for each of ``peers(mode)`` that ran."""
    results: list[dict] = []
    for mode in modes:
        if mode not in known:
            raise app.UsageError(f"unknown mode {mode!r}; choose from {', '.join(known)}")
        load0, t0 = os.getloadavg()[0], time.time()
        rows = bench(mode)
        load = (load0 + os.getloadavg()[0]) / 2
        by = {r["name"].split("/")[1]: r["seconds"] for r in rows}
        for r in rows:
            r["load_avg_1m"] = load
            if r["name"].split("/")[1] in ours(mode):
                for peer in peers(mode):
                    if peer in by:
                        r[f"x_{peer}"] = by[peer] / r["seconds"]
            print(f"{r['name']:>32}: {r['seconds']:8.3f} s (first call "
                  f"+{r['first_call_extra_s']:.2f} s) {time.time() - t0:.0f}s",
                  flush=True)  # fmt: skip
        results += rows
    return results


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_json(results: Sequence[dict], path: str | None) -> None:
    if not path:
        return
    with open(path, "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    print(f"\n{len(results)} results written to {path}")


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table of ``rows``; ``columns`` are ``(header, key, format)``."""
    head = "| " + " | ".join(h for h, _, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = []
    for r in rows:
        cells = []
        for _, key, fmt in columns:
            v = r.get(key)
            cells.append("-" if v is None else format(v, fmt))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *body])


def bar_plot(labels: Sequence[str], values: Sequence[float], ylabel: str, title: str,
             path: str) -> None:  # fmt: skip
    """A bar chart saved to ``path`` (needs matplotlib; says so when it is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot: matplotlib is not installed (pip install matplotlib); {path} not written.")
        return
    fig, ax = plt.subplots(figsize=(max(6, len(values) * 0.9), 4))
    ax.bar(np.arange(len(values)), values)
    ax.set_xticks(np.arange(len(values)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot written to {path}")


CACHE = flags.DEFINE_enum(
    "compilation_cache", "cold", ["cold", "warm", "off"],
    "jw.enable_compilation_cache: cold = a fresh directory (first calls compile, so the "
    "first-call figures are cold), warm = the default directory (reused).")  # fmt: skip


def enable_cache(mode: str) -> None:
    """Turns on the persistent compilation cache as ``--compilation_cache`` says."""
    if mode == "warm":
        print(f"compilation cache: {jw.enable_compilation_cache()} (warm)")
    elif mode == "cold":
        print(f"compilation cache: {jw.enable_compilation_cache(tempfile.mkdtemp())} (cold)")


def run_and_report(
    run: Callable[[Any], list[dict]],
    cfg: Any,
    columns: Sequence[tuple],
    *,
    json_out: str | None,
    plot: str | None,
    title: str,
) -> list[dict]:
    """What every binary's ``main`` does after reading its flags: x64 for float64 runs,
    the machine line, the run, the markdown table, the JSON lines and the optional plot."""
    if getattr(cfg, "dtype", None) == "float64":
        jax.config.update("jax_enable_x64", True)  # the binary's choice, in main only
    print(f"machine: {json.dumps(machine_info())}")
    enable_cache(CACHE.value)
    results = run(cfg)
    print()
    print(markdown_table(results, columns))
    write_json(results, json_out)
    if plot:
        timed = [r for r in results if "gflops" in r]
        bar_plot([r["name"] for r in timed], [r["gflops"] for r in timed], "GFLOP/s", title,
                 plot)  # fmt: skip
    return results
