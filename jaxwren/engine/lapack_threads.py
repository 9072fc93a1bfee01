"""``single_threaded_blas`` where users and the README find it; it lives in
:mod:`jaxwren.sharding.lapack_threads`, below both the engine and the traceable layer
(``jaxwren.lax`` uses it too and imports nothing store-backed)."""

from jaxwren.sharding.lapack_threads import single_threaded_blas

__all__ = ["single_threaded_blas"]
