"""Zero-downtime proof: the whole migration DAG runs while a simulated fleet of the tenant writes
through its DNS records the entire time; afterwards the journal is checked against the target.

The tenant's records are published with a 6 s TTL first (the rehearsal's "normal" TTL) so that
``max_ttl_wait_s`` can honestly wait it out; the lowered TTL is 2 s and the drain (8 s) outlasts
it, so every straggler is drained by the DAG itself.
"""

from __future__ import annotations

import threading
import time

import pytest
from helpers import admin

from tenant_migration.cutover import dns
from tenant_migration.sample import data, dns_records
from tenant_migration.sample.fleet import report as zd_report
from tenant_migration.sample.fleet.__main__ import build
from tenant_migration.sample.fleet.journal import Journal
from tenant_migration.sample.fleet.simulator import FleetConfig, FleetStats
from tenant_migration.sample.fleet.verify import verify
from tenant_migration.spec import MigrationSpec

pytestmark = pytest.mark.e2e

TENANT = 4
NORMAL_TTL = 6
RUN = {"tenant_id": TENANT, "require_approval": False, "max_ttl_wait_s": NORMAL_TTL, "lowered_ttl": 2,
       "drain_seconds": 8, "drain_quiet_s": 3, "load_rate": 100, "load_seconds": 2,
       "load_max_p99_ms": 2000, "load_min_rate_pct": 50}  # the load check runs beside the whole stack on 2 shared cores




def test_fleet_sees_no_downtime_and_loses_nothing(dag, topo, endpoints, reports, tmp_path) -> None:
    slug = data.TENANT_SLUGS[TENANT - 1]
    r53 = endpoints.aws.client("route53")
    zid = dns.zone_id(r53, MigrationSpec.dns_zone)
    dns.lower_ttl(r53, zid, dns.tenant_records(dns_records(), MigrationSpec.dns_zone, slug), NORMAL_TTL)
    cfg = FleetConfig(tenant_id=TENANT, slug=slug, devices=60, active_fraction=0.2, active_per_second=2.0,
                      background_per_hour=60.0, app_updates_per_second=2.0, registrations_per_minute=20.0,
                      device_registrations_per_minute=10.0, registration_retry_s=2.0, duration_s=3600.0,
                      dns_clients=8, app_clients=2)
    journal_file = tmp_path / "journal.jsonl"
    journal = Journal(journal_file)
    fleet = build(endpoints, cfg, journal)
    fleet.connect_all()
    outcome: dict[str, FleetStats | BaseException] = {}

    def run_fleet() -> None:
        try:
            outcome["stats"] = fleet.run()
        except BaseException as exc:
            outcome["error"] = exc

    sampler = zd_report.LagSampler(endpoints.source_cdc, endpoints.target, interval=1.0).start()
    thread = threading.Thread(target=run_fleet, name="fleet", daemon=True)
    thread.start()
    try:
        time.sleep(3)  # the fleet is writing to the shared platform before the migration starts
        dagrun = dag.test(run_conf=RUN)
        time.sleep(4)  # and keeps writing, now to the target, after the DAG finished
    finally:
        fleet.stop()
        thread.join(timeout=120)
        journal.close()
        samples = sampler.stop()
    assert "error" not in outcome, outcome.get("error")
    states = {ti.task_id: str(ti.state) for ti in dagrun.get_task_instances()}
    assert str(dagrun.state) == "success", states
    stats = outcome["stats"]
    assert isinstance(stats, FleetStats)

    with admin(topo, "target") as t:
        run_id = t.execute("SELECT run_id FROM tm_control.runs WHERE tenant_id = %s ORDER BY started_at DESC LIMIT 1",
                           (TENANT,)).fetchone()[0]
        # Nothing of another tenant moved.
        for table in ("users", "devices", "tenants", "tenant_settings", "api_keys"):
            assert t.execute(f"SELECT count(*) FROM platform.{table} WHERE tenant_id <> %s",
                             (TENANT,)).fetchone() == (0,), table
    with endpoints.cassandra_target.session() as s:
        moved = {r[0] for r in s.execute("SELECT DISTINCT device_id, property_id, day FROM telemetry.datapoints")}
    with admin(topo, "primary") as p:
        foreign = p.execute("SELECT count(*) FROM platform.devices WHERE tenant_id <> %s AND device_id = ANY(%s)",
                            (TENANT, sorted(moved))).fetchone()[0]
    assert moved and foreign == 0

    rep = zd_report.build_report(journal_file, endpoints.target, run_id, tmp_path / "zd", lag=samples)
    print(rep.summary())

    # Every acknowledged write is on the target, in its final state.
    result = verify(journal_file, endpoints.target, endpoints.cassandra_target)
    assert result.ok, result.to_dict()
    assert result.datapoints_acked > 0 and result.app_updates_checked > 0 and result.registrations_acked > 0

    # No device write failed or timed out at any point.
    assert stats.failed["datapoint"] == 0, stats.to_dict()
    assert rep.device_write_unavailable_seconds == 0 and rep.device_writes["failed"] == 0
    # Both platforms took device writes: the flip happened under load.
    assert len([e for e in rep.writes_per_endpoint if e.startswith("devices.")]) == 2, rep.writes_per_endpoint

    # Registrations were refused only inside the recorded window, and accepted on retry.
    assert rep.suspension["start"] is not None and rep.suspension["end"] is not None
    assert rep.registrations["rejected"] > 0  # the window was exercised
    assert rep.registrations["rejected_outside_window"] == 0, rep.registrations
    assert rep.registrations["never_accepted"] == []
    assert rep.registrations["rejected_then_accepted"] > 0

    # Every straggler arrived before the drain finished (so the drain could bring it over).
    assert rep.stragglers["after_drain"] == 0, rep.stragglers
    # The report's numbers agree with each other and with the fleet's own counters.
    assert sum(sum(v) for v in rep.series.values()) == sum(rep.writes_per_endpoint.values())
    assert rep.device_writes["acked"] == stats.acked["datapoint"] == result.datapoints_acked
    assert rep.flip_at is not None and rep.suspension["start"] < rep.flip_at < rep.suspension["end"]
    assert zd_report.Path(rep.png).exists() and zd_report.Path(rep.png).stat().st_size > 0
    assert (tmp_path / "zd" / "zero_downtime.json").exists()
