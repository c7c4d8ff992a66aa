"""When the gates read the target by one scan instead of a look-up per planned partition
(``fingerprint._scan_target``): always for whole chunks (up to ``SCAN_MAX_PARTITIONS``), and for a
few recent days only while the plan holds at most ``RECENT_SCAN_FACTOR`` partitions per recent one.
The scan itself is faked at the seam; what is tested is the choice."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from tenant_migration.cassandra import fingerprint
from tenant_migration.cassandra.copy import CopyOptions, TableShape

SHAPE = TableShape("telemetry", "datapoints", ("device_id", "property_id", "day"), ("ts",), ("value",))
TODAY = date(2026, 11, 26)


def _reads(n: int) -> list[Any]:
    return [fingerprint._Read([], {(i, i, TODAY) for i in range(n)})]


@pytest.fixture
def scanned(monkeypatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(fingerprint, "scan_prints",
                        lambda session, shape, wanted, opts, day_column=None, days=None:
                        calls.append((len(wanted), day_column, days)) or {})
    return calls


@pytest.mark.parametrize(("planned_total", "scans"), [
    pytest.param(300, True, id="3 days of history per recent day: scan"),
    pytest.param(1200, True, id="12 per recent: still a scan"),
    pytest.param(1201, False, id="more than 12 per recent: look-ups"),
    pytest.param(9000, False, id="90 days of retention: look-ups"),
])
def test_recent_days_scan_only_while_the_plan_is_short(scanned, planned_total: int, scans: bool) -> None:
    out = fingerprint._scan_target(None, SHAPE, _reads(100), CopyOptions(), "day", [TODAY], planned_total)
    assert (out is not None) is scans
    assert scanned == ([(100, "day", [TODAY])] if scans else [])


def test_whole_chunks_are_scanned_up_to_the_limit(scanned, monkeypatch) -> None:
    assert fingerprint._scan_target(None, SHAPE, _reads(100), CopyOptions(), planned_total=10**9) is not None
    assert scanned == [(100, None, None)]
    monkeypatch.setattr(fingerprint, "SCAN_MAX_PARTITIONS", 99)
    assert fingerprint._scan_target(None, SHAPE, _reads(100), CopyOptions()) is None
    assert len(scanned) == 1


def test_a_day_filtered_scan_statement_reads_the_bound_days_only() -> None:
    q = fingerprint.aggregate_statement(SHAPE, whole_table=True, day_column="day")
    assert q.endswith('WHERE "day" IN ? GROUP BY "device_id", "property_id", "day" ALLOW FILTERING')
    assert "mask_hash((\"ts\", \"value\", WRITETIME(\"value\")), 'SHA-256')" in q
    with pytest.raises(ValueError, match="not a spelling of SHA-256"):
        fingerprint.aggregate_statement(SHAPE, algorithm="CRC32")


def test_spellings_of_sha256_are_distinct_and_each_read_keeps_to_its_own() -> None:
    """Each spelling is its own MessageDigest on a node (the map is keyed by the name's bytes): the
    scan, a read's requests in flight and the re-checks beside it must never share one."""
    spellings = fingerprint.SHA256
    assert len(spellings) == len(set(spellings)) == 25 and spellings[0] == "SHA-256"
    assert all(s.replace("-", "").upper() == "SHA256" or s.upper().removeprefix("OID.") == "2.16.840.1.101.3.4.2.1"
               for s in spellings)
    scan, read, recheck = {fingerprint.SCAN_SPELLING}, set(fingerprint.READ_SPELLINGS), set(fingerprint.RECHECK_SPELLINGS)
    assert not (scan & read or scan & recheck or read & recheck)
    assert scan | read | recheck == set(spellings)
    assert len(read) >= CopyOptions().read_concurrency  # a read's default concurrency fits its spellings


def test_probe_reads_unite_one_partitions_day_windows_without_adding_any() -> None:
    """``merge_exact``: a device's groups of several day windows become one read (same
    partitions, fewer round trips); groups differing in two columns, or a union above the limit,
    stay apart."""
    from itertools import product

    from tenant_migration.cassandra.plan import ReadGroup

    d = [date(2026, 11, i) for i in range(1, 29)]
    groups = [ReadGroup(([1], [10, 11], d[0:7])), ReadGroup(([1], [10, 11], d[7:14])),
              ReadGroup(([1], [10, 11], d[14:21])), ReadGroup(([2], [20], d[0:7])), ReadGroup(([3], [30, 31], d[7:14]))]
    merged = fingerprint.merge_exact(groups, max_partitions=32)
    assert [g.values for g in merged] == [([1], [10, 11], d[0:14]), ([1], [10, 11], d[14:21]),
                                          ([2], [20], d[0:7]), ([3], [30, 31], d[7:14])]
    assert {p for g in merged for p in g.partitions()} == {p for g in groups for p in product(*g.values)}
    assert len(fingerprint.merge_exact(groups, max_partitions=512)) == 3
