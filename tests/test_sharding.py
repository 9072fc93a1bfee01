"""Sharded load (to_jax) and save on 1-D and 2-D meshes, shards cutting blocks."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxwren as jw
from jaxwren.sharding import fit_spec
from tests.helpers import mem, rand, run_python


def mesh_1d():
    return jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))


def test_default_mesh_is_square():
    mesh = jw.default_mesh()
    assert dict(mesh.shape) == {"rows": 2, "cols": 4}
    assert dict(jw.default_mesh(jax.devices()[:4]).shape) == {"rows": 2, "cols": 2}
    assert dict(jw.default_mesh(jax.devices()[:7]).shape) == {"rows": 1, "cols": 7}


def test_fit_spec_prefers_most_shards():
    mesh = jw.default_mesh()
    assert fit_spec((8, 8), mesh) == P("rows", "cols")
    assert fit_spec((16, 7), mesh) == P(("rows", "cols"), None)
    assert fit_spec((7, 10), mesh) == P(None, "rows")
    assert fit_spec((7, 9), mesh) == P(None, None)
    assert fit_spec((24,), mesh) == P(("rows", "cols"))


SHARDINGS = {
    "2d": lambda: NamedSharding(jw.default_mesh(), P("rows", "cols")),
    "2d-swapped": lambda: NamedSharding(jw.default_mesh(), P("cols", "rows")),
    "1d-rows": lambda: NamedSharding(mesh_1d(), P("x", None)),
    "1d-cols": lambda: NamedSharding(mesh_1d(), P(None, "x")),
    "replicated": lambda: NamedSharding(jw.default_mesh(), P()),
    "partial": lambda: NamedSharding(jw.default_mesh(), P("rows", None)),
}


@pytest.mark.parametrize("name", list(SHARDINGS))
def test_to_jax_and_save_roundtrip(store, name):
    # 24 x 16 on 8 devices: shards of 3 or 12 rows / 2 or 8 cols cut the 5 x 3 blocks
    x = rand((24, 16))
    a = jw.from_numpy(x, store.url(), (5, 3), storage=store.config)
    sharding = SHARDINGS[name]()
    y = a.to_jax(sharding)
    assert y.sharding == sharding and y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(y), x)
    for shard in y.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), x[shard.index])
    b = jw.save(y * 2, store.url(), (5, 3), storage=store.config)
    assert b.block_shape == (5, 3)
    np.testing.assert_array_equal(b.numpy(), 2 * x)


def test_each_distinct_index_read_once(monkeypatch):
    x = rand((16, 16))
    a = jw.from_numpy(x, "memory://once", (4, 4))
    calls = []
    orig = jw.BigMatrix.read_region_into_async

    def counting(self, *bounds_and_out):
        calls.append(bounds_and_out[:4])
        return orig(self, *bounds_and_out)

    monkeypatch.setattr(jw.BigMatrix, "read_region_into_async", counting)
    y = a.to_jax(NamedSharding(jw.default_mesh(), P("rows", None)))  # 2 distinct, 4x each
    np.testing.assert_array_equal(np.asarray(y), x)
    assert sorted(calls) == [(0, 8, 0, 16), (8, 16, 0, 16)]


def test_load_region_and_budget():
    x = rand((30, 20))
    a = jw.from_numpy(x, "memory://region", (7, 6))
    y = jw.load(a, region=(3, 27, 5, 13), budget_bytes=64)  # budget < one shard: one at a time
    np.testing.assert_array_equal(np.asarray(y), x[3:27, 5:13])
    assert y.sharding.spec == P("rows", "cols")


def test_ragged_default_sharding_and_transposed(store):
    x = rand((11, 7), "float32")
    a = jw.from_numpy(x, store.url(), (4, 4), storage=store.config)
    np.testing.assert_array_equal(np.asarray(a.to_jax()), x)
    np.testing.assert_array_equal(np.asarray(a.T.to_jax()), x.T)


def test_save_numpy_and_into_existing():
    x = rand((6, 6))
    b = jw.save(x, "memory://save-np", (4, 4))
    np.testing.assert_array_equal(b.numpy(), x)
    c = jw.BigMatrix.create("memory://save-into", (6, 6), (3, 3), "float64")
    jw.save(jax.numpy.asarray(x), c)
    np.testing.assert_array_equal(c.numpy(), x)


def test_save_errors():
    c = jw.BigMatrix.create("memory://save-bad", (6, 6), (3, 3), "float32")
    with pytest.raises(jw.ShapeMismatchError, match="differs from"):
        jw.save(jax.numpy.ones((5, 6), np.float32), c)
    with pytest.raises(jw.DTypeMismatchError, match=r"x.astype\(\)"):
        jw.save(jax.numpy.ones((6, 6), np.float64), c)
    with pytest.raises(jw.ShapeMismatchError, match="block_shape is required"):
        jw.save(jax.numpy.ones((6, 6)), "memory://save-bad2")
    with pytest.raises(jw.ShapeMismatchError, match="expected a 2-D array"):
        jw.save(jax.numpy.ones((6,)), "memory://save-bad3", (2, 2))
    assert c.block_idxs_exist == set()


def test_sharding_that_does_not_divide_is_refused_before_reading(monkeypatch):
    a = jw.from_numpy(rand((22, 16)), mem("nodiv"), (5, 3))
    calls = []
    monkeypatch.setattr(jw.BigMatrix, "read_region_into_async",
                        lambda self, *args: calls.append(args))  # fmt: skip
    rows_over_cols = NamedSharding(jw.default_mesh(), P("cols", "rows"))  # 22 rows over 4
    with pytest.raises(jw.ShapeMismatchError, match=r"dimension 0 \(rows, size 22\) is not "
                       r"divisible by mesh axis 'cols' of size 4"):  # fmt: skip
        a.to_jax(rows_over_cols)
    both = NamedSharding(jw.default_mesh(), P(None, ("rows", "cols")))  # 6 cols over 8
    with pytest.raises(jw.ShapeMismatchError, match=r"dimension 1 \(columns, size 6\) is not "
                       r"divisible by mesh axis \('rows', 'cols'\) of size 8"):  # fmt: skip
        jw.load(a, both, region=(0, 8, 0, 6))
    with pytest.raises(jw.ShapeMismatchError, match="must be a jax.sharding.Sharding"):
        jw.load(a, P("rows", "cols"))
    assert calls == []


def test_load_and_save_on_a_make_mesh_mesh(store):
    mesh = jax.make_mesh((2, 4), ("rows", "cols"))  # Explicit axes: jax.make_mesh's default
    assert set(mesh.axis_types) == {jax.sharding.AxisType.Explicit}
    x = rand((24, 16))
    a = jw.from_numpy(x, store.url(), (5, 3), storage=store.config)
    for spec in (P("rows", "cols"), P("cols", None), P()):
        sharding = NamedSharding(mesh, spec)
        y = jw.load(a, sharding)
        assert y.sharding == sharding
        np.testing.assert_array_equal(np.asarray(y), x)
        np.testing.assert_array_equal(np.asarray(a.to_jax(sharding)), x)
        b = jw.save(y * 2, store.url(), (5, 3), storage=store.config)
        np.testing.assert_array_equal(b.numpy(), 2 * x)
        jw.save(y, b)  # into an existing matrix
        np.testing.assert_array_equal(b.numpy(), x)
    z = jw.load(a, NamedSharding(mesh, P("rows", "cols")), region=(2, 10, 4, 12))
    np.testing.assert_array_equal(np.asarray(z), x[2:10, 4:12])


_NO_X64 = """
import numpy as np
import jax
import jaxwren as jw
assert not jax.config.jax_enable_x64
for dtype in ("float64", "int64"):
    a = jw.from_numpy(np.ones((8, 8), dtype), "memory://x-" + dtype, (4, 4))
    texts = []
    for call in (lambda: a.to_jax(), lambda: jw.load(a, region=(0, 4, 0, 4)),
                 lambda: a.iter_row_batches(4), lambda: jw.matmul(np.ones((8, 8), dtype), np.ones((8, 8), dtype))):
        try:
            call()
        except jw.DTypeMismatchError as e:
            texts.append(str(e).split(": the data is")[-1])
        else:
            raise SystemExit(f"{dtype}: no DTypeMismatchError")
    assert len(set(texts)) == 1, texts
    assert "jax_enable_x64" in texts[0] and dtype in texts[0], texts[0]
