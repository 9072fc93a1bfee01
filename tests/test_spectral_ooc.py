"""Out-of-core polar and eigh (jaxwren/linalg/spectral_ooc.py): a stored matrix at a
memory_budget of 1/2 of its bytes (the in-core plans need more; the triangular solves run
in several row panels: 1/4 takes twice the panels, the same code), against numpy/scipy; the route in the report and in
explain; the refusal without out; a rerun after an interruption reuses finished pieces.

The spectra are chosen so that each eigh splits once or twice (a few QDWH steps each):
every piece of the route runs, in a time a test can afford (the deep recursion of a dense
spectrum is measured in the benchmark notes)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

import jaxwren as jw
from jaxwren.lax.layout import block_size
from jaxwren.lax.qdwh import polar_kernel
from jaxwren.linalg import spectral_ooc


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    return Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("rows", "cols"))


def _quarter(n: int, dtype: type = np.float64) -> int:
    return n * n * np.dtype(dtype).itemsize // 4


def _half(n: int) -> int:
    return n * n * 8 // 2


def _sym(lam: np.ndarray, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((lam.size, lam.size)))
    a = (q * lam) @ q.T
    return (a + a.T) / 2


def _check_eigh(a: np.ndarray, w: object, v: np.ndarray) -> None:
    w, n = np.asarray(w), a.shape[0]
    scale = np.linalg.norm(a, 2)
    assert np.all(np.diff(w) >= 0)
    assert np.abs(w - np.linalg.eigvalsh(a)).max() <= 1e-12 * scale
    assert np.abs(v.T @ v - np.eye(n)).max() <= 1e-12
    assert np.linalg.norm(a @ v - v * w) / np.linalg.norm(a) <= 1e-12


def test_polar_out_of_core_resumes(tmp_path, mesh, monkeypatch):
    """Interrupted in its third Cholesky factorisation, then rerun: the finished pieces
    are reused, the result is scipy's, with as many QDWH steps as in core."""
    n, rng = 150, np.random.default_rng(0)
    q1, _ = np.linalg.qr(rng.standard_normal((n, n)))
    q2, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = (q1 * np.linspace(0.5, 1.0, n)) @ q2.T
    A = jw.from_numpy(a, tmp_path / "A", (24, 24))  # ragged: 150 = 6 * 24 + 6
    budget = _half(n)
    with pytest.raises(jw.MemoryBudgetError):  # the in-core plan does not fit
        jw.explain(jw.polar, A, memory_budget=budget, mesh=mesh)
    plan = jw.explain(jw.polar, A, tmp_path / "P", memory_budget=budget, mesh=mesh)
    assert plan.explained and "out-of-core" in plan.tiling and "out-of-core" in plan.reason
    assert not (tmp_path / "P").exists()  # explain writes nothing

    calls, real = {"n": 0}, spectral_ooc.cholesky

    def interrupted(*args, **kwargs):  # a kill in the third Cholesky factorisation
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(spectral_ooc, "cholesky", interrupted)
    with pytest.raises(KeyboardInterrupt):
        jw.polar(A, tmp_path / "P", memory_budget=budget, mesh=mesh)
    monkeypatch.setattr(spectral_ooc, "cholesky", real)
    with jw.observe() as runs:
        U, H = jw.polar(A, tmp_path / "P", memory_budget=budget, mesh=mesh)
    route = runs[-1]
    assert route.operation == "polar" and route.details["route"] == "out-of-core"
    assert {"matmul", "cholesky", "solve_triangular", "columns"} <= {r.operation for r in runs}
    assert all(r.budget == budget for r in runs)
    reused = [r for r in runs[:-1] if r.stored and r.state == "complete"]
    assert len(reused) >= 4 and route.details["runs_reused"] == len(reused)
    assert {r.operation for r in reused} >= {"matmul", "cholesky", "map_blocks"}
    u, h = U.numpy(), H.numpy()
    assert U.url.endswith("/P/U") and H.url.endswith("/P/H")
    assert np.abs(u.T @ u - np.eye(n)).max() <= 1e-12
    assert np.linalg.norm(u @ h - a) / np.linalg.norm(a) <= 1e-12
    assert np.abs(h - h.T).max() == 0 and np.linalg.eigvalsh(h).min() > 0
    _, _, k, ok = polar_kernel(jax.device_put(a), mesh, block_size(n, mesh), 60, want_h=False)
    assert route.details["iterations"] == int(k) and route.details["converged"] and bool(ok)
    with jw.observe() as again:  # finished: every stored piece is reused
        jw.polar(A, tmp_path / "P", memory_budget=budget, mesh=mesh)
    stored = [r for r in again[:-1] if r.stored]
    assert stored and all(r.state == "complete" and r.steps_run == 0 for r in stored)


def test_eigh_out_of_core(tmp_path, mesh):
    """Indefinite, 140 repeated eigenvalues (a diagonal leaf) and 10 distinct ones (a
    leaf solved by the in-core jw.eigh), one unbalanced split."""
    lam = np.concatenate([np.full(140, -1.0), np.linspace(4, 5, 10)])
    a = _sym(lam, 2)
    A = jw.from_numpy(a, tmp_path / "A", (24, 24))
    with jw.observe() as runs:
        w, V = jw.eigh(A, tmp_path / "E", memory_budget=_half(150), mesh=mesh)
    route = runs[-1]
    assert route.operation == "eigh" and route.details["route"] == "out-of-core"
    assert route.details["leaves"] == 2 and route.details["splits"] == 1
    leaf = [r for r in runs if r.operation == "eigh" and r.details.get("route") is None]
    assert len(leaf) == 1 and leaf[0].stored["V"].endswith("/leaf/V")
    assert jw.BigMatrix.open(tmp_path / "E" / "w").shape == (1, 150)
    _check_eigh(a, w, V.numpy())


def test_refusals_name_the_fix(tmp_path, mesh):
    x = _sym(np.linspace(1, 2, 64), 3)
    A = jw.from_numpy(x, tmp_path / "A", (16, 16))
    with pytest.raises(jw.MemoryBudgetError, match="pass out=URL"):
        jw.eigh(A, memory_budget=_quarter(64), mesh=mesh)
    with pytest.raises(jw.MemoryBudgetError, match="store a first"):
        jw.polar(x, tmp_path / "P", memory_budget=_quarter(64), mesh=mesh)
    assert not (tmp_path / "P").exists()
