"""Data set conventions of pyarrow.dataset and dask for jw.from_csv / jw.from_parquet /
jw.iter_table_batches: marker and hidden files skipped, ``**`` at any depth, lists of
patterns, natural part order, compressed CSV, ``delimiter``, ``na_values`` / ``allow_nan``;
and the S3 endpoint and region from the AWS shared config file."""

from __future__ import annotations

import bz2
import gzip
import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import jaxwren as jw
from jaxwren.storage.validate import resolve_storage
from jaxwren.tables.glob import expand
from tests.conftest import BUCKET
from tests.helpers import mem
from tests.test_tables import csv_bytes, keys_under, parquet_bytes, parts_data, put


def keys(pattern, order: str = "natural", config=None) -> list[str]:
    return [p.key for p in expand(pattern, resolve_storage(config), op="t", order=order).parts]


# ------------------------------------------------------------------ markers and hidden files
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_marker_and_hidden_files_are_skipped(tmp_path, fmt):
    """What Spark, pyarrow and dask leave beside the parts (_SUCCESS, _common_metadata,
    _metadata, .crc checksums, a _temporary/ directory) is not read, as pyarrow.dataset
    (ignore_prefixes=['.', '_']) and dask skip it."""
    xs = parts_data([3, 4])
    enc = csv_bytes if fmt == "csv" else parquet_bytes
    files = {f"part-{i}.{fmt}": enc(x) for i, x in enumerate(xs)}
    schema = pq.read_schema(io.BytesIO(parquet_bytes(xs[0])))
    meta = io.BytesIO()
    pq.write_metadata(schema, meta)  # a real _common_metadata, as pyarrow writes it
    files |= {"_SUCCESS": b"", "_common_metadata": meta.getvalue(), "_metadata": b"x",
              f".part-0.{fmt}.crc": b"\x00crc", f"_temporary/0/part-9.{fmt}": b"torn",
              f".hidden/part-8.{fmt}": b"torn"}  # fmt: skip
    d = put(str(tmp_path / "parts"), files)
    ingest = jw.from_csv if fmt == "csv" else jw.from_parquet
    for pattern in (f"{d}/*", f"{d}/**", f"{d}/**/*.{fmt}"):
        a = ingest(pattern, str(tmp_path / "m"), overwrite=True)
        np.testing.assert_array_equal(a.numpy(), np.concatenate(xs).astype(np.float32))
    # a pattern whose own name starts with '_' or '.' asks for such files
    assert keys(f"{d}/_temporary/0/*") == ["part-9." + fmt]  # keys below the directory
    assert keys(f"{d}/_*") == ["_SUCCESS", "_common_metadata", "_metadata"]
    assert keys(f"{d}/.part*") == [f".part-0.{fmt}.crc"]


def test_a_glob_matching_only_markers_is_refused_naming_them(store):
    d = put(store.url("markers"), {"_SUCCESS": b"", "_common_metadata": b"x", ".a.crc": b"x"},
            store.config)  # fmt: skip
    out = store.url("m")
    with pytest.raises(jw.PartsNotFoundError, match=r"matches only marker or hidden files.*"
                       r"\.a\.crc, _SUCCESS, _common_metadata") as e:  # fmt: skip
        jw.from_csv(f"{d}/*", out, storage=store.config)
    assert "start the pattern's own name with that character" in str(e.value)
    with pytest.raises(jw.PartsNotFoundError, match=r"only marker.*\.a\.crc"):
        jw.iter_table_batches(f"{d}/*.crc", 2, format="csv", storage=store.config)
    assert keys_under(out, store.config) == []  # nothing written


# ------------------------------------------------------------------------------- ** globs
def test_double_star_matches_any_depth(store):
    files = {"a.csv": b"x\n0\n", "2024/b.csv": b"x\n1\n", "2024/01/c.csv": b"x\n2\n",
             "2024/01/d.json": b"{}", "2025/_tmp/e.csv": b"x\n9\n"}  # fmt: skip
    d = put(store.url("deep"), files, store.config)
    assert keys(f"{d}/**/*.csv", config=store.config) == ["2024/01/c.csv", "2024/b.csv", "a.csv"]
    assert keys(f"{d}/2024/**/*.csv", config=store.config) == ["01/c.csv", "b.csv"]
    assert keys(f"{d}/**/01/*", config=store.config) == ["2024/01/c.csv", "2024/01/d.json"]
    assert keys(f"{d}/*.csv", config=store.config) == ["a.csv"]  # '*' still one level
    a = jw.from_csv(f"{d}/**/*.csv", store.url("m"), storage=store.config)
    assert a.numpy().ravel().tolist() == [2.0, 1.0, 0.0]


