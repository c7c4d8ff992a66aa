"""Issue 33, item 3: the rehearsal of the guide (docs/own-platform.md) on the second platform --
meterhub's fjord-heat org to the target and back through ``tenant_rehearsal``, org 2 the reference.
Before the fix its first task failed: the shared platform's baseline held the Cassandra chunks'
uuid keys, which JSON cannot store."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from helpers import admin, parse_dag

from tenant_migration import profile
from tenant_migration.cutover import dns
from tenant_migration.sample.meterhub import PROFILE, PROFILES
from tenant_migration.sample.meterhub import platform as meterhub
from tenant_migration.spec import MigrationSpec

pytestmark = pytest.mark.e2e

ORG, SLUG, REFERENCE = 6, "fjord-heat", 2


@pytest.fixture
def rehearsal_dag(topo, monkeypatch: pytest.MonkeyPatch):
    from tenant_migration import params

    monkeypatch.setenv("TM_PROFILES_DIR", str(PROFILES))
    importlib.reload(params)
    meterhub.load_data(topo, "tiny", 7)
    meterhub.demo_reset(topo)
    yield parse_dag("tenant_rehearsal")
    monkeypatch.undo()
    importlib.reload(params)


def test_a_meterhub_org_is_rehearsed_there_and_back_with_the_shared_platform_unchanged(
        rehearsal_dag, topo, endpoints, reports) -> None:
    dagrun = rehearsal_dag.test(run_conf={"platform": "meterhub", "tenant_id": ORG, "tenant_slug": SLUG,
                                          "reference_tenant_id": REFERENCE, "max_ttl_wait_s": 1, "drain_seconds": 3})
    states = {ti.task_id: str(ti.state) for ti in dagrun.get_task_instances()}
    assert str(dagrun.state) == "success", states
    assert set(states.values()) == {"success"}, states
    with admin(topo, "target") as t:
        row = t.execute("SELECT verdict, report_path, baseline FROM tm_control.rehearsals "
                        "WHERE rehearsal_id LIKE %s", (f"tenant_rehearsal/{dagrun.run_id}%",)).fetchone()
        assert t.execute("SELECT count(*) FROM hub.meters").fetchone() == (0,)  # purged
        gates = dict(t.execute("SELECT gate, bool_and(passed) FROM tm_control.gates WHERE run_id LIKE %s "
                               "GROUP BY gate", (f"tenant_rehearsal/{dagrun.run_id}%",)).fetchall())
    assert row is not None and row[0] == "GO"
    assert gates.get("shared_unchanged") is True and gates.get("copy_back") is True
    # The baseline kept the org's Cassandra chunks with their uuid keys, typed (keycodec).
    assert any("uuid" in json.dumps(c["bounds"]) for c in row[2]["cql_chunks"])
    report = json.loads(Path(row[1]).read_text())
    assert report["sizes"]["rehearsal"]["rows"]["meters"] > 0
    assert report["sizes"]["reference"]["total_rows"] > report["sizes"]["rehearsal"]["total_rows"]
    prof = profile.load(PROFILE)
    r53 = endpoints.aws.client("route53")
    zid = dns.zone_id(r53, MigrationSpec.dns_zone)
    for plan in dns.tenant_records(prof.dns.records, MigrationSpec.dns_zone, SLUG, tenant_id=ORG):
        assert dns.resolve(r53, zid, plan.name)[1] == plan.shared_target, f"{plan.name} is back on the shared platform"
