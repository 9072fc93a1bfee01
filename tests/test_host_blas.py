"""The in-place BLAS/LAPACK calls on strided views (``jaxwren.linalg.host_blas``), against
numpy and scipy, on C- and Fortran-ordered views of bigger buffers, ragged shapes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sl

from jaxwren.linalg import host_blas

TOL = {np.float64: 1e-12, np.float32: 2e-4}


def view(rng, shape, dtype, order, pad=(3, 5)):
    """A view of ``shape`` inside a bigger buffer of ``order``."""
    big = np.asarray(rng.standard_normal((shape[0] + pad[0], shape[1] + pad[1])), dtype,
                     order=order)  # fmt: skip
    return big[pad[0] :, 2 : 2 + shape[1]]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("orders", ["CCC", "CFC", "FCF", "FFF", "CFF", "FCC"])
def test_gemm_and_trsm_in_place_on_strided_views(dtype, orders):
    rng = np.random.default_rng(0)
    oc, oa, ob = orders
    c = view(rng, (37, 21), dtype, oc)
    a, b = view(rng, (37, 13), dtype, oa), view(rng, (13, 21), dtype, ob)
    want = 0.5 * a.astype(np.float64) @ b - c
    base = c.base
    host_blas.gemm(0.5, a, b, -1.0, c)
    assert c.base is base  # in place
    np.testing.assert_allclose(c, want, atol=TOL[dtype] * 10, rtol=0)
    low, rhs = view(rng, (13, 13), dtype, oa), view(rng, (13, 9), dtype, ob)
    unit = np.tril(low.astype(np.float64), -1) + np.eye(13)
    want = np.linalg.solve(unit, rhs.astype(np.float64))
    host_blas.trsm_unit_lower(low, rhs)
    np.testing.assert_allclose(rhs, want, atol=TOL[dtype] * np.abs(want).max() * 10, rtol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("m", "w"), [(77, 77), (300, 130), (65, 1), (129, 128)])
def test_getrf_and_the_recursive_getrf_match_lapack(dtype, m, w):
    """``getrf`` on a Fortran-ordered view and ``getrf_rows`` on a C-ordered one give
    LAPACK's pivots and factor (leaves of 16 columns: several levels)."""
    rng = np.random.default_rng(1)
    a = view(rng, (m, w), dtype, "C")
    want, wpiv, info = sl.lapack.get_lapack_funcs("getrf", (a,))(np.asfortranarray(a))
    f = view(rng, (m, w), dtype, "F")
    f[...] = a
    piv, got_info = host_blas.getrf(f)
    np.testing.assert_array_equal(piv, wpiv)
    np.testing.assert_allclose(f, want, atol=TOL[dtype] * np.abs(want).max(), rtol=0)
    piv, got_info2 = host_blas.getrf_rows(a, leaf=16)
    np.testing.assert_array_equal(piv, wpiv)
    np.testing.assert_allclose(a, want, atol=TOL[dtype] * np.abs(want).max() * 10, rtol=0)
    assert got_info == got_info2 == info == 0


def test_getrf_reports_the_first_zero_pivot_as_lapack():
    a = np.random.default_rng(2).standard_normal((90, 90))
    a[:, 40] = a[:, 70] = 0.0  # U[40, 40] = U[70, 70] = 0: LAPACK's info names the first
    want_info = sl.lapack.dgetrf(a)[2]
    assert want_info == 41
    assert host_blas.getrf_rows(a.copy(), leaf=16)[1] == want_info
    assert host_blas.getrf(np.asfortranarray(a))[1] == want_info


def test_bad_operands_are_refused():
    with pytest.raises(TypeError, match="float32 or float64"):
        host_blas.gemm(1.0, np.ones((2, 2), int), np.ones((2, 2), int), 0.0, np.ones((2, 2), int))
    with pytest.raises(ValueError, match="shapes"):
        host_blas.gemm(1.0, np.ones((2, 3)), np.ones((2, 2)), 0.0, np.ones((2, 2)))
    with pytest.raises(ValueError, match="unit stride"):
        host_blas.gemm(1.0, np.ones((4, 4))[::2, ::2], np.ones((2, 2)), 0.0, np.ones((2, 2)))
    with pytest.raises(ValueError, match="column-major"):
        host_blas.getrf(np.ones((4, 3)))