# ----------------------------------------------------------------------------- part order
def test_natural_order_is_dasks_own_read_order(tmp_path):
    """dask's to_parquet names its parts part.0 ... part.11 and read_parquet reads them in
    natural order; jaxwren's default order is the same (name order would put part.10
    after part.1). dask's to_csv pads its names (part.00), where both orders agree."""
    dd = pytest.importorskip("dask.dataframe")
    import pandas as pd

    df = pd.DataFrame({"a": np.arange(60, dtype=np.float64), "b": np.arange(60) * 0.5})
    ddf = dd.from_pandas(df, npartitions=12)
    ddf.to_parquet(str(tmp_path / "parquet"), write_index=False)
    ddf.to_csv(str(tmp_path / "csv" / "part.*.csv"), index=False)
    names = sorted(p.name for p in (tmp_path / "parquet").iterdir())
    assert names[:4] == ["part.0.parquet", "part.1.parquet", "part.10.parquet", "part.11.parquet"]
    for fmt, read, ingest in [("parquet", dd.read_parquet, jw.from_parquet),
                              ("csv", dd.read_csv, jw.from_csv)]:  # fmt: skip
        pattern = str(tmp_path / fmt / f"part.*.{fmt}")
        want = read(pattern).compute().to_numpy()
        np.testing.assert_array_equal(want, df.to_numpy())  # dask reads 0, 1, 2, ..., 11
        a = ingest(pattern, str(tmp_path / f"m-{fmt}"), dtype="float64")  # natural: default
        np.testing.assert_array_equal(a.numpy(), want)
        batches = list(jw.iter_table_batches(pattern, 60, dtype="float64"))
        np.testing.assert_array_equal(np.asarray(batches[0]), want)
    b = jw.from_parquet(f"{tmp_path}/parquet/*.parquet", str(tmp_path / "n"), order="name")
    assert b.numpy()[10:15, 0].tolist() == [50, 51, 52, 53, 54]  # part.10 after part.1


def test_natural_order_compares_digit_runs_as_numbers():
    d = put(mem("nat"), {k: b"x\n1\n" for k in ["p10", "p9", "p1", "p01", "q2", "p2/x1",
                                                 "p2/x10", "p2/x2"]})  # fmt: skip
    assert keys(f"{d}/**") == ["p01", "p1", "p2/x1", "p2/x2", "p2/x10", "p9", "p10", "q2"]
    assert keys(f"{d}/**", order="name") == ["p01", "p1", "p10", "p2/x1", "p2/x10", "p2/x2",
                                             "p9", "q2"]  # fmt: skip
    with pytest.raises(jw.ConfigError, match=r"order='size' must be 'natural'.*or 'name'"):
        jw.from_csv(f"{d}/p*", mem("m"), order="size")


# -------------------------------------------------------------------------- pattern lists
def test_a_list_of_patterns_in_the_lists_order(store):
    xs = parts_data([2, 3, 4])
    d = put(store.url("list"), {"b/p0.csv": csv_bytes(xs[0]), "a/p1.csv": csv_bytes(xs[1]),
                                "a/p2.csv": csv_bytes(xs[2])}, store.config)  # fmt: skip
    a = jw.from_csv([f"{d}/b/*.csv", f"{d}/a/p*.csv"], store.url("m"), storage=store.config)
    np.testing.assert_array_equal(a.numpy(), np.concatenate(xs).astype(np.float32))
    got = jw.iter_table_batches((f"{d}/a/p2.csv", f"{d}/b/p0.csv"), 6, storage=store.config)
    want = np.concatenate([xs[2], xs[0]]).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(next(got)), want)


def test_bad_pattern_lists_are_refused(tmp_path):
    d = put(mem("lists"), {"p0.csv": b"x\n1\n", "p1.csv": b"x\n2\n"})
    out = mem("m")
    with pytest.raises(jw.ConfigError, match="matched by both"):
        jw.from_csv([f"{d}/p*.csv", f"{d}/p1.csv"], out)
    with pytest.raises(jw.ConfigError, match="different stores"):
        jw.from_csv([f"{d}/p*.csv", str(tmp_path / "*.csv")], out)
    with pytest.raises(jw.ConfigError, match="non-empty list"):
        jw.from_csv([], out)
    with pytest.raises(jw.ConfigError, match="URL or path"):
        jw.from_csv(7, out)
    with pytest.raises(jw.PartsNotFoundError, match="no part file matches"):
        jw.from_csv([f"{d}/p*.csv", f"{d}/q*.csv"], out)
    with pytest.raises(jw.ConfigError, match="mix CSV and Parquet"):
        jw.iter_table_batches([f"{d}/p*.csv", f"{d}/p*.parquet"], 2)
    assert keys_under(out) == []


