"""Detaching the read replica: the migration copies from a frozen, consistent replica, never from
the loaded primary.

Three modes behind one small ``ReplicaController`` protocol (detach / reattach / describe, all
idempotent):

- ``local`` (``LocalReplicaController``): pause WAL replay on the hot standby
  (``pg_wal_replay_pause``) and record where it stopped: the replay LSN and the last replayed
  commit time are the detach point (the watermark change capture starts from). Reattach resumes
  replay; the standby catches up by itself. Reversible.
- ``promote`` (``PromoteReplicaController``): ``pg_promote()`` on the standby. The replica becomes
  an independent server (a new timeline) and can never follow the primary again: reattach is
  impossible, it reports ``reclone_required`` (re-create the standby with ``pg_basebackup``).
  ``pg_last_wal_replay_lsn()`` stays static after promotion at the end of recovery, which is the
  detach point. Use it when the copy needs a writable source (e.g. to build indexes there).
- ``rds`` (``RdsReplicaController``): ``promote_read_replica`` through the amazon provider's
  ``RdsHook`` (or a boto3 client). Same one-way consequence as ``promote``: reattach reports
  ``reclone_required`` (``create_db_instance_read_replica`` again). Idempotence cannot rely on the
  replica's source link alone (moto keeps it after a promotion), so the controller tags the
  instance ``tm:promoted-at`` after promoting and treats the tag OR a missing source link as done.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import psycopg

if TYPE_CHECKING:
    from tenant_migration.endpoints import AwsEndpoint, PgEndpoint

log = logging.getLogger(__name__)

Mode = Literal["local", "promote", "rds"]


class ReplicaError(RuntimeError):
    """The replica cannot be detached or reattached."""


@dataclass(frozen=True)
class DetachPoint:
    lsn: str
    commit_time: datetime | None
    already_paused: bool

    def to_dict(self) -> dict[str, str | bool | None]:
        return {
            "lsn": self.lsn,
            "commit_time": self.commit_time.isoformat() if self.commit_time else None,
            "already_paused": self.already_paused,
        }


def pause_state(conn: psycopg.Connection) -> str:
    row = conn.execute("SELECT pg_is_in_recovery(), pg_get_wal_replay_pause_state()").fetchone()
    assert row is not None
    if not row[0]:
        raise ReplicaError("the replica connection does not reach a standby (pg_is_in_recovery() is false)")
    return str(row[1])


def wait_replayed(conn: psycopg.Connection, min_lsn: str, timeout: float = 60.0) -> None:
    """Wait until the standby has replayed at least ``min_lsn`` (e.g. a CDC slot's consistent point)."""
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(
            "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn, pg_last_wal_replay_lsn()::text", (min_lsn,)
        ).fetchone()
        assert row is not None
        if row[0]:
            return
        if time.monotonic() > deadline:
            raise ReplicaError(f"standby replayed only to {row[1]}, not {min_lsn}, within {timeout:.0f}s")
        time.sleep(0.05)


def detach(conn: psycopg.Connection, timeout: float = 60.0, min_lsn: str | None = None) -> DetachPoint:
    """Pause WAL replay and wait until it is really paused; return the detach point.

    With ``min_lsn`` (the consistent point of the change-capture slot created just before), replay
    first runs up to it, so the detach point is never before the slot's first decodable commit:
    that is what leaves no change between the snapshot and the stream. A standby already paused
    before ``min_lsn`` is resumed, then paused again past it.
    """
    state = pause_state(conn)
    if min_lsn is not None:
        row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (min_lsn,)).fetchone()
        if row is not None and not row[0]:
            if state != "not paused":
                conn.execute("SELECT pg_wal_replay_resume()")
            wait_replayed(conn, min_lsn, timeout)
            state = pause_state(conn)
    already = state == "paused"
    if state == "not paused":
        conn.execute("SELECT pg_wal_replay_pause()")
    deadline = time.monotonic() + timeout
    while pause_state(conn) != "paused":
        if time.monotonic() > deadline:
            raise ReplicaError(f"replay did not pause within {timeout:.0f}s")
        time.sleep(0.1)
    row = conn.execute("SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()").fetchone()
    assert row is not None
    return DetachPoint(lsn=row[0], commit_time=row[1], already_paused=already)


def reattach(conn: psycopg.Connection) -> str:
    """Resume WAL replay; return the pause state before."""
    state = pause_state(conn)
    if state != "not paused":
        conn.execute("SELECT pg_wal_replay_resume()")
    return state


