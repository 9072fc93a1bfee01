"""jw.randomized_svd against the exact SVD: decaying spectra, both plans, stores, errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import jaxwren as jw


def decaying(m: int, n: int, dtype: str = "float64", seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, min(m, n))))
    v, _ = np.linalg.qr(rng.standard_normal((n, min(m, n))))
    s = np.exp(-np.arange(min(m, n)) / 8.0)
    return ((u * s) @ v.T).astype(dtype)


def check(u, s, vt, a, k, rtol):
    ref = np.linalg.svd(a.astype(np.float64), compute_uv=False)[:k]
    np.testing.assert_allclose(np.asarray(s), ref, rtol=rtol)
    u, vt = np.asarray(u), np.asarray(vt)
    assert u.shape == (a.shape[0], k) and vt.shape == (k, a.shape[1])
    assert np.abs(u.T @ u - np.eye(k)).max() < 50 * rtol
    err = np.linalg.norm(a - (u * np.asarray(s)) @ vt, 2)
    assert err < 1.5 * np.linalg.svd(a, compute_uv=False)[k] + 50 * rtol


@pytest.mark.parametrize("budget", [None, "9MiB"], ids=["resident", "streamed"])
def test_randomized_svd_store(store, budget):
    a = decaying(2100, 333)
    A = jw.from_numpy(a, store.url("a"), (300, 333), storage=store.config)
    with jw.observe() as runs:
        got = jw.randomized_svd(A, 12, memory_budget=budget)
    check(*got, a, 12, 1e-9)
    reads = runs[0].bytes_read
    assert reads < 2 * a.nbytes if budget is None else reads >= 10 * a.nbytes


def test_randomized_svd_wide_float32_and_stored(tmp_path):
    a = decaying(300, 2500, "float32", seed=1)
    U, S, Vt = jw.randomized_svd(a, 10, str(tmp_path / "r"), n_iter=2)
    assert isinstance(U, jw.BigMatrix) and U.dtype == np.float32
    check(U.numpy(), S, Vt, a, 10, 1e-3)
    again = jw.randomized_svd(a, 10, n_iter=2)  # same seed, same answer
    np.testing.assert_allclose(np.asarray(again[1]), np.asarray(S), rtol=1e-6)


def test_randomized_svd_bad_input():
    a = decaying(500, 40)
    with pytest.raises(jw.ConfigError, match="between 1 and 40"):
        jw.randomized_svd(a, 41)
    with pytest.raises(jw.ConfigError, match="n_iter"):
        jw.randomized_svd(a, 5, n_iter=-1)
    a[7, 7] = np.nan
    with pytest.raises(jw.NonFiniteError):
        jw.randomized_svd(a, 5)


@pytest.mark.parametrize(
    "bad, dtype, l_total",  # Ω's width l_total: padded to 16 (12), or 16 already
    [(np.nan, "float32", 12), (np.inf, "float64", 16), (-np.inf, "float32", 16)],
)  # fmt: skip
def test_randomized_svd_finds_any_non_finite_entry(tmp_path, bad, dtype, l_total):
    """The finiteness check rides on the sketch's zero columns (0 * Inf = NaN): every kind
    of bad value, in the first and last row and column and in both row tiles, read once
    and kept or streamed in several passes."""
    a = decaying(2500, 40).astype(dtype)
    src = jw.from_numpy(a, f"file://{tmp_path}/A", block_shape=(512, 40))
    with pytest.raises(jw.MemoryBudgetError) as err:  # the smallest plan: 4 passes of tiles
        jw.randomized_svd(src, l_total - 2, n_oversamples=2, n_iter=1, memory_budget=1)
    streamed = int(re.findall(r"\((\d+) bytes\)", str(err.value))[-1])
    for i, j in [(0, 0), (2499, 39), (1500, 7)]:
        b = a.copy()
        b[i, j] = bad
        src.write_region(i, 0, b[i : i + 1])
        for budget in (None, streamed):
            with pytest.raises(jw.NonFiniteError, match="NaN or Inf"):
                jw.randomized_svd(src, l_total - 2, n_oversamples=2, n_iter=1,
                                  memory_budget=budget)  # fmt: skip
        src.write_region(i, 0, a[i : i + 1])
    for budget, passes in ((None, 1), (streamed, 4)):  # clean again: both plans run
        with jw.observe() as runs:
            _, s, _ = jw.randomized_svd(src, l_total - 2, n_oversamples=2, n_iter=1,
                                        memory_budget=budget, progress=False)  # fmt: skip
        assert runs[0].bytes_read == passes * 2 * 2048 * 40 * a.itemsize  # (padded tiles)
        assert np.all(np.isfinite(np.asarray(s)))


def test_pca_example_matches_sklearn(tmp_path):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "examples/pca.py", f"--store={tmp_path}"], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "max relative difference of the explained variance" in proc.stdout
