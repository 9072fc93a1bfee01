"""Local multi-process launcher: ``python -m jaxwren.launch --num_processes 2 -- prog.py ARGS``.

Starts ``num_processes`` copies of the program on this machine with the variables
:func:`jaxwren.distributed.initialize` reads (coordinator on 127.0.0.1, a free port),
optionally ``--cpu_devices`` emulated CPU devices each, prefixes their output with
``[pN]``, and exits with the first failing exit code (stopping the others). On a cluster,
start one process per host yourself and pass the coordinator's address instead.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time

__all__ = ["launch", "main"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pump(proc: subprocess.Popen, prefix: str) -> None:
    for line in proc.stdout:  # type: ignore[union-attr]
        sys.stdout.write(f"{prefix} {line}")
        sys.stdout.flush()


def launch(
    argv: list[str],
    num_processes: int,
    *,
    cpu_devices: int | None = None,
    timeout: float | None = None,
) -> int:
    """Runs ``python argv...`` as ``num_processes`` cooperating processes; returns the
    exit code (0 when all succeed, else the first non-zero one)."""
    port = _free_port()
    procs = []
    for pid in range(num_processes):
        env = dict(os.environ, JAXWREN_COORDINATOR=f"127.0.0.1:{port}",
                   JAXWREN_NUM_PROCESSES=str(num_processes), JAXWREN_PROCESS_ID=str(pid),
                   PYTHONUNBUFFERED="1")  # fmt: skip
        if cpu_devices:
            flags = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count", "")
            env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={cpu_devices}"
        proc = subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
        threading.Thread(target=_pump, args=(proc, f"[p{pid}]"), daemon=True).start()
        procs.append(proc)
    deadline = None if timeout is None else time.monotonic() + timeout
    code = 0
    while any(p.poll() is None for p in procs):
        failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
        late = deadline is not None and time.monotonic() > deadline
        if failed or late:
            code = failed[0] if failed else 124
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.05)
    for p in procs:
        p.wait()
    return code or next((p.returncode for p in procs if p.returncode), 0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m jaxwren.launch", description=__doc__)
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--cpu_devices", type=int, default=None,
                        help="emulated CPU devices per process")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=None, help="seconds before stopping")
    parser.add_argument("program", nargs=argparse.REMAINDER, help="-- prog.py ARGS")
    args = parser.parse_args()
    program = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not program or args.num_processes < 1:
        parser.error("give --num_processes N >= 1 and a program after --")
    sys.exit(launch(program, args.num_processes, cpu_devices=args.cpu_devices,
                    timeout=args.timeout))  # fmt: skip


if __name__ == "__main__":
    main()