# --------------------------------------------------------------------------------------------------
# The controller protocol and its three modes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detachment:
    """Where a replica was detached, in any mode (``lsn`` is unknown for RDS without SQL access)."""

    mode: Mode
    lsn: str | None
    commit_time: datetime | None
    already_detached: bool
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "lsn": self.lsn,
            "commit_time": self.commit_time.isoformat() if self.commit_time else None,
            "already_detached": self.already_detached,
            **self.detail,
        }


@dataclass(frozen=True)
class Reattachment:
    """What reattach did. ``reclone_required`` means the replica is gone as a replica for good."""

    mode: Mode
    action: Literal["resumed", "already_attached", "reclone_required", "not_detached"]
    message: str

    @property
    def reclone_required(self) -> bool:
        return self.action == "reclone_required"

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "action": self.action, "message": self.message}


class ReplicaController(Protocol):
    """Detach (freeze or split off) the replica the migration copies from, and undo it if possible."""

    mode: Mode

    def detach(self) -> Detachment: ...

    def reattach(self) -> Reattachment: ...

    def describe(self) -> dict[str, Any]: ...


class LocalReplicaController:
    """Pause / resume WAL replay on a hot standby (reversible). Needs ``migration_operator``."""

    mode: Mode = "local"

    def __init__(self, endpoint: PgEndpoint, min_lsn: str | None = None, timeout: float = 60.0) -> None:
        self.endpoint, self.min_lsn, self.timeout = endpoint, min_lsn, timeout

    def detach(self) -> Detachment:
        with self.endpoint.connect(autocommit=True) as conn:
            point = detach(conn, self.timeout, self.min_lsn)
        return Detachment("local", point.lsn, point.commit_time, point.already_paused)

    def reattach(self) -> Reattachment:
        with self.endpoint.connect(autocommit=True) as conn:
            before = reattach(conn)
        if before == "not paused":
            return Reattachment("local", "already_attached", "replay was not paused")
        return Reattachment("local", "resumed", f"replay resumed (was {before})")

    def describe(self) -> dict[str, Any]:
        with self.endpoint.connect(autocommit=True) as conn:
            row = conn.execute(
                "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() END, "
                "pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()"
            ).fetchone()
        assert row is not None
        return {
            "mode": "local",
            "in_recovery": row[0],
            "pause_state": row[1],
            "detached": row[1] == "paused",
            "replay_lsn": row[2],
            "last_replayed_commit": row[3].isoformat() if row[3] else None,
        }


_RECLONE_PG = (
    "the standby was promoted: it is an independent server on its own timeline and cannot follow the "
    "primary again. Re-create the replica with pg_basebackup -R -X stream (make stack-reset / the stack's "
    "standby clone on the local stack) once the migration no longer needs the detached copy."
)


class PromoteReplicaController:
    """``pg_promote()`` the standby (one way). Needs EXECUTE on ``pg_promote`` (see roles.sql).

    With ``min_lsn`` (the change stream's consistent point) the standby first replays up to it, so
    the promoted server's end of recovery, the detach point, is never before the stream's start."""

    mode: Mode = "promote"

    def __init__(self, endpoint: PgEndpoint, wait_seconds: int = 60, min_lsn: str | None = None) -> None:
        self.endpoint, self.wait_seconds, self.min_lsn = endpoint, wait_seconds, min_lsn

    def _point(self, conn: psycopg.Connection) -> tuple[str, datetime | None]:
        # After promotion both stay static at the end of recovery: the detach point.
        row = conn.execute("SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()").fetchone()
        assert row is not None
        if row[0] is None:
            raise ReplicaError(f"{self.endpoint.label} was never a standby (no replay LSN)")
        return str(row[0]), row[1]

    def detach(self) -> Detachment:
        with self.endpoint.connect(autocommit=True) as conn:
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            already = not (in_recovery and in_recovery[0])
            if not already:
                if self.min_lsn is not None:
                    wait_replayed(conn, self.min_lsn, self.wait_seconds)
                ok = conn.execute("SELECT pg_promote(true, %s)", (self.wait_seconds,)).fetchone()
                if not (ok and ok[0]):
                    raise ReplicaError(f"pg_promote did not finish within {self.wait_seconds}s on {self.endpoint.label}")
            lsn, at = self._point(conn)
        return Detachment("promote", lsn, at, already, {"reattach": "reclone_required"})

    def reattach(self) -> Reattachment:
        with self.endpoint.connect(autocommit=True) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        if row and row[0]:
            return Reattachment("promote", "not_detached", "the standby was never promoted: still replicating")
        log.warning("replica %s: %s", self.endpoint.label, _RECLONE_PG)
        return Reattachment("promote", "reclone_required", _RECLONE_PG)

    def describe(self) -> dict[str, Any]:
        with self.endpoint.connect(autocommit=True) as conn:
            row = conn.execute(
                "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(), "
                "(SELECT timeline_id FROM pg_control_checkpoint())"
            ).fetchone()
        assert row is not None
        return {
            "mode": "promote",
            "in_recovery": row[0],
            "detached": not row[0],
            "replay_lsn": row[1],
            "last_replayed_commit": row[2].isoformat() if row[2] else None,
            "timeline": row[3],
        }


