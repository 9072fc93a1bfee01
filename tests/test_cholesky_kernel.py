"""The block-cyclic Cholesky kernel against numpy: layouts, ragged n, meshes, dtypes, info,
garbage outside the lower triangle, memory, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxwren.errors import ConfigError, DTypeMismatchError, ShapeMismatchError
from jaxwren.lax import cholesky_kernel as ck
from jaxwren.sharding.mesh import default_mesh, default_sharding
from tests.helpers import tolerance


def mesh_of(shape: tuple[int, int]) -> jax.sharding.Mesh:
    return jax.make_mesh(shape, ("rows", "cols"), axis_types=(AxisType.Auto,) * 2)


def spd(n: int, dtype: str = "float64", seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, n))
    return (x @ x.T / n + np.eye(n)).astype(dtype)


def factor(a: np.ndarray, block: int, mesh, n: int | None = None):
    """Natural (garbage allowed) matrix -> (L natural, full padded L, info)."""
    n = a.shape[0] if n is None else n
    a_cyc = ck.to_cyclic(jnp.asarray(a), block, mesh)
    l_cyc, info = ck.cholesky_cyclic(a_cyc, block=block, n=n, mesh=mesh)
    assert l_cyc.sharding == NamedSharding(mesh, P("rows", "cols"))
    full = np.asarray(ck.from_cyclic(l_cyc, block, mesh))
    return full[:n, :n], full, int(info)


def test_cyclic_order_makes_block_sharding_cyclic():
    order = ck.cyclic_order(6, 2)
    np.testing.assert_array_equal(order, [0, 2, 4, 1, 3, 5])
    nb, p = 12, 4
    order = ck.cyclic_order(nb, p)
    for shard in range(p):  # shard q holds blocks q, q + p, ... in order
        held = order[shard * (nb // p) : (shard + 1) * (nb // p)]
        np.testing.assert_array_equal(held, np.arange(shard, nb, p))
    with pytest.raises(ConfigError, match=r"cyclic_order: the block count 10 .* multiple of .* 4"):
        ck.cyclic_order(10, 4)


def test_padded_size():
    assert ck.padded_size(37, 8, default_mesh()) == 64  # 8 * lcm(2, 4) = 32
    assert ck.padded_size(64, 8, mesh_of((1, 8))) == 64
    assert ck.padded_size(65, 8, mesh_of((8, 1))) == 128
    assert ck.padded_size(3, 2, mesh_of((2, 4))) == 8
    with pytest.raises(ConfigError, match="padded_size: block must be a positive int"):
        ck.padded_size(10, 0, default_mesh())


@pytest.mark.parametrize("shape", [(2, 4), (1, 8), (8, 1)])
def test_to_from_cyclic_round_trip(shape):
    mesh, n, b = mesh_of(shape), 37, 4
    x = np.random.default_rng(1).standard_normal((n, n))
    x_cyc = ck.to_cyclic(jnp.asarray(x), b, mesh)
    n_pad = ck.padded_size(n, b, mesh)
    assert x_cyc.shape == (n_pad, n_pad)
    assert x_cyc.sharding == NamedSharding(mesh, P("rows", "cols"))
    padded = np.zeros((n_pad, n_pad))
    padded[:n, :n] = x
    rows = (ck.cyclic_order(n_pad // b, shape[0])[:, None] * b + np.arange(b)).ravel()
    cols = (ck.cyclic_order(n_pad // b, shape[1])[:, None] * b + np.arange(b)).ravel()
    np.testing.assert_array_equal(np.asarray(x_cyc), padded[rows][:, cols])
    back = ck.from_cyclic(x_cyc, b, mesh, n=n)
    assert back.sharding == default_sharding((n, n), mesh)  # 37 rows: no even split
    np.testing.assert_array_equal(np.asarray(back), x)
    whole = ck.from_cyclic(x_cyc, b, mesh)
    assert whole.sharding == NamedSharding(mesh, P("rows", "cols"))
    np.testing.assert_array_equal(np.asarray(whole), padded)


@pytest.mark.parametrize(
    ("n", "block", "shape", "dtype"),
    [
        (37, 8, (2, 4), "float64"),
        (100, 16, (2, 4), "float32"),
        (131, 16, (1, 8), "float64"),
        (100, 16, (8, 1), "float32"),
        (64, 8, (2, 4), "float64"),  # n a multiple of the padding unit: no padding
    ],
)
def test_matches_numpy(n, block, shape, dtype):
    mesh = mesh_of(shape)
    a = spd(n, dtype, seed=n)
    low, full, info = factor(a, block, mesh)
    assert info == -1 and low.dtype == np.dtype(dtype)
    tol = tolerance(dtype)
    np.testing.assert_allclose(low @ low.T, a, **tol)
    np.testing.assert_allclose(low, np.linalg.cholesky(a.astype(np.float64)), **tol)
    assert not np.triu(full, 1).any()  # strictly upper part exactly zero, padding included
    n_pad = full.shape[0]
    np.testing.assert_array_equal(full[n:, n:], np.eye(n_pad - n))
    assert not full[n:, :n].any()


def test_reads_only_the_lower_triangle_and_ignores_padding():
    mesh, n, b = default_mesh(), 45, 8
    n_pad = ck.padded_size(n, b, mesh)
    a = spd(n, seed=3)
    rng = np.random.default_rng(4)
    dirty = rng.standard_normal((n_pad, n_pad)) * 1e3
    dirty[:n, :n] = np.tril(a) + np.triu(dirty[:n, :n], 1)
    dirty[0, n - 1] = dirty[n + 1, 2] = dirty[n_pad - 1, n_pad - 1] = np.nan
    low, full, info = factor(dirty, b, mesh, n=n)
    assert info == -1
    np.testing.assert_allclose(low, np.linalg.cholesky(a), **tolerance("float64"))
    assert not np.triu(full, 1).any()
    np.testing.assert_array_equal(full[n:, n:], np.eye(n_pad - n))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bad", [0, 21, 44])
def test_info_flags_the_first_failing_block_column(dtype, bad):
    n, b = 45, 8
    a = spd(n, dtype, seed=5)
    a[bad, bad] = -1.0  # leading minors before `bad` stay positive
    _, _, info = factor(a, b, default_mesh())
    assert info == bad // b


def test_info_flags_nan_and_zero_pivots():
    n, b = 45, 8  # the same geometry as above: no new compilation
    a = spd(n, seed=6)
    a[30, 12] = np.nan  # off-diagonal, lower triangle: reaches the diagonal of row 30
    assert factor(a, b, default_mesh())[2] == 30 // b
    z = np.eye(n)
    z[17, 17] = 0.0
    assert factor(z, b, default_mesh())[2] == 17 // b


def test_no_recompilation_and_donation():
    mesh, n, b = default_mesh(), 37, 8
    a_cyc = ck.to_cyclic(jnp.asarray(spd(n)), b, mesh)
    for _ in range(2):
        l_cyc, _ = ck.cholesky_cyclic(a_cyc.copy(), block=b, n=n, mesh=mesh)
    fn = ck._factor_fn(n, a_cyc.shape[0], b, mesh)
    assert fn._cache_size() == 1
    ck.cholesky_cyclic(a_cyc, block=b, n=n, mesh=mesh)
    assert a_cyc.is_deleted()  # donated: the factor reuses its buffer


def test_memory_per_device_within_bound():
    mesh, n, b = default_mesh(), 512, 32
    mem = ck.memory_per_device(n, b, mesh, "float64")
    local = 512 * 512 * 8 // 8  # XLA's own figures, compared with the local share
    assert mem["argument"] == local  # no device holds more than its share of the input
    assert mem["alias"] == local  # the factor is written over the donated input
    assert mem["temp"] <= 2 * local + 8 * mem["n_pad"] * b * 8, mem


def test_errors():
    mesh = default_mesh()
    a_cyc = ck.to_cyclic(jnp.asarray(spd(40)), 8, mesh)
    with pytest.raises(
        ShapeMismatchError, match=r"cholesky_cyclic: for n=70, block=8 .* \(96, 96\)"
    ):
        ck.cholesky_cyclic(a_cyc, block=8, n=70, mesh=mesh)
    with pytest.raises(ShapeMismatchError, match="non-empty square matrix, got shape"):
        ck.cholesky_cyclic(a_cyc[:, :32], block=8, n=40, mesh=mesh)
    with pytest.raises(DTypeMismatchError, match="dtype must be float32 or float64, got int32"):
        ck.cholesky_cyclic(a_cyc.astype(jnp.int32), block=8, n=40, mesh=mesh)
    with pytest.raises(ConfigError, match="block must be a positive int"):
        ck.cholesky_cyclic(a_cyc, block=-8, n=40, mesh=mesh)
    replicated = jax.device_put(a_cyc, NamedSharding(mesh, P()))
    with pytest.raises(
        ConfigError, match=r"a_cyc must be sharded P\('rows', 'cols'\) over the 2x4"
    ):
        ck.cholesky_cyclic(replicated, block=8, n=40, mesh=mesh)
    with pytest.raises(ShapeMismatchError, match="from_cyclic: .* multiple of 64, got 48"):
        ck.from_cyclic(jnp.zeros((48, 48)), 16, mesh)
    with pytest.raises(ConfigError, match="mesh must be a jax.sharding.Mesh with axes"):
        ck.to_cyclic(jnp.zeros((8, 8)), 4, jax.make_mesh((8,), ("x",)))


def test_program_size_does_not_grow_with_block_columns():
    """The kernel is a few fori_loops over block columns: 8 or 64 block columns compile
    to (about) the same program, not one unrolled step per column."""
    mesh = default_mesh()
    sizes = {}
    for nb in (24, 64):  # both past one phase
        n = nb * 8
        spec = jax.ShapeDtypeStruct(
            (n, n), jnp.float64, sharding=NamedSharding(mesh, P("rows", "cols"))
        )
        text = ck._factor_fn(n, n, 8, mesh).lower(spec).as_text()
        sizes[nb] = len(text)
    assert sizes[64] < 1.2 * sizes[24], sizes


@pytest.mark.parametrize("shape", [(2, 4), (1, 8)])
def test_cyclic_source_reads_what_to_cyclic_makes(shape):
    from jaxwren.sharding.cyclic import CyclicSource
    from jaxwren.sharding.tiles import ArraySource, start_tile

    mesh, n, b = mesh_of(shape), 37, 4
    x = np.random.default_rng(2).standard_normal((n, n))
    src = CyclicSource(ArraySource(x), b, mesh)
    n_pad = ck.padded_size(n, b, mesh)
    assert src.shape == (n_pad, n_pad)
    tile = start_tile(src, (0, n_pad, 0, n_pad), NamedSharding(mesh, P("rows", "cols"))).result()
    np.testing.assert_array_equal(
        np.asarray(tile), np.asarray(ck.to_cyclic(jnp.asarray(x), b, mesh))
    )
    part = np.empty((5, 7))  # any region, not only a device's shard
    src.read_region_into_async(3, 8, 10, 17, part).result()
    np.testing.assert_array_equal(
        part, np.asarray(ck.to_cyclic(jnp.asarray(x), b, mesh))[3:8, 10:17]
    )


def test_natural_from_cyclic_ignores_a_buffer_of_another_dtype():
    from jaxwren.sharding.cyclic import natural_from_cyclic

    mesh, n, b = default_mesh(), 40, 4
    x = np.random.default_rng(3).standard_normal((n, n))
    x_cyc = ck.to_cyclic(jnp.asarray(x), b, mesh)
    n_pad = x_cyc.shape[0]
    wrong = np.zeros((n_pad, n_pad), np.float32)  # would silently truncate float64
    for host in (False, True):
        got = natural_from_cyclic(x_cyc, b, mesh, n, buffer=wrong, host=host)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(np.asarray(got), x)
    assert not wrong.any()
