"""The bad-input catalogue: every public entry point, fed its bad inputs, raises the
documented typed JaxwrenError with a message that names the fix, writes nothing, and
never shows a credential."""

from __future__ import annotations

import dis
import os

import jax
import numpy as np
import pytest

import jaxwren as jw
from jaxwren.distributed import initialize
from tests.conftest import BUCKET, start_moto
from tests.helpers import mem, rand

V = rand((6, 4))  # a well-formed matrix
SPD = V.T @ V + np.eye(4)
NAN = V.copy()
NAN[2, 1] = np.nan
WRONG_MESH = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))


def _bad_parts() -> str:
    """A memory:// directory holding one CSV part with a non-numeric cell."""
    from jaxwren.storage.backend import open_kvstore
    from jaxwren.storage.urls import parse_url
    from jaxwren.storage.validate import resolve_storage

    url = mem("catalogue-parts")
    open_kvstore(parse_url(url), resolve_storage(None)).write("p.csv", b"a,b\n1,x\n").result()
    return url


@pytest.fixture(scope="module")
def stored():
    return jw.from_numpy(V, mem("catalogue-in"), (2, 2))


# (id, call(stored, out_url) -> None, error type, message regex)
CASES = [
    ("create/bad-scheme", lambda a, o: jw.BigMatrix.create("ftp://h/x", (2, 2), (1, 1)),
     jw.UnsupportedURLError, "unknown scheme"),
    ("create/bad-shape", lambda a, o: jw.BigMatrix.create(o, (2, -1), (1, 1)),
     jw.ShapeMismatchError, "two positive integers"),
    ("create/bad-dtype", lambda a, o: jw.BigMatrix.create(o, (2, 2), (1, 1), "U4"),
     jw.DTypeMismatchError, "not supported"),
    ("open/missing", lambda a, o: jw.BigMatrix.open(o),
     jw.MatrixNotFoundError, "create it with"),
    ("from_numpy/3-d", lambda a, o: jw.from_numpy(np.ones((2, 2, 2)), o, (1, 1)),
     jw.ShapeMismatchError, "2-D"),
    ("put_block/wrong-shape", lambda a, o: a.put_block(np.ones((3, 3)), 0, 0),
     jw.ShapeMismatchError, "pass exactly the block's true size"),
    ("write_region/arguments-swapped", lambda a, o: a.write_region(np.ones((2, 2)), 0, 0),
     jw.BlockIndexError, "must be an int row/column offset"),
    ("write_region/1-d", lambda a, o: a.write_region(0, 0, np.ones(3)),
     jw.ShapeMismatchError, "reshape a row"),
    ("write_region/unsafe-cast", lambda a, o: a.write_region(0, 0, np.full((1, 1), 1 + 1j)),
     jw.DTypeMismatchError, "convert it first"),
    ("get_block/out-of-range", lambda a, o: a.get_block(9, 0),
     jw.BlockIndexError, "outside the block grid"),
    ("save/no-block-shape", lambda a, o: jw.save(jax.numpy.ones((2, 2)), o),
     jw.ShapeMismatchError, "block_shape is required"),
    ("matmul/inner-dims", lambda a, o: jw.matmul(a, a, o),
     jw.ShapeMismatchError, "inner dimensions differ"),
    ("matmul/alias", lambda a, o: jw.matmul(a, a.T, a.url),
     jw.OutputConflictError, "is input #0"),
    ("matmul/out-inside-input", lambda a, o: jw.matmul(a, a.T, a.url + "/c"),
     jw.OutputConflictError, "lies inside input #0"),
    ("matmul/bad-prefetch", lambda a, o: jw.matmul(a, a.T, o, prefetch=-1),
     jw.ConfigError, "prefetch"),
    ("matmul/nan-budget", lambda a, o: jw.matmul(a, a.T, o, memory_budget=float("nan")),
     jw.ConfigError, "finite"),
    ("matmul/over-budget", lambda a, o: jw.matmul(a, a.T, o, memory_budget=64),
     jw.MemoryBudgetError, "smallest workable budget"),
    ("matmul/bad-budget", lambda a, o: jw.matmul(a, a.T, o, memory_budget="-3GB"),
     jw.ConfigError, "memory_budget"),
    ("matmul/wrong-mesh", lambda a, o: jw.matmul(a, a.T, o, mesh=WRONG_MESH),
     jw.ConfigError, "default_mesh"),
    ("cholesky/non-square", lambda a, o: jw.cholesky(a, o),
     jw.ShapeMismatchError, "must be square"),
    ("cholesky/nan", lambda a, o: jw.cholesky(np.where(np.eye(4) > 0, np.nan, SPD), o),
     jw.NonFiniteError, "nan_to_num"),
    ("cholesky/not-spd", lambda a, o: jw.cholesky(-SPD, o),
     jw.NotPositiveDefiniteError, "regularises"),
    ("cholesky/over-budget", lambda a, o: jw.cholesky(SPD, o, memory_budget=64),
     jw.MemoryBudgetError, "smallest workable budget"),
    ("solve_triangular/rows", lambda a, o: jw.solve_triangular(np.eye(4), np.ones(3), o),
     jw.ShapeMismatchError, "as many rows"),
    ("cho_solve/non-square", lambda a, o: jw.cho_solve(a, np.ones(6), o),
     jw.ShapeMismatchError, "must be square"),
    ("cho_logdet/not-a-factor", lambda a, o: jw.cho_logdet(-np.eye(2)),
     jw.NonFiniteError, "Cholesky factor"),
    ("enable_compilation_cache/under-a-file",
     lambda a, o: jw.enable_compilation_cache(os.path.join(__file__, "cache")),
     jw.ConfigError, "pass a writable directory"),
    ("enable_compilation_cache/not-a-path", lambda a, o: jw.enable_compilation_cache(7),
     jw.ConfigError, "a directory path"),
    ("pairwise/feature-dims", lambda a, o: jw.pairwise_sq_distances(a, np.ones((3, 5)), o),
     jw.ShapeMismatchError, "feature"),
    ("pairwise/nan-row", lambda a, o: jw.pairwise_sq_distances(NAN, V, o),
     jw.NonFiniteError, "NaN"),
    ("argmin/bad-axis", lambda a, o: jw.argmin(a, axis=2),
     jw.ConfigError, "axis"),
    ("nearest/k-too-big", lambda a, o: jw.nearest_neighbors(a, a, k=7, out=o),
     jw.JaxwrenError, "k"),
    ("nearest/k-zero", lambda a, o: jw.nearest_neighbors(a, a, k=0, out=o),
     jw.JaxwrenError, "k"),
    ("solve_triangular/singular", lambda a, o: jw.solve_triangular(np.zeros((4, 4)), np.ones(4), o),
     jw.NonFiniteError, "singular"),
    ("nearest/empty", lambda a, o: jw.nearest_neighbors(np.ones((0, 4)), a),
     jw.ShapeMismatchError, "non-empty"),
    ("map_blocks/shapes", lambda a, o: jw.map_blocks(lambda x, y: x, a, np.ones((3, 3)), out=o),
     jw.ShapeMismatchError, "shape"),
    ("iter_row_batches/zero", lambda a, o: next(a.iter_row_batches(0)),
     jw.ConfigError, "batch_rows"),
    ("load/region", lambda a, o: jw.load(a, region=(0, 9, 0, 2)),
     jw.BlockIndexError, "outside shape"),
    ("default_mesh/empty", lambda a, o: jw.default_mesh([]),
     jw.ConfigError, "non-empty"),
    ("default_sharding/bad-mesh", lambda a, o: jw.matmul(a, a.T, mesh="2x4"),
     jw.ConfigError, "jax.make_mesh"),
    ("StorageConfig/endpoint", lambda a, o: jw.StorageConfig(s3_endpoint="minio:9000"),
     jw.ConfigError, "http"),
    ("RunSpec/prefetch", lambda a, o: jw.RunSpec(prefetch=-1),
     jw.ConfigError, "must be an int >= 0"),
    ("matmul/spec-disagrees", lambda a, o: jw.matmul(a, a.T, o, prefetch=2,
                                                     spec=jw.RunSpec(prefetch=0)),
     jw.ConfigError, "give prefetch once"),
    ("distributed/unset", lambda a, o: initialize(environ={}),
     jw.ConfigError, "jaxwren.launch"),
    ("qr/wide", lambda a, o: jw.qr(a.T, o),
     jw.ShapeMismatchError, "fewer rows than columns"),
    ("qr/nan", lambda a, o: jw.qr(NAN, o),
     jw.NonFiniteError, "clean it first"),
    ("lstsq/rows", lambda a, o: jw.lstsq(a, V[:5], o),
     jw.ShapeMismatchError, "one row per row"),
    ("lstsq/rank-deficient", lambda a, o: jw.lstsq(np.hstack([V, V[:, :1]]), V[:, 0], o),
     jw.RankDeficientError, "linearly dependent"),
    ("svd/nan", lambda a, o: jw.svd(NAN, o),
     jw.NonFiniteError, "NaN"),
    ("eigh/not-square", lambda a, o: jw.eigh(np.ones((4, 5)), o),
     jw.ShapeMismatchError, "must be square"),
    ("eigh/algorithm", lambda a, o: jw.eigh(np.eye(4), o, algorithm="lapack"),
     jw.ConfigError, "'qdwh' or 'host'"),
    ("polar/nan", lambda a, o: jw.polar(NAN, o),
     jw.NonFiniteError, "clean it first"),
    ("randomized_svd/k-too-big", lambda a, o: jw.randomized_svd(a, 5, o),
     jw.ConfigError, "between 1 and 4"),
    ("from_csv/no-match", lambda a, o: jw.from_csv(mem("catalogue-none") + "/*.csv", o),
     jw.PartsNotFoundError, "no part file matches"),
    ("from_csv/non-numeric", lambda a, o: jw.from_csv(_bad_parts() + "/*.csv", o),
     jw.TableParseError, r"p\.csv, row 1, column 'b' holds 'x'"),
    ("from_parquet/not-parquet", lambda a, o: jw.from_parquet(_bad_parts() + "/*.csv", o),
     jw.TableParseError, "not a Parquet file"),
    ("iter_table_batches/zero", lambda a, o: jw.iter_table_batches(_bad_parts() + "/*.csv", 0),
     jw.ConfigError, "batch_size=0 must be an int >= 1"),
    ("randomized_svd/nan", lambda a, o: jw.randomized_svd(NAN, 2, o),
     jw.NonFiniteError, "clean it first"),
    ("copy/not-a-matrix", lambda a, o: jw.copy(V, o),
     jw.ShapeMismatchError, "jw.from_numpy / jw.save"),
    ("copy/lossy-cast", lambda a, o: jw.copy(a.astype("int32"), o),
     jw.DTypeMismatchError, "casting='unsafe'"),
    ("slice/step", lambda a, o: a[::2, :],
     jw.BlockIndexError, "step"),
    ("explain/no-operation", lambda a, o: jw.explain(lambda: None),
     jw.ConfigError, "ran no jaxwren operation"),
    ("observe/all-threads", lambda a, o: jw.observe(all_threads="yes"),
     jw.ConfigError, "all_threads must be True or False"),
    ("from_numpy/bad-dims", lambda a, o: jw.from_numpy(V, o, (2, 2), dims=("r",)),
     jw.ShapeMismatchError, "dims must be two distinct"),
    ("sum/bad-axis", lambda a, o: jw.sum(a, axis=2),
     jw.ConfigError, "axis"),
    ("mean/empty", lambda a, o: jw.mean(np.ones((0, 3))),
     jw.ShapeMismatchError, "empty"),
    ("min/bad-axis", lambda a, o: jw.min(V, axis=(0, 0)),
     jw.ConfigError, "axis"),
    ("max/3-d", lambda a, o: jw.max(np.ones((2, 2, 2))),
     jw.ShapeMismatchError, "2-D"),
    ("var/ddof", lambda a, o: jw.var(a, axis=0, ddof=6),
     jw.ConfigError, "ddof"),
    ("std/ddof", lambda a, o: jw.std(a, ddof=24),
     jw.ConfigError, "ddof"),
    ("norm/bad-ord", lambda a, o: jw.norm(a, ord="spectral"),
     jw.ConfigError, "ord"),
    ("lu_factor/non-square", lambda a, o: jw.lu_factor(a, o),
     jw.ShapeMismatchError, "must be square.*jw.lstsq"),
    ("lu_factor/singular", lambda a, o: jw.lu_factor(SPD * (np.arange(4) != 2), o),
     jw.SingularMatrixError, r"U\[2, 2\] is exactly zero.*info = 3"),
    ("lu_solve/piv", lambda a, o: jw.lu_solve((SPD, np.zeros(3, np.int32)), V[:4], o),
     jw.ShapeMismatchError, "piv must be the"),
    ("solve/assume_a", lambda a, o: jw.solve(SPD, V[:4], o, assume_a="sym"),
     jw.ConfigError, "'gen' or 'pos'"),
    ("solve/refine-float32", lambda a, o: jw.solve(SPD.astype("f4"), SPD.astype("f4"), o, refine=True),
     jw.ConfigError, "pass float64 data"),
    ("inv/nan", lambda a, o: jw.inv(np.where(np.eye(4) > 0, np.nan, SPD), o),
     jw.NonFiniteError, "NaN or Inf"),
    ("slogdet/non-square", lambda a, o: jw.slogdet(a),
     jw.ShapeMismatchError, "must be square"),
    ("det/over-budget", lambda a, o: jw.det(SPD, memory_budget=64),
     jw.MemoryBudgetError, "smallest workable budget"),
]  # fmt: skip