# ------------------------------------------------------------------------- compressed CSV
def test_compressed_csv_parts(store):
    xs = parts_data([5, 6, 7, 8])
    raw = [csv_bytes(x) for x in xs]
    half = len(raw[0]) // 2  # a gzip file of two members (as `cat a.gz b.gz` makes)
    files = {"p0.csv.gz": gzip.compress(raw[0][:half]) + gzip.compress(raw[0][half:]),
             "p1.csv.bz2": bz2.compress(raw[1]),
             "p2.csv.zst": pa.compress(raw[2], codec="zstd", asbytes=True),
             "p3.csv": raw[3]}  # fmt: skip
    d = put(store.url("gz"), files, store.config)
    a = jw.from_csv(f"{d}/p*", store.url("m"), storage=store.config, dtype="float64")
    np.testing.assert_array_equal(a.numpy(), np.concatenate(xs))
    got = list(jw.iter_table_batches(f"{d}/p*.csv.*", 18, dtype="float64", format="csv",
                                     storage=store.config))  # fmt: skip
    np.testing.assert_array_equal(np.asarray(got[0]), np.concatenate(xs[:3]))


def test_a_corrupt_compressed_part_is_named_and_nothing_is_written():
    d = put(mem("badgz"), {"p0.csv": b"x\n1\n", "p1.csv.gz": b"not gzip at all"})
    out = mem("m")
    with pytest.raises(jw.TableParseError, match=r"p1\.csv\.gz is not valid gzip data.*"
                       r"extension"):  # fmt: skip
        jw.from_csv(f"{d}/p*", out)
    assert keys_under(out) == []


# ------------------------------------------------------------------------------ delimiter
@pytest.mark.parametrize("sep", ["\t", ";", "|"])
def test_delimiter(sep):
    x = parts_data([4])[0]
    text = csv_bytes(x).decode().replace(",", sep).encode()
    d = put(mem("sep"), {"p.tsv.gz": gzip.compress(text)})
    a = jw.from_csv(f"{d}/*.tsv.gz", mem("m"), delimiter=sep, columns=["hour", "fare"],
                    dtype="float64")  # fmt: skip
    np.testing.assert_array_equal(a.numpy(), x[:, [2, 0]])
    got = jw.iter_table_batches(f"{d}/*", 4, format="csv", delimiter=sep, dtype="float64")
    np.testing.assert_array_equal(np.asarray(next(got)), x)


def test_bad_delimiter_and_csv_options_on_parquet_are_refused():
    d = put(mem("sep"), {"p.csv": b"a;b\n1;2\n", "p.parquet": parquet_bytes(parts_data([2])[0])})
    for bad in (";;", "", '"', "\n", 5):
        with pytest.raises(jw.ConfigError, match="delimiter=.*must be one character"):
            jw.from_csv(f"{d}/*.csv", mem("m"), delimiter=bad)
    with pytest.raises(jw.ConfigError, match="delimiter= is for CSV parts"):
        jw.iter_table_batches(f"{d}/*.parquet", 2, delimiter=";")
    with pytest.raises(jw.ConfigError, match="na_values= is for CSV parts.*allow_nan=True"):
        jw.iter_table_batches(f"{d}/*.parquet", 2, na_values=["NA"])


# ------------------------------------------------------------------- NaN where asked for
CELLS = b"a,b\n1,NA\n,2\n-999,3\nnan,4\n"


