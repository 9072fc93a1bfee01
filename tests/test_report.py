"""Run reports (issue 22, part 1): ``jw.explain`` plans without writing, its choice is the
real call's, ``jw.observe`` collects every run (threads and nested scopes), resume and
reuse show in the report, phase seconds add up."""

from __future__ import annotations

import contextvars
import threading

import jax
import numpy as np
import pytest

import jaxwren as jw
from jaxwren.storage.backend import open_kvstore
from jaxwren.storage.bigmatrix import resolve_storage
from jaxwren.storage.urls import parse_url
from tests.helpers import mem, rand, tolerance

TINY = 60_000  # bytes: many out-of-core steps for the shapes below


def spd(n: int, seed: int = 0) -> np.ndarray:
    x = rand((n, n), seed=seed)
    return x @ x.T / n + np.eye(n)


def contents(url: str, config: jw.StorageConfig | None) -> dict[str, bytes]:
    """Every key under ``url`` (data, header and jaxwren's own) with its bytes."""
    kv = open_kvstore(parse_url(url), resolve_storage(config))
    return {k.decode(): kv.read(k).result().value for k in kv.list().result()}


def state(m: jw.BigMatrix) -> tuple:
    return m.chunk_generations(), m.marks(), contents(m.url, m.storage)


def interrupt_after(monkeypatch, records: int) -> None:
    """An outage right after the ``records``-th completion record: the run fails with a
    StorageError and keeps its finished tiles (as after an interruption)."""
    orig, count = jw.BigMatrix.mark, {"n": 0}

    def mark(self, key, *value):
        orig(self, key, *value)
        count["n"] += 1
        if count["n"] == records:
            raise jw.StorageError("the store went away (test)")

    monkeypatch.setattr(jw.BigMatrix, "mark", mark)


# ------------------------------------------------------------------------ explain
def test_explain_writes_nothing(store):
    cfg = store.config
    a, b = rand((48, 40), seed=1), rand((40, 56), seed=2)
    A = jw.from_numpy(a, store.url("a"), (8, 8), storage=cfg)
    B = jw.from_numpy(b, store.url("b"), (8, 8), storage=cfg)
    inputs = (state(A), state(B))
    new = store.url("c")
    report = jw.explain(jw.matmul, A, B, out=new, memory_budget=TINY, storage=cfg)
    assert report.explained and report.operation == "matmul" and report.state == "fresh"
    assert report.stored == {"C": parse_url(new).url} and report.returned == ()
    assert report.steps_run > 1 and report.steps_skipped == 0 and report.tiles
    assert report.bytes_read is None and report.bytes_written is None
    assert report.projected_bytes <= TINY and report.budget == TINY
    assert contents(new, cfg) == {}  # nothing created at the new out
    with pytest.raises(jw.MatrixNotFoundError):
        jw.BigMatrix.open(new, storage=cfg)
    # an existing out: a complete result (would be reused) and another computation
    # (would be emptied and rewritten): explaining either changes nothing
    C = jw.matmul(A, B, new, memory_budget=TINY, storage=cfg)
    before = state(C)
    assert jw.explain(jw.matmul, A, B, out=C, memory_budget=TINY).state == "complete"
    other = jw.explain(jw.matmul, A, 2 * b, out=C, memory_budget=TINY)
    assert other.state == "fresh" and other.steps_run > 1
    spd_out = jw.explain(jw.cholesky, spd(24), out=store.url("l"), storage=cfg)
    assert spd_out.operation == "cholesky" and spd_out.stored
    assert state(C) == before and (state(A), state(B)) == inputs
    np.testing.assert_allclose(C.numpy(), a @ b, **tolerance("float64"))


def test_explain_an_interrupted_out_changes_nothing(monkeypatch):
    s = spd(40, seed=3)
    S = jw.from_numpy(s, mem("int-s"), (8, 8))
    out = mem("int-l")
    interrupt_after(monkeypatch, 3)
    with pytest.raises(jw.StorageError):
        jw.cholesky(S, out, memory_budget=16_000)
    monkeypatch.undo()
    L = jw.BigMatrix.open(out)
    before = state(L)
    planned = jw.explain(jw.cholesky, S, out, memory_budget=16_000)
    assert state(L) == before
    assert planned.state == "partial" and planned.steps_skipped >= 3
    assert "interrupted run's tiling (resume)" in planned.reason
    with jw.observe() as runs:
        jw.cholesky(S, out, memory_budget=16_000)
    (done,) = runs
    assert done.state == "partial" and not done.explained
    assert (done.tiling, done.steps_skipped, done.steps_run, done.tiles) == (
        planned.tiling, planned.steps_skipped, planned.steps_run, planned.tiles)  # fmt: skip
    np.testing.assert_allclose(L.numpy(), np.linalg.cholesky(s), **tolerance("float64"))