PROMOTED_TAG = "tm:promoted-at"


class RdsReplicaController:
    """Promote an RDS read replica (one way), through ``RdsHook(...).conn`` or a boto3 client."""

    mode: Mode = "rds"

    def __init__(self, client: Any, instance_id: str, lsn_endpoint: PgEndpoint | None = None,
                 min_lsn: str | None = None, servers: InstanceServers | None = None,
                 timeout_s: float = 3600.0, poll_s: float = 15.0) -> None:
        self.client, self.instance_id, self.lsn_endpoint = client, instance_id, lsn_endpoint
        self.min_lsn, self.servers, self.timeout_s, self.poll_s = min_lsn, servers, timeout_s, poll_s

    @classmethod
    def from_airflow(cls, instance_id: str, aws_conn_id: str = "tm_aws") -> RdsReplicaController:
        """Through the amazon provider (the connection's ``endpoint_url`` extra reaches moto locally)."""
        from airflow.providers.amazon.aws.hooks.rds import RdsHook

        return cls(RdsHook(aws_conn_id=aws_conn_id).conn, instance_id)

    @classmethod
    def from_endpoint(cls, aws: AwsEndpoint, instance_id: str) -> RdsReplicaController:
        """Outside Airflow (benchmarks, tests): a boto3 client from the stack's connections file."""
        return cls(aws.client("rds"), instance_id)

    def _instance(self) -> dict[str, Any]:
        found = self.client.describe_db_instances(DBInstanceIdentifier=self.instance_id)["DBInstances"]
        if not found:
            raise ReplicaError(f"RDS instance {self.instance_id} not found")
        return dict(found[0])

    def _tags(self, inst: dict[str, Any]) -> dict[str, str]:
        tags = self.client.list_tags_for_resource(ResourceName=inst["DBInstanceArn"]).get("TagList", [])
        return {t["Key"]: t["Value"] for t in tags}

    def _promoted(self, inst: dict[str, Any]) -> str | None:
        """When it was promoted (by us, per the tag), 'unknown' if it has no source, else None."""
        tag = self._tags(inst).get(PROMOTED_TAG)
        if tag:
            return tag
        return None if inst.get("ReadReplicaSourceDBInstanceIdentifier") else "unknown"

    def _lsn(self) -> tuple[str | None, datetime | None]:
        if self.lsn_endpoint is None:
            return None, None
        deadline = time.monotonic() + self.timeout_s
        with self.lsn_endpoint.connect(autocommit=True) as conn:
            # "available" can come before the server left recovery: the point is static only after.
            while conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,):
                if time.monotonic() > deadline:
                    raise ReplicaError(f"RDS instance {self.instance_id} is still in recovery {self.timeout_s:.0f}s "
                                       "after its promotion")
                time.sleep(min(self.poll_s, 1.0))
            row = conn.execute("SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()").fetchone()
        return (row[0], row[1]) if row else (None, None)

    def detach(self) -> Detachment:
        """Promote the read replica once it replayed past ``min_lsn`` (asked over SQL on its
        ``lsn_endpoint``), wait until the instance is available and its server out of recovery,
        and read the detach point there (the end of its recovery)."""
        inst = self._instance()
        promoted = self._promoted(inst)
        source = inst.get("ReadReplicaSourceDBInstanceIdentifier")
        if promoted is None:
            if self.lsn_endpoint is not None and self.min_lsn is not None:
                with self.lsn_endpoint.connect(autocommit=True) as conn:
                    wait_replayed(conn, self.min_lsn, self.timeout_s)
            self.client.promote_read_replica(DBInstanceIdentifier=self.instance_id)
            if self.servers is not None:  # an emulated control plane: what RDS does to the server
                self.servers.promote(self.instance_id)
            wait_instance(self.client, self.instance_id, "available", self.timeout_s, self.poll_s)
            promoted = datetime.now(UTC).isoformat()
            # Tag after the call: a crash in between re-promotes, which RDS refuses harmlessly
            # (no source any more) and moto accepts.
            self.client.add_tags_to_resource(
                ResourceName=inst["DBInstanceArn"], Tags=[{"Key": PROMOTED_TAG, "Value": promoted}]
            )
            already = False
        else:
            already = True
        lsn, at = self._lsn()
        return Detachment(
            "rds", lsn, at, already,
            {"instance": self.instance_id, "source": source, "promoted_at": promoted, "reattach": "reclone_required"},
        )

    def reattach(self) -> Reattachment:
        inst = self._instance()
        if self._promoted(inst) is None:
            return Reattachment("rds", "not_detached", f"{self.instance_id} was never promoted: still a read replica")
        msg = (
            f"RDS instance {self.instance_id} was promoted and is a standalone instance now; a read replica "
            "cannot be re-attached. Create a new one (create_db_instance_read_replica) and retire this instance."
        )
        log.warning(msg)
        return Reattachment("rds", "reclone_required", msg)

    def describe(self) -> dict[str, Any]:
        inst = self._instance()
        promoted = self._promoted(inst)
        return {
            "mode": "rds",
            "instance": self.instance_id,
            "status": inst.get("DBInstanceStatus"),
            "source": inst.get("ReadReplicaSourceDBInstanceIdentifier"),
            "detached": promoted is not None,
            "promoted_at": promoted,
        }