def test_missing_cells_are_refused_unless_asked_for():
    d = put(mem("na"), {"p.csv": CELLS})
    out = mem("m")
    with pytest.raises(jw.TableParseError, match=r"row 2, column 'a' is empty or NA.*"
                       r"pass allow_nan=True \(or na_values"):  # fmt: skip
        jw.from_csv(f"{d}/*.csv", out)
    assert keys_under(out) == []
    # allow_nan: pyarrow's default missing markers ("", NA, nan, ...) become NaN
    a = jw.from_csv(f"{d}/*.csv", mem("m"), allow_nan=True, dtype="float64")
    np.testing.assert_array_equal(a.numpy(), [[1, np.nan], [np.nan, 2], [-999, 3],
                                              [np.nan, 4]])  # fmt: skip
    # na_values: exactly these strings are missing (NaN); they replace the default list
    b = jw.from_csv(f"{d}/*.csv", mem("m"), na_values=["NA", "", "-999", "nan"])
    assert np.isnan(b.numpy()).tolist() == [[False, True], [True, False], [True, False],
                                            [True, False]]  # fmt: skip
    d2 = put(mem("na"), {"p.csv": b"a,b\n1,NA\n-999,2\n"})
    with pytest.raises(jw.TableParseError, match=r"row 1, column 'b' holds 'NA'.*not a number"):
        jw.from_csv(f"{d2}/*.csv", mem("m"), na_values=["-999"])  # NA is no longer missing
    batch = next(jw.iter_table_batches(f"{d}/*.csv", 4, allow_nan=True, dtype="float64"))
    assert int(np.isnan(np.asarray(batch)).sum()) == 3


def test_nan_options_are_checked_before_anything_is_read():
    d = put(mem("na"), {"p.csv": CELLS})
    for kw, match in [
        ({"allow_nan": True, "dtype": "int32"}, r"dtype=int32 cannot hold; pass dtype='float32'"),
        ({"na_values": ["NA"], "allow_nan": False}, "allow_nan=False refuses"),
        ({"na_values": "NA"}, r"na_values='NA' must be a list of strings"),
        ({"allow_nan": "yes"}, "allow_nan='yes' must be True, False or None"),
    ]:
        with pytest.raises(jw.ConfigError, match=match):
            jw.from_csv(f"{d}/*.csv", mem("m"), **kw)
    with pytest.raises(jw.ConfigError, match="cannot hold"):
        jw.iter_table_batches(f"{d}/*.csv", 2, allow_nan=True, dtype="int64")


def test_nan_allowed_keeps_every_other_check():
    d = put(mem("na"), {"inf.csv": b"a,b\n1,\n2,inf\n", "big.csv": b"a,b\n,16777217\n3,4\n",
                        "text.csv": b"a,b\n1,\n2,x\n", "empty.csv": b"a,b\n,\n,\n"})  # fmt: skip
    with pytest.raises(jw.NonFiniteError, match=r"row 2, column 'b' holds inf"):
        jw.from_csv(f"{d}/inf.csv", mem("m"), allow_nan=True)
    with pytest.raises(jw.DTypeMismatchError, match="16777217, which float32 cannot hold"):
        jw.from_csv(f"{d}/big.csv", mem("m"), allow_nan=True)
    with pytest.raises(jw.TableParseError, match=r"row 2, column 'b' holds 'x'"):
        jw.from_csv(f"{d}/text.csv", mem("m"), allow_nan=True)
    a = jw.from_csv(f"{d}/empty.csv", mem("m"), allow_nan=True)  # all missing: all NaN
    assert a.shape == (2, 2) and np.isnan(a.numpy()).all()
    b = jw.from_csv(f"{d}/big.csv", mem("m"), allow_nan=True, dtype="float64")
    np.testing.assert_array_equal(b.numpy(), [[np.nan, 16777217], [3, 4]])


def test_parquet_nulls_and_nan_with_allow_nan():
    t = pa.table({"a": pa.array([1.0, None, float("nan")]), "b": pa.array([1, None, 3]),
                  "c": pa.array([True, None, False])})  # fmt: skip
    buf = io.BytesIO()
    pq.write_table(t, buf)
    d = put(mem("pqna"), {"p.parquet": buf.getvalue()})
    with pytest.raises(jw.TableParseError, match=r"row 2, column 'a' is empty or NA.*allow_nan"):
        jw.from_parquet(f"{d}/*", mem("m"))
    a = jw.from_parquet(f"{d}/*", mem("m"), allow_nan=True, dtype="float64")
    np.testing.assert_array_equal(a.numpy(), [[1, 1, 1], [np.nan] * 3, [np.nan, 3, 0]])
    t2 = pa.table({"a": pa.array([1.0, float("nan")])})
    buf = io.BytesIO()
    pq.write_table(t2, buf)
    d2 = put(mem("pqnan"), {"p.parquet": buf.getvalue()})
    with pytest.raises(jw.NonFiniteError, match=r"holds nan.*pass allow_nan=True"):
        jw.from_parquet(f"{d2}/*", mem("m"))


# -------------------------------------------------------------- AWS shared config file
def _resolve(env):
    c = jw.StorageConfig().resolve(env)
    return c.s3_endpoint, c.s3_region


