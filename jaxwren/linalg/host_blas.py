"""BLAS/LAPACK in place on strided views: ``gemm``, a unit-lower ``trsm`` and ``getrf``.

scipy's Python wrappers (``scipy.linalg.blas``/``lapack``, f2py) take no leading
dimension: an array that is not contiguous is copied, and ``getrf`` of a C-ordered panel
always is. These call the same library (scipy's OpenBLAS) through the function pointers
that ``scipy.linalg.cython_blas``/``cython_lapack`` export, with the leading dimension of
any column-major view: a row block of a Fortran-ordered panel (``P[r0:r1]``, leading
dimension the panel's height) or the transpose of a C-ordered tile. So the LU sweeps and
their ``getrf`` work inside one panel buffer, with no temporary the size of a panel.
The calls release the GIL (ctypes), so reads and writes go on beside them.

float32 and float64 only (the LU's dtypes); the caller holds the arrays alive.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import numpy as np
from scipy.linalg import cython_blas, cython_lapack

__all__ = ["gemm", "getrf", "getrf_rows", "trsm_unit_lower"]

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_name = ctypes.pythonapi.PyCapsule_GetName
_capsule_name.restype = ctypes.c_char_p
_capsule_name.argtypes = [ctypes.py_object]

_KIND = {np.dtype(np.float32): ("s", ctypes.c_float), np.dtype(np.float64): ("d", ctypes.c_double)}


@functools.cache
def _routine(module: Any, name: str, nargs: int) -> Any:
    capsule = module.__pyx_capi__[name]
    address = _capsule_pointer(capsule, _capsule_name(capsule))
    return ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * nargs))(address)


def _kind(*arrays: np.ndarray) -> tuple[str, Any]:
    dtype = arrays[0].dtype
    if dtype not in _KIND or any(a.dtype != dtype for a in arrays):
        raise TypeError(f"host_blas: float32 or float64 arrays of one dtype, not "
                        f"{[a.dtype.name for a in arrays]}")  # fmt: skip
    return _KIND[dtype]


def _column_major(x: np.ndarray) -> tuple[bool, np.ndarray, int] | None:
    """``(transposed, v, ld)``: ``v`` (``x`` or ``x.T``) is column-major with leading
    dimension ``ld`` (unit stride down a column); None when neither is."""
    size = x.itemsize
    for transposed, v in ((False, x), (True, x.T)):
        r, c = v.shape
        s0, s1 = v.strides
        if (r <= 1 or s0 == size) and (c <= 1 or (s1 % size == 0 and s1 // size >= max(r, 1))):
            return transposed, v, (s1 // size if c > 1 else max(r, 1))
    return None


def _operand(x: np.ndarray) -> tuple[bytes, np.ndarray, int]:
    got = _column_major(x)
    if got is None:
        raise ValueError(f"host_blas: a view with a unit stride along one axis, not strides "
                         f"{x.strides}")  # fmt: skip
    return (b"T" if got[0] else b"N"), got[1], got[2]


def _int(v: int) -> Any:
    return ctypes.byref(ctypes.c_int(int(v)))


def gemm(alpha: float, a: np.ndarray, b: np.ndarray, beta: float, c: np.ndarray) -> None:
    """``c := alpha a @ b + beta c`` in place (any of them C- or Fortran-ordered views)."""
    if a.shape[1] != b.shape[0] or c.shape != (a.shape[0], b.shape[1]):
        raise ValueError(f"host_blas.gemm: shapes {a.shape} @ {b.shape} -> {c.shape}")
    if c.size == 0:
        return
    prefix, real = _kind(a, b, c)
    trans_c, cv, ldc = _operand(c)
    if trans_c == b"T":  # c^T = b^T a^T
        a, b = b.T, a.T
    ta, av, lda = _operand(a)
    tb, bv, ldb = _operand(b)
    m, n, k = cv.shape[0], cv.shape[1], a.shape[1]
    if k == 0:
        c *= beta
        return
    _routine(cython_blas, prefix + "gemm", 13)(
        ctypes.c_char_p(ta), ctypes.c_char_p(tb), _int(m), _int(n), _int(k),
        ctypes.byref(real(alpha)), av.ctypes.data, _int(lda), bv.ctypes.data, _int(ldb),
        ctypes.byref(real(beta)), cv.ctypes.data, _int(ldc),
    )  # fmt: skip


def trsm_unit_lower(low: np.ndarray, b: np.ndarray) -> None:
    """``b := L^-1 b`` in place, ``L`` the unit lower triangle of the square ``low``
    (either view C- or Fortran-ordered)."""
    m, n = b.shape
    if low.shape != (m, m):
        raise ValueError(f"host_blas.trsm_unit_lower: {low.shape} against {b.shape}")
    if b.size == 0:
        return
    prefix, real = _kind(low, b)
    t_low, lv, ldl = _operand(low)
    t_b, bv, ldb = _operand(b)
    if t_b == b"N":  # left: op(A) = L; A = low (lower) or low^T (upper, transposed)
        side, uplo, trans, rows, cols = b"L", (b"U" if t_low == b"T" else b"L"), t_low, m, n
    else:  # b^T := b^T L^-T (right side): op(A) = L^T
        side, uplo = b"R", (b"U" if t_low == b"T" else b"L")
        trans, rows, cols = (b"N" if t_low == b"T" else b"T"), n, m
    _routine(cython_blas, prefix + "trsm", 11)(
        ctypes.c_char_p(side), ctypes.c_char_p(uplo), ctypes.c_char_p(trans),
        ctypes.c_char_p(b"U"), _int(rows), _int(cols), ctypes.byref(real(1.0)),
        lv.ctypes.data, _int(ldl), bv.ctypes.data, _int(ldb),
    )  # fmt: skip


def getrf(a: np.ndarray) -> tuple[np.ndarray, int]:
    """LAPACK ``getrf`` of the column-major view ``a`` (``m x n``) in place:
    ``(pivots, info)``, the pivots 0-based and local to ``a``'s first row (scipy's
    ``lu_factor`` layout), ``info`` LAPACK's (> 0: ``U[info-1, info-1]`` is zero)."""
    prefix, _ = _kind(a)
    got = _column_major(a)
    if got is None or got[0]:
        raise ValueError(f"host_blas.getrf: a column-major view, not strides {a.strides}")
    m, n = a.shape
    ipiv = np.zeros(max(min(m, n), 1), np.intc)
    info = ctypes.c_int(0)
    if m and n:
        _routine(cython_lapack, prefix + "getrf", 6)(
            _int(m), _int(n), a.ctypes.data, _int(got[2]), ipiv.ctypes.data,
            ctypes.byref(info),
        )  # fmt: skip
    return ipiv[: min(m, n)].astype(np.int64) - 1, int(info.value)


