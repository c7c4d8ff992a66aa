"""The flip checks its own preconditions at the moment it flips, through the moto server over HTTP:
records reset to a long TTL by the control plane are lowered and waited out again, registrations
resumed by a teardown are suspended again, a missing record is refused by name, and a retried
TTL wait waits only what is left of it."""

from __future__ import annotations

import time
import types
import uuid
from datetime import UTC, datetime

import pytest
from helpers import admin

from tenant_migration import steps
from tenant_migration.cutover import dns, registrations
from tenant_migration.flows import go
from tenant_migration.sample import aws, dns_records
from tenant_migration.sample import profile as sample_profile
from tenant_migration.spec import MigrationSpec

pytestmark = pytest.mark.integration
SWITCH = sample_profile().registrations

TENANT = 3
LOWERED = 2
WAIT = 2  # max_ttl_wait_s: the cap on waiting out the old TTL (300 s as the zone is seeded)


@pytest.fixture
def run(topo, tiny_dataset, endpoints, reports):
    """A registered run of TENANT, records simple on the shared platform at the seeded TTL (300 s)."""
    from tenant_migration.sample import platform

    platform.demo_reset(topo)
    spec = MigrationSpec(tenant_id=TENANT, lowered_ttl=LOWERED, max_ttl_wait_s=WAIT)
    run_id = f"pre/{uuid.uuid4().hex[:8]}"
    slug = steps.preflight(endpoints, spec, run_id)["slug"]
    r53 = endpoints.aws.client("route53")
    zid = dns.zone_id(r53, spec.dns_zone)
    plans = dns.tenant_records(dns_records(), spec.dns_zone, slug, spec.target_endpoint_prefix)
    yield types.SimpleNamespace(spec=spec, run_id=run_id, slug=slug, r53=r53, zid=zid, plans=plans)
    steps.resume_registrations(endpoints, spec, run_id, keep_for_resume=False)
    platform.demo_reset(topo)


def _ttls(run) -> dict[str, list[int]]:
    sets = dns.record_sets(run.r53, run.zid)
    return {p.name: sorted(int(rr["TTL"]) for rr in sets[p.name]) for p in run.plans}


def _events(conn, run_id: str, step: str) -> list[dict]:
    return [r[0] for r in conn.execute("SELECT detail FROM tm_control.events WHERE run_id = %s AND step = %s "
                                       "ORDER BY event_id", (run_id, step)).fetchall()]


def _control_plane_resets(run) -> None:
    """What a Route53 outage left behind in the trial: the tenant's records back on the shared
    platform at their old, long TTL (the stack's seed, as after a moto restart)."""
    aws.seed_dns(run.r53, [run.slug], zone=run.spec.dns_zone, prefix=run.spec.target_endpoint_prefix, reset=True)
    assert _ttls(run) == {p.name: [300] for p in run.plans}


def test_a_flip_after_the_records_were_reset_lowers_and_waits_again(endpoints, run, target_admin) -> None:
    first = steps.lower_dns_ttl(endpoints, run.spec, run.run_id, run.slug)
    assert first["old_ttl"] == 300 and first["waited_s"] == WAIT
    assert _ttls(run) == {p.name: [LOWERED] for p in run.plans}
    _control_plane_resets(run)

    started = time.monotonic()
    out = steps.flip_dns(endpoints, run.spec, run.run_id, run.slug)
    took = time.monotonic() - started
    assert {n: chain[1] for n, chain in out["after"].items()} == {p.name: p.tenant_target for p in run.plans}
    lowered = _events(target_admin, run.run_id, "dns_ttl_lowered")
    assert [e["by"] for e in lowered] == ["lower_dns_ttl", "flip_dns"], "lowered again, by the flip itself"
    assert lowered[1]["found_above"] == {p.name: 300 for p in run.plans}, "names each record and the TTL found"
    assert lowered[1]["wait_s"] == WAIT and took >= WAIT * 0.9, "the old TTL waited out again (to the cap)"
    assert _ttls(run) == {p.name: [LOWERED] for p in run.plans}, "the flipped records keep the lowered TTL"
    # The flip began after the wait: nothing moved while it waited.
    flip_at, wait_at = target_admin.execute(
        "SELECT MIN(at) FILTER (WHERE step = 'dns_flip_begins'), MAX(at) FILTER (WHERE step = 'dns_ttl_lowered') "
        "FROM tm_control.events WHERE run_id = %s", (run.run_id,)).fetchone()
    assert (flip_at - wait_at).total_seconds() >= WAIT * 0.9


def test_a_retried_ttl_wait_waits_only_what_is_left(endpoints, run, target_admin) -> None:
    steps.lower_dns_ttl(endpoints, run.spec, run.run_id, run.slug)
    again = steps.lower_dns_ttl(endpoints, run.spec, run.run_id, run.slug)
    assert again["waited_s"] == 0 and again["found_above"] == {}
    assert len(_events(target_admin, run.run_id, "dns_ttl_lowered")) == 1