def test_endpoint_and_region_from_the_aws_config_file(tmp_path):
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "config").write_text(
        "[default]\nregion = eu-west-3\nendpoint_url = http://minio.local:9000\n"
        "[profile lab]\nregion = us-west-2\nservices = lab-s3\n"
        "endpoint_url = http://everything.lab:1\n"
        "[services lab-s3]\ns3 =\n  endpoint_url = http://s3.lab:9000\n  addressing_style = path\n"
        "[profile quiet]\nendpoint_url = http://q:1\nignore_configured_endpoint_urls = true\n"
    )
    env = {"HOME": str(home)}
    assert _resolve(env) == ("http://minio.local:9000", "eu-west-3")  # ~/.aws/config
    # the services section's s3 endpoint comes before the profile's global one
    assert _resolve({**env, "AWS_PROFILE": "lab"}) == ("http://s3.lab:9000", "us-west-2")
    # environment variables win over the file; explicit fields over both
    assert _resolve({**env, "AWS_ENDPOINT_URL": "http://e:2", "AWS_REGION": "ap-south-1"}) == (
        "http://e:2", "ap-south-1")  # fmt: skip
    assert _resolve({**env, "AWS_ENDPOINT_URL_S3": "http://s:3"})[0] == "http://s:3"
    explicit = jw.StorageConfig(s3_endpoint="http://x:4", s3_region="r").resolve(env)
    assert (explicit.s3_endpoint, explicit.s3_region) == ("http://x:4", "r")
    # the SDKs' opt-out of configured endpoints, in the environment or the profile
    assert _resolve({**env, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}) == (None, "eu-west-3")
    assert _resolve({**env, "AWS_PROFILE": "quiet"}) == (None, None)
    assert _resolve({**env, "AWS_PROFILE": "absent"}) == (None, None)
    # AWS_CONFIG_FILE names the file
    other = tmp_path / "other.ini"
    other.write_text("[default]\nendpoint_url = http://other:5\n")
    assert _resolve({**env, "AWS_CONFIG_FILE": str(other)}) == ("http://other:5", "us-east-1")
    assert _resolve({"HOME": str(tmp_path / "none")}) == (None, None)


def test_a_broken_aws_config_file_is_refused_naming_the_fix(tmp_path):
    bad = tmp_path / "config"
    bad.write_text("[default]\nendpoint_url = minio:9000\n")
    with pytest.raises(jw.ConfigError, match=rf"{bad} sets endpoint_url = 'minio:9000'.*"
                       r"not an http\(s\) URL.*AWS_ENDPOINT_URL_S3"):  # fmt: skip
        jw.StorageConfig().resolve({"AWS_CONFIG_FILE": str(bad)})
    bad.write_text("endpoint_url = http://x:1\n")  # no section header
    with pytest.raises(jw.ConfigError, match=r"cannot be read.*set AWS_ENDPOINT_URL_S3"):
        jw.StorageConfig().resolve({"AWS_CONFIG_FILE": str(bad)})
    # an endpoint in the environment does not need the file's region either way
    ok = jw.StorageConfig().resolve({"AWS_CONFIG_FILE": str(bad), "AWS_REGION": "r",
                                     "AWS_ENDPOINT_URL_S3": "http://s:1"})  # fmt: skip
    assert ok.s3_endpoint == "http://s:1"


def test_s3_parts_reach_the_endpoint_of_the_aws_config_file(s3_endpoint, tmp_path,
                                                            monkeypatch):  # fmt: skip
    """The failing case of the issue: endpoint_url only in ~/.aws/config (as the AWS CLI
    reads it); jaxwren used to send the requests to AWS itself."""
    config = tmp_path / "config"
    config.write_text(f"[profile minio]\nregion = us-east-1\nservices = local\n"
                      f"[services local]\ns3 =\n  endpoint_url = {s3_endpoint}\n")  # fmt: skip
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "minio")  # keys stay in the environment (conftest)
    monkeypatch.setenv("HOME", str(tmp_path))
    x = parts_data([6])[0]
    d = put(f"s3://{BUCKET}/awsconfig-{os.getpid()}", {"p.csv": csv_bytes(x)},
            jw.StorageConfig(s3_endpoint=s3_endpoint, s3_region="us-east-1"))  # fmt: skip
    a = jw.from_csv(f"{d}/*.csv", f"{d}-m", dtype="float64", overwrite=True)
    np.testing.assert_array_equal(a.numpy(), x)
    assert a.storage.s3_endpoint == s3_endpoint