def getrf_rows(a: np.ndarray, leaf: int = 64) -> tuple[np.ndarray, int]:
    """:func:`getrf` of a row-major view (``m x w``, ``m >= w``: e.g. a panel of a
    C-ordered column) in place, recursively (Toledo's LU: the left half, its
    interchanges on the right half, a ``trsm`` and a ``gemm``, the right half below,
    its interchanges on the left half), each leaf of ``leaf`` columns by LAPACK through
    a Fortran-ordered copy of that leaf: no copy of the whole panel."""
    m, w = a.shape
    if w <= leaf:
        f = np.asfortranarray(a)
        piv, info = getrf(f)
        a[...] = f
        return piv, info
    h = w // 2
    p1, info1 = getrf_rows(a[:, :h], leaf)
    _swap_rows(a[:, h:], p1)
    trsm_unit_lower(a[:h, :h], a[:h, h:])
    gemm(-1.0, a[h:, :h], a[:h, h:], 1.0, a[h:, h:])
    p2, info2 = getrf_rows(a[h:, h:], leaf)
    _swap_rows(a[h:, :h], p2)
    info = info1 if info1 > 0 else (info2 + h if info2 > 0 else 0)
    return np.concatenate([p1, p2 + h]), info


def _swap_rows(b: np.ndarray, piv: np.ndarray) -> None:
    """LAPACK's ``laswp``: rows ``i`` and ``piv[i]`` of ``b`` swapped in turn (only the
    rows that move are copied, once)."""
    idx = np.arange(max(len(b), 1))
    for i, p in enumerate(piv):
        if p != i:
            idx[i], idx[p] = idx[p], idx[i]
    dst = np.flatnonzero(idx != np.arange(len(idx)))
    if len(dst):
        b[dst] = b[idx[dst]]