def _passes_out(call) -> bool:
    """Whether a case hands its ``o`` (the output URL) to the call."""
    return any(i.opname.startswith("LOAD") and i.argval == "o" for i in dis.get_instructions(call))


@pytest.mark.parametrize(("name", "call", "error", "match"), CASES, ids=[c[0] for c in CASES])
def test_catalogue(stored, name, call, error, match):
    out = mem("catalogue-out")
    before = stored.numpy()
    with pytest.raises(error, match=match) as info:
        call(stored, out)
    assert isinstance(info.value, jw.JaxwrenError)
    assert len(str(info.value)) > 30  # a sentence that says what to do, not a code
    if _passes_out(call):
        with pytest.raises(jw.MatrixNotFoundError):
            jw.BigMatrix.open(out)  # nothing was created
    np.testing.assert_array_equal(stored.numpy(), before)  # nor was the input touched


def test_catalogue_covers_every_public_function():
    covered = {c[0].split("/")[0] for c in CASES}
    public = {n for n in jw.__all__ if callable(getattr(jw, n)) and not n[0].isupper()}
    public |= {"create", "open", "put_block", "get_block", "write_region", "iter_row_batches",
               "StorageConfig", "RunSpec"}  # fmt: skip
    missing = public - covered - {"map_blocks"}
    missing -= (
        {"pairwise_sq_distances", "nearest_neighbors"}
        if {"pairwise", "nearest"} <= covered
        else set()
    )
    assert not missing, f"no catalogue case for {sorted(missing)}"
    assert {"map_blocks", "pairwise", "nearest"} <= covered


