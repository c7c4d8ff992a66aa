"""The Cassandra plan and rate limiter without servers: chunk ids, window order, exact read groups."""

from __future__ import annotations

from datetime import date

import pytest

from tenant_migration.cassandra import plan
from tenant_migration.cassandra.ratelimit import TokenBucket
from tenant_migration.tenant_map import load_tenant_map

TMAP = load_tenant_map()
DP = TMAP.cassandra_tables["datapoints"]
LV = TMAP.cassandra_tables["latest_values"]
TODAY = date(2026, 3, 10)


def _bases(devices: int, props: int) -> list[tuple[int, int]]:
    return [(d, d * 100 + p) for d in range(-2, devices - 2) for p in range(props)]


@pytest.mark.parametrize(
    ("days", "hot", "width", "expected"),
    [
        pytest.param(4, 2, 7, [2, 2], id="short window: hot pair then the rest"),
        pytest.param(20, 2, 7, [2, 7, 7, 4], id="long window: hot, then weeks, remainder last"),
        pytest.param(1, 2, 7, [1], id="one day"),
        pytest.param(0, 2, 7, [], id="no day"),
    ],
)
def test_windows_put_the_newest_days_first(days: int, hot: int, width: int, expected: list[int]) -> None:
    wins = plan.split_windows(plan.window_days(TODAY, days), hot, width)
    assert [len(w) for w in wins] == expected
    flat = [d for w in wins for d in w]
    assert flat == sorted(flat, reverse=True)


def test_chunks_have_stable_ids_newest_window_first_and_cover_every_partition() -> None:
    opts = plan.PlanOptions(days=5, devices_per_chunk=3, hot_days=2, window_days=7)
    windows = plan.split_windows(plan.window_days(TODAY, 5), 2, 7)
    bases = _bases(7, 2)
    chunks = plan.plan_table(bases, DP, windows, opts)
    again = plan.plan_table(bases, DP, windows, opts)
    assert [c.chunk_id for c in chunks] == [c.chunk_id for c in again]
    assert chunks[0].chunk_id == "cql:datapoints:0000" and chunks[-1].chunk_id == "cql:datapoints:0005"
    assert [c.bounds["window"] for c in chunks] == [0, 0, 0, 1, 1, 1]
    assert chunks[0].bounds["days"] == ["2026-03-10", "2026-03-09"]
    covered = [p for c in chunks for p in plan.chunk_partitions(c.bounds, DP.partition_key, "day")]
    expected = {(d, p, day) for d, p in bases for day in plan.window_days(TODAY, 5)}
    assert len(covered) == len(expected) and set(covered) == expected


def test_read_groups_are_exact_cartesian_products() -> None:
    bounds = {"bases": [[1, 10], [1, 11], [2, 20]], "days": ["2026-03-10", "2026-03-09"]}
    groups = plan.read_groups(bounds, ("device_id", "property_id", "day"), "day", in_limit=64)
    assert [g.values[0] for g in groups] == [[1], [2]]  # one read per device, never device x foreign property
    assert groups[0].values[1] == [10, 11]
    parts = {p for g in groups for p in g.partitions()}
    assert (2, 10, date(2026, 3, 10)) not in parts and len(parts) == 6


def test_in_limit_splits_large_in_lists() -> None:
    bounds = {"bases": [[d] for d in range(10)], "days": []}
    groups = plan.read_groups(bounds, ("device_id",), None, in_limit=4)
    assert [len(g.values[0]) for g in groups] == [4, 4, 2]


def test_copy_order_puts_recent_windows_of_all_tables_first() -> None:
    windows = plan.split_windows(plan.window_days(TODAY, 4), 2, 7)
    chunks = plan.plan_table(_bases(2, 1), DP, windows, plan.PlanOptions(devices_per_chunk=8))
    chunks += plan.plan_table([(0,), (1,)], LV, windows, plan.PlanOptions(devices_per_chunk=8))
    ordered = plan.copy_order(list(reversed(chunks)))
    assert [c.bounds["window"] for c in ordered] == [0, 0, 1]


def test_table_window_is_capped_by_retention_and_table_ttl() -> None:
    opts = plan.PlanOptions(days=365)
    assert plan.table_window(DP, TMAP, opts, 0) == TMAP.retention_days + 1
    assert plan.table_window(DP, TMAP, opts, 30 * 86_400) == 31
    assert plan.table_window(DP, TMAP, plan.PlanOptions(days=365, honour_table_ttl=False), 30 * 86_400) == 91


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


@pytest.mark.parametrize(
    ("rate", "takes", "slept"),
    [
        pytest.param(100.0, [50, 50], 0.0, id="within the burst: no wait"),
        pytest.param(100.0, [100, 100], 1.0, id="second burst waits a second"),
        pytest.param(100.0, [300], 2.0, id="an oversized page waits off its deficit"),
        pytest.param(None, [10**9], 0.0, id="no limit"),
    ],
)
def test_token_bucket(rate: float | None, takes: list[int], slept: float) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate, clock=clock, sleep=clock.sleep)
    for n in takes:
        bucket.acquire(n)
    assert sum(clock.slept) == pytest.approx(slept)


def test_token_bucket_sustained_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000.0, clock=clock, sleep=clock.sleep)
    for _ in range(100):
        bucket.acquire(100)
    # 10 000 tokens at 1000/s with a 1000 burst: 9 s of waiting.
    assert clock.now == pytest.approx(9.0)
