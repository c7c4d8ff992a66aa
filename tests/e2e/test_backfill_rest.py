"""Backfill of a failed chunk through a real Airflow: ``airflow standalone`` on the test stack, the
migration triggered through the REST API with the conf the UI form sends, one chunk batch failing
for a real reason, then ONLY the failed task instances cleared through the REST API.

The failure is real, not a test-only code path: a rogue ``ENABLE ALWAYS`` trigger on the target
(the kind a deployment script leaves behind) rewrites one row of the tenant as it is loaded. The
chunk's own checksum comparison catches it inside the chunk transaction, the chunk rolls back and
the task fails without retry (a checksum mismatch is permanent). The test then repairs the target
(drops the trigger) and clears only the failed task instances (``only_failed``, with their
downstream, as the UI's *Clear -> Only failed* does).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from helpers import admin, unpaused_standalone
from helpers import rogue_trigger as leftover_trigger

from tenant_migration import ledger
from tenant_migration.cassandra.fingerprint import fingerprint_chunks
from tenant_migration.postgres.copy import table_checksum
from tenant_migration.sample import SAMPLE_MAP
from tenant_migration.stack.airflow_rest import AirflowRest
from tenant_migration.tenant_map import load_tenant_map

pytestmark = pytest.mark.e2e

DAG = "tenant_migration"
TENANT = 8  # a mid-sized tenant: several chunks per table at chunk_rows=100
# min_task_seconds 0: the tiny tenant's few seconds of copy would otherwise fit one task per store,
# and the test needs good batches beside the failing one.
FORM = {"tenant_id": TENANT, "chunk_rows": 100, "max_tasks": 4, "min_task_seconds": 0, "require_approval": False,
        "max_ttl_wait_s": 1, "drain_seconds": 3, "drain_quiet_s": 2, "load_rate": 100, "load_seconds": 2,
        "load_max_p99_ms": 2000, "load_min_rate_pct": 50}  # the load check runs beside a whole Airflow on 2 shared cores
BATCH = "ready.copy_postgres_batch"
TEARDOWNS = (("ready.reattach_replica", -1), ("drop_cdc_slot", -1))


@pytest.fixture(scope="module")
def airflow(topo, tmp_path_factory) -> Iterator[AirflowRest]:
    yield from unpaused_standalone(topo, tmp_path_factory.mktemp("airflow") / "standalone.log", DAG)


@pytest.fixture
def rogue_trigger(topo, tiny_dataset) -> Iterator[int]:
    """Break the target on purpose: rewrite the tenant's last property as it is loaded."""
    from tenant_migration.sample import platform

    platform.demo_reset(topo)
    with admin(topo, "primary") as p:
        victim = p.execute("SELECT max(p.property_id) FROM platform.properties p JOIN platform.devices d "
                           "USING (device_id) WHERE d.tenant_id = %s", (TENANT,)).fetchone()[0]
    # Fires whatever session_replication_role says (the copy runs as a replica session).
    with leftover_trigger(topo, "tm_test_rogue", "platform.properties", f"NEW.property_id = {int(victim)}",
                          "NEW.unit := COALESCE(NEW.unit, '') || ' (rewritten)';"):
        yield int(victim)


def _replica_and_slot(topo, run_id: str) -> tuple[str, int]:
    from tenant_migration.postgres.cdc import slot_name_for

    with admin(topo, "standby") as s, admin(topo, "primary") as p:
        state = s.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0]
        slots = p.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                          (slot_name_for(f"{DAG}/{run_id}"),)).fetchone()[0]
    return str(state), int(slots)


def _states(api: AirflowRest, run_id: str) -> dict[tuple[str, int], dict]:
    return {(ti["task_id"], ti["map_index"]): ti for ti in api.task_instances(DAG, run_id)}


