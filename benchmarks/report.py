"""Generates docs/performance.md from the benchmark binaries' ``--json_out`` JSON lines.

Usage::

    python -m benchmarks.report                       # runs the quick set below, writes
                                                      # docs/performance.md
    python -m benchmarks.report --out=perf.md \\
        --run="benchmarks.matmul --n=4096 --repeats=3" \\
        --run="benchmarks.cholesky --n=4096 --block=1024 --repeats=2"
    python -m benchmarks.report --json="matmul n=8192=/tmp/mm.jsonl" --out=-

Each ``--run`` is a benchmark module and its flags: the report runs it in a subprocess
with ``--json_out`` added and renders its results under the command. ``--json=TITLE=PATH``
renders JSON lines produced earlier instead (run them on this machine: the header names
the machine the report runs on, from ``/proc/cpuinfo``, and today's date).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from absl import app, flags

QUICK = (
    "benchmarks.matmul --n=2048 --repeats=2",
    "benchmarks.cholesky --n=2048 --block=512 --repeats=2 --peers=numpy,scipy,dask",
)
_RUN = flags.DEFINE_multi_string("run", None, f"Benchmark module + flags (default: {QUICK}).")
_JSON = flags.DEFINE_multi_string("json", None, "TITLE=PATH of JSON lines made earlier.")
_OUT = flags.DEFINE_string("out", "docs/performance.md", "Markdown file to write ('-': stdout).")

# Never a column: process-wide figures, or text shown in the preamble when constant.
_HIDDEN = ("peak_rss_bytes", "residual_kind")
_NAMES = {"gflops": "GFLOP/s", "first_call_extra_s": "first call extra s",
          "read_mib": "read MiB", "written_mib": "written MiB", "rel_err": "rel err"}  # fmt: skip


def machine() -> str:
    """``"<cpu model>, <n> cores, <mem> GiB, <os>"`` of the machine running this."""
    cpu, mem = platform.processor() or "unknown CPU", None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 2**20
    parts = [cpu, f"{os.cpu_count()} cores"]
    if mem is not None:
        parts.append(f"{mem:.1f} GiB")
    parts.append(f"{platform.system()} {platform.machine()}")
    return ", ".join(parts)


def versions() -> str:
    got = []
    for pkg in ("jax", "jaxlib", "tensorstore", "numpy", "scipy", "dask"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            got.append(f"{pkg} {metadata.version(pkg)}")
    return f"Python {platform.python_version()}, " + ", ".join(got)


def read_lines(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def fmt(key: str, value: Any) -> str:
    """One cell: ratios as ``0.82x``, errors in e-notation, times to the millisecond."""
    if value is None:
        return "none" if key == "memory_budget" else "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if key.startswith("x_"):
        return f"{value:.2f}x"
    if key in ("rel_err", "residual") or "err" in key:
        return f"{value:.1e}"
    if key == "seconds" or key.endswith("_s"):
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def header(key: str) -> str:
    if key.startswith("x_"):
        return "x " + key[2:]
    return _NAMES.get(key, key.replace("_", " "))


def section(title: str, rows: Sequence[dict[str, Any]]) -> str:
    """A markdown section: constant fields as one line, the varying ones as a table."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    const = {k: rows[0].get(k) for k in keys if len({json.dumps(r.get(k)) for r in rows}) == 1}
    const.pop("name", None)
    shown = [k for k in keys if k not in const and k not in _HIDDEN]
    lines = [f"### {title}", ""]
    if const:
        fixed = ", ".join(f"{k} = {fmt(k, v)}" for k, v in const.items() if k != "peak_rss_bytes")
        lines += [f"All rows: {fixed}.", ""]
    lines.append("| " + " | ".join(header(k) for k in shown) + " |")
    lines.append("|" + "|".join("---" if k == "name" else "---:" for k in shown) + "|")
    for r in rows:
        lines.append("| " + " | ".join(fmt(k, r.get(k)) for k in shown) + " |")
    return "\n".join(lines) + "\n"


def run_benchmark(command: str, json_path: str) -> None:
    module, *args = shlex.split(command)
    argv = [sys.executable, "-m", module, *args, f"--json_out={json_path}"]
    print("running:", shlex.join(argv[1:]), file=sys.stderr)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def load_note(before: float, after: float) -> str:
    """The 1-minute load average around the runs: other jobs on the cores slow every row
    (the same-run ratios less than the seconds)."""
    busy = "" if max(before, after) <= (os.cpu_count() or 1) else " (other jobs shared the cores)"
    return f"1-minute load average {before:.1f} before the runs, {after:.1f} after{busy}."


def render(
    sections: Sequence[tuple[str, list[dict[str, Any]]]], argv: Sequence[str], load: str = ""
) -> str:
    today = datetime.date.today().isoformat()
    cmd = shlex.join(["python", "-m", "benchmarks.report", *argv])
    head = [
        "# Performance",
        "",
        "<!-- Generated: do not edit; rerun the command below. -->",
        f"Generated by `{cmd}` on {today}.",
        "",
        f"Machine: {machine()}; {versions()}. {load}".rstrip(),
        "",
        "Each binary times jaxwren and its peers (numpy, scipy, dask, plain jax) in the same",
        "run on the same data, best of `--repeats` after a first call; the first call's extra",
        "time (compilation included) is its own column. Ratios `x peer` are speed ratios",
        "(> 1: faster than the peer). numpy and scipy work on arrays in memory and pay no IO;",
        "jaxwren's `store` rows read and write the file store. Compare ratios, not seconds,",
        "across machines; see BUILD_NOTES.md for the larger runs and docs/decisions.md for",
        "what each figure decided. Without an accelerator the binaries run on 8 emulated",
        "CPU devices sharing the cores above.",
        "",
    ]
    return "\n".join(head) + "\n" + "\n".join(section(t, rows) for t, rows in sections)


def main(argv: Sequence[str]) -> None:
    del argv
    sections = []
    runs = _RUN.value if _RUN.value is not None else ([] if _JSON.value else list(QUICK))
    before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="jaxwren-report-") as tmp:
        for i, command in enumerate(runs):
            path = os.path.join(tmp, f"{i}.jsonl")
            run_benchmark(command, path)
            sections.append((f"`python -m {command}`", read_lines(path)))
    for entry in _JSON.value or ():
        title, _, path = entry.rpartition("=")
        sections.append((title or os.path.basename(path), read_lines(path)))
    load = load_note(before, os.getloadavg()[0]) if runs else ""
    text = render(sections, sys.argv[1:], load)
    if _OUT.value == "-":
        print(text)
    else:
        with open(_OUT.value, "w") as f:
            f.write(text)
        print(f"wrote {_OUT.value}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
