"""CSV and Parquet part files -> BigMatrix (jw.from_csv, jw.from_parquet): globs, order,
ragged shapes against the block size, every store, overwrite, and what is left behind."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorstore as ts

import jaxwren as jw
from jaxwren.storage.backend import open_kvstore
from jaxwren.storage.urls import parse_url
from jaxwren.storage.validate import resolve_storage
from jaxwren.tables.glob import expand
from jaxwren.tables.parse import CSV
from jaxwren.tables.stream import TableStream
from tests.helpers import mem

NAMES = ["fare", "dist", "hour"]


def kv_of(url: str, config: jw.StorageConfig | None) -> ts.KvStore:
    return open_kvstore(parse_url(url), resolve_storage(config))


def put(url: str, files: dict[str, bytes], config: jw.StorageConfig | None = None) -> str:
    """Writes ``files`` (key -> bytes) under the directory ``url``; returns ``url``."""
    kv = kv_of(url, config)
    for key, data in files.items():
        kv.write(key, data).result()
    return url


def keys_under(url: str, config: jw.StorageConfig | None = None) -> list[str]:
    return sorted(k.decode() for k in kv_of(url, config).list().result())


def csv_bytes(x: np.ndarray, names: list[str] | None = NAMES) -> bytes:
    lines = [",".join(names)] if names else []
    lines += [",".join(repr(float(v)) if isinstance(v, float) else str(v) for v in row)
              for row in x.tolist()]  # fmt: skip
    return ("\n".join(lines) + "\n").encode()


def parquet_bytes(x: np.ndarray, names: list[str] = NAMES) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({n: x[:, j] for j, n in enumerate(names)}), buf)
    return buf.getvalue()


def parts_data(sizes: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.round(rng.uniform(-50, 50, (s, len(NAMES))), 3) for s in sizes]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_parts_in_order_ragged_against_the_block(store, fmt):
    # 7 + 13 + 5 rows with 4-row blocks: parts end inside blocks; 3 columns in 2-wide blocks
    xs = parts_data([7, 13, 5])
    enc = csv_bytes if fmt == "csv" else parquet_bytes
    files = {f"part-{i:03d}.{fmt}": enc(x) for i, x in enumerate(xs)}
    files["part-001.txt"] = b"not a part"  # other files beside the parts are not read
    files["_SUCCESS"] = b""
    parts = put(store.url("parts"), files, store.config)
    ingest = jw.from_csv if fmt == "csv" else jw.from_parquet
    a = ingest(f"{parts}/part-*.{fmt}", store.url("m"), block_shape=(4, 2),
               storage=store.config)  # fmt: skip
    want = np.concatenate(xs)
    assert a.shape == want.shape == (25, 3) and a.dtype == np.float32
    assert a.block_shape == (4, 2)
    np.testing.assert_array_equal(a.numpy(), want.astype(np.float32))
    assert a.block_idxs_exist == set(a.block_idxs)  # every block written (and no others)
    again = jw.BigMatrix.open(a.url, storage=store.config)  # exact shape stored
    assert again.shape == (25, 3)


def test_columns_dtype_and_globs():
    xs = parts_data([3, 4, 5, 6])
    parts = put(mem("parts"), {f"d/part-{i}.csv": csv_bytes(x) for i, x in enumerate(xs)}
                | {"d/sub/part-9.csv": csv_bytes(xs[0])})  # fmt: skip
    a = jw.from_csv(f"{parts}/d/part-[02].csv", mem("m"), columns=["hour", 0], dtype="float64")
    np.testing.assert_array_equal(a.numpy(), np.concatenate([xs[0], xs[2]])[:, [2, 0]])
    b = jw.from_csv(f"{parts}/d/part-?.csv", mem("m"), block_shape=(5, 3))  # not sub/
    assert b.shape == (18, 3)
    c = jw.from_csv(f"{parts}/d/*/part-9.csv", mem("m"))  # a glob in a directory component
    assert c.shape == (3, 3)
    one = jw.from_csv(f"{parts}/d/part-3.csv", mem("m"))  # no glob: one part
    np.testing.assert_array_equal(one.numpy(), xs[3].astype(np.float32))


def test_default_block_and_headerless_int_parts(tmp_path):
    x = np.arange(40).reshape(10, 4)
    put(str(tmp_path / "p"), {"a.csv": csv_bytes(x[:6], None), "b.csv": csv_bytes(x[6:], None)})
    a = jw.from_csv(str(tmp_path / "p" / "*.csv"), str(tmp_path / "m"), header=False,
                    dtype="int32", columns=[3, 1])  # fmt: skip
    assert a.dtype == np.int32 and a.block_shape[1] == 2
    np.testing.assert_array_equal(a.numpy(), x[:, [3, 1]])
    f = jw.from_csv(str(tmp_path / "p" / "*.csv"), str(tmp_path / "f"), header=False)
    assert f.block_shape == (1 << 20, 4)  # ~16 MiB of float32 rows, all columns


def test_rerun_with_overwrite_replaces_and_without_refuses(store):
    parts = put(store.url("parts"), {"p0.csv": csv_bytes(parts_data([6])[0])}, store.config)
    out = store.url("m")
    a = jw.from_csv(f"{parts}/p*.csv", out, block_shape=(4, 3), storage=store.config)
    assert a.shape == (6, 3)
    put(parts, {"p1.csv": csv_bytes(parts_data([3], seed=1)[0])}, store.config)
    with pytest.raises(jw.MatrixExistsError, match="pass overwrite=True"):
        jw.from_csv(f"{parts}/p*.csv", out, storage=store.config)
    assert jw.BigMatrix.open(out, storage=store.config).shape == (6, 3)  # untouched
    b = jw.from_csv(f"{parts}/p*.csv", out, block_shape=(4, 3), storage=store.config,
                    overwrite=True)  # fmt: skip
    assert b.shape == (9, 3)
    np.testing.assert_array_equal(b.numpy()[6:], parts_data([3], seed=1)[0].astype(np.float32))


def test_no_match_names_the_pattern_and_what_is_there(store):
    parts = put(store.url("parts"), {"a.csv": b"x\n1\n", "b.txt": b""}, store.config)
    with pytest.raises(jw.PartsNotFoundError, match=r"no part file matches .*part-\*\.csv.* "
                       r"holds: a\.csv, b\.txt"):  # fmt: skip
        jw.from_csv(f"{parts}/part-*.csv", store.url("m"), storage=store.config)
    with pytest.raises(jw.PartsNotFoundError, match="holds nothing"):
        jw.from_csv(f"{store.url('empty')}/*.csv", store.url("m"), storage=store.config)
    assert isinstance(jw.PartsNotFoundError("x"), FileNotFoundError)


BAD_PARTS = [
    (
        b"fare,dist,hour\n1,2,3\n4,5\n",
        jw.TableParseError,
        r"part-001\.csv has a ragged row: "
        r"line 3 has 2 fields, expected 3",
    ),
    (
        b"fare,dist,hour\n1,2,3\n4,x5,6\n",
        jw.TableParseError,
        r"part-001\.csv, row 2, column 'dist' holds 'x5', which is not a number",
    ),
    (
        b"fare,dist,hour\n1,2,3\n4,,6\n",
        jw.TableParseError,
        r"part-001\.csv, row 2, column 'dist' is empty or NA",
    ),
    (b"fare,dist,hour\n1,NA,3\n", jw.TableParseError, r"row 1, column 'dist' is empty or NA"),
    (b"fare,dist,hour\n1,2,inf\n", jw.NonFiniteError, r"row 1, column 'hour' holds inf"),
    (b"fare,dist,hour\n1,2,1e39\n", jw.NonFiniteError, r"holds 1e\+39, which overflows float32"),
    (
        b"fare,dist,hour\n1,2,16777217\n",
        jw.DTypeMismatchError,
        r"row 1, column 'hour' holds the integer 16777217, which float32 cannot hold exactly",
    ),
    (
        b"fare,dist\n1,2\n",
        jw.TableParseError,
        r"part-001\.csv has other columns than the first part .*part-000\.csv: missing \['hour'\]",
    ),
    (b"fare,dist,hour,tip\n1,2,3,4\n", jw.TableParseError, r"extra \['tip'\]"),
    (b"", jw.TableParseError, r"part-001\.csv is empty"),
    (b"fare,dist,hour\n", jw.TableParseError, r"part-001\.csv has no data rows"),
    (b"fare,dist,hour\n1,2,2020-01-01\n", jw.TableParseError, r"column 'hour' has type"),
]


@pytest.mark.parametrize(("bad", "error", "match"), BAD_PARTS)
def test_bad_second_part_is_named_and_nothing_is_left(bad, error, match):
    good = csv_bytes(parts_data([9])[0])
    parts = put(mem("parts"), {"part-000.csv": good, "part-001.csv": bad, "part-002.csv": good})
    out = mem("out")
    with pytest.raises(error, match=match):
        jw.from_csv(f"{parts}/part-*.csv", out, block_shape=(2, 3))
    assert keys_under(out, None) == []  # the blocks of part 0 were removed with the header


def test_bad_first_part_fails_before_anything_is_written(tmp_path):
    parts = put(str(tmp_path / "p"), {"part-0.csv": b"a,b\n1,x\n"})
    with pytest.raises(jw.TableParseError, match=r"part-0\.csv, row 1, column 'b'"):
        jw.from_csv(str(tmp_path / "p" / "*.csv"), str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()
    assert parts


def test_errors_follow_part_order_with_parts_in_flight():
    # several parts are parsed at once: the first bad part in order is the one named
    good = csv_bytes(parts_data([9])[0])
    files = {f"part-{i:03d}.csv": good for i in range(8)}
    files["part-003.csv"] = b"fare,dist,hour\n1,x,3\n"
    files["part-005.csv"] = b"fare,dist,hour\n1,2\n"
    out = mem("out")

    def fails_in_order(error: type, match: str) -> None:  # the same error, run after run
        parts = put(mem("parts"), files)
        for _ in range(3):
            with pytest.raises(error, match=match):
                jw.from_csv(f"{parts}/part-*.csv", out, block_shape=(2, 3))
            assert keys_under(out, None) == []

    fails_in_order(jw.TableParseError, r"part-003\.csv, row 1, column 'dist'")
    # a value found only in conversion (on worker threads) is still named in part order
    files["part-003.csv"] = b"fare,dist,hour\n1,2,3\n1,2,inf\n"
    files["part-004.csv"] = b"fare,dist,hour\n1,y,3\n"
    fails_in_order(jw.NonFiniteError, r"part-003\.csv, row 2, column 'hour'")
    # two conversion errors: the earlier part's
    files["part-004.csv"] = good
    files["part-005.csv"] = b"fare,dist,hour\n1e39,2,3\n"
    fails_in_order(jw.NonFiniteError, r"part-003\.csv, row 2, column 'hour'")
    # a first part that fails before its columns are known stops the parts behind it
    files["part-000.csv"] = b""
    parts = put(mem("parts"), files)
    with pytest.raises(jw.TableParseError, match=r"part-000\.csv is empty"):
        jw.from_csv(f"{parts}/part-*.csv", out)
    assert keys_under(out, None) == []
    bad_cols = put(mem("parts"), {"part-0.csv": good, "part-1.csv": good})
    with pytest.raises(jw.ConfigError, match="column 'zz' is not in"):
        jw.from_csv(f"{bad_cols}/part-*.csv", out, columns=["zz"])


def test_non_finite_row_is_counted_across_blocks_and_overwrite_keeps_the_old_matrix():
    good = csv_bytes(parts_data([9])[0])
    rows = [[float(i), 2.0, 3.0] for i in range(7)]
    rows[5][2] = float("inf")
    bad = csv_bytes(np.array(rows))
    parts = put(mem("parts"), {"part-0.csv": good, "part-1.csv": bad})
    out = mem("out")
    # part 1 starts inside a block (9 rows, 2-row blocks): row 6 lands in a later block
    with pytest.raises(jw.NonFiniteError, match=r"part-1\.csv, row 6, column 'hour' holds inf"):
        jw.from_csv(f"{parts}/part-*.csv", out, block_shape=(2, 3))
    assert keys_under(out, None) == []
    old = jw.from_numpy(np.ones((3, 3), np.float32), out, (2, 2))
    first_bad = put(mem("parts2"), {"part-0.csv": bad, "part-1.csv": good})
    with pytest.raises(jw.NonFiniteError, match=r"part-0\.csv, row 6"):
        jw.from_csv(f"{first_bad}/part-*.csv", out, overwrite=True)
    np.testing.assert_array_equal(jw.BigMatrix.open(old.url).numpy(), np.ones((3, 3)))


def test_a_failing_create_is_the_error_raised(monkeypatch):
    # the matrix is created on a helper thread while the first blocks are converted
    from jaxwren.tables import ingest

    def refuse(*args, **kwargs):
        raise jw.StorageError("create failed")

    monkeypatch.setattr(ingest.BigMatrix, "create_uncommitted", refuse)
    parts = put(mem("parts"), {f"p{i}.csv": csv_bytes(parts_data([9])[0]) for i in range(3)})
    with pytest.raises(jw.StorageError, match="create failed"):
        jw.from_csv(f"{parts}/p*.csv", mem("out"), block_shape=(2, 3))
    assert keys_under(mem("out"), None) == []


def test_float_into_int_and_dup_columns_and_bad_arguments():
    parts = put(mem("p"), {"p.csv": b"a,b\n1.5,2\n"})
    with pytest.raises(jw.DTypeMismatchError, match="holds floating-point numbers"):
        jw.from_csv(f"{parts}/*.csv", mem("m"), dtype="int64")
    dup = put(mem("p"), {"p.csv": b"a,a\n1,2\n"})
    with pytest.raises(jw.TableParseError, match="has the column 'a' twice"):
        jw.from_csv(f"{dup}/*.csv", mem("m"))
    with pytest.raises(
        jw.ConfigError, match=r"column 'z' is not in .*p\.csv; its columns are 'a', 'b'"
    ):
        jw.from_csv(f"{parts}/*.csv", mem("m"), columns=["z"])
    with pytest.raises(jw.ConfigError, match="column index 5 is out of range"):
        jw.from_csv(f"{parts}/*.csv", mem("m"), columns=[5])
    with pytest.raises(jw.ConfigError, match="header='yes' must be True or False"):
        jw.from_csv(f"{parts}/*.csv", mem("m"), header="yes")
    with pytest.raises(jw.ConfigError, match="window_bytes"):
        jw.from_csv(f"{parts}/*.csv", mem("m"), window_bytes=0)
    with pytest.raises(jw.ShapeMismatchError, match="block_shape"):
        jw.from_csv(f"{parts}/*.csv", mem("m"), block_shape=(0, 2))


def test_output_among_the_parts_is_refused(tmp_path):
    put(str(tmp_path), {"part-0.csv": b"a\n1\n"})
    with pytest.raises(jw.OutputConflictError, match="would contain the part"):
        jw.from_csv(str(tmp_path / "*.csv"), str(tmp_path), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-0.csv"]


def test_a_part_that_changes_during_the_ingest_is_detected(store):
    config = resolve_storage(store.config)
    parts = put(store.url("parts"), {"p0.csv": b"a\n1\n", "p1.csv": b"a\n2\n"}, store.config)
    stream = TableStream(expand(f"{parts}/p*.csv", config, op="from_csv"), CSV, None,
                         np.dtype("float32"), window_bytes=1 << 20)  # fmt: skip
    assert [x.tolist() for x in stream] == [[[1.0]], [[2.0]]]
    stream.check_unchanged()  # nothing changed: no error
    put(parts, {"p1.csv": b"a\n2\n3\n"}, store.config)  # the part grew
    with pytest.raises(jw.StorageError, match=r"changed while the ingest ran, first .*p1\.csv"):
        stream.check_unchanged()


@pytest.mark.parametrize("change", ["rewritten", "deleted"])
def test_a_local_part_changed_after_its_generation_was_read(tmp_path, monkeypatch, change):
    """A file part is read by the OS after TensorStore took its generation: a part
    rewritten in between fails the final check (nothing is left behind), a part deleted
    in between is named."""
    from jaxwren.tables import stream as stream_mod

    parts = put(str(tmp_path / "parts"), {"p0.csv": b"a\n1\n", "p1.csv": b"a\n2\n"})
    orig = stream_mod.issue_read

    def issue(parts_, part, op):
        fut = orig(parts_, part, op=op)
        if part.key == "p1.csv":
            assert fut.result().stamp.generation  # the generation is taken, no data
            if change == "deleted":
                (tmp_path / "parts" / "p1.csv").unlink()
            else:
                put(parts, {"p1.csv": b"a\n2\n3\n"})
        return fut

    monkeypatch.setattr(stream_mod, "issue_read", issue)
    out = str(tmp_path / "m")
    if change == "deleted":
        with pytest.raises(jw.PartsNotFoundError, match=r"p1\.csv was listed but is gone"):
            jw.from_csv(f"{parts}/p*.csv", out)
    else:
        with pytest.raises(jw.StorageError, match=r"changed while the ingest ran, first .*p1"):
            jw.from_csv(f"{parts}/p*.csv", out)
    assert [p for p in (tmp_path / "m").rglob("*") if p.is_file()] == []  # no key left
    monkeypatch.undo()
    assert (
        jw.from_csv(f"{parts}/p*.csv", out).numpy().tolist()
        == [[1.0], [2.0], [3.0]][: 3 if change == "rewritten" else 1]
    )  # a rerun takes the data set as it is now


def test_window_reads_ahead_within_the_bound(monkeypatch):
    import dataclasses

    from jaxwren.tables import stream as stream_mod

    xs = parts_data([20] * 8)
    files = {f"p{i}.csv": csv_bytes(x) for i, x in enumerate(xs)}
    size = max(len(b) for b in files.values())
    parts = expand(f"{put(mem('p'), files)}/p*.csv", resolve_storage(None), op="from_csv")

    class CountingKv:
        issued = 0

        def read(self, key, **kw):
            CountingKv.issued += 1
            return parts.kv.read(key, **kw)

    issued_at_first: list[int] = []
    orig = stream_mod.part_data

    def spy(parts_, part, fut, op):
        if not issued_at_first:
            issued_at_first.append(CountingKv.issued)
        return orig(parts_, part, fut, op=op)

    monkeypatch.setattr(stream_mod, "part_data", spy)
    counted = dataclasses.replace(parts, kv=CountingKv())
    size = max(size, 20 * 3 * 8)  # a part counts as the larger of its text and its table
    stream = TableStream(counted, CSV, None, np.dtype("float64"), window_bytes=4 * size)
    taken = []
    for x in stream:
        taken.append(x)
        assert CountingKv.issued - len(taken) <= 3  # the window: 4 parts in flight at most
    np.testing.assert_array_equal(np.concatenate(taken), np.concatenate(xs))
    # the first part alone (its size unknown), then up to 4 in flight (4 * size fit)
    assert issued_at_first == [1] and stream.peak_in_flight == 4, (issued_at_first, stream)
    assert stream.nbytes == sum(len(b) for b in files.values())


def test_window_counts_a_part_at_its_parsed_table_when_that_is_larger():
    # "0,1,2" rows: 6 bytes of text, 24 bytes of int64 table: the table sets the estimate
    x = np.tile(np.arange(3), (200, 1))
    files = {f"p{i}.csv": csv_bytes(x) for i in range(12)}
    text = max(len(b) for b in files.values())
    table = x.size * 8
    assert table > 3 * text
    parts = expand(f"{put(mem('p'), files)}/p*.csv", resolve_storage(None), op="from_csv")
    stream = TableStream(parts, CSV, None, np.dtype("float32"), window_bytes=4 * table)
    np.testing.assert_array_equal(np.concatenate(list(stream)), np.concatenate([x] * 12))
    assert stream.peak_in_flight == 4


def test_a_part_larger_than_the_window_is_read_alone():
    xs = parts_data([20] * 5)
    files = {f"p{i}.csv": csv_bytes(x) for i, x in enumerate(xs)}
    parts = expand(f"{put(mem('p'), files)}/p*.csv", resolve_storage(None), op="from_csv")
    stream = TableStream(parts, CSV, None, np.dtype("float64"), window_bytes=10)
    np.testing.assert_array_equal(np.concatenate(list(stream)), np.concatenate(xs))
    assert stream.peak_in_flight == 1