def _calls(name):
    """A public call: (function, args, kwargs)."""
    x, y = rand((36, 12), seed=4), rand((28, 12), seed=5)
    s = spd(32, seed=6)
    low = np.linalg.cholesky(s)
    return {
        "matmul": (jw.matmul, (x, x.T), dict(memory_budget=TINY)),
        "cholesky": (jw.cholesky, (s,), {}),
        "cholesky-ooc": (jw.cholesky, (s,), dict(memory_budget=16_000, block_shape=(8, 8))),
        "solve_triangular": (jw.solve_triangular, (low, x[:32]), {}),
        "distances": (jw.pairwise_sq_distances, (x, y), dict(memory_budget=TINY)),
        "qr": (jw.qr, (x,), {}),
        "map_blocks": (jw.map_blocks, (lambda b: 2 * b, x), dict(block_shape=(8, 8))),
        "rsvd": (jw.randomized_svd, (x, 3), {}),
    }[name]


CALLS = ["matmul", "cholesky", "solve_triangular", "distances", "qr", "map_blocks", "rsvd"]
CASES = [(n, s) for n in CALLS for s in ("returned", "stored")] + [("cholesky-ooc", "stored")]


@pytest.mark.parametrize(("name", "where"), CASES)
def test_explain_chooses_what_the_call_does(name, where):
    stored = where == "stored"
    fn, args, kw = _calls(name)
    if stored:
        kw = dict(kw, out=mem(name))  # a URL prefix for several outputs (qr, rsvd)
    planned = jw.explain(fn, *args, **kw)
    with jw.observe() as runs:
        fn(*args, **kw)
    real = [r for r in runs if r.operation == planned.operation][-1]
    fields = ("operation", "platform", "mesh_shape", "mesh_axes", "budget", "candidates",
              "tiling", "projected_bytes", "prefetch", "reason", "returned", "stored", "state",
              "tiles", "steps_run", "steps_skipped")  # fmt: skip
    assert {f: getattr(planned, f) for f in fields} == {f: getattr(real, f) for f in fields}
    assert real.tiling in [c.tiling for c in real.candidates]
    assert planned.explained and not real.explained and real.error is None
    assert real.bytes_read is not None and real.compiles is not None
    if stored:
        assert real.stored and all(u.startswith("memory://") for u in real.stored.values())
    else:
        assert real.returned and not real.stored


def test_explain_refuses_a_function_without_a_run():
    with pytest.raises(jw.ConfigError, match="explain: .*helper.* ran no jaxwren operation"):

        def helper(x):
            return np.asarray(x) * 2

        jw.explain(helper, np.ones((2, 2)))
    with pytest.raises(jw.MemoryBudgetError):  # as the real call would, before running
        jw.explain(jw.matmul, np.ones((64, 64)), np.ones((64, 64)), memory_budget=1000)


def test_explain_of_several_runs_is_the_first():
    s = spd(16, seed=7)
    low = np.linalg.cholesky(s)
    rep = jw.explain(jw.cho_solve, low, np.ones((16, 2)), out=mem("cho"))
    assert rep.operation == "solve_triangular" and rep.returned == ("X",)  # l y = b
    assert not rep.stored
    with jw.observe() as runs:
        jw.cho_solve(low, np.ones((16, 2)), mem("cho"))
    assert [r.returned for r in runs] == [("X",), ()] and runs[1].stored


# ------------------------------------------------------------------------ observe
def test_observe_collects_every_run_and_threads():
    x = rand((24, 16), seed=8)
    seen_elsewhere: list = []

    def in_thread():  # its own scope: never sees the main thread's runs
        with jw.observe() as mine:
            jw.matmul(x.T, x)
        seen_elsewhere.extend(mine)

    with jw.observe(all_threads=True) as everything, jw.observe() as here:
        jw.matmul(x, x.T)
        with jw.observe() as inner:
            jw.cholesky(spd(16))
        t = threading.Thread(target=in_thread)
        t.start()
        t.join()
        contextvars.copy_context().run(jw.qr, x)  # a copy of this context: seen here too
    assert [r.operation for r in inner] == ["cholesky"]
    assert [r.operation for r in here] == ["matmul", "cholesky", "qr"]
    assert sorted(r.operation for r in everything) == ["cholesky", "matmul", "matmul", "qr"]
    assert [r.operation for r in seen_elsewhere] == ["matmul"]
    assert seen_elsewhere[0] in everything and seen_elsewhere[0] not in here
    assert all(isinstance(r, jw.RunReport) and r.error is None for r in everything)
    with jw.observe() as after:
        pass
    jw.matmul(x, x.T)  # outside every scope: recorded nowhere
    assert after == [] and len(here) == 3


