"""The runner's own contracts, on hand-made plans."""

from __future__ import annotations

import threading
import time

import jax.numpy as jnp
import pytest

from jaxwren.engine.plan import Plan, Step, Write
from jaxwren.engine.runner import execute


def test_warm_runs_on_another_thread_before_its_kernel():
    seen: dict[str, object] = {}
    started = threading.Event()

    def warm() -> None:
        seen["thread"] = threading.current_thread().name
        time.sleep(0.2)  # a slow compile: the kernel must wait for it
        started.set()

    def kernel(carry: object) -> tuple[None, tuple]:
        seen["warm_done_first"] = started.is_set()
        return None, (jnp.ones(3),)

    plan = Plan("t", [Step((), kernel, (Write(None),), warm=warm)], None, 0, 0)
    (out,), stats = execute(plan, budget=1 << 20)
    assert seen["warm_done_first"] is True
    assert seen["thread"] != threading.current_thread().name
    assert float(out.sum()) == 3.0 and stats.steps_run == 1


def test_a_failing_warm_is_raised_before_its_kernel_runs():
    ran = []

    def warm() -> None:
        raise RuntimeError("compile failed")

    plan = Plan("t", [Step((), lambda c: ran.append(1) or (None, ()), warm=warm)], None, 0, 0)
    with pytest.raises(RuntimeError, match="compile failed"):
        execute(plan, budget=1 << 20)
    assert not ran
