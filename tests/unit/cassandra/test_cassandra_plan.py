"""The Cassandra plan and rate limiter without servers: chunk ids, window order, exact read groups."""

from __future__ import annotations

from datetime import date

import pytest

from tenant_migration.cassandra import plan
from tenant_migration.cassandra.ratelimit import TokenBucket
from tenant_migration.sample import SAMPLE_MAP
from tenant_migration.tenant_map import load_tenant_map

TMAP = load_tenant_map(SAMPLE_MAP)
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


class _Rows:
    """The relational rows' seam of ``tenant_bases``: (device, property) rows; a query of the
    devices table gets their devices."""

    def __init__(self, rows: list[tuple]) -> None:
        self.rows = rows
        self.last: list[tuple] = []

    def execute(self, query, params=None):
        devices = 'FROM "platform"."devices" AS t ' in query.as_string(None)
        self.last = sorted({(r[0],) for r in self.rows}) if devices else sorted(self.rows)
        return self

    def fetchall(self) -> list[tuple]:
        return list(self.last)


def test_a_table_without_bases_gets_one_empty_chunk_over_every_planned_day() -> None:
    wins = plan.split_windows(plan.window_days(TODAY, 5), 2, 7)
    chunks = plan.plan_table([], DP, wins, plan.PlanOptions(days=5))
    assert [(c.chunk_id, c.bounds["bases"], len(c.bounds["days"])) for c in chunks] == [("cql:datapoints:0000", [], 5)]
    assert plan.planned_count(chunks[0].bounds, "day") == 0 and plan.read_groups(chunks[0].bounds, DP.partition_key, "day") == []
    assert [c.bounds["days"] for c in plan.plan_table([], LV, wins, plan.PlanOptions())] == [[]]


def test_the_default_window_is_the_retention_window() -> None:
    assert plan.table_window(DP, TMAP, plan.PlanOptions(), 0) == TMAP.retention_days + 1
    assert plan.table_window(DP, TMAP, plan.PlanOptions(days=4), 0) == 4
    assert plan.table_window(DP, TMAP, plan.PlanOptions(), 30 * 86_400) == 31  # capped by a default TTL


def test_late_chunks_plan_only_new_bases_continue_the_numbering_and_cover_the_plan_days() -> None:
    opts = plan.PlanOptions(days=5, devices_per_chunk=2)
    wins = plan.split_windows(plan.window_days(TODAY, 5), 2, 7)
    planned = plan.plan_table(_bases(3, 2), DP, wins, opts)
    planned += plan.plan_table([(b[0],) for b in _bases(3, 1)], LV, wins, opts)
    planned += plan.plan_table([], TMAP.cassandra_tables["connection_events"], wins, opts)
    rows = [*_bases(3, 2), (50, 5000), (50, 5001)]  # a device born after the detach, two properties
    recent = [TODAY + date.resolution]  # the run crossed midnight
    late = plan.plan_late(_Rows(rows), TMAP, 7, planned, recent, opts)
    dp = [c for c in late if c.table_name == "datapoints"]
    assert all(c.bounds["late"] for c in late)
    assert {tuple(b) for c in dp for b in c.bounds["bases"]} == {(50, 5000), (50, 5001)}
    assert dp[0].chunk_id == f"cql:datapoints:{len([c for c in planned if c.table_name == 'datapoints']):04d}"
    assert sorted({d for c in dp for d in c.bounds["days"]}) == sorted(
        {d for c in planned if c.table_name == "datapoints" for d in c.bounds["days"]} | {recent[0].isoformat()})
    # The same rows asked again once the late chunks are in the plan: nothing new.
    assert plan.plan_late(_Rows(rows), TMAP, 7, planned + late, recent, opts) == []
    assert {c.table_name for c in late} == {"datapoints", "latest_values", "connection_events"}
    assert plan.unplanned_bases(_Rows(rows), TMAP, 7, planned) == {
        "datapoints": [(50, 5000), (50, 5001)], "latest_values": [(50,)],
        "connection_events": [(-2,), (-1,), (0,), (50,)]}  # the empty table's chunk planned none of them