def test_observe_records_failed_runs_and_threads_at_once():
    bad = spd(16)
    bad[5, 5] = -100.0
    with jw.observe() as runs:
        with pytest.raises(jw.NotPositiveDefiniteError):
            jw.cholesky(bad)
        with pytest.raises(jw.MemoryBudgetError):
            jw.matmul(np.ones((64, 64)), np.ones((64, 64)), memory_budget=1000)
    assert [(r.operation, r.error) for r in runs] == [
        ("cholesky", "NotPositiveDefiniteError"), ("matmul", "MemoryBudgetError")]  # fmt: skip
    assert runs[1].tiling is None and runs[1].candidates
    assert not any(c.fits for c in runs[1].candidates)
    x = rand((16, 8), seed=9)
    with jw.observe(all_threads=True) as runs:
        threads = [threading.Thread(target=jw.matmul, args=(x, x.T)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(runs) == 4 and all(r.operation == "matmul" for r in runs)


# ------------------------------------------------------------------ resume and reuse
def test_resumed_and_reused_runs(tmp_path, monkeypatch):
    a, b = rand((48, 40), seed=10), rand((40, 56), seed=11)
    A = jw.from_numpy(a, str(tmp_path / "a"), (8, 8))
    B = jw.from_numpy(b, str(tmp_path / "b"), (8, 8))
    out = str(tmp_path / "c")
    interrupt_after(monkeypatch, 3)
    with jw.observe() as runs, pytest.raises(jw.StorageError):
        jw.matmul(A, B, out, memory_budget=TINY)
    monkeypatch.undo()
    (failed,) = runs
    assert failed.error == "StorageError" and failed.steps_run > 0
    with jw.observe() as runs:
        jw.matmul(A, B, out, memory_budget=TINY, prefetch=0)  # another prefetch: same tiles
        C = jw.matmul(A, B, out, memory_budget=TINY)
    resumed, reused = runs
    assert resumed.state == "partial" and resumed.steps_skipped >= 3 and resumed.steps_run > 0
    assert resumed.tiling == failed.tiling and "resume" in resumed.reason
    assert reused.state == "complete" and reused.steps_run == 0 and reused.bytes_read == 0
    assert reused.bytes_written == 0 and "reuse" in reused.reason
    np.testing.assert_allclose(C.numpy(), a @ b, **tolerance("float64"))


# ------------------------------------------------------------------------ figures
def test_phase_seconds_and_outputs():
    x = rand((64, 48), seed=12)
    with jw.observe() as runs:
        got = jw.matmul(x, x.T, memory_budget=3 * TINY)  # K panels (returned whole)
        C = jw.matmul(x, x.T, mem("phases"), memory_budget=TINY, block_shape=(8, 8))
    returned, stored = runs
    for r in runs:
        s = r.seconds
        assert min(s.plan, s.read, s.compute, s.write) >= 0
        assert s.plan + s.read + s.compute + s.write <= s.total + 1e-6
        assert r.steps_run >= 1 and r.bytes_read > 0 and r.compiles is not None
        assert r.platform in ("cpu", "accelerator", jax.devices()[0].platform)
        assert r.mesh_axes == ("rows", "cols") and int(np.prod(r.mesh_shape)) == 8
        assert "cheapest within budget at prefetch=" in r.reason
        assert r.projected_bytes <= r.budget
        assert sum(c.fits for c in r.candidates) >= 1
    assert returned.returned == ("C",) and returned.stored == {} and returned.bytes_written == 0
    assert stored.returned == () and stored.stored == {"C": C.url}
    assert stored.bytes_written == x.shape[0] ** 2 * 8 and stored.steps_run > 1
    assert isinstance(got, jax.Array)
    assert "matmul on" in str(stored) and "steps" in str(stored)


def test_prefetch_degraded_to_fit():
    a = rand((64, 64), seed=13)
    at0 = jw.explain(jw.matmul, a, a, prefetch=0)
    budget = min(c.projected_bytes for c in at0.candidates)  # fits only without prefetch
    tight = jw.explain(jw.matmul, a, a, memory_budget=budget)
    assert tight.prefetch == 0 and tight.projected_bytes <= budget
    assert tight.reason.startswith("prefetch degraded from 1 to 0 to fit")
    assert all(c.projected_bytes <= budget for c in tight.candidates if c.fits)
