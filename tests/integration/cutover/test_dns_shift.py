"""The weighted DNS shift (10 % -> 50 % -> 100 %) through the moto server over HTTP: weights read
back after each step, a gate between steps, a failure between steps then a retry that converges,
a rollback from the middle of a shift, bad step lists refused before anything is written."""

from __future__ import annotations

import types
import uuid
from pathlib import Path

import pytest
from helpers import admin, ledger_runs

from tenant_migration import rollback, runtime, steps
from tenant_migration.cutover import dns
from tenant_migration.flows import go
from tenant_migration.sample import dns_records
from tenant_migration.sample.fleet.resolver import CachingResolver
from tenant_migration.spec import MigrationSpec
from tenant_migration.validation.counts import GateFailed

pytestmark = pytest.mark.integration

TENANT = 2


@pytest.fixture
def run(topo, tiny_dataset, endpoints, reports):
    """A registered run of TENANT (records simple, pointing at the shared platform) whose root row
    is on the target (what the gate's PostgreSQL probe looks for after a copy)."""
    from tenant_migration.sample import platform

    platform.demo_reset(topo)
    # max_ttl_wait_s 0: the flip's TTL precondition holds at once (test_flip_preconditions waits).
    spec = MigrationSpec(tenant_id=TENANT, dns_shift_percent_steps=(10, 50, 100), dns_shift_dwell_s=0,
                         max_ttl_wait_s=0)
    run_id = f"shift/{uuid.uuid4().hex[:8]}"
    slug = steps.preflight(endpoints, spec, run_id)["slug"]
    with admin(topo, "primary") as p, admin(topo, "target") as t:
        cur = p.execute("SELECT * FROM platform.tenants WHERE tenant_id = %s", (TENANT,))
        cols = [d.name for d in cur.description]
        t.execute(f"INSERT INTO platform.tenants ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                  cur.fetchone())
    r53 = endpoints.aws.client("route53")
    zid = dns.zone_id(r53, spec.dns_zone)
    plans = dns.tenant_records(dns_records(), spec.dns_zone, slug, spec.target_endpoint_prefix)
    ns = types.SimpleNamespace(spec=spec, run_id=run_id, slug=slug, r53=r53, zid=zid, plans=plans)
    yield ns
    steps.resume_registrations(endpoints, spec, run_id, keep_for_resume=False)  # the flip suspended them
    platform.demo_reset(topo)  # also from a weighted set a test left behind
    assert _state(ns) == _simple(ns, to_tenant=False), "the demo reset converges every record back"


def _state(run) -> dict[str, list[tuple[str, int | None]]]:
    """Each record's sets as moto holds them now: [(value, weight or None for a simple record)]."""
    sets = dns.record_sets(run.r53, run.zid)
    return {p.name: sorted((rr["ResourceRecords"][0]["Value"], rr.get("Weight")) for rr in sets.get(p.name, []))
            for p in run.plans}


def _weighted(run, percent: int) -> dict[str, list[tuple[str, int | None]]]:
    return {p.name: sorted([(p.shared_target, 100 - percent), (p.tenant_target, percent)]) for p in run.plans}


def _simple(run, to_tenant: bool) -> dict[str, list[tuple[str, int | None]]]:
    return {p.name: [(p.tenant_target if to_tenant else p.shared_target, None)] for p in run.plans}


def _shift_events(conn, run_id: str) -> list[int]:
    return [r[0] for r in conn.execute("SELECT (detail->>'percent')::int FROM tm_control.events WHERE run_id = %s "
                                       "AND step = 'dns_shift' ORDER BY event_id", (run_id,)).fetchall()]


@pytest.fixture
def seen(run, monkeypatch):
    """Records as moto holds them when each between-steps gate starts (a spy: the real gate runs)."""
    snapshots: dict[int, dict] = {}
    real = steps.gate_dns_shift

    def spy(ep, spec, run_id, slug, percent, tconn, tmap=None):
        snapshots[percent] = _state(run)
        return real(ep, spec, run_id, slug, percent, tconn, tmap)

    monkeypatch.setattr(go, "gate_dns_shift", spy)
    return snapshots


def test_shift_moves_10_50_100_with_a_gate_between_steps(endpoints, run, seen, target_admin) -> None:
    assert _state(run) == _simple(run, to_tenant=False)
    out = steps.flip_dns(endpoints, run.spec, run.run_id, run.slug)

    assert seen == {10: _weighted(run, 10), 50: _weighted(run, 50)}, "weights read back after each step"
    assert _state(run) == _simple(run, to_tenant=True), "100 % is the simple record the direct flip leaves"
    assert {n: chain[1] for n, chain in out["after"].items()} == {p.name: p.tenant_target for p in run.plans}
    assert _shift_events(target_admin, run.run_id) == [10, 50, 100]
    gates = target_admin.execute("SELECT gate, passed, evidence, report_path FROM tm_control.gates WHERE run_id = %s "
                                 "AND gate LIKE 'dns_shift_%%' ORDER BY gate", (run.run_id,)).fetchall()
    assert [(g, ok) for g, ok, _, _ in gates] == [("dns_shift_10", True), ("dns_shift_50", True)]
    for _, _, evidence, report_path in gates:
        assert {c["name"] for c in evidence["checks"]} == {"records_at_step_weights", "target_healthy"}
        assert Path(report_path).exists()
    # Downstream sees what it sees after a direct flip.
    assert steps.gate_post_flip(endpoints, run.spec, run.run_id, run.slug, {"cassandra_passes": [{"rows": 0}]})["passed"]


def test_fleet_resolver_splits_clients_by_weight_mid_shift(endpoints, run) -> None:
    dns.shift_records(run.r53, run.zid, run.plans, 50)
    resolver = CachingResolver(run.r53, run.zid)
    name = run.plans[0].name
    answers = [resolver.resolve(name, client=f"device-{i}").endpoint for i in range(400)]
    on_target = answers.count(run.plans[0].tenant_target)
    assert set(answers) == {run.plans[0].shared_target, run.plans[0].tenant_target}
    assert 120 < on_target < 280, f"about half the clients answer the target, got {on_target} of 400"
    assert [resolver.resolve(name, client=f"device-{i}").endpoint for i in range(400)] == answers, "stable per client"


@pytest.mark.parametrize("when", [
    pytest.param("after", id="raises after the 50 % batch was applied (new state)"),
    pytest.param("before", id="raises before the 50 % batch was sent (old state)"),
])
def test_a_failure_between_steps_then_a_retry_converges(endpoints, run, target_admin, monkeypatch, when: str) -> None:
    real = dns.shift_records

    def failing(client, zid, plans, percent, *args, **kwargs):
        if percent == 50 and when == "before":
            raise ConnectionError("injected: network lost before the 50 % batch")
        result = real(client, zid, plans, percent, *args, **kwargs)
        if percent == 50:
            raise ConnectionError("injected: task died after the 50 % batch")
        return result

    monkeypatch.setattr(dns, "shift_records", failing)
    with pytest.raises(ConnectionError, match="injected"):
        steps.flip_dns(endpoints, run.spec, run.run_id, run.slug)
    stopped_at = 50 if when == "after" else 10
    assert _state(run) == _weighted(run, stopped_at), "one batch is all or nothing: old or new state"
    monkeypatch.setattr(dns, "shift_records", real)

    events_before = len(_shift_events(target_admin, run.run_id))
    steps.flip_dns(endpoints, run.spec, run.run_id, run.slug)
    assert _state(run) == _simple(run, to_tenant=True)
    retried = _shift_events(target_admin, run.run_id)[events_before:]
    assert retried == {50: [50, 100], 10: [10, 50, 100]}[stopped_at], "resumes at the weight it finds"
    assert min(retried) >= stopped_at, "a retry never moves traffic back to the source"


def _stop_shift_at_50(monkeypatch) -> None:
    """The gate after the 50 % step fails (an operator stopping the shift there)."""
    real = steps.gate_dns_shift

    def stop_at_50(ep, spec, run_id, slug, percent, tconn, tmap=None):
        if percent == 50:
            raise GateFailed("injected: the shift stops at 50 %")
        return real(ep, spec, run_id, slug, percent, tconn, tmap)

    monkeypatch.setattr(go, "gate_dns_shift", stop_at_50)


def test_rollback_from_the_middle_of_a_shift_converges_to_the_source(endpoints, run, monkeypatch) -> None:
    _stop_shift_at_50(monkeypatch)
    with pytest.raises(GateFailed, match="injected"):
        steps.flip_dns(endpoints, run.spec, run.run_id, run.slug)
    assert _state(run) == _weighted(run, 50)

    back = rollback.RollbackSpec(tenant_id=TENANT, confirm_tenant_slug=run.slug, max_ttl_wait_s=0)
    out = rollback.flip_dns_back(endpoints, back, run.run_id, run.slug)
    assert _state(run) == _simple(run, to_tenant=False), "no weighted member left, the simple source record back"
    assert {n: chain[1] for n, chain in out["after"].items()} == {p.name: p.shared_target for p in run.plans}
    resolver = CachingResolver(run.r53, run.zid)
    assert {resolver.resolve(p.name, client=f"d{i}").endpoint for p in run.plans for i in range(50)} == {
        p.shared_target for p in run.plans}
    rollback.flip_dns_back(endpoints, back, run.run_id, run.slug)  # again: nothing left to change
    assert _state(run) == _simple(run, to_tenant=False)


@pytest.mark.parametrize(("where", "expected"), [
    pytest.param("weights", r"records_at_step_weights .*units unexpected: ", id="a record's weights changed behind its back"),
    pytest.param("target", r"target_healthy .*units unexpected: postgres target", id="the tenant's row missing on the target"),
])
def test_gate_between_steps_stops_the_shift_with_evidence(endpoints, run, target_admin, monkeypatch, where: str,
                                                          expected: str) -> None:
    real = steps.gate_dns_shift

    def break_then_gate(ep, spec, run_id, slug, percent, tconn, tmap=None):
        if where == "weights":
            dns.shift_records(run.r53, run.zid, run.plans[:1], 50)
        else:
            target_admin.execute("DELETE FROM platform.tenants WHERE tenant_id = %s", (TENANT,))
        return real(ep, spec, run_id, slug, percent, tconn, tmap)

    monkeypatch.setattr(go, "gate_dns_shift", break_then_gate)
    with pytest.raises(GateFailed, match=expected) as exc:
        steps.flip_dns(endpoints, run.spec, run.run_id, run.slug)
    if where == "weights":
        assert run.plans[0].name in str(exc.value)
    passed, evidence, report_path = target_admin.execute(
        "SELECT passed, evidence, report_path FROM tm_control.gates WHERE run_id = %s AND gate = 'dns_shift_10'",
        (run.run_id,)).fetchone()
    assert passed is False and Path(report_path).exists()
    assert [c["name"] for c in evidence["checks"] if not c["success"]] == [expected.split(" ")[0]]
    assert _shift_events(target_admin, run.run_id) == [10], "no step after a failed gate"


@pytest.mark.parametrize("steps_param", [
    pytest.param("50,10,100", id="descending"),
    pytest.param("10,50", id="does not end at 100"),
    pytest.param("0,100", id="0 %"),
    pytest.param("10,150", id="over 100 %"),
    pytest.param("10,10,100", id="repeated step"),
    pytest.param("ten,100", id="not a number"),
])
def test_bad_step_lists_are_refused_before_anything_is_written(endpoints, tiny_dataset, target_admin, steps_param: str,
                                                               topo) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    r53 = endpoints.aws.client("route53")
    zid = dns.zone_id(r53, "iot.example.test.")
    before = dns.record_sets(r53, zid)
    run_id = f"bad-{uuid.uuid4().hex[:8]}"
    ctx = {"params": {"tenant_id": TENANT, "dns_shift_percent_steps": steps_param, "dns_shift_dwell_s": 0},
           "dag": types.SimpleNamespace(dag_id="tenant_migration"), "run_id": run_id}
    with pytest.raises(AirflowFailException, match="dns_shift_percent_steps"):
        runtime.call(steps.preflight, ctx)
    with pytest.raises(AirflowFailException, match="dns_shift_percent_steps"):
        runtime.call(steps.flip_dns, ctx, "acme")
    assert ledger_runs(target_admin, f"tenant_migration/{run_id}") == 0
    assert dns.record_sets(r53, zid) == before, "no DNS change"


def test_abort_mid_shift_keeps_the_writes_the_source_took_during_the_shift(topo, endpoints, run, monkeypatch,
                                                                          primary_admin) -> None:
    """A rollback from 50 % copies the target's rows back over the source's; the rows the source
    took during the shift must reach the target first (the run's change stream), or they are lost."""
    spec, run_id = run.spec, run.run_id
    with admin(topo, "target") as t:  # the fixture's lone tenant row: the copy below brings it with the rest
        t.execute("DELETE FROM platform.tenants WHERE tenant_id = %s", (TENANT,))
    slot = steps.create_cdc_slot(endpoints, spec, run_id)
    try:
        steps.detach_replica(endpoints, spec, run_id, slot["consistent_lsn"])
        try:
            steps.copy_postgres(endpoints, spec, run_id)
        finally:
            steps.reattach_replica(endpoints, spec, run_id, keep_for_resume=False)
        steps.catch_up_postgres(endpoints, spec, run_id, until_now=True)
        _stop_shift_at_50(monkeypatch)
        with pytest.raises(GateFailed, match="injected"):
            steps.flip_dns(endpoints, spec, run_id, run.slug)
        steps.resume_registrations(endpoints, spec, run_id, keep_for_resume=False)  # the teardown, as the DAG runs it
        late = uuid.uuid4()  # a user a device-app created through the source while it held 50 %
        with endpoints.source_primary.connect(autocommit=True) as app:
            app.execute("INSERT INTO platform.users (user_id, tenant_id, email, display_name, role) "
                        "VALUES (%s, %s, %s, 'late', 'viewer')", (late, TENANT, f"late-{late}@example.test"))

        back_id = f"{run_id}/back"
        back = rollback.RollbackSpec(tenant_id=TENANT, confirm_tenant_slug=run.slug, migration_run_id=run_id,
                                     max_ttl_wait_s=0)
        rollback.check_rollback(endpoints, back, back_id)
        rollback.flip_dns_back(endpoints, back, back_id, run.slug)
        out = rollback.copy_back_postgres(endpoints, back, back_id)
        assert out["caught_up"] is not None, "the unfinished flip was caught up before the copy-back"
        found = primary_admin.execute("SELECT count(*) FROM platform.users WHERE user_id = %s", (late,)).fetchone()[0]
        assert found == 1, "the write the source took mid-shift survives the rollback"
        assert _state(run) == _simple(run, to_tenant=False)
    finally:
        steps.drop_cdc_slot(endpoints, spec, run_id, keep_for_resume=False)
        primary_admin.execute("DELETE FROM platform.users WHERE email LIKE 'late-%%@example.test'")
