"""The rollback DAG end to end: migrate a tenant (DNS flipped), let it change data on its dedicated
target (insert, update, delete; a new datapoint in Cassandra), then roll back through
``tenant_rollback``: DNS answers the shared platform again, the changes are on the shared primary
and cluster, and the copy-back gate's result is in the ledger. An unconfirmed rollback writes
nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from helpers import admin, parse_dag

from tenant_migration.cutover import dns
from tenant_migration.postgres.copy import table_checksum
from tenant_migration.sample import SAMPLE_MAP, data, dns_records
from tenant_migration.spec import MigrationSpec
from tenant_migration.tenant_map import load_tenant_map

pytestmark = pytest.mark.e2e

TENANT = 4
FAST = {"require_approval": False, "max_ttl_wait_s": 1, "drain_seconds": 3, "drain_quiet_s": 2, "load_rate": 0}


@pytest.fixture
def rollback_dag(dag):
    """The rollback DAG (after the ``dag`` fixture reset the target and DNS)."""
    return parse_dag("tenant_rollback")


def _answers(endpoints, slug: str) -> set[str]:
    r53 = endpoints.aws.client("route53")
    zid = dns.zone_id(r53, MigrationSpec.dns_zone)
    return {"target" if dns.resolve(r53, zid, p.name)[1] == p.tenant_target else
            "shared" if dns.resolve(r53, zid, p.name)[1] == p.shared_target else "other"
            for p in dns.tenant_records(dns_records(), MigrationSpec.dns_zone, slug)}


def test_rollback_brings_dns_and_post_flip_changes_back(dag, rollback_dag, topo, endpoints, reports) -> None:
    slug = data.TENANT_SLUGS[TENANT - 1]
    migrated = dag.test(run_conf={"tenant_id": TENANT, **FAST})
    assert str(migrated.state) == "success"
    assert _answers(endpoints, slug) == {"target"}

    # The tenant works on its dedicated deployment after the flip.
    with admin(topo, "target") as t:
        dev, dev_name = t.execute("SELECT device_id, name FROM platform.devices WHERE tenant_id = %s "
                                  "ORDER BY device_id LIMIT 1", (TENANT,)).fetchone()
        t.execute("UPDATE platform.devices SET name = name || ' (renamed on target)' WHERE device_id = %s", (dev,))
        user = t.execute("SELECT user_id FROM platform.users WHERE tenant_id = %s LIMIT 1", (TENANT,)).fetchone()[0]
        t.execute("INSERT INTO platform.dashboards (dashboard_id, user_id, title) VALUES (%s, %s, 'made on target')",
                  (990_000_001, user))
        gone = t.execute("SELECT ra.rule_id, ra.action_no FROM platform.rule_actions ra JOIN platform.rules r USING "
                         "(rule_id) JOIN platform.properties p USING (property_id) JOIN platform.devices d USING "
                         "(device_id) WHERE d.tenant_id = %s LIMIT 1", (TENANT,)).fetchone()
        t.execute("DELETE FROM platform.rule_actions WHERE rule_id = %s AND action_no = %s", gone)
        prop = t.execute("SELECT property_id FROM platform.properties WHERE device_id = %s LIMIT 1", (dev,)).fetchone()[0]
    now = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    with endpoints.cassandra_target.session() as s:
        s.execute("INSERT INTO telemetry.datapoints (device_id, property_id, day, ts, value, quality) "
                  "VALUES (%s, %s, %s, %s, 4242.5, 1)", (dev, prop, now.date(), now))

    refused = rollback_dag.test(run_conf={"tenant_id": TENANT, "confirm_tenant_slug": "not-" + slug,
                                          "max_ttl_wait_s": 1})
    assert str(refused.state) == "failed"
    assert _answers(endpoints, slug) == {"target"}  # an unconfirmed rollback changed nothing

    rolled = rollback_dag.test(run_conf={"tenant_id": TENANT, "confirm_tenant_slug": slug, "max_ttl_wait_s": 1})
    states = {ti.task_id: str(ti.state) for ti in rolled.get_task_instances()}
    assert str(rolled.state) == "success", states
    assert _answers(endpoints, slug) == {"shared"}
    with admin(topo, "primary") as p:
        assert p.execute("SELECT name FROM platform.devices WHERE device_id = %s", (dev,)).fetchone() == (
            dev_name + " (renamed on target)",)
        assert p.execute("SELECT title FROM platform.dashboards WHERE dashboard_id = 990000001").fetchone() == (
            "made on target",)
        assert p.execute("SELECT count(*) FROM platform.rule_actions WHERE rule_id = %s AND action_no = %s",
                         gone).fetchone() == (0,)
        tmap = load_tenant_map(SAMPLE_MAP)
        with admin(topo, "target") as t:
            for table in tmap.load_order():
                assert table_checksum(p, tmap, table, TENANT) == table_checksum(t, tmap, table, TENANT), table
            gate = t.execute("SELECT passed FROM tm_control.gates WHERE run_id = %s AND gate = 'copy_back' "
                             "ORDER BY attempt DESC LIMIT 1", (f"tenant_rollback/{rolled.run_id}/back",)).fetchone()
    assert gate == (True,)
    with endpoints.cassandra_source.session() as s:
        row = s.execute("SELECT value FROM telemetry.datapoints WHERE device_id = %s AND property_id = %s AND day = %s "
                        "AND ts = %s", (dev, prop, now.date(), now)).one()
    assert row is not None and row.value == 4242.5
