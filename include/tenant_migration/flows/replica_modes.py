"""The profile's replica mode, for the READY steps (docs/replica-modes.md): what the preflight
checks, how ``detach_replica`` freezes the copy's source, which server the plan, the copy and the
post-copy gate read, and what the detach's teardown releases.

- ``local``: pause replay on the platform's standby (``tm_replica_control``); resume it.
- ``promote``: the run's own standby from the profile's ``provisioner``, promoted with
  ``pg_promote`` once it replayed past the change stream's start; dropped in the teardown.
- ``rds``: the run's own read replica of ``replica.rds.source_instance``, made, promoted and
  deleted through the RDS API (the amazon provider's ``RdsHook``).

In both own-standby modes the ledger records the standby (step ``run_standby``: ``made`` with its
address, then ``dropped``); the standby is a clone of the primary, so the replica connections'
roles and database work on it unchanged.
"""

from __future__ import annotations

import importlib
import time
from datetime import datetime
from typing import Any

import psycopg

from tenant_migration import connections as names
from tenant_migration import ledger, replica
from tenant_migration.endpoints import Endpoints
from tenant_migration.flows.common import PreflightError
from tenant_migration.profile import Profile

RUN_STANDBY = "run_standby"


def _factory(ref: str, key: str) -> Any:
    module, _, fn = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), fn)()
    except (ImportError, AttributeError) as exc:
        raise replica.ReplicaError(f"{key} {ref!r} cannot be loaded: {type(exc).__name__}: {exc}") from exc


def rds_client(conn_id: str) -> Any:
    """A boto3 RDS client through the amazon provider's hook (the connection's ``endpoint_url``
    extra reaches moto on the local stack)."""
    from airflow.providers.amazon.aws.hooks.rds import RdsHook
    from airflow.sdk import BaseHook

    try:  # the hook would fall back to boto3's own credentials without a word: never on a run
        BaseHook.get_connection(conn_id)
    except Exception as exc:
        raise replica.ReplicaError(f"replica.rds.aws_connection: connection {conn_id!r} is not defined "
                                   f"({type(exc).__name__})") from None
    return RdsHook(aws_conn_id=conn_id).conn


def standbys(prof: Profile) -> replica.StandbyProvisioner:
    """Who makes and drops the run's own standby (modes ``promote`` and ``rds``)."""
    cfg = prof.doc.replica
    if cfg.mode == "promote":
        assert cfg.provisioner is not None
        return _factory(cfg.provisioner, "replica.provisioner")  # type: ignore[no-any-return]
    assert cfg.mode == "rds" and cfg.rds is not None
    rds = cfg.rds
    servers = _factory(rds.servers, "replica.rds.servers") if rds.servers else None
    return replica.RdsStandbys(rds_client(rds.aws_connection), rds.source_instance, rds.instance_class, servers,
                               timeout_s=rds.timeout_minutes * 60, poll_s=rds.poll_seconds)


# ---------------------------------------------------------------------------------------------------
# The preflight
# ---------------------------------------------------------------------------------------------------


def problems(ep: Endpoints, prof: Profile, rconn: psycopg.Connection) -> list[str]:
    """The profile's replica mode can be served by the servers (reads only)."""
    mode = prof.doc.replica.mode
    where = f"profile {prof.name!r} replica.mode {mode}"
    if mode == "local":
        return local_problems(ep, rconn, where)
    try:
        found = [f"{where}: {p}" for p in standbys(prof).problems()]
    except Exception as exc:  # whatever the platform's code or the API raises is the message
        key = "provisioner " + str(prof.doc.replica.provisioner) if mode == "promote" else "rds"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return [f"{where}: {key}: {type(exc).__name__}: {first}"]
    if mode == "promote":
        found += promote_grant_problems(ep, rconn, where)
    return found


def local_problems(ep: Endpoints, rconn: psycopg.Connection, where: str) -> list[str]:
    """``local``: the control connection reaches a standby (in recovery) that streams from the
    primary (a WAL receiver runs), and the copy's read connection reaches the same server (else
    the copy would read from a server the detach never froze)."""
    # One server instance, whatever address a connection took: its postmaster's start time.
    here = "SELECT pg_postmaster_start_time(), inet_server_port()"
    try:
        with ep.replica_control.connect(autocommit=True) as rc:
            row = rc.execute("SELECT pg_is_in_recovery(), EXISTS (SELECT 1 FROM pg_stat_wal_receiver)").fetchone()
            control_at = rc.execute(here).fetchone()
    except ConnectionError as exc:
        return [f"{where}: the standby cannot be reached (connection {names.CONN_REPLICA_CONTROL}): {exc}"]
    assert row is not None
    if not row[0]:
        return [f"{where}: {names.CONN_REPLICA_CONTROL} reaches {ep.replica_control.label}, a primary "
                f"(pg_is_in_recovery() is false), not a standby: nothing there can be paused at a snapshot"]
    found = []
    if not row[1]:
        found.append(f"{where}: the standby {ep.replica_control.label} is not streaming from the primary (no WAL "
                     f"receiver runs: check its primary_conninfo and the primary's replication slot): its snapshot "
                     f"would fall behind the change stream's start")
    read_at = rconn.execute(here).fetchone()
    assert read_at is not None and control_at is not None
    if read_at != control_at:
        found.append(f"{where}: {names.CONN_SOURCE_REPLICA} ({ep.replica.label}) and {names.CONN_REPLICA_CONTROL} "
                     f"({ep.replica_control.label}) reach different servers (started {read_at[0]} and "
                     f"{control_at[0]}): the copy must read the standby the detach pauses")
    return found


