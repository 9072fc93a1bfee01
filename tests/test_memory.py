"""The engine's memory accounting: a footprint's buffers projected by the platform's rules,
and the reports that show each candidate's projection."""

from __future__ import annotations

import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxwren as jw
from jaxwren.engine.memory import Buffer, Footprint, projected
from tests.helpers import mem, rand

MESH = jw.default_mesh()
TILE = (8, 8)  # float64: 512 bytes a copy


def _buffer(spec: P) -> Buffer:
    return Buffer(TILE, np.float64, NamedSharding(MESH, spec))


def test_a_buffer_counts_one_copy_per_device_that_holds_it():
    assert _buffer(P("rows", "cols")).on_devices == 512
    assert _buffer(P()).on_devices == 512 * MESH.size
    assert _buffer(P("rows", None)).on_devices == 512 * MESH.shape["cols"]
    assert Buffer(TILE, np.float32).on_devices == 256  # no sharding: one copy


@pytest.mark.parametrize("platform", ["cpu", "accelerator"])
def test_reads_in_flight_replicas_and_staging_follow_the_platform(platform, monkeypatch):
    monkeypatch.setenv("JAXWREN_PLATFORM", platform)
    replicated = Footprint(reads=(_buffer(P()),))
    got = [projected(replicated, MESH, pf, stored=False) for pf in (0, 2)]
    if platform == "cpu":  # replicas adopt one host buffer, nothing is staged
        assert got == [512, 3 * 512]
    else:  # one copy per device, and the prefetched reads wait in host buffers too
        assert got == [512 * MESH.size, 3 * 512 * MESH.size + 2 * 512]


def test_writes_are_counted_twice_when_written_behind_and_state_once():
    fp = Footprint(writes=(_buffer(P("rows", "cols")),), accumulators=(_buffer(P()),),
                   held=(Buffer((3, 5), np.int32),), extra=7)  # fmt: skip
    state = 512 * MESH.size + 60 + 7
    assert projected(fp, MESH, 0, stored=False) == 512 + state
    assert projected(fp, MESH, 0, stored=True) == 2 * 512 + state
    assert projected(fp, MESH, 3, stored=True) == 2 * 512 + state  # no reads: no prefetch


def test_the_report_shows_each_candidates_projection_and_the_choice():
    a = jw.from_numpy(rand((96, 80)), mem("mem-a"), (16, 16))
    returned = jw.explain(jw.matmul, a, a.T, memory_budget="64MiB", prefetch=0)
    stored = jw.explain(jw.matmul, a, a.T, mem("mem-c"), memory_budget="64MiB", prefetch=0)
    by_tiling = {c.tiling: c.projected_bytes for c in returned.candidates}
    assert by_tiling[returned.tiling] == returned.projected_bytes
    assert all(p > 0 for p in by_tiling.values()) and len(by_tiling) > 1
    for c in stored.candidates:  # the same tiling stored also holds its tile written behind
        if c.tiling in by_tiling:
            assert c.projected_bytes > by_tiling[c.tiling]


def test_one_refusal_names_the_smallest_workable_budget():
    a = rand((96, 80))
    report = jw.explain(jw.matmul, a, a.T, mem("mem-c2"), memory_budget="64MiB", prefetch=0)
    smallest = min(c.projected_bytes for c in report.candidates)
    with pytest.raises(jw.MemoryBudgetError, match=f"smallest workable budget is .*{smallest} "):
        jw.matmul(a, a.T, mem("mem-c3"), memory_budget=smallest - 1)
    with pytest.raises(jw.MatrixNotFoundError):
        jw.BigMatrix.open(mem("mem-c3"))  # refused before anything was created
    c = jw.matmul(a, a.T, mem("mem-c3"), memory_budget=smallest, prefetch=0)
    np.testing.assert_allclose(c.numpy(), a @ a.T, rtol=1e-10)
