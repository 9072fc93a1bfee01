"""The spectral route of jw.eigh / jw.svd (jaxwren.linalg.spectral_host): LAPACK on the host
for CPU devices, QDWH under the accelerator profile, either forced by ``algorithm=``; both
against numpy on ragged n with hard spectra, f32/f64, stored and returned."""

from __future__ import annotations

import numpy as np
import pytest

import jaxwren as jw
from jaxwren.sharding.platform import platform_profile

RNG = np.random.default_rng(11)
N = 37  # ragged: not a multiple of the blocks (16) nor of the 2 x 4 mesh


def with_spectrum(ev: np.ndarray) -> np.ndarray:
    q = np.linalg.qr(RNG.standard_normal((len(ev), len(ev))))[0]
    a = (q * ev) @ q.T
    return (a + a.T) / 2


SPECTRA = {  # hard cases: repeated eigenvalues, rank-deficient (a repeated zero)
    "repeated": lambda: with_spectrum(np.repeat([-2.0, 0.5, 3.0], [12, 15, 10])),
    "rank-deficient": lambda: (lambda x: x @ x.T)(RNG.standard_normal((N, 7))),
}


def check_eigh(a: np.ndarray, w, v, tol: float) -> None:
    """numpy's eigenvalues (ascending), orthonormal V, small residual and, per cluster of
    equal eigenvalues, numpy's invariant subspace (the vectors themselves are not unique)."""
    w, v = np.asarray(w, np.float64), np.asarray(v, np.float64)
    w_ref, v_ref = np.linalg.eigh(a.astype(np.float64))
    norm = np.linalg.norm(a, 2)
    assert w.shape == (len(a),) and v.shape == a.shape
    np.testing.assert_allclose(w, w_ref, atol=tol * norm)
    assert np.abs(v.T @ v - np.eye(len(a))).max() <= tol
    assert np.linalg.norm(a @ v - v * w) <= tol * np.linalg.norm(a)
    for value in np.unique(np.round(w_ref / norm, 3)):
        c = np.abs(w_ref / norm - value) < 2e-3
        np.testing.assert_allclose(v[:, c] @ v[:, c].T, v_ref[:, c] @ v_ref[:, c].T,
                                   atol=100 * tol)  # fmt: skip


def route(report: jw.RunReport) -> str:
    return report.reason.split("selected ")[1].split(":")[0].split(" ")[0]


def test_auto_route_is_host_on_cpu_and_qdwh_on_accelerators(monkeypatch):
    monkeypatch.setenv("JAXWREN_PLATFORM", "cpu")  # either CI lane: the CPU profile first
    a = SPECTRA["repeated"]()
    host = jw.explain(jw.eigh, a)
    assert route(host) == "host-evd" and "share host memory" in host.reason
    assert "syevd" in host.reason and "host" in host.tiling
    assert route(jw.explain(jw.svd, a)) == "host-gesdd"
    assert route(jw.explain(jw.eigh, a, algorithm="qdwh")) == "qdwh"
    monkeypatch.setenv("JAXWREN_PLATFORM", "accelerator")
    accel = jw.explain(jw.eigh, a)
    assert route(accel) == "qdwh" and "accelerators" in accel.reason
    assert len(accel.candidates) == 1  # the host is no fallback there
    forced = jw.explain(jw.eigh, a, algorithm="host")
    assert route(forced) == "host-evd" and "asked for" in forced.reason
    w, v = jw.eigh(a, termination_size=16)  # QDWH for real under the accelerator profile
    check_eigh(a, w, v, 1e-12)


@pytest.mark.parametrize("algorithm", ["host", "qdwh"])
@pytest.mark.parametrize("kind", sorted(SPECTRA))
def test_both_routes_match_numpy_float64(algorithm, kind):
    a = SPECTRA[kind]()
    w, v = jw.eigh(a, algorithm=algorithm, termination_size=16)
    check_eigh(a, w, v, 1e-12)


@pytest.mark.parametrize("algorithm", ["host", "qdwh"])
def test_both_routes_float32_and_lower_triangle(algorithm):
    a = SPECTRA["repeated"]().astype(np.float32)
    upper_junk = np.tril(a) + np.triu(np.full_like(a, 7.0), 1)  # numpy's UPLO='L'
    w, v = jw.eigh(upper_junk, algorithm=algorithm, symmetrize_input=False)
    assert np.asarray(w).dtype == np.float32 and np.asarray(v).dtype == np.float32
    check_eigh(a, w, v, 5e-5)


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_stored_outputs_of_both_routes(kind, tmp_path):
    a = SPECTRA["rank-deficient"]()
    root = "memory://eigh-route" if kind == "memory" else str(tmp_path)
    A = jw.from_numpy(a, f"{root}/a", (16, 16))
    for algorithm in ("host", "qdwh"):
        w, V = jw.eigh(A, f"{root}/{algorithm}", algorithm=algorithm, termination_size=16)
        assert isinstance(V, jw.BigMatrix) and V.shape == (N, N)
        stored_w = jw.BigMatrix.open(f"{root}/{algorithm}/w")
        assert stored_w.shape == (1, N)
        np.testing.assert_array_equal(stored_w.numpy()[0], np.asarray(w))
        check_eigh(a, w, V.numpy(), 1e-12)


@pytest.mark.parametrize("algorithm", [None, "host", "qdwh"])
def test_svd_routes_match_numpy(algorithm):
    x = RNG.standard_normal((30, N))  # wide: the general route, not TSQR
    u, s, vt = (np.asarray(t) for t in jw.svd(x, algorithm=algorithm))
    np.testing.assert_allclose(s, np.linalg.svd(x, compute_uv=False), atol=1e-12)
    np.testing.assert_allclose(u * s @ vt, x, atol=1e-12)
    assert np.abs(u.T @ u - np.eye(30)).max() < 1e-12
    assert np.abs(vt @ vt.T - np.eye(30)).max() < 1e-12
    accelerator = platform_profile().name == "accelerator"  # the lane's profile
    assert route(jw.explain(jw.svd, x, algorithm=algorithm)) == (
        "qdwh" if algorithm == "qdwh" or (algorithm is None and accelerator) else "host-gesdd"
    )


@pytest.mark.parametrize("bad", ["lapack", "QDWH", 1])
def test_bad_algorithm_is_a_config_error_before_anything_is_written(bad):
    with pytest.raises(jw.ConfigError, match="'qdwh' or 'host'"):
        jw.eigh(np.eye(4), "memory://eigh-route/bad", algorithm=bad)
    with pytest.raises(jw.MatrixNotFoundError):
        jw.BigMatrix.open("memory://eigh-route/bad/V")
    with pytest.raises(jw.ConfigError, match="'qdwh' or 'host'"):
        jw.svd(np.eye(4), algorithm=bad)


def test_host_route_refuses_nan_before_writing():
    a = SPECTRA["repeated"]()
    a[3, 5] = np.nan
    with pytest.raises(jw.NonFiniteError, match="clean it first"):
        jw.eigh(a, "memory://eigh-route/nan", algorithm="host")
    with pytest.raises(jw.MatrixNotFoundError):
        jw.BigMatrix.open("memory://eigh-route/nan/V")
