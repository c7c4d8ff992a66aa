"""Issue 31, item 2, through the steps on the real stack: in every replica mode the snapshot the
copy reads is consistent with the change stream's start. A writer commits one tenant row change
after another on the primary while the replica is detached; the detached server shows the k-th
write, and the catch-up then applies exactly the writes after it (N - k transactions), no more, no
fewer. Mode ``promote`` makes the run's own standby (``stack.run_standby``), reads from it, and
drops it with its replication slot in the teardown; mode ``rds`` does the same with a read replica
made, promoted and deleted through the RDS API of the moto server (over HTTP), whose server is a
standby of the primary (moto has none); the platform's standby is never touched."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from helpers import MODES, admin, write_profile

from tenant_migration import ledger, replica, steps
from tenant_migration.flows import replica_modes
from tenant_migration.flows.common import profile_of
from tenant_migration.spec import MigrationSpec

pytestmark = pytest.mark.integration

TENANT = 3
@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TM_PROFILES_DIR", str(tmp_path))
    for name, doc in MODES.items():
        write_profile(tmp_path, name, doc)
    return tmp_path


@pytest.fixture
def clean_target(topo, tiny_dataset, endpoints):
    from tenant_migration.sample import platform

    platform.demo_reset(topo)
    yield


class Writer(threading.Thread):
    """One device row of the tenant renamed ``probe-<i>`` in its own transaction, i = 1, 2, ...,
    as the platform's app, until stopped."""

    def __init__(self, topo, device_id: int) -> None:
        super().__init__(daemon=True)
        self.topo, self.device_id, self.written, self.stop = topo, device_id, 0, threading.Event()

    def run(self) -> None:
        with admin(self.topo, "primary") as conn:
            while not self.stop.is_set():
                conn.execute("UPDATE platform.devices SET name = %s WHERE device_id = %s",
                             (f"probe-{self.written + 1}", self.device_id))
                self.written += 1
                time.sleep(0.01)


def _device(topo) -> tuple[int, str]:
    with admin(topo, "primary") as conn:
        row = conn.execute("SELECT device_id, name FROM platform.devices WHERE tenant_id = %s ORDER BY device_id "
                           "LIMIT 1", (TENANT,)).fetchone()
    return int(row[0]), str(row[1])


def _probe(ep, device_id: int) -> int:
    with ep.replica.connect(autocommit=True) as conn:
        name = conn.execute("SELECT name FROM platform.devices WHERE device_id = %s", (device_id,)).fetchone()[0]
    return int(name.removeprefix("probe-")) if name.startswith("probe-") else 0


@pytest.mark.parametrize("mode", ["local", "promote", "rds"])
def test_the_catch_up_applies_exactly_the_writes_after_the_snapshot(
        mode, topo, endpoints, folder, clean_target, target_admin, reports) -> None:
    spec = MigrationSpec(tenant_id=TENANT, platform=mode)
    run_id = f"it/{mode}-{uuid.uuid4().hex[:8]}"
    device_id, original = _device(topo)
    writer = Writer(topo, device_id)
    steps.preflight(endpoints, spec, run_id)
    writer.start()
    try:
        time.sleep(0.3)
        slot = steps.create_cdc_slot(endpoints, spec, run_id)
        time.sleep(0.3)
        detached = steps.detach_replica(endpoints, spec, run_id, slot["consistent_lsn"])
        time.sleep(0.5)
    finally:
        writer.stop.set()
        writer.join()
    try:
        source = replica_modes.copy_source(endpoints, profile_of(spec), run_id)
        snapshot_k = _probe(source, device_id)
        assert 0 < snapshot_k < writer.written, "writes on both sides of the detach point"
        with psycopg.connect(**_kw(source.replica_control)) as conn:
            lsn = conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()[0]
        assert lsn == detached["lsn"], "the detach point is where the detached server stopped replaying"
        steps.copy_postgres(endpoints, spec, run_id)
        steps.copy_cassandra(endpoints, spec, run_id)
        steps.gate_post_copy(endpoints, spec, run_id)
        caught = steps.catch_up_postgres(endpoints, spec, run_id, until_now=True)
        assert caught["txns_applied"] == writer.written - snapshot_k, (caught, writer.written, snapshot_k)
        name = target_admin.execute("SELECT name FROM platform.devices WHERE device_id = %s", (device_id,)).fetchone()
        assert name == (f"probe-{writer.written}",)
        if mode != "local":
            standby = replica_modes.copy_source(endpoints, profile_of(spec), run_id).replica
            assert standby.port != endpoints.replica.port, "the copy read the run's own standby"
            assert detached["mode"] == mode and detached["standby"]["name"] == replica.run_standby_name(run_id)
            if mode == "rds":  # made and promoted through the API, tagged as the run's
                rds = endpoints.aws.client("rds")
                inst = rds.describe_db_instances(
                    DBInstanceIdentifier=detached["standby"]["instance"])["DBInstances"][0]
                tags = {t["Key"]: t["Value"] for t in rds.list_tags_for_resource(
                    ResourceName=inst["DBInstanceArn"])["TagList"]}
                assert inst["ReadReplicaSourceDBInstanceIdentifier"] == "platform-primary"
                assert tags[replica.RUN_TAG] == detached["standby"]["name"] and replica.PROMOTED_TAG in tags
            with admin(topo, "standby") as s:  # the platform's standby was never paused nor promoted
                assert s.execute("SELECT pg_is_in_recovery(), pg_get_wal_replay_pause_state()").fetchone() == (
                    True, "not paused")
    finally:
        with target_admin.transaction():
            ledger.finish_run(target_admin, run_id, "aborted")
        out = steps.reattach_replica(endpoints, spec, run_id, keep_for_resume=False)
        steps.drop_cdc_slot(endpoints, spec, run_id)
        with admin(topo, "primary") as conn:
            conn.execute("UPDATE platform.devices SET name = %s WHERE device_id = %s", (original, device_id))
    if mode != "local":
        name = replica.run_standby_name(run_id)
        assert out == {"mode": mode, "standby": name, "dropped": True}
        assert not (topo.state_dir / "pg" / "runs" / name).exists()
        with admin(topo, "primary") as conn:
            assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                                (name,)).fetchone() == (0,)
        with pytest.raises(steps.PreflightError, match="has no standby of its own"):
            replica_modes.copy_source(endpoints, profile_of(spec), run_id)
    if mode == "rds":  # the run's read replica is gone from the RDS API too
        rds = endpoints.aws.client("rds")
        with pytest.raises(rds.exceptions.DBInstanceNotFoundFault):
            rds.describe_db_instances(DBInstanceIdentifier=replica.rds_instance_id(name))