def promote_grant_problems(ep: Endpoints, rconn: psycopg.Connection, where: str) -> list[str]:
    """``promote``: the control role (a clone has the primary's roles) may run ``pg_promote``."""
    user = ep.replica_control.user
    row = rconn.execute("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)", (user,)).fetchone()
    if not (row and row[0]):
        return [f"{where}: role {user} ({names.CONN_REPLICA_CONTROL}) does not exist on the platform"]
    row = rconn.execute("SELECT has_function_privilege(%s, 'pg_promote(boolean, integer)', 'EXECUTE')",
                        (user,)).fetchone()
    if not (row and row[0]):
        return [f"{where}: role {user} ({names.CONN_REPLICA_CONTROL}) may not run pg_promote: "
                f"GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO {user}"]
    return []


# ---------------------------------------------------------------------------------------------------
# Detach, read, release
# ---------------------------------------------------------------------------------------------------


def run_standby(tconn: psycopg.Connection, run_id: str) -> replica.RunStandby | None:
    """The run's own standby as the ledger last recorded it, None if never made or dropped since."""
    last = ledger.last_event(tconn, run_id, RUN_STANDBY)
    if last is None or last[1].get("state") != "made":
        return None
    d = last[1]
    return replica.RunStandby(str(d["name"]), str(d["host"]), int(d["port"]))


def copy_source(ep: Endpoints, prof: Profile, run_id: str) -> Endpoints:
    """The endpoints the plan, the copy and the post-copy gate read: the platform's replica
    (``local``), or the run's own detached standby (``promote``, ``rds``)."""
    if not prof.doc.replica.own_standby:
        return ep
    with ep.target.connect(autocommit=True) as tconn:
        standby = run_standby(tconn, run_id)
    if standby is None:
        raise PreflightError(f"run {run_id} (replica.mode {prof.doc.replica.mode}) has no standby of its own: "
                             "detach_replica makes it and must run first (or it was dropped: the copy's teardown "
                             "ran; clear from detach_replica)")
    return ep.with_replica_at(standby.host, standby.port)


def detach(ep: Endpoints, prof: Profile, tconn: psycopg.Connection, run_id: str,
           min_lsn: str | None) -> tuple[dict[str, Any], datetime | None]:
    """Freeze the copy's source at or after ``min_lsn``: what it did and took (the detach point
    among it), and the point's last commit time."""
    cfg = prof.doc.replica
    began = time.monotonic()
    extra: dict[str, Any] = {}
    ctl: replica.ReplicaController
    if cfg.own_standby:
        maker = standbys(prof)
        name = replica.run_standby_name(run_id)
        standby = maker.create(name)
        ledger.record_event(tconn, run_id, RUN_STANDBY, "info", {**standby.to_dict(), "state": "made"})
        extra = {"standby": standby.to_dict(), "standby_seconds": round(time.monotonic() - began, 3)}
        control = ep.with_replica_at(standby.host, standby.port).replica_control
        if cfg.mode == "promote":
            ctl = replica.PromoteReplicaController(control, min_lsn=min_lsn)
        else:
            assert isinstance(maker, replica.RdsStandbys) and cfg.rds is not None
            ctl = replica.RdsReplicaController(maker.client, replica.rds_instance_id(name), lsn_endpoint=control,
                                               min_lsn=min_lsn, servers=maker.servers,
                                               timeout_s=cfg.rds.timeout_minutes * 60, poll_s=cfg.rds.poll_seconds)
    else:
        ctl = replica.LocalReplicaController(ep.replica_control, min_lsn=min_lsn)
    point = ctl.detach()
    if point.lsn is None:
        raise replica.ReplicaError(f"replica.mode {point.mode}: the detach point is unknown (no replay LSN on the "
                                   "detached server: restarted since it was promoted?)")
    return {**point.to_dict(), **extra, "detach_seconds": round(time.monotonic() - began, 3)}, point.commit_time


def release(ep: Endpoints, prof: Profile, run_id: str) -> dict[str, Any]:
    """Resume the platform's standby (``local``), or drop the run's own (``promote``, ``rds``)."""
    cfg = prof.doc.replica
    if not cfg.own_standby:
        with ep.replica_control.connect(autocommit=True) as rc:
            before = replica.reattach(rc)
        return {"mode": cfg.mode, "state_before": before}
    name = replica.run_standby_name(run_id)
    dropped = standbys(prof).drop(name)
    with ep.target.connect(autocommit=True) as tconn:
        if ledger.run_known(tconn, run_id):
            ledger.record_event(tconn, run_id, RUN_STANDBY, "info", {"name": name, "state": "dropped"})
    return {"mode": cfg.mode, "standby": name, "dropped": dropped}
