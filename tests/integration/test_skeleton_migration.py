"""The walking skeleton's steps, without Airflow, against the real servers at tiny scale:
preflight refusals, replica detach, PostgreSQL and Cassandra copies, the count gate, the DNS flip."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from helpers import admin, ledger_runs

from tenant_migration import ledger, replica, steps
from tenant_migration.cutover import dns
from tenant_migration.endpoints import Endpoints
from tenant_migration.sample import SAMPLE_MAP, data, dns_records
from tenant_migration.sample import profile as sample_profile
from tenant_migration.spec import MigrationSpec
from tenant_migration.tenant_map import load_tenant_map
from tenant_migration.validation.counts import GateFailed

pytestmark = pytest.mark.integration

TMAP = load_tenant_map(SAMPLE_MAP)
TENANT = 2  # a small, non-empty tenant of the tiny preset


def _run_id() -> str:
    return f"it/{uuid.uuid4().hex[:10]}"


def _tenant_counts(conn: psycopg.Connection, tenant_id: int) -> dict[str, int]:
    out = {}
    for table in TMAP.load_order():
        q = psycopg.sql.SQL("SELECT count(*) FROM {} AS t WHERE {}").format(TMAP.qualified(table), TMAP.tenant_predicate(table))
        out[table] = conn.execute(q, {"tenant_id": tenant_id}).fetchone()[0]
    return out


def _migrate(ep: Endpoints, spec: MigrationSpec, run_id: str) -> dict:
    spec = dataclasses.replace(spec, max_ttl_wait_s=0)  # no TTL to wait out here (test_flip_preconditions waits)
    pre = steps.preflight(ep, spec, run_id)
    steps.detach_replica(ep, spec, run_id)
    try:
        pg = steps.copy_postgres(ep, spec, run_id)
        cql = steps.copy_cassandra(ep, spec, run_id)
        gate = steps.gate_post_copy(ep, spec, run_id)
        flip = steps.flip_dns(ep, spec, run_id, pre["slug"])
    finally:
        steps.reattach_replica(ep, spec, run_id)
        steps.resume_registrations(ep, spec, run_id, keep_for_resume=False)  # the flip suspended them
    final = steps.gate_final(ep, spec, run_id)
    assert final["passed"]
    steps.report(ep, spec, run_id, flip)
    return {"pre": pre, "pg": pg, "cql": cql, "gate": gate, "flip": flip}


@pytest.fixture
def clean_target(topo, tiny_dataset, endpoints: Endpoints):
    from tenant_migration.sample import platform

    platform.demo_reset(topo)
    yield
    with admin(topo, "standby") as s:
        if s.execute("SELECT pg_get_wal_replay_pause_state() <> 'not paused'").fetchone()[0]:
            s.execute("SELECT pg_wal_replay_resume()")


def test_unknown_tenant_is_refused_before_anything_is_written(endpoints, clean_target, target_admin, reports) -> None:
    run_id = _run_id()
    with pytest.raises(steps.PreflightError, match="tenant 999999 does not exist"):
        steps.preflight(endpoints, MigrationSpec(tenant_id=999999), run_id)
    assert ledger_runs(target_admin, run_id) == 0


def test_schema_drift_on_the_target_is_refused_naming_table_and_column(endpoints, clean_target, target_admin, reports) -> None:
    run_id = _run_id()
    target_admin.execute("ALTER TABLE platform.rules ADD COLUMN drifted integer")
    try:
        with pytest.raises(steps.PreflightError, match=r"platform\.rules\.drifted: only on the target"):
            steps.preflight(endpoints, MigrationSpec(tenant_id=TENANT), run_id)
    finally:
        target_admin.execute("ALTER TABLE platform.rules DROP COLUMN drifted")
    assert ledger_runs(target_admin, run_id) == 0
    assert _tenant_counts(target_admin, TENANT)["rules"] == 0


def test_cassandra_schema_drift_on_the_target_is_refused_naming_table_and_column(endpoints, clean_target,
                                                                                target_admin, reports) -> None:
    """A column on one cluster's table and not the other's (name, kind, position and CQL type are
    compared) stops the preflight before anything is written."""
    run_id = _run_id()
    column = f"drift_{uuid.uuid4().hex[:8]}"
    with endpoints.cassandra_target.session() as dst:
        dst.execute(f"ALTER TABLE telemetry.latest_values ADD {column} text")
        try:
            with pytest.raises(steps.PreflightError, match=rf"telemetry\.latest_values: columns differ .*only on the "
                                                           rf"target: \[\('{column}', 'regular', -1, 'text'\)\]"):
                steps.preflight(endpoints, MigrationSpec(tenant_id=TENANT), run_id)
        finally:
            dst.execute(f"ALTER TABLE telemetry.latest_values DROP {column}")
    assert ledger_runs(target_admin, run_id) == 0


def test_a_missing_dns_record_is_refused_naming_it(endpoints, clean_target, target_admin, reports) -> None:
    """The tenant's target endpoint has no record in the zone: the preflight (which asks the zone
    while the replica is checked) stops before anything is written, naming the record."""
    run_id = _run_id()
    spec = MigrationSpec(tenant_id=TENANT)
    r53 = endpoints.aws.client("route53")
    zid = dns.zone_id(r53, spec.dns_zone)
    with endpoints.replica.connect() as r:
        slug = steps.tenant_slug(r, load_tenant_map(SAMPLE_MAP), TENANT, sample_profile().doc.tenant)
    assert slug is not None
    plan = dns.tenant_records(dns_records(), spec.dns_zone, slug, spec.target_endpoint_prefix)[0]
    sets = [{k: v for k, v in rr.items() if k in ("Name", "Type", "TTL", "ResourceRecords")}
            for rr in dns.record_sets(r53, zid)[plan.tenant_target]]
    r53.change_resource_record_sets(HostedZoneId=zid, ChangeBatch={"Changes": [
        {"Action": "DELETE", "ResourceRecordSet": rr} for rr in sets]})
    try:
        with pytest.raises(steps.PreflightError, match=rf"dns {plan.tenant_target}: the tenant's target endpoint "
                                                       r"has no record"):
            steps.preflight(endpoints, spec, run_id)
    finally:
        r53.change_resource_record_sets(HostedZoneId=zid, ChangeBatch={"Changes": [
            {"Action": "UPSERT", "ResourceRecordSet": rr} for rr in sets]})
    assert ledger_runs(target_admin, run_id) == 0
    assert plan.tenant_target in dns.records(r53, zid)


def test_replica_detach_freezes_the_replica_and_reattach_resumes(endpoints, clean_target, primary_admin) -> None:
    with endpoints.replica_control.connect(autocommit=True) as rc, endpoints.replica.connect(autocommit=True) as r:
        point = replica.detach(rc)
        again = replica.detach(rc)
        assert again.already_paused and again.lsn == point.lsn
        primary_admin.execute("UPDATE platform.tenants SET name = name || '' WHERE tenant_id = %s", (TENANT,))
        primary_admin.execute("CREATE TABLE IF NOT EXISTS public.detach_probe (v int)")
        time.sleep(1.0)
        assert r.execute("SELECT to_regclass('public.detach_probe')").fetchone() == (None,)
        replica.reattach(rc)
        replica.reattach(rc)
        deadline = time.monotonic() + 30
        while r.execute("SELECT to_regclass('public.detach_probe')").fetchone() == (None,):
            assert time.monotonic() < deadline, "replay did not resume"
            time.sleep(0.1)
    primary_admin.execute("DROP TABLE public.detach_probe")


def test_reader_role_cannot_pause_replay_or_write(endpoints, clean_target) -> None:
    with endpoints.replica.connect(autocommit=True) as r, pytest.raises(psycopg.errors.InsufficientPrivilege):
        r.execute("SELECT pg_wal_replay_pause()")
    with endpoints.target.connect(autocommit=True) as t, pytest.raises(psycopg.errors.InsufficientPrivilege):
        t.execute("CREATE ROLE sneaky")


def test_skeleton_migrates_one_tenant_exactly(topo, endpoints, clean_target, target_admin, reports) -> None:
    spec = MigrationSpec(tenant_id=TENANT)
    run_id = _run_id()
    result = _migrate(endpoints, spec, run_id)

    with admin(topo, "standby") as s:
        source_counts = _tenant_counts(s, TENANT)
    target_counts = _tenant_counts(target_admin, TENANT)
    assert target_counts == source_counts
    assert source_counts["rule_actions"] > 0 and source_counts["devices"] > 0
    # Nothing of another tenant reached the target.
    assert target_admin.execute("SELECT count(*) FROM platform.devices WHERE tenant_id <> %s", (TENANT,)).fetchone() == (0,)
    assert target_admin.execute("SELECT count(*) FROM platform.users WHERE tenant_id <> %s", (TENANT,)).fetchone() == (0,)
    assert target_admin.execute("SELECT count(*) FROM platform.tenants").fetchone() == (1,)
    total_target = sum(target_admin.execute(
        psycopg.sql.SQL("SELECT count(*) FROM {}").format(TMAP.qualified(t))).fetchone()[0] for t in TMAP.load_order())
    assert total_target == sum(source_counts.values())
    # The gate saw equal counts for both stores and the ledger holds the evidence.
    assert result["gate"]["passed"]
    assert result["cql"]["tables"]["datapoints"]["rows"] > 0
    report = Path(result["gate"]["report"])
    run_folder = next(p for p in report.parents if p.name == "gx").parent  # the run's GX project's folder
    evidence = json.loads((run_folder / "gate_post_copy.json").read_text())
    assert evidence["passed"] and {c["name"] for c in evidence["checks"]} == (
        {f"postgres.{t}" for t in TMAP.tables} | {f"cassandra.{t}" for t in TMAP.cassandra_tables}
        | {"ledger__every_table_planned"})
    assert "Great Expectations" in report.read_text() and str(report) in evidence["data_docs"].values()
    # DNS points at the tenant's dedicated endpoints, before pointed at the shared platform.
    for name, chain in result["flip"]["after"].items():
        assert ".vpc-" in chain[1]
        assert ".shared." in result["flip"]["before"][name][1]
    with endpoints.target.connect() as t:
        assert ledger.run_row(t, run_id)["status"] == "succeeded"


def test_run_twice_gives_the_same_result(endpoints, clean_target, target_admin, reports) -> None:
    spec = MigrationSpec(tenant_id=TENANT)
    # tenant_settings holds the registration switch: each run's flip suspends it and the teardown
    # resumes it, on each side apart (its updated_at moves): the run's own write, not data.
    tables = [t for t in TMAP.load_order() if t != "tenant_settings"]
    _migrate(endpoints, spec, _run_id())
    first = {t: steps_checksum(target_admin, t) for t in tables}
    _migrate(endpoints, spec, _run_id())
    second = {t: steps_checksum(target_admin, t) for t in tables}
    assert first == second


def steps_checksum(conn: psycopg.Connection, table: str) -> tuple[int, str]:
    from tenant_migration.postgres.copy import table_checksum

    return table_checksum(conn, TMAP, table, TENANT)


def test_cassandra_copy_keeps_writetime_and_ttl(endpoints, clean_target, reports) -> None:
    spec = MigrationSpec(tenant_id=TENANT)
    _migrate(endpoints, spec, _run_id())
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    q = ("SELECT ts, value, WRITETIME(value), TTL(value) FROM telemetry.datapoints "
         "WHERE device_id = %s AND property_id = %s AND day = %s")
    with endpoints.cassandra_source.session() as src, endpoints.cassandra_target.session() as dst:
        found = 0
        for dev, prop in _tenant_property_pairs(endpoints):
            s_rows = sorted(src.execute(q, (dev, prop, yesterday)))
            if not s_rows:
                continue
            d_rows = sorted(dst.execute(q, (dev, prop, yesterday)))
            assert [r[:3] for r in d_rows] == [r[:3] for r in s_rows]
            for a, b in zip(s_rows, d_rows, strict=True):
                assert a[3] is not None and b[3] is not None
                assert abs(a[3] - b[3]) <= 120, "remaining TTL not carried"
            found += 1
            if found >= 5:
                break
        assert found > 0, "the tenant has no datapoints yesterday"


def _tenant_property_pairs(endpoints: Endpoints) -> list[tuple[int, int]]:
    with endpoints.replica.connect(autocommit=True) as r:
        return r.execute(
            "SELECT p.device_id, p.property_id FROM platform.properties p JOIN platform.devices d USING (device_id) "
            "WHERE d.tenant_id = %s ORDER BY 1, 2", (TENANT,)).fetchall()


def test_a_newer_value_written_on_the_target_survives_a_recopy(endpoints, clean_target, reports) -> None:
    spec = MigrationSpec(tenant_id=TENANT)
    _migrate(endpoints, spec, _run_id())
    with endpoints.cassandra_target.session() as dst:
        dev, prop = next(
            (d, p) for d, p in _tenant_property_pairs(endpoints)
            if dst.execute("SELECT value FROM telemetry.latest_values WHERE device_id = %s AND property_id = %s",
                           (d, p)).one() is not None)
        dst.execute("INSERT INTO telemetry.latest_values (device_id, property_id, ts, value) VALUES (%s, %s, %s, %s) "
                    "USING TIMESTAMP %s", (dev, prop, datetime.now(UTC), 4242.0, int(time.time() * 1e6) + 10_000_000))
    rerun = _run_id()
    steps.preflight(endpoints, spec, rerun)
    steps.copy_cassandra(endpoints, spec, rerun)
    with endpoints.cassandra_target.session() as dst:
        row = dst.execute("SELECT value FROM telemetry.latest_values WHERE device_id = %s AND property_id = %s",
                          (dev, prop)).one()
    assert row.value == 4242.0


def test_gate_fails_with_evidence_when_a_target_row_is_missing(endpoints, clean_target, target_admin, reports) -> None:
    spec = MigrationSpec(tenant_id=TENANT)
    run_id = _run_id()
    steps.preflight(endpoints, spec, run_id)
    steps.detach_replica(endpoints, spec, run_id)
    try:
        steps.copy_postgres(endpoints, spec, run_id)
        steps.copy_cassandra(endpoints, spec, run_id)
        target_admin.execute(
            "DELETE FROM platform.rule_actions WHERE (rule_id, action_no) = "
            "(SELECT rule_id, action_no FROM platform.rule_actions LIMIT 1)")
        with pytest.raises(GateFailed, match=r"postgres.rule_actions .*1 differ: pg:rule_actions:0000") as exc:
            steps.gate_post_copy(endpoints, spec, run_id)
    finally:
        # The gate failed on purpose: release the replica instead of keeping it for a resume (ADR 7).
        steps.reattach_replica(endpoints, spec, run_id, keep_for_resume=False)
    row = target_admin.execute(
        "SELECT passed, evidence, report_path FROM tm_control.gates WHERE run_id = %s AND gate = 'post_copy' "
        "ORDER BY attempt DESC LIMIT 1", (run_id,)).fetchone()
    assert row[0] is False
    failed = {c["name"]: c for c in row[1]["checks"] if not c["success"]}
    assert set(failed) == {"postgres.rule_actions"}
    numbers = failed["postgres.rule_actions"]["details"]["differing_units"]
    assert [n["unit"] for n in numbers] == ["pg:rule_actions:0000"]
    assert failed["postgres.rule_actions"]["details"]["differences"][0]["target"] == "(no row)"
    assert numbers[0]["source_rows"] == numbers[0]["target_rows"] + 1
    assert str(row[2]) in str(exc.value) and Path(row[2]).exists()


def test_second_live_run_for_the_same_tenant_is_refused(endpoints, clean_target, reports) -> None:
    spec = MigrationSpec(tenant_id=TENANT)
    steps.preflight(endpoints, spec, _run_id())
    with pytest.raises(ledger.LedgerError, match="already has a live migration run"):
        steps.preflight(endpoints, spec, _run_id())


def test_empty_tenant_migrates_to_nothing_but_its_own_rows(endpoints, clean_target, target_admin, reports) -> None:
    spec = MigrationSpec(tenant_id=data.EMPTY_TENANT_ID)
    _migrate(endpoints, spec, _run_id())
    counts = _tenant_counts(target_admin, data.EMPTY_TENANT_ID)
    assert counts["tenants"] == 1 and counts["devices"] == 0


def test_dns_flip_is_visible_through_the_moto_server(endpoints, clean_target, reports) -> None:
    r53 = endpoints.aws.client("route53")
    zid = dns.zone_id(r53, MigrationSpec.dns_zone)
    slug = data.TENANT_SLUGS[TENANT - 1]
    plans = dns.tenant_records(dns_records(), MigrationSpec.dns_zone, slug)
    assert dns.resolve(r53, zid, plans[0].name)[-1] == "127.0.0.2"
    dns.point_records(r53, zid, plans, to_tenant=True)
    assert dns.resolve(r53, zid, plans[0].name)[-1] == "127.0.0.3"


def test_a_target_holding_another_tenant_is_refused_naming_table_and_tenant(endpoints, clean_target, target_admin,
                                                                             reports) -> None:
    """Issue 28, item 5. Before the fix the other tenant's run passed every preflight check and
    wrote beside the first tenant until a checksum mismatch stopped it."""
    import re

    first = _run_id()
    _migrate(endpoints, MigrationSpec(tenant_id=TENANT), first)
    other = data.TEST_POOL_TENANT_ID
    runs = ledger_runs(target_admin)
    with pytest.raises(steps.PreflightError) as refused:
        steps.preflight(endpoints, MigrationSpec(tenant_id=other), _run_id())
    msg = str(refused.value)
    assert f"target postgres platform.tenants: holds rows that are not tenant {other}'s (tenant_id={TENANT}: tenant {TENANT})" in msg
    # Three hops from the tenant (rule_actions -> rules -> properties -> devices): the owner is still named.
    assert re.search(rf"platform\.rule_actions: holds rows that are not tenant {other}'s \(rule_id=\d+, action_no=\d+: "
                     rf"tenant {TENANT}", msg)
    assert re.search(rf"target cassandra telemetry\.datapoints: \d+ of its \d+ partitions are not tenant {other}'s "
                     rf"\(datapoints\(device_id=\d+, property_id=\d+, day=[\d-]+\): tenant {TENANT} on the source", msg)
    assert "nothing was written" in msg and ledger_runs(target_admin) == runs

    # The tenant's own runs are not refused: a resume of the first, and a new run beside its data.
    assert steps.preflight(endpoints, MigrationSpec(tenant_id=TENANT), first)["new_run"] is False
    again = _run_id()
    with endpoints.target.connect() as t:
        ledger.finish_run(t, first, "succeeded")
        assert steps.preflight(endpoints, MigrationSpec(tenant_id=TENANT), again)["new_run"] is True
        ledger.finish_run(t, again, "aborted")

    # Cassandra alone: the relational rows gone from the target, the partitions still there.
    target_admin.execute(psycopg.sql.SQL("TRUNCATE {} CASCADE").format(
        psycopg.sql.SQL(", ").join(TMAP.qualified(t) for t in TMAP.load_order())))
    with pytest.raises(steps.PreflightError) as refused:
        steps.preflight(endpoints, MigrationSpec(tenant_id=other), _run_id())
    assert "target postgres" not in str(refused.value)
    assert re.search(r"target cassandra telemetry\.latest_values: \d+ of its \d+ partitions are not tenant "
                     rf"{other}'s \(latest_values\(device_id=\d+\): tenant {TENANT} on the source", str(refused.value))


def test_a_live_run_of_another_tenant_on_the_target_is_refused(endpoints, clean_target, target_admin, reports) -> None:
    first = _run_id()
    steps.preflight(endpoints, MigrationSpec(tenant_id=TENANT), first)  # registered, nothing copied yet
    try:
        with pytest.raises(steps.PreflightError, match=rf"target ledger: run {first} of tenant {TENANT} is live"):
            steps.preflight(endpoints, MigrationSpec(tenant_id=data.TEST_POOL_TENANT_ID), _run_id())
    finally:
        with endpoints.target.connect() as t:
            ledger.finish_run(t, first, "aborted")
