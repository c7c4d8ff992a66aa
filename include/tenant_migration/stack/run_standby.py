"""The local stack's standby provisioner (``replica.mode: promote``): a hot standby of the stack's
primary made for one run with ``pg_basebackup``, started on a free loopback port, and dropped with
its replication slot when the run's teardown is done with it.

Everything lives under ``<state_dir>/pg/runs/<name>`` and runs as the service user, like the
stack's own servers. The port is chosen once and kept in the directory's marker, so a retried or
cleared task finds the same standby at the same address. A directory that a crash left half-made
is the run's own and holds nothing else: it is removed and cloned again.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import time
from dataclasses import replace
from pathlib import Path

from tenant_migration.replica import ReplicaError, RunStandby
from tenant_migration.stack import pg_layout as layout
from tenant_migration.stack.common import StackError, own_dir, port_open, wait_for
from tenant_migration.stack.topology import PgServer, Topology, default_topology

MARKER = ".tm-run-standby.json"
STREAMING_TIMEOUT_S = 60.0


def provisioner() -> LocalStandbys:
    """What a profile's ``replica.provisioner: tenant_migration.stack.run_standby:provisioner`` makes."""
    return LocalStandbys(default_topology())


def rds_servers() -> LocalInstanceServers:
    """What ``replica.rds.servers: tenant_migration.stack.run_standby:rds_servers`` makes: the
    servers behind the local stack's RDS (moto has none), one standby of the primary per instance."""
    return LocalInstanceServers(LocalStandbys(default_topology()))


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalStandbys:
    def __init__(self, topo: Topology) -> None:
        self.topo = topo

    # ------------------------------------------------------------------ where things are

    def directory(self, name: str) -> Path:
        return layout.pg_root(self.topo) / "runs" / name

    def _log(self, name: str) -> Path:
        return self.topo.logs_dir / f"{name}.log"

    def _server(self, name: str, port: int) -> PgServer:
        return replace(self.topo.pg_standby, name=name, port=port)

    def _marker(self, name: str) -> dict[str, object] | None:
        path = self.directory(name) / MARKER
        try:
            return dict(json.loads(path.read_text()))
        except (FileNotFoundError, ValueError):
            return None

    # ------------------------------------------------------------------ the protocol

    def problems(self) -> list[str]:
        primary = self.topo.pg_primary
        for tool in ("pg_basebackup", "pg_ctl"):
            try:
                layout.pg_tool(tool)
            except StackError as exc:
                return [f"{tool}: {exc}"]
        try:
            row = layout._query(
                self.topo, "primary",
                "SELECT current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots), "
                "current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication), "
                "(SELECT sum(pg_database_size(oid)) FROM pg_database)::bigint")
        except Exception as exc:  # any failure to reach it is the problem to report
            return [f"the primary {primary.name} ({primary.host}:{primary.port}) cannot be reached to clone a "
                    f"standby from: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"]
        slots, senders, size = (int(v) for v in row)  # type: ignore[call-overload]
        problems = []
        if slots < 1:
            problems.append(f"the primary {primary.name} has no replication slot left (max_replication_slots)")
        if senders < 1:
            problems.append(f"the primary {primary.name} has no WAL sender left (max_wal_senders)")
        root = layout.pg_root(self.topo)
        free = shutil.disk_usage(root if root.exists() else self.topo.state_dir).free
        if free < 1.2 * size:
            problems.append(f"{root} has {free / 2**30:.1f} GiB free, less than the primary's "
                            f"{size / 2**30:.1f} GiB and a margin: no room for the run's standby")
        return problems

    def find(self, name: str) -> RunStandby | None:
        marker = self._marker(name)
        if marker is None:
            return None
        port = int(marker["port"])  # type: ignore[call-overload]
        running = layout.postmaster_pid(self.directory(name)) is not None
        return RunStandby(name, self.topo.pg_standby.host, port,
                          {"directory": str(self.directory(name)), "running": running})

    def create(self, name: str) -> RunStandby:
        directory = self.directory(name)
        if self._marker(name) is None:
            self._clone(name)
        found = self.find(name)
        assert found is not None
        if layout.postmaster_pid(directory) is None:
            self._start(name, found.port)
        server = self._server(name, found.port)
        # A promoted one stays as it is (the run detached it); a standby must stream before it is used.
        wait_for(lambda: self._streaming_or_promoted(server), STREAMING_TIMEOUT_S,
                 f"the run's standby {name} to stream from the primary", self._log(name))
        return RunStandby(name, server.host, server.port, {"directory": str(directory), "running": True})

    def drop(self, name: str) -> bool:
        directory = self.directory(name)
        existed = directory.exists()
        if layout.postmaster_pid(directory) is not None:
            layout._run(self.topo, [layout.pg_tool("pg_ctl"), "-D", str(directory), "-m", "fast", "-w", "-t", "60",
                                    "stop"], timeout=90)
        shutil.rmtree(directory, ignore_errors=True)
        # Its slot on the primary, once the WAL receiver let go of it (else the primary keeps WAL for it).
        deadline = time.monotonic() + 30
        while True:
            row = layout._query(self.topo, "primary",
                                f"SELECT active FROM pg_replication_slots WHERE slot_name = '{name}'")
            if not row:
                return existed
            if not row[0]:
                layout._query(self.topo, "primary", f"SELECT pg_drop_replication_slot('{name}') IS NULL")
                return True
            if time.monotonic() > deadline:
                raise ReplicaError(f"the replication slot {name} on the primary is still in use 30 s after its "
                                   "standby stopped; drop it by hand (pg_drop_replication_slot) once it is not")
            time.sleep(0.5)

    # ------------------------------------------------------------------ making one

    def _clone(self, name: str) -> None:
        directory = self.directory(name)
        if not name.replace("_", "").isalnum():
            raise ReplicaError(f"standby name {name!r}: letters, digits and underscores only")
        shutil.rmtree(directory, ignore_errors=True)  # half-made by a crash: the run's own, nothing else in it
        own_dir(directory.parent)
        primary = self.topo.pg_primary
        row = layout._query(self.topo, "primary",
                            f"SELECT active FROM pg_replication_slots WHERE slot_name = '{name}'")
        if row and row[0]:
            raise ReplicaError(f"the replication slot {name} on the primary is in use by another standby")
        slot_args = ["-S", name] if row else ["-C", "-S", name]
        layout._run(self.topo, [layout.pg_tool("pg_basebackup"), "-h", primary.host, "-p", str(primary.port),
                                "-U", self.topo.pg_superuser, "-D", str(directory), "-R", "-X", "stream",
                                *slot_args, "--checkpoint=fast", "-w"], timeout=3600)
        port = _free_port(self.topo.pg_standby.host)
        settings = layout.server_settings(self.topo, "standby")
        settings.update({"port": port, "cluster_name": name})
        # The clone carries the primary's include file: this standby's own settings replace it.
        layout._write_private(directory / layout.MANAGED_CONF, layout.render_conf(settings))
        layout._write_private(directory / "pg_hba.conf", layout.hba_conf(self.topo.pg_standby.host))
        layout._write_private(directory / MARKER, json.dumps({"port": port, "cloned_at": time.time()}))

    def _start(self, name: str, port: int) -> None:
        directory, log = self.directory(name), self._log(name)
        if port_open(self.topo.pg_standby.host, port):
            raise ReplicaError(f"port {port} of the run's standby {name} is taken by another process; drop the "
                               f"standby (its directory {directory}) and clear the task to make a new one")
        own_dir(self.topo.logs_dir)
        with contextlib.suppress(FileNotFoundError):
            (directory / "postmaster.pid").unlink()  # a dead postmaster's (postmaster_pid said none runs)
        layout._run(self.topo, [layout.pg_tool("pg_ctl"), "-D", str(directory), "-l", str(log), "-w", "-t",
                                str(layout.START_TIMEOUT_S), "start"], timeout=layout.START_TIMEOUT_S + 30)

    def _streaming_or_promoted(self, server: PgServer) -> bool:
        import psycopg

        try:
            with psycopg.connect(layout.superuser_dsn(self.topo, server, "postgres"), connect_timeout=3,
                                 autocommit=True) as conn:
                row = conn.execute("SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver LIMIT 1)"
                                   ).fetchone()
        except psycopg.Error:
            return False
        return row is not None and (not row[0] or row[1] == "streaming")


class LocalInstanceServers:
    """``replica.InstanceServers`` for the local stack's RDS (moto): an RDS instance's server is a
    standby of the stack's primary (``LocalStandbys``, named after the instance), promoted when
    the instance is promoted -- what RDS does to its own server."""

    def __init__(self, standbys: LocalStandbys) -> None:
        self.standbys = standbys

    @staticmethod
    def _name(instance_id: str) -> str:
        return instance_id.replace("-", "_")

    def create(self, instance_id: str) -> RunStandby:
        return self.standbys.create(self._name(instance_id))

    def promote(self, instance_id: str) -> None:
        import psycopg

        found = self.standbys.find(self._name(instance_id))
        if found is None:
            raise ReplicaError(f"the local server of RDS instance {instance_id} does not exist")
        server = self.standbys._server(found.name, found.port)
        with psycopg.connect(layout.superuser_dsn(self.standbys.topo, server, "postgres"), connect_timeout=5,
                             autocommit=True) as conn:
            if conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,):
                conn.execute("SELECT pg_promote(true, 60)")

    def drop(self, instance_id: str) -> bool:
        return self.standbys.drop(self._name(instance_id))
