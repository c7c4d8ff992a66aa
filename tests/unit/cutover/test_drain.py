"""The drain's length, on a fake clock: it lasts until the tenant's writes to the shared platform have
stopped for the quiet window, and fails loudly with the counts when they never stop."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tenant_migration.cutover.drain import DrainNotQuiet, Seen, until_quiet

T0_US = int(datetime(2026, 12, 6, 23, 0, tzinfo=UTC).timestamp() * 1_000_000)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


def writer_until(clock: Clock, stops_at: float, per_second: int = 10):
    """A straggler writing ``per_second`` cells to the shared platform until ``stops_at``."""
    def one_pass(n: int) -> Seen:
        written = int(min(clock.now, stops_at) * per_second)
        newest = T0_US + int(min(clock.now, stops_at) * 1_000_000) if written else None
        clock.now += 0.5  # a pass takes time
        return Seen(rows_copied=100, late_cells=written, newest_cell_us=newest)
    return one_pass


def test_a_quiet_tenant_drains_for_the_minimum_only() -> None:
    clock = Clock()
    result = until_quiet(lambda n: Seen(rows_copied=5), min_seconds=8, quiet_seconds=3, max_seconds=60,
                         poll_seconds=1, clock=clock, sleep=clock.sleep)
    assert 8 <= result.seconds < 9.5
    assert not any(p.new_writes for p in result.passes)


def test_the_drain_outlasts_its_minimum_while_a_straggler_writes() -> None:
    clock = Clock()
    result = until_quiet(writer_until(clock, stops_at=25), min_seconds=8, quiet_seconds=5, max_seconds=120,
                         poll_seconds=1, clock=clock, sleep=clock.sleep)
    assert result.seconds >= 25 + 5, "ends only after the writes stopped and the quiet window passed"
    assert result.seconds < 25 + 5 + 3
    assert result.quiet_seconds >= 5
    assert result.last.late_cells == 250
    assert result.to_dict()["newest_write"] == datetime.fromtimestamp((T0_US + 25_000_000) / 1e6, UTC).isoformat()


def test_relational_changes_keep_the_drain_going() -> None:
    clock = Clock()

    def one_pass(n: int) -> Seen:
        clock.now += 0.5
        return Seen(changes=3 if clock.now < 12 else 0)

    result = until_quiet(one_pass, min_seconds=2, quiet_seconds=4, max_seconds=60, poll_seconds=1, clock=clock,
                         sleep=clock.sleep)
    assert result.seconds >= 12 + 4 - 1.5
    assert result.to_dict()["changes"] == sum(p.seen.changes for p in result.passes) > 0


def test_a_tenant_that_never_stops_fails_loudly_with_the_count_and_newest_write() -> None:
    clock = Clock()
    with pytest.raises(DrainNotQuiet, match=r"drain_max_s 30\): \d+ Cassandra cells written there after the flip, "
                                            r"0 relational changes drained, newest write at 2026-12-06T23:00:") as exc:
        until_quiet(writer_until(clock, stops_at=10_000), min_seconds=5, quiet_seconds=5, max_seconds=30,
                    poll_seconds=1, clock=clock, sleep=clock.sleep)
    assert 30 <= exc.value.result.seconds < 32
    assert exc.value.result.last.late_cells >= 300


def test_writes_before_the_drain_began_count_as_activity_on_the_first_pass() -> None:
    clock = Clock()
    seen = Seen(late_cells=7, newest_cell_us=T0_US)  # stragglers wrote between the flip and the drain, then stopped
    result = until_quiet(lambda n: seen, min_seconds=0, quiet_seconds=3, max_seconds=60, poll_seconds=1,
                         clock=clock, sleep=clock.sleep)
    assert result.passes[0].new_writes and not any(p.new_writes for p in result.passes[1:])
    assert result.seconds >= 3
