"""map_blocks against a numpy loop over the block indices: stores, ragged blocks (fn sees
their true shapes), block_idx, alignment (the notebook's distance function), dtypes, an
existing out's block shape, one compile per block shape (run reports), and every error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxwren as jw
from jaxwren.linalg.distances import pairwise_sq_distances
from jaxwren.linalg.map_blocks import map_blocks
from tests.helpers import mem, rand, run_python, tolerance


def numpy_map(fn, shape, block, *arrays):
    """The reference: a loop over the output's blocks, as pwex.map over block_idxs."""
    out = np.zeros(shape)
    for i in range(-(-shape[0] // block[0])):
        for j in range(-(-shape[1] // block[1])):
            rs, cs = (
                slice(i * block[0], (i + 1) * block[0]),
                slice(j * block[1], (j + 1) * block[1]),
            )
            out[rs, cs] = fn(*(a[rs, cs] for a in arrays), (i, j))
    return out


def mix(a, b, block_idx):
    i, j = block_idx
    return a * 2 - b + 100 * i + j


@pytest.mark.parametrize("budget", [None, 100_000], ids=["default", "small"])
def test_matches_numpy_loop_on_stores(store, budget):
    a, b = rand((37, 29), seed=1), rand((37, 29), seed=2)
    A = jw.from_numpy(a, store.url("a"), (8, 7), storage=store.config)
    ref = numpy_map(lambda x, y, ij: x * 2 - y + 100 * ij[0] + ij[1], a.shape, (8, 7), a, b)
    out = map_blocks(mix, A, b, out=store.url("o"), storage=store.config,
                     memory_budget=budget)  # fmt: skip
    assert isinstance(out, jw.BigMatrix) and out.block_shape == (8, 7)
    np.testing.assert_allclose(out.numpy(), ref, **tolerance("float64"))
    got = map_blocks(mix, A, jnp.asarray(b), memory_budget=budget)  # returned, sharded
    assert isinstance(got, jax.Array) and got.shape == (37, 29)
    np.testing.assert_allclose(np.asarray(got), ref, **tolerance("float64"))


@pytest.mark.parametrize("shape", [(40, 28), (37, 29), (5, 30), (37, 3), (3, 4)])
def test_ragged_blocks_are_seen_at_their_true_shape(shape):
    seen = set()

    def fn(x, block_idx):
        seen.add(x.shape)  # recorded while tracing: once per block shape
        return x + block_idx[0] * 1000 + block_idx[1]

    a = rand(shape, seed=3)
    got = map_blocks(fn, a, block_shape=(8, 7))
    ref = numpy_map(lambda x, ij: x + ij[0] * 1000 + ij[1], shape, (8, 7), a)
    np.testing.assert_allclose(np.asarray(got), ref, **tolerance("float64"))
    rows = {8} if shape[0] % 8 == 0 else ({8, shape[0] % 8} if shape[0] > 8 else {shape[0]})
    cols = {7} if shape[1] % 7 == 0 else ({7, shape[1] % 7} if shape[1] > 7 else {shape[1]})
    assert seen == {(r, c) for r in rows for c in cols}


def test_notebook_distance_function_with_alignment():
    x, y = rand((37, 6), seed=4), rand((29, 6), seed=5)
    X = jw.from_numpy(x, mem("nb-x"), (8, 6))

    def sq_dists(xb, yb):  # the notebook's blockwise distance
        d = jnp.sum(xb * xb, 1)[:, None] - 2 * xb @ yb.T + jnp.sum(yb * yb, 1)[None, :]
        return jnp.maximum(d, 0)

    D = map_blocks(sq_dists, X, y, align=("i.", "j."), block_shape=(8, 7), out=mem("nb-d"))
    ref = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(D.numpy(), ref, **tolerance("float64"))
    np.testing.assert_allclose(D.numpy(), np.asarray(pairwise_sq_distances(X, y)),
                               **tolerance("float64"))  # fmt: skip
    # y's rows aligned with D's columns through a transposed view works the same
    Y = jw.from_numpy(y, mem("nb-y"), (7, 6))
    d2 = map_blocks(lambda xb, ytb: sq_dists(xb, ytb.T), X, Y.T, align=("i.", ".j"))
    np.testing.assert_allclose(np.asarray(d2), ref, **tolerance("float64"))


def test_output_dtype_and_block_shape_defaults():
    a = rand((20, 18), seed=6)
    A = jw.from_numpy(a, mem("dt-a"), (6, 5))
    got = map_blocks(lambda x: (x > 0).astype(jnp.int32), A, out=mem("dt-o"))
    assert got.dtype == np.int32 and got.block_shape == (6, 5)  # from the input
    np.testing.assert_array_equal(got.numpy(), (a > 0).astype(np.int32))
    f32 = map_blocks(lambda x: x.astype(jnp.float32), A)
    assert f32.dtype == np.float32
    existing = jw.BigMatrix.create(mem("dt-e"), (20, 18), (10, 9), "float64")
    assert map_blocks(lambda x: -x, A, out=existing) is existing  # its block shape
    np.testing.assert_array_equal(existing.numpy(), -a)


def double(x):
    return 2 * x


def test_each_block_shape_compiles_once():
    a = rand((53, 47), seed=7)
    A = jw.from_numpy(a, mem("cc-a"), (8, 8))
    with jw.observe() as runs:
        first = map_blocks(double, A, out=mem("cc-o"))
        again = map_blocks(double, jw.from_numpy(-a, mem("cc-b"), (8, 8)), out=mem("cc-o2"))
    np.testing.assert_array_equal(first.numpy(), 2 * a)
    np.testing.assert_array_equal(again.numpy(), -2 * a)
    assert 1 <= runs[0].compiles <= 4, runs[0]  # interior, right, bottom, corner
    assert runs[1].compiles == 0, runs[1]


def test_existing_out_url_maps_its_own_blocks(store):
    a, b = rand((37, 29), seed=8), rand((37, 29), seed=9)
    A = jw.from_numpy(a, store.url("a"), (8, 7), storage=store.config)
    url = store.url("o")
    jw.BigMatrix.create(url, (37, 29), (10, 9), "float64", storage=store.config)
    ref = numpy_map(lambda x, y, ij: x * 2 - y + 100 * ij[0] + ij[1], a.shape, (10, 9), a, b)
    with jw.observe() as runs:
        got = map_blocks(mix, A, b, out=url, storage=store.config)
    assert got.block_shape == (10, 9)
    np.testing.assert_allclose(got.numpy(), ref, **tolerance("float64"))
    # 2 interior tiles (2 x 4 blocks each), one right column, one bottom row, the corner
    assert (runs[0].steps_run, runs[0].steps_skipped) == (5, 0), runs[0]
    assert runs[0].bytes_written == a.nbytes and runs[0].bytes_read > 0
    # a user function cannot be identified: the same call computes again, never reuses
    with jw.observe() as runs:
        again = map_blocks(mix, A, b + 1, out=url, storage=store.config)
    assert (runs[0].steps_run, runs[0].steps_skipped, runs[0].state) == (5, 0, "fresh")
    np.testing.assert_allclose(again.numpy(), ref - 1, **tolerance("float64"))
    out = map_blocks(mix, A, b, out=url, storage=store.config)  # the public function too
    np.testing.assert_allclose(out.numpy(), ref, **tolerance("float64"))
    with pytest.raises(jw.ShapeMismatchError, match=r"block_shape=\(8, 7\) differs from the "
                       r"block shape \(10, 9\) of out"):  # fmt: skip
        map_blocks(mix, A, b, out=url, block_shape=(8, 7), storage=store.config)
    np.testing.assert_allclose(out.numpy(), ref, **tolerance("float64"))  # left as it was


_NO_X64 = """
import numpy as np
import jax
import jaxwren as jw
assert not jax.config.jax_enable_x64
for dtype in ("float64", "int64"):
    for call in (lambda: jw.map_blocks(lambda x: x, np.ones((4, 4), dtype)),
                 lambda: jw.map_blocks(lambda x, y: y, np.ones((4, 4), "float32"),
                                       np.ones((4, 4), dtype), out="memory://never")):
        try:
            call()
        except jw.DTypeMismatchError as e:
            assert "jax_enable_x64" in str(e) and dtype in str(e), str(e)
        else:
            raise SystemExit(f"{dtype}: no DTypeMismatchError")
    try:
        jw.BigMatrix.open("memory://never")
    except jw.MatrixNotFoundError:
        pass
    else:
        raise SystemExit("an out was created")
print("refused")
"""


def test_64_bit_inputs_without_x64_are_refused():
    # a subprocess: tests/conftest.py turns x64 on in this one, and no test changes it
    proc = run_python(_NO_X64, drop=("JAX_ENABLE_X64",))
    assert proc.returncode == 0 and "refused" in proc.stdout, proc.stderr[-3000:]


def test_errors_before_anything_is_written():
    a = rand((6, 4))
    A = jw.from_numpy(a, mem("e-a"), (2, 2))
    never = mem("e-never")
    with pytest.raises(jw.ConfigError, match="pass at least one input matrix"):
        map_blocks(double)
    with pytest.raises(jw.ConfigError, match=r"align must give one 2-letter string per input"):
        map_blocks(double, A, align=("ij", "ij"))
    with pytest.raises(jw.ConfigError, match=r"align must give .* got 'ii'"):
        map_blocks(double, A, align="ii")
    with pytest.raises(jw.ShapeMismatchError, match=r"must agree on one output extent along "
                       r"rows \('i'\), got \[5, 6\]"):  # fmt: skip
        map_blocks(lambda x, y: x + y, A, np.ones((5, 4)), out=never)
    with pytest.raises(jw.ShapeMismatchError, match=r"along columns \('j'\), got none"):
        map_blocks(double, A, align="i.")
    with pytest.raises(jw.ShapeMismatchError, match=r"fn must return a block of the output "
                       r"block's shape \(2, 2\).*got \(2,\)"):  # fmt: skip
        map_blocks(lambda x: x.sum(0), A, out=never)
    with pytest.raises(jw.ConfigError, match=r"fn could not be traced on blocks of shapes "
                       r"\[\(2, 2\)\]: TypeError"):  # fmt: skip
        map_blocks(lambda x: x + "s", A, out=never)
    with pytest.raises(jw.MemoryBudgetError, match=r"smallest plan .* needs .* but "
                       r"memory_budget is 100 bytes"):  # fmt: skip
        map_blocks(double, A, out=never, memory_budget=100)
    with pytest.raises(jw.OutputConflictError, match=r"out \(memory://e-a-\d+\) is input #0"):
        map_blocks(double, A, out=A)
    with pytest.raises(jw.ConfigError, match="block_shape=.* must be two positive ints"):
        map_blocks(double, A, out=never, block_shape=(0, 2))
    bad = jw.BigMatrix.create(mem("e-bad"), (6, 5), (2, 2), "float64")
    with pytest.raises(jw.ShapeMismatchError, match=r"must have shape \(6, 4\)"):
        map_blocks(double, A, out=bad)
    with pytest.raises(jw.ShapeMismatchError, match="non-empty 2-D matrix"):
        map_blocks(double, np.ones((0, 3)))
    with pytest.raises(jw.MatrixNotFoundError):
        jw.BigMatrix.open(never)  # nothing was created
    assert bad.block_idxs_exist == set()


def test_explicit_mesh_result_is_on_the_callers_mesh():
    mesh = jax.make_mesh((2, 4), ("rows", "cols"))  # Explicit axes
    a = rand((24, 16), seed=10)
    got = map_blocks(mix, a, a, block_shape=(5, 3), mesh=mesh)
    assert got.sharding.mesh == mesh
    ref = numpy_map(lambda x, y, ij: x * 2 - y + 100 * ij[0] + ij[1], a.shape, (5, 3), a, a)
    np.testing.assert_allclose(np.asarray(got), ref, **tolerance("float64"))
