"""The fleet and the load check against the real stack (tiny dataset)."""

from __future__ import annotations

import pytest

from tenant_migration.sample import data
from tenant_migration.sample.fleet.__main__ import build
from tenant_migration.sample.fleet.journal import Journal
from tenant_migration.sample.fleet.loadcheck import LOAD_DAY, clean_up, run_load
from tenant_migration.sample.fleet.simulator import FleetConfig, tenant_profile

pytestmark = pytest.mark.integration

TENANT = 5


def test_every_attempt_is_journaled_and_resolved_through_dns(endpoints, tiny_dataset, tmp_path) -> None:
    cfg = FleetConfig(tenant_id=TENANT, slug=data.TENANT_SLUGS[TENANT - 1], devices=20, active_fraction=0.5,
                      active_per_second=5.0, app_updates_per_second=5.0, registrations_per_minute=60.0,
                      device_registrations_per_minute=60.0, duration_s=3.0)
    journal = Journal(tmp_path / "j.jsonl")
    stats = build(endpoints, cfg, journal).run()
    journal.close()
    records = list(Journal.read(journal.path))
    assert len(records) == sum(stats.attempted.values()) > 0
    assert {r.kind for r in records} >= {"datapoint", "app", "registration", "device_registration"}
    assert all(r.acked for r in records), [r.error for r in records if not r.acked][:3]
    assert {r.endpoint for r in records} == {"devices.shared.iot.example.test.", "api.shared.iot.example.test."}


def test_load_check_writes_only_the_sentinel_day_and_cleans_it_up(endpoints, tiny_dataset) -> None:
    profile = tenant_profile(endpoints.replica, TENANT, 50)
    res = run_load(endpoints, profile, rate=100.0, seconds=2.0, processes=1)
    assert res.errors == 0 and res.acked > 100 and res.p99_ms is not None
    with endpoints.cassandra_target.session() as s:
        d, p = profile.pairs[0]
        clean_up(endpoints, profile)
        rows = list(s.execute("SELECT ts FROM telemetry.datapoints WHERE device_id = %s AND property_id = %s "
                              "AND day = %s", (d, p, LOAD_DAY)))
    assert rows == []
