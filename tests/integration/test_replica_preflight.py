"""Issue 31, item 3: the preflight refuses a replica the mode cannot serve, naming the mode and
what is missing, before anything is written. ``local``: a control connection that reaches a
primary, a standby that does not stream from the primary, a copy connection that reads another
server than the one the detach pauses. ``promote``: a provisioner that cannot be loaded or cannot
reach the primary to clone from, a control role that may not promote. ``rds``: no source instance
in the RDS API (moto over HTTP), an AWS connection that is not defined."""

from __future__ import annotations

import dataclasses
import time
import uuid

import pytest
from helpers import PROMOTE, RDS, admin, ledger_runs, write_profile
from psycopg import sql

from tenant_migration import steps
from tenant_migration.spec import MigrationSpec

pytestmark = pytest.mark.integration

TENANT = 2


@pytest.fixture
def clean_target(topo, tiny_dataset, endpoints):
    from tenant_migration.sample import platform

    platform.demo_reset(topo)


def _refused(endpoints, target_admin, message: str, platform: str = "") -> str:
    run_id = f"it/{uuid.uuid4().hex[:10]}"
    with pytest.raises(steps.PreflightError, match=message) as err:
        steps.preflight(endpoints, MigrationSpec(tenant_id=TENANT, platform=platform), run_id)
    assert "nothing was written" in str(err.value)
    assert ledger_runs(target_admin, run_id) == 0
    return str(err.value)


def test_a_control_connection_to_a_primary_is_refused(endpoints, clean_target, target_admin, reports) -> None:
    ep = dataclasses.replace(endpoints, replica_control=endpoints.source_operator)
    _refused(ep, target_admin, r"profile 'sample' replica\.mode local: tm_replica_control reaches 127\.0\.0\.1:\d+/"
                               r"platform, a primary \(pg_is_in_recovery\(\) is false\), not a standby")


def test_a_copy_connection_to_another_server_is_refused(endpoints, clean_target, target_admin, reports) -> None:
    ep = dataclasses.replace(endpoints, replica=endpoints.source_cdc)  # the copy would read the live primary
    _refused(ep, target_admin, r"replica\.mode local: tm_source_replica \(127\.0\.0\.1:\d+/platform\) and "
                               r"tm_replica_control \(127\.0\.0\.1:\d+/platform\) reach different servers")


def _receiver(topo) -> bool:
    with admin(topo, "standby") as s:
        return bool(s.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')")
                    .fetchone()[0])


def _wait(topo, streaming: bool, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _receiver(topo) != streaming:
        assert time.monotonic() < deadline, f"the standby's WAL receiver did not {'start' if streaming else 'stop'}"
        time.sleep(0.2)


def test_a_standby_that_does_not_stream_is_refused(topo, endpoints, clean_target, target_admin, reports) -> None:
    with admin(topo, "standby") as s:
        conninfo = s.execute("SHOW primary_conninfo").fetchone()[0]
        assert conninfo and _receiver(topo)
        s.execute("ALTER SYSTEM SET primary_conninfo = ''")
        s.execute("SELECT pg_reload_conf()")
        try:
            _wait(topo, streaming=False)
            _refused(endpoints, target_admin, r"replica\.mode local: the standby 127\.0\.0\.1:\d+/platform is not "
                                              r"streaming from the primary \(no WAL receiver runs")
        finally:
            s.execute(sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(conninfo)))
            s.execute("SELECT pg_reload_conf()")
            _wait(topo, streaming=True)


@pytest.fixture
def promote_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TM_PROFILES_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(("provisioner", "message"), [
    pytest.param("no_such_module:standbys",
                 r"profile 'promote' replica\.mode promote: provisioner no_such_module:standbys: ReplicaError: "
                 r"replica\.provisioner 'no_such_module:standbys' cannot be loaded: ModuleNotFoundError",
                 id="provisioner not found"),
    pytest.param("helpers:unreachable_primary_standbys",
                 r"profile 'promote' replica\.mode promote: the primary pg-primary \(127\.0\.0\.1:\d+\) cannot be "
                 r"reached to clone a standby from: OperationalError", id="primary unreachable"),
])
def test_a_promote_mode_without_a_standby_to_promote_is_refused(
        promote_folder, endpoints, clean_target, target_admin, reports, provisioner, message) -> None:
    write_profile(promote_folder, "promote", {**PROMOTE, "provisioner": provisioner})
    _refused(endpoints, target_admin, message, platform="promote")


def test_a_control_role_that_may_not_promote_is_refused(
        promote_folder, topo, endpoints, clean_target, target_admin, reports) -> None:
    write_profile(promote_folder, "promote", PROMOTE)
    fn = "pg_catalog.pg_promote(boolean, integer)"
    with admin(topo, "primary") as p:
        p.execute(f"REVOKE EXECUTE ON FUNCTION {fn} FROM migration_operator")
        try:
            lsn = p.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            with admin(topo, "standby") as s:  # the preflight reads the grant on the platform's replica
                deadline = time.monotonic() + 30
                while not s.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            _refused(endpoints, target_admin, r"profile 'promote' replica\.mode promote: role migration_operator "
                                              r"\(tm_replica_control\) may not run pg_promote: GRANT EXECUTE ON "
                                              r"FUNCTION pg_promote\(boolean, integer\) TO migration_operator",
                     platform="promote")
        finally:
            p.execute(f"GRANT EXECUTE ON FUNCTION {fn} TO migration_operator")


@pytest.mark.parametrize(("rds", "message"), [
    pytest.param({"source_instance": "no-such-primary"},
                 r"profile 'rds' replica\.mode rds: RDS instance 'no-such-primary' \(replica\.rds\.source_instance\) "
                 r"not found: no primary to make the run's read replica of", id="no source instance"),
    pytest.param({"aws_connection": "tm_no_such_aws"},
                 r"profile 'rds' replica\.mode rds: rds: ReplicaError: replica\.rds\.aws_connection: connection "
                 r"'tm_no_such_aws' is not defined", id="aws connection undefined"),
])
def test_an_rds_mode_without_an_instance_to_replicate_is_refused(
        promote_folder, endpoints, clean_target, target_admin, reports, rds, message) -> None:
    write_profile(promote_folder, "rds", {**RDS, "rds": {**RDS["rds"], **rds}})
    _refused(endpoints, target_admin, message, platform="rds")