@pytest.mark.parametrize("where", ["create", "open", "matmul-out"])
def test_storage_refusals_name_the_fix_and_leak_nothing(s3_config, where):
    bad_bucket = "s3://no-such-bucket-x/m"
    call = {
        "create": lambda: jw.BigMatrix.create(bad_bucket, (2, 2), (1, 1), storage=s3_config),
        "open": lambda: jw.BigMatrix.open(bad_bucket, storage=s3_config),
        "matmul-out": lambda: jw.matmul(V, V.T, bad_bucket, storage=s3_config),
    }[where]
    with pytest.raises(jw.BucketNotFoundError, match="create it first") as info:
        call()
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in str(info.value)


def test_refused_credentials_everywhere():
    proc, endpoint = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        cfg = jw.StorageConfig(s3_endpoint=endpoint, credentials="environment", s3_max_retries=1)
        for call in (
            lambda: jw.from_numpy(V, f"s3://{BUCKET}/c", (2, 2), storage=cfg),
            lambda: jw.BigMatrix.open(f"s3://{BUCKET}/c", storage=cfg),
            lambda: jw.matmul(V, V.T, f"s3://{BUCKET}/c", storage=cfg),
        ):
            with pytest.raises(jw.CredentialsError, match="AWS_ACCESS_KEY_ID") as info:
                call()
            text = str(info.value) + repr(info.value)
            assert os.environ["AWS_SECRET_ACCESS_KEY"] not in text
            assert os.environ["AWS_ACCESS_KEY_ID"] not in text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
