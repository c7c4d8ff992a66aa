"""Copy task sizing: the number of mapped copy tasks follows the estimated work."""

from __future__ import annotations

import pytest

from tenant_migration import sizing
from tenant_migration.ledger import Chunk


def pg(i: int, rows: int, exact: bool = True) -> Chunk:
    return Chunk(f"pg:t:{i:04d}", "postgres", "t", {"planned_rows" if exact else "estimated_rows": rows})


def cql(i: int, bases: int, days: int) -> Chunk:
    return Chunk(f"cql:t:{i:04d}", "cassandra", "t", {"bases": [[i, b] for b in range(bases)],
                                                       "days": [f"2026-01-0{d + 1}" for d in range(days)]})


def test_estimates_grow_with_rows_and_partitions() -> None:
    assert sizing.chunk_seconds(pg(0, 100_000)) > sizing.chunk_seconds(pg(1, 1_000)) > 0
    assert sizing.chunk_seconds(pg(0, 50_000, exact=False)) == sizing.chunk_seconds(pg(1, 50_000))
    assert sizing.chunk_seconds(cql(0, 100, 4)) > sizing.chunk_seconds(cql(1, 100, 1)) > sizing.chunk_seconds(cql(2, 1, 1))
    # A table without a day bucket reads each base once.
    assert sizing.chunk_seconds(cql(0, 10, 0)) == sizing.chunk_seconds(cql(1, 10, 1))


@pytest.mark.parametrize(("total", "chunks", "max_tasks", "min_s", "expected"), [
    pytest.param(20.0, 11, 2, 60, 1, id="small tenant: one task however many chunks"),
    pytest.param(130.0, 11, 2, 60, 2, id="enough work for two tasks of a minute"),
    pytest.param(10_000.0, 11, 2, 60, 2, id="never more than max_tasks"),
    pytest.param(10_000.0, 3, 8, 60, 3, id="never more tasks than chunks"),
    pytest.param(5.0, 11, 4, 0, 4, id="0 = always max_tasks (the old behaviour)"),
    pytest.param(0.0, 0, 4, 60, 0, id="nothing to copy"),
])
def test_task_count(total: float, chunks: int, max_tasks: int, min_s: int, expected: int) -> None:
    assert sizing.task_count(total, chunks, max_tasks, min_s) == expected


def test_deal_keeps_order_and_balances_weight() -> None:
    ids = [f"c{i}" for i in range(6)]
    out = sizing.deal(ids, [10, 1, 1, 1, 1, 6], 2)
    assert [i for b in out for i in b] == ids
    assert out == [["c0"], ["c1", "c2", "c3", "c4", "c5"]]
    assert sizing.deal(ids, [1] * 6, 3) == [["c0", "c1"], ["c2", "c3"], ["c4", "c5"]]


@pytest.mark.parametrize("tasks", [1, 2, 3, 5, 6])
def test_deal_gives_every_task_at_least_one_chunk(tasks: int) -> None:
    ids = [f"c{i}" for i in range(6)]
    out = sizing.deal(ids, [100, 0, 0, 0, 0, 0], tasks)  # all the weight up front
    assert len(out) == tasks and all(out)
    assert [i for b in out for i in b] == ids


def test_size_batches_small_store_is_one_task_big_store_uses_the_slots() -> None:
    small = [pg(i, 1_400) for i in range(11)]  # the demo tenant: ~15 k rows
    assert sizing.size_batches(small, 2, 60) == [[c.chunk_id for c in small]]
    big = [pg(i, 5_000_000) for i in range(8)]  # 40 M rows: minutes of work at any rate here
    batches = sizing.size_batches(big, 2, 60)
    assert len(batches) == 2 and [len(b) for b in batches] == [4, 4]
    assert sizing.size_batches(small, 4, 0) == sizing.deal([c.chunk_id for c in small], [1] * 11, 4)
