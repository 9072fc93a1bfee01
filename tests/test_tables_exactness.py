"""Ingest exactness (issue 21): every value is ingested exactly or refused with a typed
error naming the part, row and column, never silently rounded; pandas/dask index columns
are not data; a quoted newline in a CSV header is legal."""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import jaxwren as jw
from jaxwren.tables.parse import _parse_options
from tests.test_tables import put

U64_BIG = 12345678901234567890  # beyond int64, within uint64


def write(tmp_path, name: str, files: dict[str, bytes]) -> str:
    """The part files under ``tmp_path/name`` (a file store); returns the directory."""
    return put(str(tmp_path / name), files)


def parquet(**cols: pa.Array) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    return buf.getvalue()


# ----------------------------------------------------------- 1. CSV integers beyond int64
@pytest.mark.parametrize(
    ("cell", "dtype", "match"),
    [
        (str(U64_BIG), "float64", rf"holds the integer {U64_BIG}, which float64 cannot hold "
         r"exactly \(integers up to 9007199254740992\); pass dtype='uint64'"),
        (f"-{U64_BIG}", "float64", rf"holds the integer -{U64_BIG}, which float64 cannot hold "
         r"exactly .*no dtype holds the whole column exactly \(its integers run from "
         rf"-{U64_BIG} to 7\): leave it out with columns=\[\.\.\.\], or write the value "
         r"as a float \(-1\.2345678901234567e\+19\) if rounding it is acceptable"),
        (str(2**64), "float32", r"holds the integer 18446744073709551616, which float32 "),
        # an integer literal beside fractional cells: pyarrow reads the column as floats
        ("9007199254740993,0.5", "float64", r"holds the integer 9007199254740993, which "
         r"float64 cannot hold exactly .*no dtype holds the whole column exactly \(it also "
         r"holds fractional numbers\)"),
        # integers beyond int64 into integer dtypes: out of range, with the dtype that fits
        (str(U64_BIG), "int64", rf"holds {U64_BIG}, outside int64's range "
         r"\[-9223372036854775808, 9223372036854775807\]; pass dtype='uint64'"),
        (f"-{U64_BIG}", "uint64", rf"holds -{U64_BIG}, outside uint64's range .*no integer "
         rf"dtype holds the whole column \(its integers run from -{U64_BIG} to 7\)"),
        (str(2**64), "uint64", r"holds 18446744073709551616, outside uint64's range"),
    ],
)  # fmt: skip
def test_csv_integer_beyond_int64_is_refused_never_rounded(tmp_path, cell, dtype, match):
    # part-1's data row 2 holds the cell (and row 3 the next one, if any)
    rows = "".join(f"{i},{c}\n" for i, c in enumerate(["7", *cell.split(",")]))
    files = {"part-0.csv": b"a,b\n1,2\n", "part-1.csv": f"a,b\n{rows}".encode()}
    parts = write(tmp_path, "p", files)
    where = r"from_csv: the part .*part-1\.csv, row 2, column 'b' "
    with pytest.raises(jw.DTypeMismatchError, match=where + match):
        jw.from_csv(f"{parts}/*.csv", str(tmp_path / "m"), dtype=dtype)
    assert not (tmp_path / "m" / "zarr.json").exists()  # no matrix left behind


def test_csv_integers_beyond_int64_ingest_exactly_into_uint64(tmp_path):
    ids = [1, 2**63, U64_BIG, 2**64 - 1]
    text = "id,n\n" + "".join(f"{v}, +{i}\n" for i, v in enumerate(ids))
    parts = write(tmp_path, "p", {"a.csv": text.encode()})
    a = jw.from_csv(f"{parts}/*.csv", str(tmp_path / "m"), dtype="uint64")
    assert a.dtype == np.uint64
    np.testing.assert_array_equal(a.numpy(), np.array([[v, i] for i, v in enumerate(ids)],
                                                      np.uint64))  # fmt: skip
    # within int64 (but parsed as floats for the '+' signs): exact into an integer dtype
    got = jw.from_csv(f"{parts}/*.csv", str(tmp_path / "n"), dtype="int32", columns=["n"])
    np.testing.assert_array_equal(got.numpy().ravel(), np.arange(4))
    # the same through iter_table_batches
    (b,) = jw.iter_table_batches(f"{parts}/*.csv", 4, dtype="uint64", columns=["id"])
    assert np.asarray(b).ravel().tolist() == ids
    with pytest.raises(jw.DTypeMismatchError, match=rf"a\.csv, row 2, column 'id' holds the "
                       rf"integer {2**63}, which float64 cannot hold exactly"):  # fmt: skip
        list(jw.iter_table_batches(f"{parts}/*.csv", 4, dtype="float64"))


