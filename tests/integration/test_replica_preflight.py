"""Issue 31, item 3 (the local mode): the preflight refuses a replica the mode cannot serve, naming
the mode and what is missing, before anything is written: a control connection that reaches a
primary, a standby that does not stream from the primary, a copy connection that reads another
server than the one the detach pauses."""

from __future__ import annotations

import dataclasses
import time
import uuid

import pytest
from helpers import admin, ledger_runs
from psycopg import sql

from tenant_migration import steps
from tenant_migration.spec import MigrationSpec

pytestmark = pytest.mark.integration

TENANT = 2


@pytest.fixture
def clean_target(topo, tiny_dataset, endpoints):
    from tenant_migration.sample import platform

    platform.demo_reset(topo)


def _refused(endpoints, target_admin, message: str) -> str:
    run_id = f"it/{uuid.uuid4().hex[:10]}"
    with pytest.raises(steps.PreflightError, match=message) as err:
        steps.preflight(endpoints, MigrationSpec(tenant_id=TENANT), run_id)
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
