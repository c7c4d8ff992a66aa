"""Progress lines (``progress``): what they say, how often, and that a failed reading is said and
never fails the step. The readings from the real ledger are exercised in
``tests/integration/test_progress_ledger.py``."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from tenant_migration import progress
from tenant_migration.cutover.drain import DrainPass, DrainWatch, Seen
from tenant_migration.flows.set import RecopyProgress
from tenant_migration.ledger import Chunk


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_durations_read_like_a_person_would_say_them() -> None:
    assert [progress.duration(s) for s in (0, 42.4, 185, 7620, -3)] == ["0 s", "42 s", "3 min 05 s", "2 h 07 min", "0 s"]


def test_rate_is_the_current_one_and_a_stall_shows_at_once() -> None:
    clock = _Clock()
    m = progress.Meter(window=30, clock=clock)
    assert m.rates() == (None, None) and m.eta(10) is None
    for i in range(4):  # 100 units and 1,000 rows per 10 s
        m.add(100 * i, 1000 * i)
        clock.t += 10
    clock.t -= 10
    assert m.rates() == (10.0, 100.0)
    assert m.eta(250) == 25.0 and m.eta(0) == 0.0
    for _ in range(4):  # nothing moves for 40 s: the window forgets the good times
        clock.t += 10
        m.add(300, 3000)
    assert m.rates() == (0.0, 0.0) and m.eta(1) is None


def test_a_line_says_done_of_planned_rate_and_eta() -> None:
    clock = _Clock()
    m = progress.Meter(clock=clock)
    m.add(0, 0)
    clock.t += 10
    m.add(120, 5210)
    text = progress.line("copy_cassandra_batch", progress.Reading(120, 400, "partitions", 5210, "batch: 3/10 chunks done"), m)
    assert text == ("progress copy_cassandra_batch: 120/400 partitions (30 %), 5,210 rows; 12.0 partitions/s, "
                    "521 rows/s; ETA 23 s; 10 s in | batch: 3/10 chunks done")
    clock.t += 60
    m.add(120, 5210)
    m.add(120, 5210)
    stalled = progress.line("x", progress.Reading(120, 400, "partitions"), m)
    assert "0.0 partitions/s; ETA not known (no progress in the last 1 min 00 s)" in stalled
    assert progress.line("y", progress.Reading(7, None, "passes"), progress.Meter()).startswith(
        "progress y: 7 passes; rate not known yet; 0 s in")


def test_a_ticker_logs_at_its_interval_and_once_at_the_end(caplog) -> None:
    caplog.set_level(logging.INFO, logger="tenant_migration.progress")
    tally = progress.Tally(planned=50, unit="hot partitions read")

    def work() -> None:
        for _ in range(50):
            tally.add(1, rows=3)
            time.sleep(0.01)

    with progress.Ticker("warm_up", tally.reading, every=0.1) as t:
        work()
    lines = [r.getMessage() for r in caplog.records if r.name == "tenant_migration.progress"]
    assert len(lines) == t.lines >= 3, lines
    assert lines[-1].startswith("progress warm_up: 50/50 hot partitions read (100 %), 150 rows;"), lines[-1]
    assert not [th for th in threading.enumerate() if th.name == "progress:warm_up"]


def test_a_short_step_stays_quiet_and_reads_nothing(caplog) -> None:
    caplog.set_level(logging.INFO, logger="tenant_migration.progress")
    reads = []
    with progress.Ticker("catch_up_postgres", lambda: reads.append(1) or progress.Reading(0, 1, "WAL bytes"), every=10):
        pass
    assert not reads and not caplog.records


def test_a_failed_reading_is_said_and_the_step_goes_on(caplog) -> None:
    caplog.set_level(logging.INFO, logger="tenant_migration.progress")

    def broken() -> progress.Reading:
        raise ConnectionRefusedError("ledger down")

    closed = []
    with progress.Ticker("copy_postgres_batch", broken, every=0.05, close=lambda: closed.append(1)):
        time.sleep(0.2)
    assert "progress copy_postgres_batch: not read (ConnectionRefusedError: ledger down)" in caplog.text
    assert closed == [1]


def test_no_interval_longer_than_the_promise() -> None:
    with pytest.raises(ValueError, match="must be in"):
        progress.Ticker("x", progress.Tally().reading, every=30)


def test_planned_work_comes_from_the_chunks_bounds() -> None:
    pg = Chunk("pg:devices:0001", "postgres", "devices", {"planned_rows": 500})
    cql = Chunk("cql:datapoints:0001", "cassandra", "datapoints", {"bases": [[1, 2], [1, 3], [2, 2]], "days": ["2026-12-06", "2026-12-07"]})
    flat = Chunk("cql:profiles:0001", "cassandra", "profiles", {"bases": [[1], [2]]})
    assert [progress.planned_units(c) for c in (pg, cql, flat)] == [500.0, 6.0, 2.0]


def test_the_drain_counts_to_its_earliest_end() -> None:
    clock = _Clock()
    w = DrainWatch(min_seconds=60, quiet_seconds=20, max_seconds=600, clock=clock)
    assert w.read().note == "first pass running"
    clock.t += 50
    w.on_pass(DrainPass(3, 50.0, Seen(rows_copied=40, late_cells=7, changes=2), new_writes=True))
    r = w.read()
    assert (r.done, r.planned, r.rows) == (50.0, 70.0, 40)  # 20 s quiet after the new write at 50 s
    assert "pass 3: 7 Cassandra cells on the shared side after the flip, 2 relational changes; quiet for 0 s" in r.note
    clock.t += 15
    assert w.read().done == 65.0


def test_a_recopy_pass_is_planned_from_what_the_copy_found_in_its_buckets() -> None:
    from datetime import date

    class Limiter:
        taken = 0.0

    lim = Limiter()
    watch = RecopyProgress(lim, {"2026-12-07": 300.0, "2026-12-06": 100.0, "2026-11-01": 999.0, "": 5.0}, 5)
    assert watch.read().planned is None
    lim.taken = 40.0
    watch.pass_started(2, [date(2026, 12, 7), date(2026, 12, 6)])
    lim.taken = 240.0
    r = watch.read()
    assert (r.done, r.planned) == (240.0, 445.0)
    assert r.note.startswith("pass 2 of at most 5 over buckets 2026-12-06 .. 2026-12-07")