def test_float_cells_stay_accepted(tmp_path):
    # float literals are decimal approximations anyway: big ones are not integer claims
    parts = write(tmp_path, "p", {"a.csv": b"a,b\n1.5e19,2\n-2e30,1\n25000000.5,3\n"})
    a = jw.from_csv(f"{parts}/*.csv", str(tmp_path / "m"), dtype="float64")
    np.testing.assert_array_equal(a.numpy()[:, 0], [1.5e19, -2e30, 25000000.5])
    f32 = jw.from_csv(f"{parts}/*.csv", str(tmp_path / "f"), dtype="float32")
    assert f32.shape == (3, 2)


# ------------------------------------------------------- 2. Parquet uint64 beyond int64
def test_parquet_uint64_beyond_int64(tmp_path):
    big = pa.array([1, 2, 2**63 + 5], pa.uint64())
    parts = write(tmp_path, "p", {"a.parquet": parquet(x=pa.array([1, 2, 3]), u=big)})
    pattern = f"{parts}/*.parquet"
    with pytest.raises(jw.DTypeMismatchError, match=r"from_parquet: the part .*a\.parquet, row 3, "
                       r"column 'u' holds the integer 9223372036854775813, which float64 cannot "
                       r"hold exactly .*pass dtype='uint64'"):  # fmt: skip
        jw.from_parquet(pattern, str(tmp_path / "m"), dtype="float64")
    with pytest.raises(jw.DTypeMismatchError, match=r"row 3, column 'u' holds 9223372036854775813, "
                       r"outside int64's range .*pass dtype='uint64'"):  # fmt: skip
        jw.from_parquet(pattern, str(tmp_path / "m"), dtype="int64")
    a = jw.from_parquet(pattern, str(tmp_path / "m"), dtype="uint64")
    assert a.numpy()[:, 1].tolist() == [1, 2, 2**63 + 5]
    with pytest.raises(jw.DTypeMismatchError, match=r"row 3, column 'u' holds the integer "):
        list(jw.iter_table_batches(pattern, 2, dtype="float32"))
    # uint64 values a float holds exactly are fine; 2**53 + 1 is not (as for CSV)
    exact = write(tmp_path, "q", {"a.parquet": parquet(u=pa.array([2**53, 3], pa.uint64()))})
    np.testing.assert_array_equal(
        jw.from_parquet(f"{exact}/*.parquet", str(tmp_path / "e"), dtype="float64").numpy(),
        [[2.0**53], [3.0]],
    )
    odd = write(tmp_path, "r", {"a.parquet": parquet(u=pa.array([2**53 + 1], pa.uint64()))})
    with pytest.raises(jw.DTypeMismatchError, match=r"row 1, column 'u' holds the integer "
                       r"9007199254740993, which float64 .*pass dtype='int64'"):  # fmt: skip
        jw.from_parquet(f"{odd}/*.parquet", str(tmp_path / "o"), dtype="float64")


# ---------------------------------------------------- 3. pandas / dask index columns
FRAME = pd.DataFrame({"x": [-1.0, 2.0, 3.0, -4.0, 5.0, 6.0], "y": [1.0, 2, 3, 4, 5, 6]})


