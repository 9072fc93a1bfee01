"""Two JAX processes x 4 CPU devices (gloo on 127.0.0.1) run every public operation on a
file and an s3 store through ``python -m jaxwren.launch``; each compares with numpy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import BUCKET


def test_two_processes_file_and_s3(tmp_path, s3_endpoint):
    """One launch runs every operation on a file root, then on an s3 root (the processes
    start and compile once for both stores)."""
    env = dict(os.environ, PYTHONPATH=os.getcwd(), AWS_ENDPOINT_URL_S3=s3_endpoint,
               AWS_REGION="us-east-1")  # fmt: skip
    env.pop("XLA_FLAGS", None)  # the launcher gives each process 4 devices
    roots = [str(tmp_path / "mp"), f"s3://{BUCKET}/mp-{os.getpid()}"]
    cmd = [sys.executable, "-m", "jaxwren.launch", "--num_processes", "2", "--cpu_devices",
           "4", "--timeout", "500", "--", "tests/mp_worker.py", *roots]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=550)
    assert proc.returncode == 0, proc.stdout[-4000:]
    for root in roots:
        for pid in (0, 1):
            assert f"[p{pid}] process {pid}: all operations match numpy on {root}" in proc.stdout


def test_launcher_reports_failure(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(
        "import os, sys\nsys.exit(3 if os.environ['JAXWREN_PROCESS_ID'] == '1' else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-m", "jaxwren.launch", "--num_processes", "2", "--",
                           str(script)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 3


def test_initialize_needs_settings():
    from jaxwren import JaxwrenError
    from jaxwren.distributed import initialize

    with pytest.raises(JaxwrenError, match="jaxwren.launch"):
        initialize(environ={})
    with pytest.raises(JaxwrenError, match=r"process_id=2 must be in \[0, 2\)"):
        initialize("127.0.0.1:1", 2, 2, environ={})
