"""The runner's own contracts, on hand-made plans."""

from __future__ import annotations

import threading
import time

import jax.numpy as jnp
import pytest

from jaxwren.engine.plan import Plan, Step, Write
from jaxwren.engine.runner import execute


def test_warm_runs_on_another_thread_before_its_kernel():
    seen: dict[str, object] = {}
    started = threading.Event()

    def warm() -> None:
        seen["thread"] = threading.current_thread().name
        time.sleep(0.2)  # a slow compile: the kernel must wait for it
        started.set()

    def kernel(carry: object) -> tuple[None, tuple]:
        seen["warm_done_first"] = started.is_set()
        return None, (jnp.ones(3),)

    plan = Plan("t", [Step((), kernel, (Write(None),), warm=warm)], None, 0, 0)
    (out,), stats = execute(plan, budget=1 << 20)
    assert seen["warm_done_first"] is True
    assert seen["thread"] != threading.current_thread().name
    assert float(out.sum()) == 3.0 and stats.steps_run == 1


def test_a_failing_warm_is_raised_before_its_kernel_runs():
    ran = []

    def warm() -> None:
        raise RuntimeError("compile failed")

    plan = Plan("t", [Step((), lambda c: ran.append(1) or (None, ()), warm=warm)], None, 0, 0)
    with pytest.raises(RuntimeError, match="compile failed"):
        execute(plan, budget=1 << 20)
    assert not ran


@pytest.mark.parametrize(
    "spec, origin", [("rows", (0, 0)), ("rows", (40, 16)), ("both", (8, 0)), ("aligned", (0, 0))]
)
def test_output_tiles_whose_shards_cut_blocks_are_written_once_whole(monkeypatch, spec, origin):
    """A tile whose shards cut stored blocks is assembled and written as one piece (each
    part would be a read-modify-write of the chunk); block-aligned shards stay per shard.
    Either way the stored values are the tile's, ragged edges included."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxwren as jw
    from jaxwren.storage.bigmatrix import BigMatrix
    from tests.helpers import mem

    mesh = jw.default_mesh()
    target = BigMatrix.create(mem(f"cut-{spec}-{origin[0]}"), (90, 70), (16, 16), "float64")
    if spec == "aligned":  # 8 row shards of 16 rows = whole blocks (edge: the last rows)
        x = np.arange(128 * 16, dtype=np.float64).reshape(128, 16)
        sharding, size = NamedSharding(mesh, P(("rows", "cols"), None)), (90, 16)
    else:
        x = np.arange(48 * 40, dtype=np.float64).reshape(48, 40)
        parts = P(("rows", "cols"), None) if spec == "rows" else P("rows", "cols")
        sharding, size = NamedSharding(mesh, parts), (45, 38)
    tile = jax.device_put(x, sharding)
    calls: list[tuple] = []
    orig = BigMatrix.write_region_async

    def spy(self, r0, c0, data, **kw):
        calls.append((r0, c0, data.shape))
        return orig(self, r0, c0, data, **kw)

    monkeypatch.setattr(BigMatrix, "write_region_async", spy)
    target.begin_write()
    plan = Plan("t", [Step((), lambda c: (None, (tile,)), (Write(target, origin, size),))],
                None, 0, 0)  # fmt: skip
    execute(plan, budget=1 << 30)
    got = target.numpy()
    want = np.zeros((90, 70))
    want[origin[0] : origin[0] + size[0], origin[1] : origin[1] + size[1]] = x[: size[0], : size[1]]
    np.testing.assert_array_equal(got, want)
    assert len(calls) == (6 if spec == "aligned" else 1), calls


@pytest.mark.parametrize("origin, size", [((0, 0), (90, 70)), ((32, 32), (40, 38)),
                                          ((48, 32), (42, 38)), ((16, 48), (30, 22))])  # fmt: skip
def test_lower_writes_skip_blocks_above_the_matrix_diagonal_at_any_origin(origin, size):
    """A ``lower`` host result (e.g. a tile plan's diagonal tile) leaves the target's blocks
    wholly above the matrix's diagonal unwritten, wherever the tile sits; every block on
    or below it holds the tile's values."""
    import numpy as np

    from jaxwren.storage.bigmatrix import BigMatrix
    from tests.helpers import mem

    target = BigMatrix.create(mem(f"lower-{origin}"), (90, 70), (16, 16), "float64")
    r, c = np.meshgrid(np.arange(size[0]) + origin[0], np.arange(size[1]) + origin[1],
                       indexing="ij")  # fmt: skip
    tile = np.where(c <= r, 1.0 + r * 100 + c, 0.0)  # strictly upper part zero
    target.begin_write()
    plan = Plan("t", [Step((), lambda _c: (None, (tile.copy(),)),
                           (Write(target, origin, size, lower=True),))], None, 0, 0)  # fmt: skip
    execute(plan, budget=1 << 30)
    br = range(origin[0] // 16, -(-(origin[0] + size[0]) // 16))
    bc = range(origin[1] // 16, -(-(origin[1] + size[1]) // 16))
    below = {(i, j) for i in br for j in bc if j * 16 <= min(i * 16 + 15, 89)}
    assert target.block_idxs_exist == below
    want = np.zeros((90, 70))
    want[origin[0] : origin[0] + size[0], origin[1] : origin[1] + size[1]] = tile
    np.testing.assert_array_equal(target.numpy(), want)


@pytest.mark.parametrize("settle", [False, True])
def test_a_settled_write_is_stored_before_the_next_step_runs(settle):
    """``Write.settle``: the output is stored before the next step's kernel runs (with
    prefetch, where other outputs are written behind); without it the writer keeps one
    output queued behind the compute."""
    import numpy as np

    from jaxwren.storage.bigmatrix import BigMatrix
    from tests.helpers import mem

    target = BigMatrix.create(mem(f"settle-{settle}"), (32, 32), (16, 16), "float64")
    target.begin_write()
    seen = []

    def first(_c):
        return None, (np.full((32, 16), 7.0),)

    def second(_c):
        seen.append(target.block_idxs_exist)
        return None, (np.full((32, 16), 8.0),)

    plan = Plan("t", [Step((), first, (Write(target, (0, 0), (32, 16), settle=settle),)),
                      Step((), second, (Write(target, (0, 16), (32, 16)),))], None, 0, 0)  # fmt: skip
    execute(plan, budget=1 << 30, prefetch=1)
    assert seen == [{(0, 0), (1, 0)} if settle else set()]
    np.testing.assert_array_equal(target.numpy()[:, :16], 7.0)
    np.testing.assert_array_equal(target.numpy()[:, 16:], 8.0)