def test_pandas_index_of_a_filtered_frame_is_not_data(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    kept = FRAME[FRAME.x > 0]
    kept.iloc[:2].to_parquet(d / "part-0.parquet")  # stored as __index_level_0__
    kept.iloc[2:].reset_index(drop=True).to_parquet(d / "part-1.parquet")  # RangeIndex
    assert "__index_level_0__" in pq.read_schema(d / "part-0.parquet").names
    a = jw.from_parquet(str(d / "*.parquet"), str(tmp_path / "m"), dtype="float64")
    np.testing.assert_array_equal(a.numpy(), kept.to_numpy())
    (b,) = jw.iter_table_batches(str(d / "*.parquet"), 8, dtype="float64")
    np.testing.assert_array_equal(np.asarray(b), kept.to_numpy())
    # an index selected by name is read; a part without it is named
    with pytest.raises(jw.TableParseError, match=r"part-1\.parquet has no column "
                       r"'__index_level_0__' \(selected with columns"):  # fmt: skip
        jw.from_parquet(str(d / "*.parquet"), str(tmp_path / "i"), dtype="int64",
                        columns=["__index_level_0__"])  # fmt: skip
    one = jw.from_parquet(str(d / "part-0.parquet"), str(tmp_path / "j"), dtype="int64",
                          columns=["__index_level_0__"])  # fmt: skip
    assert one.numpy().ravel().tolist() == [1, 2]
    with pytest.raises(jw.ConfigError, match=r"column 'z' is not in .*part-0\.parquet; its "
                       r"columns are 'x', 'y' \(and the pandas index '__index_level_0__'\)"):  # fmt: skip
        jw.from_parquet(str(d / "part-0.parquet"), str(tmp_path / "k"), columns=["z"])


def test_dask_index_is_not_data(tmp_path):
    dd = pytest.importorskip("dask.dataframe")
    dd.from_pandas(FRAME, npartitions=3).to_parquet(str(tmp_path / "dk"))
    names = pq.read_schema(next((tmp_path / "dk").glob("*.parquet"))).names
    assert "__null_dask_index__" in names
    a = jw.from_parquet(str(tmp_path / "dk" / "*.parquet"), str(tmp_path / "m"), dtype="float64")
    np.testing.assert_array_equal(a.numpy(), FRAME.to_numpy())
    got = jw.iter_table_batches(str(tmp_path / "dk" / "*.parquet"), 3, dtype="float64")
    np.testing.assert_array_equal(np.concatenate([np.asarray(b) for b in got]), FRAME.to_numpy())


# --------------------------------------------------- 4. quoted newlines in CSV headers
def test_csv_header_with_a_quoted_newline(tmp_path):
    parts = write(tmp_path, "p", {
        "a.csv": b'"a\nb",c,"note"\n1,2,"x"\n3,4,"two\nlines, and a comma"\n',
        "b.csv": b'"a\nb",c,note\n5,6,y\n',
    })  # fmt: skip
    a = jw.from_csv(f"{parts}/*.csv", str(tmp_path / "m"), dtype="int64", columns=["a\nb", "c"])
    np.testing.assert_array_equal(a.numpy(), [[1, 2], [3, 4], [5, 6]])
    with pytest.raises(jw.TableParseError, match=r"a\.csv, row 1, column 'note' holds 'x', "
                       "which is not a number"):  # fmt: skip
        jw.from_csv(f"{parts}/*.csv", str(tmp_path / "n"))
    (b,) = jw.iter_table_batches(f"{parts}/*.csv", 3, columns=[0, 1], dtype="int64")
    np.testing.assert_array_equal(np.asarray(b), [[1, 2], [3, 4], [5, 6]])
    # quoted names without newlines (R's write.csv) need no slow quote-aware chunking
    r_style = write(tmp_path, "r", {"a.csv": b'"x","y"\n1,2\n'})
    got = jw.from_csv(f"{r_style}/*.csv", str(tmp_path / "rm"), columns=["y"], dtype="int64")
    assert got.numpy().tolist() == [[2]]
    assert not _parse_options(b'"x","y"\n1,2\n').newlines_in_values
    assert _parse_options(b'"x\ny",z\n1,2\n').newlines_in_values
    assert _parse_options(b'x,y\n1,"2"\n').newlines_in_values
    # a row cut short after a quoted newline is still a named, typed error
    bad = write(tmp_path, "q", {"a.csv": b'"a\nb",c\n1,2\n"3\n",\n4\n'})
    with pytest.raises(jw.TableParseError, match=r"a\.csv has a ragged row"):
        jw.from_csv(f"{bad}/*.csv", str(tmp_path / "r"))


def test_exactness_on_s3(s3_config):
    # one case through the object store: a big id refused into float64, exact into uint64
    root = f"s3://jaxwren-test/exact-{os.getpid()}"
    parts = put(f"{root}/p", {"a.csv": f'"i\nd",v\n{U64_BIG},1\n'.encode()}, s3_config)
    with pytest.raises(jw.DTypeMismatchError, match=rf"s3://jaxwren-test/.*a\.csv, row 1, "
                       rf"column 'i\\nd' holds the integer {U64_BIG}"):  # fmt: skip
        jw.from_csv(f"{parts}/*.csv", f"{root}/m", dtype="float64", storage=s3_config)
    a = jw.from_csv(f"{parts}/*.csv", f"{root}/m", dtype="uint64", storage=s3_config)
    assert a.numpy().tolist() == [[U64_BIG, 1]]
