"""Every ```python block in README.md and docs/*.md runs as written.

Each file's blocks run in order, in one fresh interpreter, in an empty temporary directory,
as a user would run them: without the suite's x64 setting (a block that needs 64-bit
switches it on itself) and with the compilation cache pointed into that directory. A block
whose fence says ```python norun is skipped; those few need a real S3 server.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\S*)[ \t]*(.*)$")

# Runs the blocks of one file in one namespace named __main__ (so a block may guard work
# with `if __name__ == "__main__"`, as a spawn-safe script does), each compiled under its
# file and line, so a traceback names the block that failed.
DRIVER = """
import json, sys
if __name__ == "__main__":
    ns = {"__name__": "__main__"}
    for where, first, src in json.load(open(sys.argv[1])):
        code = compile("\\n" * (first - 1) + src, where, "exec")
        exec(code, ns)
        print(f"ran {where}:{first}", flush=True)
"""


def blocks(path: pathlib.Path) -> list[tuple[str, int, str, bool]]:
    """``(info, first line, source, runs)`` of every fenced block in ``path``."""
    found, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(1):
            i += 1
            continue
        lang, info = m.group(1), m.group(2).split()
        start, i = i + 1, i + 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        found.append((lang, start + 1, "\n".join(lines[start:i]) + "\n", "norun" not in info))
        i += 1
    return found


def python_blocks(path: pathlib.Path) -> list[tuple[int, str]]:
    return [(line, src) for lang, line, src, runs in blocks(path) if lang == "python" and runs]


def test_every_doc_is_checked_and_norun_is_rare():
    assert {p.name for p in DOCS} >= {"README.md", "getting-started.md", "user-guide.md"}
    norun = [
        (p.name, line)
        for p in DOCS
        for lang, line, _, runs in blocks(p)
        if lang == "python" and not runs
    ]
    assert len(norun) <= 2, norun  # only what needs a real S3 server


@pytest.mark.parametrize("doc", [p for p in DOCS if python_blocks(p)], ids=lambda p: p.name)
def test_python_blocks_run(doc: pathlib.Path, tmp_path: pathlib.Path):
    script = tmp_path / "blocks.json"
    script.write_text(json.dumps([(str(doc), line, src) for line, src in python_blocks(doc)]))
    (tmp_path / "driver.py").write_text(DRIVER)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_ENABLE_X64")}
    env.update(JAXWREN_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "driver.py"), str(script)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{doc.name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
