"""Gates built with Great Expectations: each passes on sound data and fails, with evidence naming
the table and the offending keys, when the data was broken on purpose -- in the ledger, in the
error, and on the gate's Data Docs page (table, key and both values)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import admin, ledger_runs, page_text

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
    text = page_text(pre["report"])
    assert "Status: Succeeded" in text and "Status: Failed" not in text
    # What was compared, with its numbers: the checks of the source, each with its count.
    assert "device_registrations: key (registration_id) unique among the tenant's rows" in text
    assert "0 violating rows" in text
    assert Path(pre["report"]).parts[-7:-3] == ("data_docs", "local_site", "validations", "preflight")


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
    assert failed[0]["observed"].startswith("1 violating rows: registration_id=")
    assert failed[0]["details"]["violations"] == 1
    page = page_text(evidence["report"])
    assert f"registration_id={reg_id}" in page and "Status: Failed" in page


def test_final_gate_catches_a_row_of_another_tenant_on_the_target(topo, endpoints, reset, target_admin, reports) -> None:
    spec, run_id = _copied_postgres(endpoints)
    with admin(topo, "primary") as p:
        foreign = p.execute("SELECT * FROM platform.api_keys WHERE tenant_id = %s LIMIT 1", (OTHER,)).fetchone()
    with target_admin.transaction():
        target_admin.execute("SET LOCAL session_replication_role = replica")
        target_admin.execute("INSERT INTO platform.api_keys VALUES (%s, %s, %s, %s, %s, %s)", foreign)
    with pytest.raises(GateFailed, match=rf"api_keys__only_this_tenant .*1 violating rows: api_key_id={foreign[0]}"):
        steps.gate_final(endpoints, spec, run_id)
    row = target_admin.execute("SELECT passed, report_path FROM tm_control.gates WHERE run_id = %s AND gate = 'final'",
                               (run_id,)).fetchone()
    assert row[0] is False and Path(row[1]).exists()
    # The page names the table, the row's key, whose it is and whose it should be.
    page = page_text(row[1])
    assert f"api_keys: every row on the target belongs to tenant {TENANT}" in page
    assert f"api_key_id={foreign[0]}, owner_tenant={OTHER}, expected_tenant={TENANT}" in page


@pytest.mark.parametrize(("kind", "expected"), [
    pytest.param("none", None, id="passes on the copied tenant"),
    pytest.param("registrations off", r"registrations__back_on .*1 of \d+ units unexpected: registrations@tm_target \(1\)",
                 id="registrations still suspended on the target"),
    pytest.param("chunk not done", r"ledger__every_chunk_done .*1 violating rows: chunk_id=pg:users:\d+, status=pending",
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
    with pytest.raises(GateFailed, match="cassandra:datapoints__only_this_tenant") as exc:
        steps.gate_final(endpoints, spec, run_id)
    assert label in str(exc.value)
    passed, _, evidence, report_path = _gate_row(target_admin, run_id, "final")
    failed = [c for c in evidence["checks"] if not c["success"]]
    assert passed is False and [c["name"] for c in failed] == ["cassandra:datapoints__only_this_tenant"]
    assert failed[0]["details"] == {"violations": 1, "sample": [f"{label}: tenant {OTHER} on the source"]}
    assert f"1 violating rows: {label}: tenant {OTHER} on the source" in page_text(report_path)


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
    assert Path(report_path).exists() and "Status: Succeeded" in page_text(report_path)


def test_post_flip_gate_names_a_record_still_answering_the_source(endpoints, flipped, target_admin, reports) -> None:
    from tenant_migration.cutover import dns

    spec, run_id, slug = flipped
    r53 = endpoints.aws.client("route53")
    zid = dns.zone_id(r53, spec.dns_zone)
    stale = dns.tenant_records(dns_records(), spec.dns_zone, slug, spec.target_endpoint_prefix)[1]
    # One record goes back to the shared (source) endpoint behind the flip's back, through moto.
    dns.point_records(r53, zid, [stale], to_tenant=False)
    assert dns.resolve(r53, zid, stale.name)[1] == stale.shared_target

    with pytest.raises(GateFailed, match=rf"records_answer_target .*1 of \d+ units unexpected: {re.escape(stale.name)}") as exc:
        steps.gate_post_flip(endpoints, spec, run_id, slug, DRAINED)
    assert stale.shared_target in str(exc.value), "the message says what the record answers"
    passed, summary, evidence, report_path = _gate_row(target_admin, run_id, "post_flip")
    assert passed is False and stale.name in summary
    failed = {c["name"]: c for c in evidence["checks"] if not c["success"]}
    assert set(failed) == {"records_answer_target"}
    assert failed["records_answer_target"]["unexpected"] == [stale.name]
    on_disk = json.loads((reports / steps.safe_name(run_id) / "gate_post_flip.json").read_text())
    assert on_disk["passed"] is False and on_disk["failures"] == evidence["failures"]
    assert report_path in str(exc.value)
    page = page_text(report_path)
    assert "Status: Failed" in page and stale.name in page and stale.shared_target in page and stale.tenant_target in page


def test_post_flip_gate_fails_when_the_drain_never_ran(endpoints, flipped, target_admin) -> None:
    spec, run_id, slug = flipped
    with pytest.raises(GateFailed, match=r"drain_ran .*1 violating rows: no pass of the straggler drain"):
        steps.gate_post_flip(endpoints, spec, run_id, slug, {"cassandra_passes": []})
    assert _gate_row(target_admin, run_id, "post_flip")[0] is False


# ------------------------------------------------------------------------------ post-copy


@pytest.fixture
def copied(endpoints, reset, reports):
    """TENANT copied (both engines) from the detached replica; the replica is reattached after."""
    with _detached_copy(endpoints, cassandra=True) as copied:
        yield copied


def _break_target(kind: str, endpoints, target_admin, topo) -> tuple[str, str, list[str]]:
    """Break the copied target on purpose; return the prefix of the unit the gate must name, the
    key of the differing row as the page spells it, and what the page must show of both values."""
    if kind == "missing row":
        key = target_admin.execute("SELECT api_key_id FROM platform.api_keys WHERE tenant_id = %s "
                                   "ORDER BY api_key_id LIMIT 1", (TENANT,)).fetchone()[0]
        with target_admin.transaction():
            target_admin.execute("SET LOCAL session_replication_role = replica")
            target_admin.execute("DELETE FROM platform.api_keys WHERE api_key_id = %s", (key,))
        return "pg:api_keys:", f"api_keys api_key_id={key}", ["target '(no row)'", f"'tenant_id': {TENANT}"]
    if kind == "changed value":
        key, name = target_admin.execute("UPDATE platform.devices SET name = name || ' (edited)' WHERE device_id = "
                                         "(SELECT min(device_id) FROM platform.devices WHERE tenant_id = %s) "
                                         "RETURNING device_id, name", (TENANT,)).fetchone()
        before = name.removesuffix(" (edited)")
        return "pg:devices:", f"devices device_id={key}", [f"name: source {before!r}, target {name!r}"]
    if kind == "foreign row":
        with admin(topo, "primary") as p:
            foreign = p.execute("SELECT * FROM platform.api_keys WHERE tenant_id = %s LIMIT 1", (OTHER,)).fetchone()
        with target_admin.transaction():
            target_admin.execute("SET LOCAL session_replication_role = replica")
            target_admin.execute("INSERT INTO platform.api_keys VALUES (%s, %s, %s, %s, %s, %s)", foreign)
        return "pg:api_keys:", f"api_keys api_key_id={foreign[0]}", ["source '(no row)'", f"'tenant_id': {OTHER}"]
    with endpoints.cassandra_target.session() as dst:
        row = next(r for r in dst.execute("SELECT device_id, property_id, day, ts, value, WRITETIME(value) "
                                          "FROM telemetry.datapoints LIMIT 1"))
        device, prop, day, ts, value, wt = row
        key = f"datapoints device_id={device}, property_id={prop}, day={day}, ts={ts}"
        if kind == "cassandra partition":
            # A whole partition of the tenant missing on the target (one the plan names).
            dst.execute("DELETE FROM telemetry.datapoints WHERE device_id = %s AND property_id = %s AND day = %s",
                        (device, prop, day))
            return "cql:datapoints:", f"datapoints device_id={device}, property_id={prop}, day={day}", [
                "target '(no row)'"]
        if kind == "cassandra cell":
            # A Cassandra cell changed on the target (newer writetime, still before the detach watermark).
            dst.execute("UPDATE telemetry.datapoints USING TIMESTAMP %s SET value = %s WHERE device_id = %s "
                        "AND property_id = %s AND day = %s AND ts = %s", (wt + 1, 1e9, device, prop, day, ts))
            return "cql:datapoints:", key, [f"value: source {value!r}, target 1000000000.0",
                                            f"writetime(value): source {wt}, target {wt + 1}"]
        # The same value, written again at another time: only the write time differs.
        dst.execute("UPDATE telemetry.datapoints USING TIMESTAMP %s SET value = %s WHERE device_id = %s "
                    "AND property_id = %s AND day = %s AND ts = %s", (wt + 7, value, device, prop, day, ts))
        return "cql:datapoints:", key, [f"writetime(value): source {wt}, target {wt + 7}"]


def test_post_copy_gate_passes_on_an_exact_copy(endpoints, copied, target_admin) -> None:
    spec, run_id = copied
    out = steps.gate_post_copy(endpoints, spec, run_id)
    passed, _, evidence, report_path = _gate_row(target_admin, run_id, "post_copy")
    assert out["passed"] and passed is True and evidence["seconds"] > 0
    tmap = load_tenant_map(SAMPLE_MAP)
    units = {c["name"]: c for c in evidence["checks"]}
    assert set(units) == ({f"postgres.{t}" for t in tmap.tables} | {f"cassandra.{t}" for t in tmap.cassandra_tables}
                          | {"ledger__every_table_planned"})
    # Both sides' numbers, for a passing gate too: rows on each side, equal.
    rows = target_admin.execute("SELECT count(*) FROM platform.devices").fetchone()[0]
    assert units["postgres.devices"]["observed"].startswith(f"source {rows:,} rows, target {rows:,} rows; ")
    assert units["postgres.devices"]["details"]["source_rows"] == rows
    assert " partitions; " in units["cassandra.datapoints"]["observed"]
    assert evidence["data_docs"] == {"post_copy": report_path} and evidence["report"] == report_path
    assert {c["part"] for c in evidence["checks"]} == {"postgres", "cassandra", "plan"}
    page = page_text(report_path)
    assert "postgres table devices: row counts and row checksums equal on source and target" in page
    assert f"source {rows:,} rows, target {rows:,} rows" in page
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
    pytest.param("missing row", id="a PostgreSQL row missing on the target"),
    pytest.param("changed value", id="a changed PostgreSQL value (counts equal, checksum not)"),
    pytest.param("foreign row", id="another tenant's row in a chunk's range on the target"),
    pytest.param("cassandra cell", id="a changed Cassandra cell"),
    pytest.param("cassandra write time", id="a Cassandra cell with another write time, same value"),
    pytest.param("cassandra partition", id="a Cassandra partition missing on the target"),
])
def test_post_copy_gate_fails_naming_table_key_and_both_values(endpoints, copied, target_admin, topo,
                                                               kind: str) -> None:
    spec, run_id = copied
    prefix, key, values = _break_target(kind, endpoints, target_admin, topo)
    store, table = ("cassandra" if prefix.startswith("cql:") else "postgres"), prefix.split(":")[1]
    with pytest.raises(GateFailed, match=rf"{store}\.{table} .*differ: {re.escape(prefix)}") as exc:
        steps.gate_post_copy(endpoints, spec, run_id)
    assert key in str(exc.value), "the error names the differing key"
    passed, _, evidence, report_path = _gate_row(target_admin, run_id, "post_copy")
    assert passed is False and report_path in str(exc.value) and Path(report_path).exists()
    failed = {c["name"]: c for c in evidence["checks"] if not c["success"]}
    assert set(failed) == {f"{store}.{table}"}
    details = failed[f"{store}.{table}"]["details"]
    bad = details["differing_units"]
    assert len(bad) == 1 and bad[0]["unit"].startswith(prefix)
    assert bad[0]["source_checksum"] != bad[0]["target_checksum"]
    if kind == "foreign row":
        assert bad[0]["target_rows"] == bad[0]["source_rows"] + 1
    elif kind in ("missing row", "cassandra partition"):
        assert bad[0]["target_rows"] < bad[0]["source_rows"]
    else:
        assert bad[0]["target_rows"] == bad[0]["source_rows"]
    assert any(key.split(" ", 1)[1] in d["key"] for d in details["differences"]), details["differences"]
    # The gate's Data Docs page: the table, the key and both sides' values.
    assert report_path == evidence["data_docs"]["post_copy"]
    page = page_text(report_path)
    assert f"{store} table {table}:" in page and key in page
    for value in values:
        assert value in page, value
