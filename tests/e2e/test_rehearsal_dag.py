"""The rehearsal DAG end to end: test-pool to the target and back, shared data unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import admin, parse_dag

from tenant_migration.cutover import dns
from tenant_migration.sample import data, dns_records
from tenant_migration.spec import MigrationSpec

pytestmark = pytest.mark.e2e

FAST = {"max_ttl_wait_s": 1, "drain_seconds": 3}


@pytest.fixture
def dag(topo, tiny_dataset):
    from tenant_migration.sample import platform

    platform.demo_reset(topo)
    return parse_dag("tenant_rehearsal")


def test_rehearsal_goes_there_and_back_and_reports(dag, topo, endpoints, reports) -> None:
    dagrun = dag.test(run_conf=FAST)
    states = {ti.task_id: str(ti.state) for ti in dagrun.get_task_instances()}
    assert str(dagrun.state) == "success", states
    assert set(states.values()) == {"success"}, states
    r53 = endpoints.aws.client("route53")
    zid = dns.zone_id(r53, MigrationSpec.dns_zone)
    for plan in dns.tenant_records(dns_records(), MigrationSpec.dns_zone, data.TEST_POOL_SLUG):
        assert dns.resolve(r53, zid, plan.name)[1] == plan.shared_target
    with admin(topo, "target") as t:
        row = t.execute("SELECT verdict, report_path, predicted_seconds FROM tm_control.rehearsals "
                        "ORDER BY started_at DESC LIMIT 1").fetchone()
        assert t.execute("SELECT count(*) FROM platform.devices").fetchone() == (0,)  # purged
        # Only this rehearsal's gates (earlier runs' rows stay in the ledger's history).
        gates = dict(t.execute("SELECT gate, bool_and(passed) FROM tm_control.gates WHERE run_id LIKE %s "
                               "GROUP BY gate", (f"tenant_rehearsal/{dagrun.run_id}%",)).fetchall())
    assert row[0] == "GO"
    assert gates.get("shared_unchanged") is True and gates.get("copy_back") is True
    report = json.loads(Path(row[1]).read_text())
    assert report["prediction"]["tasks"]["ready.copy_postgres_batch"] > 0
    assert report["sizes"]["reference"]["total_rows"] > report["sizes"]["rehearsal"]["total_rows"]
    assert list(reports.rglob("rehearsal_durations.png"))