def test_a_deferred_ttl_wait_keeps_the_deadline_its_first_try_set(endpoints, run, target_admin) -> None:
    """``wait=False`` (the DAG hands the wait to the triggerer): nothing sleeps, and every try --
    the first, a resumed one, a cleared one -- names the same moment, the first lowering's."""
    started = time.monotonic()
    first = go.lower_dns_ttl(endpoints, run.spec, run.run_id, run.slug, wait=False)
    assert time.monotonic() - started < WAIT, "it did not sleep"
    assert first["waited_s"] == WAIT
    time.sleep(1)
    again = go.lower_dns_ttl(endpoints, run.spec, run.run_id, run.slug, wait=False)
    assert 0 < again["waited_s"] < WAIT
    deadlines = [datetime.fromisoformat(o["wait_until"]) for o in (first, again)]
    assert abs((deadlines[1] - deadlines[0]).total_seconds()) < 0.2, deadlines
    lowered_at = target_admin.execute("SELECT at FROM tm_control.events WHERE run_id = %s AND step = "
                                      "'dns_ttl_lowered'", (run.run_id,)).fetchone()[0]
    assert abs((deadlines[0] - lowered_at).total_seconds() - WAIT) < 0.2
    time.sleep(WAIT)
    late = go.lower_dns_ttl(endpoints, run.spec, run.run_id, run.slug, wait=False)
    assert late["waited_s"] == 0 and datetime.fromisoformat(late["wait_until"]) <= datetime.now(UTC)


def test_each_step_of_a_shift_checks_the_ttl_again(endpoints, run, target_admin, primary_admin, monkeypatch) -> None:
    cur = primary_admin.execute("SELECT * FROM platform.tenants WHERE tenant_id = %s", (TENANT,))
    cols = [d.name for d in cur.description]  # the root row the between-steps gate probes on the target
    target_admin.execute(f"INSERT INTO platform.tenants ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                         cur.fetchone())
    spec = MigrationSpec(tenant_id=TENANT, lowered_ttl=LOWERED, max_ttl_wait_s=WAIT,
                         dns_shift_percent_steps=(10, 50, 100), dns_shift_dwell_s=0)
    real = steps.gate_dns_shift

    def reset_between_steps(ep, spec_, run_id, slug, percent, tconn, tmap=None):
        result = real(ep, spec_, run_id, slug, percent, tconn, tmap)
        if percent == 10:  # the control plane republishes the 10 % pair at a long TTL
            dns.shift_records(run.r53, run.zid, run.plans, 10, ttl=300)
        return result

    monkeypatch.setattr(go, "gate_dns_shift", reset_between_steps)
    steps.flip_dns(endpoints, spec, run.run_id, run.slug)
    lowered = _events(target_admin, run.run_id, "dns_ttl_lowered")
    assert [e["by"] for e in lowered] == ["flip_dns", "flip_dns"]
    assert lowered[1]["found_above"] == {p.name: 300 for p in run.plans}
    assert _ttls(run) == {p.name: [LOWERED] for p in run.plans}


def test_a_flip_after_registrations_were_resumed_suspends_them_again(endpoints, run, target_admin) -> None:
    steps.suspend_registrations(endpoints, run.spec, run.run_id)
    steps.resume_registrations(endpoints, run.spec, run.run_id, keep_for_resume=False)  # the teardown after a failure
    with endpoints.source_operator.connect(autocommit=True) as op:
        assert not registrations.status(op, SWITCH, TENANT).active
    steps.flip_dns(endpoints, run.spec, run.run_id, run.slug)
    with endpoints.source_operator.connect(autocommit=True) as op:
        assert registrations.status(op, SWITCH, TENANT).active, "the flip never happens with registrations open"
    by = [e.get("by") for e in _events(target_admin, run.run_id, "registrations_suspended")]
    assert by == [None, "flip_dns"]


def test_the_teardown_resumes_then_fails_while_the_cutover_is_unfinished(endpoints, run, target_admin) -> None:
    steps.suspend_registrations(endpoints, run.spec, run.run_id)
    with pytest.raises(steps.KeptForResume, match=rf"registrations of tenant {TENANT} were resumed although the "
                                                  r"cutover did not finish .*only failed, with downstream"):
        steps.resume_registrations(endpoints, run.spec, run.run_id)
    with endpoints.source_operator.connect(autocommit=True) as op:
        assert not registrations.status(op, SWITCH, TENANT).active, "resumed first: the tenant can register again"
    target_admin.execute("UPDATE tm_control.runs SET status = 'aborted' WHERE run_id = %s", (run.run_id,))
    steps.resume_registrations(endpoints, run.spec, run.run_id)  # an aborted run: nothing to resume into


def test_a_record_the_control_plane_lost_is_refused_by_name(endpoints, run, topo) -> None:
    victim = run.plans[0]
    sets = [{k: v for k, v in rr.items() if k in ("Name", "Type", "TTL", "ResourceRecords")}
            for rr in dns.record_sets(run.r53, run.zid)[victim.name]]
    run.r53.change_resource_record_sets(HostedZoneId=run.zid, ChangeBatch={"Changes": [
        {"Action": "DELETE", "ResourceRecordSet": rr} for rr in sets]})
    with pytest.raises(dns.DnsError, match=rf"holds no record for {victim.name}"):
        steps.flip_dns(endpoints, run.spec, run.run_id, run.slug)
    with admin(topo, "target") as t:
        assert _events(t, run.run_id, "dns_flip_begins") == [], "nothing moved"