# --------------------------------------------------------------------------------------------------
# A standby of the run's own (mode ``promote``): made before the detach, dropped in its teardown
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStandby:
    """Where the run's own standby listens (the roles and database are the primary's: it is a clone)."""

    name: str
    host: str
    port: int
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "port": self.port, **self.detail}


class StandbyProvisioner(Protocol):
    """Makes and drops hot standbys of the shared primary, one per run (``replica.provisioner`` of
    the profile names a ``package.module:function`` returning one). Every method is idempotent:
    the same name is the same standby, whatever happened in between (a retry, a cleared task)."""

    def problems(self) -> list[str]:
        """Why no standby can be made now (tools, access to the primary, replication slots and
        senders left, disk): empty when one can. Reads only: the preflight asks it."""
        ...

    def create(self, name: str) -> RunStandby:
        """A hot standby named ``name`` streaming from the primary (or promoted since: it is kept as
        it is); made if missing, started if stopped."""
        ...

    def find(self, name: str) -> RunStandby | None:
        """The standby ``name`` if it exists (running or not), else None."""
        ...

    def drop(self, name: str) -> bool:
        """Stop and delete the standby ``name`` and what it holds on the primary (its replication
        slot); True when there was something to drop."""
        ...


def run_standby_name(run_id: str) -> str:
    """A short name for the run's standby, stable for the run, safe as a slot, directory and
    cluster name (``tm_run_`` + 12 hex digits of the run id's SHA-256)."""
    import hashlib

    return "tm_run_" + hashlib.sha256(run_id.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------
# Mode ``rds``: the run's own read replica, made and dropped through the RDS API
# --------------------------------------------------------------------------------------------------


class InstanceServers(Protocol):
    """The PostgreSQL server behind each RDS instance, where the control plane has none (moto, the
    local stack's RDS): made with the instance, promoted with it, dropped with it. Never set on AWS,
    where the instance is its own server."""

    def create(self, instance_id: str) -> RunStandby: ...

    def promote(self, instance_id: str) -> None: ...

    def drop(self, instance_id: str) -> bool: ...


RUN_TAG = "tm:run-standby"


def rds_instance_id(name: str) -> str:
    """The RDS identifier of the run's standby ``name``: letters, digits and hyphens."""
    return name.replace("_", "-")


def wait_instance(client: Any, instance_id: str, state: str | None, timeout_s: float, poll_s: float) -> None:
    """Until the instance's status is ``state`` (None: until it is gone)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = client.describe_db_instances(DBInstanceIdentifier=instance_id)["DBInstances"]
        except client.exceptions.DBInstanceNotFoundFault:
            found = []
        status = found[0].get("DBInstanceStatus") if found else None
        if status == state:
            return
        if time.monotonic() > deadline:
            raise ReplicaError(f"RDS instance {instance_id} is {status or 'gone'}, not {state or 'gone'}, "
                               f"after {timeout_s:.0f}s")
        time.sleep(poll_s)


class RdsStandbys:
    """A ``StandbyProvisioner`` over the RDS API: the run's standby is a read replica of the
    platform's primary instance (``source_instance``), made with ``create_db_instance_read_replica``
    and deleted (no final snapshot) by ``drop``. Its server is the instance's endpoint, or the one
    ``servers`` binds to it (an emulated control plane)."""

    def __init__(self, client: Any, source_instance: str, instance_class: str | None = None,
                 servers: InstanceServers | None = None, timeout_s: float = 3600.0, poll_s: float = 15.0) -> None:
        self.client, self.source, self.instance_class = client, source_instance, instance_class
        self.servers, self.timeout_s, self.poll_s = servers, timeout_s, poll_s

    def _describe(self, instance_id: str) -> dict[str, Any] | None:
        try:
            found = self.client.describe_db_instances(DBInstanceIdentifier=instance_id)["DBInstances"]
        except self.client.exceptions.DBInstanceNotFoundFault:
            return None
        return dict(found[0]) if found else None

    def problems(self) -> list[str]:
        try:
            src = self._describe(self.source)
        except Exception as exc:  # the API unreachable, refused credentials: the message says which
            return [f"the RDS API does not answer: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"]
        if src is None:
            return [f"RDS instance {self.source!r} (replica.rds.source_instance) not found: no primary to make the "
                    "run's read replica of"]
        problems = []
        if src.get("Engine") not in ("postgres", "aurora-postgresql"):
            problems.append(f"RDS instance {self.source!r} runs {src.get('Engine')}, not PostgreSQL")
        if src.get("DBInstanceStatus") != "available":
            problems.append(f"RDS instance {self.source!r} is {src.get('DBInstanceStatus')}, not available")
        return problems

    def _standby(self, name: str, inst: dict[str, Any]) -> RunStandby:
        instance_id = rds_instance_id(name)
        detail = {"instance": instance_id, "source": self.source, "status": inst.get("DBInstanceStatus")}
        if self.servers is not None:
            server = self.servers.create(instance_id)
            return RunStandby(name, server.host, server.port, {**detail, "server": "emulated"})
        endpoint = inst.get("Endpoint") or {}
        return RunStandby(name, str(endpoint.get("Address")), int(endpoint.get("Port") or 5432), detail)

    def find(self, name: str) -> RunStandby | None:
        inst = self._describe(rds_instance_id(name))
        return None if inst is None else self._standby(name, inst)

    def create(self, name: str) -> RunStandby:
        instance_id = rds_instance_id(name)
        inst = self._describe(instance_id)
        if inst is None:
            args: dict[str, Any] = {"DBInstanceIdentifier": instance_id, "SourceDBInstanceIdentifier": self.source,
                                    "Tags": [{"Key": RUN_TAG, "Value": name}]}
            if self.instance_class:
                args["DBInstanceClass"] = self.instance_class
            made = self.client.create_db_instance_read_replica(**args)["DBInstance"]
            self.client.add_tags_to_resource(ResourceName=made["DBInstanceArn"], Tags=args["Tags"])
        elif self._tag(inst) != name:
            raise ReplicaError(f"RDS instance {instance_id} exists and is not the run's standby (no {RUN_TAG} tag "
                               f"{name!r}): refusing to use or delete it")
        wait_instance(self.client, instance_id, "available", self.timeout_s, self.poll_s)
        inst = self._describe(instance_id)
        assert inst is not None
        return self._standby(name, inst)

    def _tag(self, inst: dict[str, Any]) -> str | None:
        tags = self.client.list_tags_for_resource(ResourceName=inst["DBInstanceArn"]).get("TagList", [])
        return next((t["Value"] for t in tags if t["Key"] == RUN_TAG), None)

    def drop(self, name: str) -> bool:
        instance_id = rds_instance_id(name)
        inst = self._describe(instance_id)
        if inst is not None:
            if self._tag(inst) != name:
                raise ReplicaError(f"RDS instance {instance_id} is not the run's standby (no {RUN_TAG} tag "
                                   f"{name!r}): not deleting it")
            if inst.get("DBInstanceStatus") != "deleting":
                self.client.delete_db_instance(DBInstanceIdentifier=instance_id, SkipFinalSnapshot=True,
                                               DeleteAutomatedBackups=True)
            wait_instance(self.client, instance_id, None, self.timeout_s, self.poll_s)
        served = self.servers.drop(instance_id) if self.servers is not None else False
        return inst is not None or served
