"""Issue 31, item 2, through a real DAG run: the replica mode is the profile's. With ``promote`` the
migration DAG makes the run's own standby, promotes it, copies from it, passes every gate, and its
teardown drops the standby and its replication slot; the platform's standby is never paused.
Each mode's detach time is printed (``-s``) for the closing note."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from helpers import MODES, admin, parse_dag, write_profile

from tenant_migration import replica

pytestmark = pytest.mark.e2e

TENANT = 4
FAST = {"require_approval": False, "max_ttl_wait_s": 1, "drain_seconds": 3, "drain_quiet_s": 2, "load_rate": 100,
        "load_seconds": 2, "load_max_p99_ms": 2000, "load_min_rate_pct": 50}


@pytest.fixture
def promote_dag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, topo, tiny_dataset):
    """The migration DAG parsed with a profiles folder holding the sample's profile once per
    replica mode, named after it (the form lists the folder)."""
    from tenant_migration import params
    from tenant_migration.sample import platform

    monkeypatch.setenv("TM_PROFILES_DIR", str(tmp_path))
    for name, doc in MODES.items():
        write_profile(tmp_path, name, doc)
    importlib.reload(params)  # the form's platform list is read when the DAG file is parsed
    platform.demo_reset(topo)
    yield parse_dag("tenant_migration")
    monkeypatch.undo()
    importlib.reload(params)


def _detach_event(topo, run_id: str) -> dict:
    with admin(topo, "target") as t:
        row = t.execute("SELECT detail FROM tm_control.events WHERE run_id = %s AND step = 'detach_replica' "
                        "AND kind = 'finished' ORDER BY event_id DESC LIMIT 1", (run_id,)).fetchone()
    return dict(row[0])


@pytest.mark.parametrize("mode", ["local", "promote", "rds"])
def test_the_dag_detaches_the_replica_the_profiles_way(mode, promote_dag, topo, endpoints, reports) -> None:
    dagrun = promote_dag.test(run_conf={"tenant_id": TENANT, "platform": mode, **FAST})
    states = {ti.task_id: str(ti.state) for ti in dagrun.get_task_instances()}
    assert str(dagrun.state) == "success", states
    run_id = f"tenant_migration/{dagrun.run_id}"
    with admin(topo, "target") as t:
        status, lsn = t.execute("SELECT status, detach_lsn::text FROM tm_control.runs WHERE run_id = %s",
                                (run_id,)).fetchone()
        gates = dict(t.execute("SELECT gate, bool_and(passed) FROM tm_control.gates WHERE run_id = %s GROUP BY gate",
                               (run_id,)).fetchall())
    assert status == "succeeded" and lsn is not None
    assert {"post_copy", "catch_up", "final"} <= set(gates) and all(gates.values()), gates
    detached = _detach_event(topo, run_id)
    print(f"\n[{mode}] detach_replica: {detached['detach_seconds']} s "
          f"(standby made in {detached.get('standby_seconds', '-')} s), lsn {detached['lsn']}")
    with admin(topo, "standby") as s:  # the platform's standby replays again / was never paused
        assert s.execute("SELECT pg_is_in_recovery(), pg_get_wal_replay_pause_state()").fetchone() == (
            True, "not paused")
    if mode != "local":
        name = replica.run_standby_name(run_id)
        assert detached["mode"] == mode and detached["standby"]["name"] == name
        assert detached["lsn"] == lsn
        assert not (topo.state_dir / "pg" / "runs" / name).exists(), "the teardown dropped the run's standby"
        with admin(topo, "primary") as p:
            assert p.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (name,)).fetchone() == (0,)
        with admin(topo, "target") as t:
            kinds = [r[0]["state"] for r in t.execute(
                "SELECT detail FROM tm_control.events WHERE run_id = %s AND step = 'run_standby' ORDER BY event_id",
                (run_id,)).fetchall()]
        assert kinds == ["made", "dropped"]
        if mode == "rds":
            rds = endpoints.aws.client("rds")
            with pytest.raises(rds.exceptions.DBInstanceNotFoundFault):
                rds.describe_db_instances(DBInstanceIdentifier=replica.rds_instance_id(name))
    else:
        assert detached["mode"] == "local" and "standby" not in detached
