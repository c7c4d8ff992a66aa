"""The SET and GO gates before the flip (``catch_up``, ``pre_flip``) on the real servers: they pass
on a caught-up target, and fail with evidence naming the chunk or the numbers when the target was
broken on purpose (a recent Cassandra row missing, a recent cell changed), when the change stream
is behind, or when registrations are not suspended."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import admin, copy_on_the_snapshot

from tenant_migration import ledger, steps
from tenant_migration.cassandra.catchup import recent_days
from tenant_migration.postgres import cdc
from tenant_migration.sample import SAMPLE_MAP
from tenant_migration.spec import MigrationSpec
from tenant_migration.tenant_map import load_tenant_map
from tenant_migration.validation.counts import GateFailed

pytestmark = pytest.mark.integration

TENANT = 2


@pytest.fixture
def caught_up(topo, tiny_dataset, endpoints, reports):
    """TENANT copied from the detached replica, the replica reattached, both stores caught up; a
    datapoint written today on the source before the catch-up (so the recent buckets hold data).
    Yields (spec, run_id, the recent row's key); drops the slot after."""
    from tenant_migration.sample import platform

    platform.demo_reset(topo)
    spec = MigrationSpec(tenant_id=TENANT)
    run_id = f"gate/{uuid.uuid4().hex[:8]}"
    steps.preflight(endpoints, spec, run_id)
    slot = steps.create_cdc_slot(endpoints, spec, run_id)
    try:
        copy_on_the_snapshot(endpoints, spec, run_id, slot["consistent_lsn"], gate=False)
        with endpoints.target.connect() as tconn:
            chunk = next(c for c in ledger.run_chunks(tconn, run_id, "cassandra") if c.table_name == "datapoints")
        device, prop = chunk.bounds["bases"][0]
        today = datetime.now(UTC).date()
        ts = datetime.now(UTC).replace(microsecond=0)
        with endpoints.cassandra_source.session() as src:
            src.execute("INSERT INTO telemetry.datapoints (device_id, property_id, day, ts, value, quality) "
                        "VALUES (%s, %s, %s, %s, %s, %s)", (device, prop, today, ts, 21.5, 1))
        steps.catch_up_postgres(endpoints, spec, run_id)
        steps.catch_up_cassandra(endpoints, spec, run_id)
        yield spec, run_id, (device, prop, today, ts)
    finally:
        with endpoints.cassandra_source.session() as src:
            src.execute("DELETE FROM telemetry.datapoints WHERE device_id = %s AND property_id = %s AND day = %s",
                        (device, prop, datetime.now(UTC).date()))
        steps.drop_cdc_slot(endpoints, spec, run_id, keep_for_resume=False)


def _gate_row(conn, run_id: str, gate: str):
    return conn.execute("SELECT passed, summary, evidence, report_path FROM tm_control.gates WHERE run_id = %s "
                        "AND gate = %s ORDER BY attempt DESC LIMIT 1", (run_id, gate)).fetchone()


def test_catch_up_gate_passes_on_a_caught_up_target(endpoints, caught_up, target_admin) -> None:
    spec, run_id, _ = caught_up
    out = steps.gate_catch_up(endpoints, spec, run_id)
    passed, _, evidence, report_path = _gate_row(target_admin, run_id, "catch_up")
    assert out["passed"] and passed is True and Path(report_path).exists()
    checks = {c["name"]: c for c in evidence["checks"]}
    tables = set(load_tenant_map(SAMPLE_MAP).cassandra_tables)
    assert {"lag_bytes_under_threshold", "lag_seconds_under_threshold"} < set(checks)
    assert {n.split(".", 1)[1] for n in checks if n.startswith("recent_buckets.")} == tables
    assert {n.split("__")[0] for n in checks if n.endswith("__every_row_planned")} == {f"cassandra:{t}" for t in tables}
    assert all(c["success"] for c in checks.values())
    assert checks["recent_buckets.datapoints"]["observed"].startswith("source ")


def test_catch_up_gate_scans_the_targets_recent_buckets(endpoints, caught_up, monkeypatch) -> None:
    """The target holds the tenant only, and few partitions for the plan's size: the copy found a
    few hundred holding rows in the whole retention window's plan (91 and 31 day buckets), so each
    Cassandra table is read there in one scan, day-filtered for the bucketed ones, instead of a
    look-up per recent partition (the shared source is still looked up); the gate still passes."""
    from tenant_migration.cassandra import fingerprint

    spec, run_id, _ = caught_up
    scans: list[tuple[str, str, object]] = []
    real = fingerprint.scan_prints

    def spy(session, shape, wanted, opts=None, day_column=None, days=None):
        side = "target" if session.cluster.contact_points[0] == endpoints.cassandra_target.host else "source"
        scans.append((side, shape.table, days))
        return real(session, shape, wanted, opts, day_column=day_column, days=days)
    monkeypatch.setattr(fingerprint, "scan_prints", spy)
    before = datetime.now(UTC)
    assert steps.gate_catch_up(endpoints, spec, run_id)["passed"]
    after = datetime.now(UTC)
    assert {t for _, t, _ in scans} == {"datapoints", "latest_values", "connection_events"}
    assert {side for side, _, _ in scans} == {"target"}
    # The recent buckets: from the day of the detach (less 15 minutes) to today -- one day, or two
    # when the run began shortly before midnight (UTC).
    with endpoints.target.connect() as tconn:
        _, detached = steps.detach_lsn(tconn, run_id)
    since = detached - timedelta(minutes=15)
    assert {t: d for _, t, d in scans}["datapoints"] in (recent_days(since, before), recent_days(since, after))


def test_catch_up_gate_looks_the_target_up_when_it_holds_many_partitions(endpoints, caught_up, monkeypatch) -> None:
    """Without the copy's counts (``held``) the plan's size is all the gate knows: 91 day buckets
    of mostly empty partitions per recent one, so the bucketed tables are looked up; same verdict."""
    from tenant_migration import ledger
    from tenant_migration.cassandra import fingerprint

    spec, run_id, _ = caught_up
    scans: list[str] = []
    real = fingerprint.scan_prints
    monkeypatch.setattr(fingerprint, "scan_prints", lambda s, shape, *a, **k: scans.append(shape.table) or real(s, shape, *a, **k))
    monkeypatch.setattr(ledger, "partitions_by_table", lambda conn, rid: {})
    assert steps.gate_catch_up(endpoints, spec, run_id)["passed"]
    assert scans == ["latest_values"]


@pytest.mark.parametrize("kind", [
    pytest.param("missing", id="today's row missing on the target"),
    pytest.param("changed", id="today's value changed on the target"),
])
def test_catch_up_gate_names_the_chunk_of_a_broken_recent_bucket(endpoints, caught_up, target_admin, kind) -> None:
    spec, run_id, (device, prop, day, ts) = caught_up
    with endpoints.cassandra_target.session() as dst:
        (wt,) = dst.execute("SELECT WRITETIME(value) FROM telemetry.datapoints WHERE device_id = %s AND "
                            "property_id = %s AND day = %s AND ts = %s", (device, prop, day, ts)).one()
        if kind == "missing":
            dst.execute("DELETE FROM telemetry.datapoints WHERE device_id = %s AND property_id = %s AND day = %s "
                        "AND ts = %s", (device, prop, day, ts))
        else:  # another value, written before the catch-up began: only the checksum can tell
            dst.execute("UPDATE telemetry.datapoints USING TIMESTAMP %s SET value = %s WHERE device_id = %s AND "
                        "property_id = %s AND day = %s AND ts = %s", (wt + 1, 99.0, device, prop, day, ts))
    with pytest.raises(GateFailed, match=r"recent_buckets.datapoints .*differ: cql:datapoints:") as exc:
        steps.gate_catch_up(endpoints, spec, run_id)
    passed, _, evidence, report_path = _gate_row(target_admin, run_id, "catch_up")
    assert passed is False and report_path in str(exc.value)
    failed = {c["name"]: c for c in evidence["checks"] if not c["success"]}
    assert set(failed) == {"recent_buckets.datapoints"}
    bad = failed["recent_buckets.datapoints"]["details"]["differing_units"]
    assert bad and all(b["unit"].startswith("cql:datapoints:") for b in bad)
    key = f"device_id={device}, property_id={prop}, day={day}, ts={ts.replace(tzinfo=None)}"  # the driver's form
    if kind == "missing":
        assert bad[0]["target_rows"] == bad[0]["source_rows"] - 1
        assert f"datapoints {key}: source " in str(exc.value) and "target '(no row)'" in str(exc.value)
    else:
        assert bad[0]["target_rows"] == bad[0]["source_rows"]
        assert f"datapoints {key}: value: source " in str(exc.value) and "target 99.0" in str(exc.value)


def test_catch_up_gate_fails_with_the_lag_when_the_stream_is_behind(topo, endpoints, caught_up, target_admin) -> None:
    """60,000 changes of the tenant committed on the primary after the catch-up, and a stream
    allowed one second: the gate's own refresh cannot apply them, and the lag checks fail with the
    numbers (bytes and seconds behind) instead of the gate waiting or passing."""
    spec, run_id, _ = caught_up
    with admin(topo, "primary") as p:
        n = p.execute("SELECT count(*) FROM platform.devices WHERE tenant_id = %s", (TENANT,)).fetchone()[0]
        for _ in range(-(-60_000 // n)):
            p.execute("UPDATE platform.devices SET name = name WHERE tenant_id = %s", (TENANT,))
    slow = MigrationSpec(tenant_id=TENANT, catch_up_timeout_s=1, max_lag_bytes=64 * 1024, max_lag_seconds=3600)
    with pytest.raises(GateFailed, match=r"lag_bytes_under_threshold .*units unexpected: postgres:cdc") as exc:
        steps.gate_catch_up(endpoints, slow, run_id)
    lag = re.search(r"units unexpected: postgres:cdc \((\d+)\)", str(exc.value))
    assert lag and int(lag.group(1)) > 64 * 1024
    passed, _, evidence, _ = _gate_row(target_admin, run_id, "catch_up")
    failed = {c["name"]: c for c in evidence["checks"] if not c["success"]}
    assert passed is False and failed["lag_bytes_under_threshold"]["unexpected"] == ["postgres:cdc"]
    # Given the time, the same gate catches up and passes: re-running re-evaluates the data as it is.
    assert steps.gate_catch_up(endpoints, spec, run_id)["passed"]


def test_pre_flip_gate_requires_registrations_suspended(endpoints, caught_up, target_admin) -> None:
    spec, run_id, _ = caught_up
    with pytest.raises(GateFailed, match=rf"registrations of tenant {TENANT} are not suspended"):
        steps.gate_pre_flip(endpoints, spec, run_id)
    steps.suspend_registrations(endpoints, spec, run_id)
    try:
        steps.catch_up_postgres(endpoints, spec, run_id, True)
        assert steps.gate_pre_flip(endpoints, spec, run_id)["passed"]
        passed, _, _, _ = _gate_row(target_admin, run_id, "pre_flip")
        assert passed is True
    finally:
        steps.resume_registrations(endpoints, spec, run_id, keep_for_resume=False)


def test_an_empty_transaction_on_the_primary_is_not_lag(topo, endpoints, caught_up) -> None:
    """An ANALYZE (what autovacuum runs after a burst of writes) gets an xid and no row change:
    the stream never consumes it, so it must not read as pending (it did, as lag of its age)."""
    _, run_id, _ = caught_up
    with admin(topo, "primary") as p:
        p.execute("ANALYZE platform.devices")
    with endpoints.source_cdc.connect(autocommit=True) as src, endpoints.target.connect(autocommit=True) as tconn:
        lag = steps.measure_cdc_lag(src, tconn, run_id)
        raw = src.execute("SELECT count(*) FROM pg_logical_slot_peek_changes(%s, NULL, NULL)",
                          (cdc.slot_name_for(run_id),)).fetchone()[0]
    assert raw > 0  # the empty transaction is in the slot (BEGIN/COMMIT without skip-empty-xacts)...
    assert lag == {**lag, "pending": False, "lag_bytes": 0, "lag_seconds": 0.0}  # ...and is no lag