def _kw(ep) -> dict:
    return {"host": ep.host, "port": ep.port, "user": ep.user, "password": ep.password, "dbname": ep.dbname,
            "autocommit": True}


@pytest.mark.parametrize("mode", ["promote", "rds"])
def test_an_own_standby_detach_is_idempotent_and_keeps_its_point(mode, topo, endpoints, folder, clean_target,
                                                                 target_admin, reports) -> None:
    """A retried or cleared detach finds the run's standby again, promoted, at the same point."""
    spec = MigrationSpec(tenant_id=TENANT, platform=mode)
    run_id = f"it/{mode}-{uuid.uuid4().hex[:8]}"
    steps.preflight(endpoints, spec, run_id)
    try:
        slot = steps.create_cdc_slot(endpoints, spec, run_id)
        first = steps.detach_replica(endpoints, spec, run_id, slot["consistent_lsn"])
        second = steps.detach_replica(endpoints, spec, run_id, slot["consistent_lsn"])
        assert (first["already_detached"], second["already_detached"]) == (False, True)
        assert first["lsn"] == second["lsn"] and first["standby"]["port"] == second["standby"]["port"]
        with target_admin.transaction():
            assert ledger.run_row(target_admin, run_id)["detach_lsn"] is not None
    finally:
        with target_admin.transaction():
            ledger.finish_run(target_admin, run_id, "aborted")
        steps.reattach_replica(endpoints, spec, run_id, keep_for_resume=False)
        again = steps.reattach_replica(endpoints, spec, run_id, keep_for_resume=False)
        steps.drop_cdc_slot(endpoints, spec, run_id)
    assert again["dropped"] is False, "a second teardown finds nothing left to drop"


def test_an_rds_instance_the_run_did_not_make_is_never_used_nor_deleted(endpoints, tiny_dataset) -> None:
    """An instance of the run standby's name without the run's tag (someone else's, or a name
    clash) is refused by ``create`` and left alone by ``drop``."""
    client = endpoints.aws.client("rds")
    name = replica.run_standby_name(f"it/foreign-{uuid.uuid4().hex[:8]}")
    instance_id = replica.rds_instance_id(name)
    client.create_db_instance_read_replica(DBInstanceIdentifier=instance_id, SourceDBInstanceIdentifier="platform-primary")
    try:
        made = replica.RdsStandbys(client, "platform-primary", timeout_s=10, poll_s=0.1)
        with pytest.raises(replica.ReplicaError, match=f"RDS instance {instance_id} exists and is not the run's standby"):
            made.create(name)
        with pytest.raises(replica.ReplicaError, match="not deleting it"):
            made.drop(name)
        assert client.describe_db_instances(DBInstanceIdentifier=instance_id)["DBInstances"]
    finally:
        client.delete_db_instance(DBInstanceIdentifier=instance_id, SkipFinalSnapshot=True)