def test_clearing_only_the_failed_chunk_task_redoes_only_its_chunks(airflow, rogue_trigger, topo, endpoints) -> None:
    conf = airflow.form_conf(DAG, **FORM)
    run_id = airflow.trigger(DAG, conf)
    assert airflow.wait_run(DAG, run_id) == "failed"
    first = _states(airflow, run_id)
    failed = sorted(k for k, ti in first.items() if ti["state"] == "failed" and k not in TEARDOWNS)
    assert len(failed) == 1 and failed[0][0] == BATCH, {k: v["state"] for k, v in first.items()}
    # The teardowns kept the run's snapshot and change stream for the resume, and say so (red).
    assert {k: first[k]["state"] for k in TEARDOWNS} == dict.fromkeys(TEARDOWNS, "failed")
    assert first[("gate_final", -1)]["state"] == "upstream_failed"
    assert _replica_and_slot(topo, run_id) == ("paused", 1)
    batches = {k: ti for k, ti in first.items() if k[0] in (BATCH, "ready.copy_cassandra_batch")}
    assert len([k for k in batches if k[0] == BATCH]) > 1  # the other batches are the "good" ones
    key = f"{DAG}/{run_id}"
    with admin(topo, "target") as t:
        bad = t.execute("SELECT chunk_id, status, attempts, last_error FROM tm_control.chunks WHERE run_id = %s "
                        "AND status <> 'done'", (key,)).fetchall()
        assert any(r[1] == "failed" and "checksum mismatch" in (r[3] or "") for r in bad), bad
        failed_chunk = next(r[0] for r in bad if r[1] == "failed")
        # Repair the target, then clear only the failed task instances (and what they held up).
        t.execute("DROP TRIGGER tm_test_rogue ON platform.properties")
    cleared = airflow.call("POST", f"/dags/{DAG}/clearTaskInstances", {
        "dry_run": False, "dag_run_id": run_id, "task_ids": [list(failed[0])], "only_failed": True,
        "include_downstream": True, "reset_dag_runs": True})
    cleared_keys = {(ti["task_id"], ti["map_index"]) for ti in cleared["task_instances"]}
    assert failed[0] in cleared_keys and not (cleared_keys & (set(batches) - {failed[0]})), cleared_keys
    assert airflow.wait_run(DAG, run_id) == "success", {
        k: v["state"] for k, v in _states(airflow, run_id).items() if v["state"] != "success"}

    after = _states(airflow, run_id)
    assert _replica_and_slot(topo, run_id) == ("not paused", 0)  # released once the gates passed
    for k in batches:  # the good batches did not run again; the failed one ran once more
        assert after[k]["try_number"] == first[k]["try_number"] + (1 if k == failed[0] else 0), k
    with admin(topo, "target") as t:
        attempts = dict(t.execute("SELECT chunk_id, attempts FROM tm_control.chunks WHERE run_id = %s", (key,)))
        statuses = Counter(r[0] for r in t.execute("SELECT status FROM tm_control.chunks WHERE run_id = %s", (key,)))
        assert t.execute("SELECT status FROM tm_control.runs WHERE run_id = %s", (key,)).fetchone() == ("succeeded",)
    assert statuses == Counter({"done": len(attempts)}), statuses
    assert attempts.pop(failed_chunk) == 2
    # Chunks of the failed batch after the failing one never started in the first try (0 + 1).
    assert set(attempts.values()) == {1}, {c: a for c, a in attempts.items() if a != 1}

    # The tenant's data on the target is complete: per table count + checksum equal to the source.
    tmap = load_tenant_map(SAMPLE_MAP)
    with admin(topo, "primary") as p, admin(topo, "target") as t:
        for table in tmap.load_order():
            src, dst = table_checksum(p, tmap, table, TENANT), table_checksum(t, tmap, table, TENANT)
            # tenant_settings holds the registration switch, suspended and resumed on each side apart.
            assert (src, table) == (dst, table) if table != "tenant_settings" else src[0] == dst[0] == 1
        cql_chunks = ledger.run_chunks(t, key, "cassandra")
    with endpoints.cassandra_source.session() as src, endpoints.cassandra_target.session() as dst:
        report = fingerprint_chunks(src, dst, tmap, cql_chunks)
    mismatched = [r for r in report.records() if (r["source_rows"], r["source_hash"]) != (r["target_rows"], r["target_hash"])]
    assert cql_chunks and not mismatched, mismatched[:3]
