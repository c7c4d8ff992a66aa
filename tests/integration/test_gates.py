"""Gates built with Great Expectations: each passes on sound data and fails, with evidence naming
the table and the offending keys, when the data was broken on purpose."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import admin, ledger_runs

from tenant_migration import steps
from tenant_migration.sample import SAMPLE_MAP, dns_records
from tenant_migration.spec import MigrationSpec
from tenant_migration.tenant_map import load_tenant_map
from tenant_migration.validation.counts import GateFailed

pytestmark = pytest.mark.integration

TENANT = 2
OTHER = 3


@pytest.fixture
def reset(topo, tiny_dataset):
    from tenant_migration.sample import platform

    platform.demo_reset(topo)


def _replayed(topo) -> None:
    from tenant_migration.sample.platform import wait_standby_caught_up

    wait_standby_caught_up(topo, timeout=60)


@pytest.fixture
def broken_source(topo, request):
    """Breaks the source on purpose (as superuser, skipping FK triggers); always repairs it."""
    kind = request.param
    reg_id = uuid.uuid4()
    with admin(topo, "primary") as p:
        device = p.execute("SELECT device_id FROM platform.devices WHERE tenant_id = %s ORDER BY device_id LIMIT 1",
                           (TENANT,)).fetchone()[0]
        if kind == "orphan":
            user = uuid.uuid4()  # no such user
        else:
            user = p.execute("SELECT user_id FROM platform.users WHERE tenant_id = %s LIMIT 1", (OTHER,)).fetchone()[0]
        with p.transaction():
            p.execute("SET LOCAL session_replication_role = replica")
            p.execute("INSERT INTO platform.device_registrations (registration_id, device_id, user_id, status) "
                      "VALUES (%s, %s, %s, 'active')", (reg_id, device, user))
    _replayed(topo)
    yield kind, reg_id
    with admin(topo, "primary") as p:
        p.execute("DELETE FROM platform.device_registrations WHERE registration_id = %s", (reg_id,))
    _replayed(topo)


def _reattach(endpoints) -> None:
    """Resume the replica's replay whatever the run's state (these tests leave runs half-done)."""
    from tenant_migration import replica

    with endpoints.replica_control.connect(autocommit=True) as rc:
        replica.reattach(rc)


@contextmanager
def _detached_copy(endpoints, *, cassandra: bool) -> Iterator[tuple[MigrationSpec, str]]:
    """A run of TENANT copied from the detached replica (PostgreSQL, and Cassandra if asked); the
    replica stays detached until the block ends."""
    spec = MigrationSpec(tenant_id=TENANT)
    run_id = f"gate/{uuid.uuid4().hex[:8]}"
    steps.preflight(endpoints, spec, run_id)
    steps.detach_replica(endpoints, spec, run_id)
    try:
        steps.copy_postgres(endpoints, spec, run_id)
        if cassandra:
            steps.copy_cassandra(endpoints, spec, run_id)
        yield spec, run_id
    finally:
        _reattach(endpoints)


def _copied_postgres(endpoints) -> tuple[MigrationSpec, str]:
    """A run of TENANT whose PostgreSQL rows were copied from the detached replica (reattached after)."""
    with _detached_copy(endpoints, cassandra=False) as copied:
        return copied


def _copied_both(endpoints) -> tuple[MigrationSpec, str]:
    """A run of TENANT copied whole from the detached replica, both stores: what the final gate
    expects (every table of the tenant map planned, every chunk done)."""
    with _detached_copy(endpoints, cassandra=True) as copied:
        return copied


def test_preflight_gate_passes_on_sound_data(endpoints, reset, reports) -> None:
    pre = steps.preflight(endpoints, MigrationSpec(tenant_id=TENANT, dry_run=True), f"gate/{uuid.uuid4().hex[:8]}")
    html = Path(pre["report"]).read_text()
    assert "passed" in html and "FAIL" not in html


@pytest.mark.parametrize(
    ("broken_source", "check"),
    [
        pytest.param("orphan", "device_registrations__user_id__no_orphan", id="orphan registration"),
        pytest.param("foreign", "device_registrations__user_id__same_tenant", id="registration of another tenant's user"),
    ],
    indirect=["broken_source"],
)
def test_preflight_gate_fails_naming_table_and_row(endpoints, reset, target_admin, reports, broken_source,
                                                   check: str) -> None:
    _, reg_id = broken_source
    run_id = f"gate/{uuid.uuid4().hex[:8]}"
    with pytest.raises(steps.PreflightError, match=check) as exc:
        steps.preflight(endpoints, MigrationSpec(tenant_id=TENANT), run_id)
    assert str(reg_id) in str(exc.value)
    assert "nothing was written" in str(exc.value)
    assert ledger_runs(target_admin, run_id) == 0
    evidence = json.loads(next(reports.rglob("gate_preflight.json")).read_text())
    failed = [c for c in evidence["checks"] if not c["success"]]
    assert [c["name"] for c in failed] == [check]
    assert failed[0]["observed"] == 1


def test_final_gate_catches_a_row_of_another_tenant_on_the_target(topo, endpoints, reset, target_admin, reports) -> None:
    spec, run_id = _copied_postgres(endpoints)
    with admin(topo, "primary") as p:
        foreign = p.execute("SELECT * FROM platform.api_keys WHERE tenant_id = %s LIMIT 1", (OTHER,)).fetchone()
    with target_admin.transaction():
        target_admin.execute("SET LOCAL session_replication_role = replica")
        target_admin.execute("INSERT INTO platform.api_keys VALUES (%s, %s, %s, %s, %s, %s)", foreign)
    with pytest.raises(GateFailed, match=rf"api_keys__only_this_tenant .*observed 1, offending: {foreign[0]}"):
        steps.gate_final(endpoints, spec, run_id)
    row = target_admin.execute("SELECT passed, report_path FROM tm_control.gates WHERE run_id = %s AND gate = 'final'",
                               (run_id,)).fetchone()
    assert row[0] is False and Path(row[1]).exists()


@pytest.mark.parametrize(("kind", "expected"), [
    pytest.param("none", None, id="passes on the copied tenant"),
    pytest.param("registrations off", r"registrations__back_on .*observed 1, offending: registrations@tm_target\b",
                 id="registrations still suspended on the target"),
    pytest.param("chunk not done", r"ledger__every_chunk_done .*observed 1, offending: pg:users:",
                 id="a chunk of the run not done in the ledger"),
])
def test_final_gate_checks_registrations_and_the_ledger(endpoints, reset, target_admin, reports, kind: str,
                                                        expected: str | None) -> None:
    spec, run_id = _copied_both(endpoints)
    if kind == "registrations off":
        target_admin.execute("UPDATE platform.tenant_settings SET registrations_enabled = false WHERE tenant_id = %s",
                             (TENANT,))
    elif kind == "chunk not done":
        target_admin.execute("UPDATE tm_control.chunks SET status = 'pending' WHERE chunk_id = "
                             "(SELECT min(chunk_id) FROM tm_control.chunks WHERE run_id = %s "
                             "AND chunk_id LIKE 'pg:users:%%') AND run_id = %s", (run_id, run_id))
    if expected is None:
        assert steps.gate_final(endpoints, spec, run_id)["passed"]
    else:
        with pytest.raises(GateFailed, match=expected):
            steps.gate_final(endpoints, spec, run_id)
    passed, _, evidence, report_path = _gate_row(target_admin, run_id, "final")
    assert passed is (expected is None) and Path(report_path).exists()
    assert [c["name"] for c in evidence["checks"] if not c["success"]] == (
        [] if expected is None else [expected.split(" ")[0]])


def test_final_gate_catches_a_cassandra_partition_of_another_tenant_on_the_target(topo, endpoints, reset,
                                                                                 target_admin, reports) -> None:
    """The target's Cassandra holds one tenant: a datapoint partition of another tenant's property
    (as a bug in a copy or a catch-up would leave it) fails the final gate, named in the error and
    in the evidence; without it the same gate passes."""
    spec, run_id = _copied_both(endpoints)
    assert steps.gate_final(endpoints, spec, run_id)["passed"]
    with admin(topo, "primary") as p:
        device, prop = p.execute("SELECT p.device_id, p.property_id FROM platform.properties p JOIN platform.devices d "
                                 "USING (device_id) WHERE d.tenant_id = %s ORDER BY p.property_id LIMIT 1",
                                 (OTHER,)).fetchone()
    with endpoints.cassandra_target.session() as dst:
        dst.execute("INSERT INTO telemetry.datapoints (device_id, property_id, day, ts, value, quality) "
                    "VALUES (%s, %s, '2026-01-02', '2026-01-02 03:04:05+0000', 1.5, 0)", (device, prop))
    label = f"datapoints(device_id={device}, property_id={prop}, day=2026-01-02)"
    with pytest.raises(GateFailed, match="cassandra__only_this_tenant") as exc:
        steps.gate_final(endpoints, spec, run_id)
    assert label in str(exc.value)
    passed, _, evidence, report_path = _gate_row(target_admin, run_id, "final")
    failed = [c for c in evidence["checks"] if not c["success"]]
    assert passed is False and [c["name"] for c in failed] == ["cassandra__only_this_tenant"]
    assert failed[0]["unexpected"] == [label]
    assert [{k: n[k] for k in ("unit", "foreign_partitions", "offending")} for n in failed[0]["numbers"]] == [
        {"unit": "cassandra:datapoints", "foreign_partitions": 1, "offending": label}]
    assert label in Path(report_path).read_text()


# ------------------------------------------------------------------------------ post-flip (moto)

DRAINED = {"cassandra_passes": [{"rows": 0}]}  # what drain_stragglers returns after one pass


@pytest.fixture
def flipped(endpoints, reset, reports):
    """A registered run of TENANT whose records were flipped through the moto server (over HTTP)."""
    spec = MigrationSpec(tenant_id=TENANT, max_ttl_wait_s=0)
    run_id = f"gate/{uuid.uuid4().hex[:8]}"
    pre = steps.preflight(endpoints, spec, run_id)
    steps.flip_dns(endpoints, spec, run_id, pre["slug"])
    yield spec, run_id, pre["slug"]
    steps.resume_registrations(endpoints, spec, run_id, keep_for_resume=False)  # the flip suspended them


def _gate_row(conn, run_id: str, gate: str):
    return conn.execute("SELECT passed, summary, evidence, report_path FROM tm_control.gates WHERE run_id = %s "
                        "AND gate = %s ORDER BY attempt DESC LIMIT 1", (run_id, gate)).fetchone()


def test_post_flip_gate_passes_when_every_record_answers_the_target(endpoints, flipped, target_admin) -> None:
    spec, run_id, slug = flipped
    out = steps.gate_post_flip(endpoints, spec, run_id, slug, DRAINED)
    passed, _, evidence, report_path = _gate_row(target_admin, run_id, "post_flip")
    assert out["passed"] and passed is True
    assert {c["name"] for c in evidence["checks"]} == {"records_answer_target", "drain_ran", "late_partitions_compared"}
    assert all(c["success"] for c in evidence["checks"])
    assert Path(report_path).exists() and "passed" in Path(report_path).read_text()


def test_post_flip_gate_names_a_record_still_answering_the_source(endpoints, flipped, target_admin, reports) -> None:
    from tenant_migration.cutover import dns

    spec, run_id, slug = flipped
    r53 = endpoints.aws.client("route53")
    zid = dns.zone_id(r53, spec.dns_zone)
    stale = dns.tenant_records(dns_records(), spec.dns_zone, slug, spec.target_endpoint_prefix)[1]
    # One record goes back to the shared (source) endpoint behind the flip's back, through moto.
    dns.point_records(r53, zid, [stale], to_tenant=False)
    assert dns.resolve(r53, zid, stale.name)[1] == stale.shared_target

    with pytest.raises(GateFailed, match=rf"records_answer_target .*observed 1, offending: {re.escape(stale.name)}") as exc:
        steps.gate_post_flip(endpoints, spec, run_id, slug, DRAINED)
    assert stale.shared_target in str(exc.value), "the message says what the record answers"
    passed, summary, evidence, report_path = _gate_row(target_admin, run_id, "post_flip")
    assert passed is False and stale.name in summary
    failed = {c["name"]: c for c in evidence["checks"] if not c["success"]}
    assert set(failed) == {"records_answer_target"}
    assert failed["records_answer_target"]["unexpected"] == [stale.name]
    assert failed["records_answer_target"]["numbers"] == [
        {"unit": stale.name, "answer": stale.shared_target, "expected": stale.tenant_target}]
    on_disk = json.loads((reports / steps.safe_name(run_id) / "gate_post_flip.json").read_text())
    assert on_disk["passed"] is False and on_disk["failures"] == evidence["failures"]
    assert report_path in str(exc.value)
    page = Path(report_path).read_text()
    assert "FAILED" in page and stale.name in page


def test_post_flip_gate_fails_when_the_drain_never_ran(endpoints, flipped, target_admin) -> None:
    spec, run_id, slug = flipped
    with pytest.raises(GateFailed, match=r"drain_ran .*observed 0"):
        steps.gate_post_flip(endpoints, spec, run_id, slug, {"cassandra_passes": []})
    assert _gate_row(target_admin, run_id, "post_flip")[0] is False


# ------------------------------------------------------------------------------ post-copy


@pytest.fixture
def copied(endpoints, reset, reports):
    """TENANT copied (both engines) from the detached replica; the replica is reattached after."""
    with _detached_copy(endpoints, cassandra=True) as copied:
        yield copied


def _break_target(kind: str, endpoints, target_admin, topo) -> str:
    """Break the copied target on purpose; return the prefix of the unit the gate must name."""
    if kind == "changed value":
        target_admin.execute("UPDATE platform.devices SET name = name || ' (edited)' WHERE device_id = "
                             "(SELECT min(device_id) FROM platform.devices WHERE tenant_id = %s)", (TENANT,))
        return "pg:devices:"
    if kind == "foreign row":
        with admin(topo, "primary") as p:
            foreign = p.execute("SELECT * FROM platform.api_keys WHERE tenant_id = %s LIMIT 1", (OTHER,)).fetchone()
        with target_admin.transaction():
            target_admin.execute("SET LOCAL session_replication_role = replica")
            target_admin.execute("INSERT INTO platform.api_keys VALUES (%s, %s, %s, %s, %s, %s)", foreign)
        return "pg:api_keys:"
    if kind == "cassandra partition":
        # A whole partition of the tenant missing on the target (one the plan names).
        with endpoints.cassandra_target.session() as dst:
            row = next(r for r in dst.execute("SELECT device_id, property_id, day FROM telemetry.datapoints LIMIT 1"))
            dst.execute("DELETE FROM telemetry.datapoints WHERE device_id = %s AND property_id = %s AND day = %s", row)
        return "cql:datapoints:"
    # A Cassandra cell changed on the target (newer writetime, still before the detach watermark).
    with endpoints.cassandra_target.session() as dst:
        row = next(r for r in dst.execute("SELECT device_id, property_id, day, ts, WRITETIME(value) "
                                          "FROM telemetry.datapoints LIMIT 1"))
        dst.execute("UPDATE telemetry.datapoints USING TIMESTAMP %s SET value = %s WHERE device_id = %s "
                    "AND property_id = %s AND day = %s AND ts = %s", (row[4] + 1, 1e9, *row[:4]))
    return "cql:datapoints:"


def test_post_copy_gate_passes_on_an_exact_copy(endpoints, copied, target_admin) -> None:
    spec, run_id = copied
    out = steps.gate_post_copy(endpoints, spec, run_id)
    passed, _, evidence, report_path = _gate_row(target_admin, run_id, "post_copy")
    assert out["passed"] and passed is True and evidence["seconds"] > 0
    units = {c["name"]: c for c in evidence["checks"]}
    assert set(units) == {"post_copy_rows_equal", "post_copy_checksums_equal", "ledger__every_table_planned"}
    assert Path(report_path).exists()


def _spy_reads(endpoints, monkeypatch) -> list[tuple[str, str, str, bool]]:
    """(function, side, table, re-check) of every aggregate read of the Cassandra fingerprints."""
    from tenant_migration.cassandra import fingerprint

    calls: list[tuple[str, str, str, bool]] = []
    for name in ("scan_prints", "aggregate_prints"):
        real = getattr(fingerprint, name)

        def spy(session, shape, *args, _real=real, _name=name, **kwargs):
            side = "target" if session.cluster.contact_points[0] == endpoints.cassandra_target.host else "source"
            spellings = args[2] if len(args) > 2 else kwargs.get("spellings")
            calls.append((_name, side, shape.table, spellings == fingerprint.RECHECK_SPELLINGS))
            return _real(session, shape, *args, **kwargs)
        monkeypatch.setattr(fingerprint, name, spy)
    return calls


def test_post_copy_reads_the_target_in_one_scan_per_table(endpoints, copied, monkeypatch) -> None:
    """The target holds the tenant only: the gate scans each Cassandra table there once instead of
    looking up every planned partition (the source, shared, is still read partition by partition).
    The target is looked up only to re-check a difference."""
    spec, run_id = copied
    calls = _spy_reads(endpoints, monkeypatch)
    steps.gate_post_copy(endpoints, spec, run_id)
    scans = [c for c in calls if c[0] == "scan_prints"]
    assert sorted(c[2] for c in scans) == sorted(load_tenant_map(SAMPLE_MAP).cassandra_tables) and {c[1] for c in scans} == {"target"}
    assert {c[1] for c in calls if c[0] == "aggregate_prints" and not c[3]} == {"source"}
    assert all(c[3] for c in calls if c[0] == "aggregate_prints" and c[1] == "target")


def test_post_copy_looks_the_target_up_above_the_scan_limit(endpoints, copied, monkeypatch) -> None:
    """Above ``SCAN_MAX_PARTITIONS`` planned partitions the target is looked up like the source
    (same SHA-256 digests), and the gate still passes on a sound copy."""
    from tenant_migration.cassandra import fingerprint

    monkeypatch.setattr(fingerprint, "SCAN_MAX_PARTITIONS", 0)
    spec, run_id = copied
    calls = _spy_reads(endpoints, monkeypatch)
    assert steps.gate_post_copy(endpoints, spec, run_id)["passed"]
    assert not [c for c in calls if c[0] == "scan_prints"]
    looked_up = {(c[1], c[2]) for c in calls if c[0] == "aggregate_prints" and not c[3]}
    assert looked_up == {(side, t) for side in ("source", "target") for t in load_tenant_map(SAMPLE_MAP).cassandra_tables}


@pytest.mark.parametrize("kind", [
    pytest.param("changed value", id="a changed PostgreSQL value (counts equal, checksum not)"),
    pytest.param("foreign row", id="another tenant's row in a chunk's range on the target"),
    pytest.param("cassandra cell", id="a changed Cassandra cell"),
    pytest.param("cassandra partition", id="a Cassandra partition missing on the target"),
])
def test_post_copy_gate_fails_naming_the_chunk(endpoints, copied, target_admin, topo, kind: str) -> None:
    spec, run_id = copied
    prefix = _break_target(kind, endpoints, target_admin, topo)
    with pytest.raises(GateFailed, match=rf"post_copy_checksums_equal .*offending: {re.escape(prefix)}") as exc:
        steps.gate_post_copy(endpoints, spec, run_id)
    passed, _, evidence, report_path = _gate_row(target_admin, run_id, "post_copy")
    assert passed is False and report_path in str(exc.value) and Path(report_path).exists()
    failed = {c["name"]: c for c in evidence["checks"] if not c["success"]}
    bad = failed["post_copy_checksums_equal"]["numbers"]
    assert len(bad) == 1 and bad[0]["unit"].startswith(prefix)
    assert bad[0]["source_checksum"] != bad[0]["target_checksum"]
    if kind == "foreign row":
        assert bad[0]["target_rows"] == bad[0]["source_rows"] + 1
        assert "post_copy_rows_equal" in failed
    elif kind == "cassandra partition":
        assert bad[0]["target_rows"] < bad[0]["source_rows"] and "post_copy_rows_equal" in failed
        assert bad[0]["mismatched"].startswith("datapoints(device_id=")  # the partition, by its key
    else:
        assert bad[0]["target_rows"] == bad[0]["source_rows"] and "post_copy_rows_equal" not in failed