print("refused")
"""


def test_64_bit_data_without_x64_is_refused_like_the_algorithms():
    # a subprocess: tests/conftest.py turns x64 on in this one, and no test changes it
    proc = run_python(_NO_X64, drop=("JAX_ENABLE_X64",))
    assert proc.returncode == 0 and "refused" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize(
    "spec", [P("rows", "cols"), P(("rows", "cols"), None), P(None, "cols"), P()]
)
def test_cpu_shards_source_reads_any_region(spec):
    """A jax.Array on CPU devices is read region by region straight from its shards
    (replicas read once), across shard edges, for every kind of sharding; the engine
    reads it so where the platform profile says device buffers are host memory, else
    cuts its tiles on the devices."""
    from jaxwren.sharding.platform import platform_profile
    from jaxwren.sharding.tiles import CpuShardsSource, as_source

    x = np.random.default_rng(4).standard_normal((40, 24))
    arr = jax.device_put(x, NamedSharding(jw.default_mesh(), spec))
    shared = platform_profile(arr).shares_host_memory
    assert isinstance(as_source(arr), CpuShardsSource) == shared
    assert (as_source(arr) is arr) == (not shared)
    src = CpuShardsSource(arr)
    for r0, r1, c0, c1 in [(0, 40, 0, 24), (3, 37, 5, 19), (19, 21, 11, 13), (39, 40, 0, 1)]:
        out = np.full((r1 - r0 + 2, c1 - c0 + 2), np.nan)[1:-1, 1:-1]  # a strided view
        src.read_region_into_async(r0, r1, c0, c1, out).result()
        np.testing.assert_array_equal(out, x[r0:r1, c0:c1])
