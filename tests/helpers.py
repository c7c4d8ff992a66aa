"""Helpers shared by integration and e2e tests (importable: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

from typing import Any

import psycopg

from tenant_migration.stack import postgres
from tenant_migration.stack.topology import Topology


def admin(topo: Topology, server: str) -> psycopg.Connection:
    """A superuser connection for test setup and for breaking data on purpose."""
    srv = {"primary": topo.pg_primary, "standby": topo.pg_standby, "target": topo.pg_target}[server]
    return psycopg.connect(postgres.superuser_dsn(topo, srv, topo.pg_dbname), autocommit=True)


def ledger_runs(conn: psycopg.Connection, run_id: str | None = None) -> int:
    """Runs registered in the target's ledger (0 when the ledger was never created)."""
    if not conn.execute("SELECT to_regclass('tm_control.runs')").fetchone()[0]:
        return 0
    if run_id is None:
        return int(conn.execute("SELECT count(*) FROM tm_control.runs").fetchone()[0])
    return int(conn.execute("SELECT count(*) FROM tm_control.runs WHERE run_id = %s", (run_id,)).fetchone()[0])


def parse_dag(dag_id: str) -> Any:
    """A DAG parsed from its own file (``dag_id`` == file stem), failing on any import error."""
    from airflow.dag_processing.dagbag import DagBag

    from tenant_migration.stack.topology import REPO_ROOT

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags" / f"{dag_id}.py"))
    assert bag.import_errors == {}
    return bag.dags[dag_id]


def create_keyspace(endpoints: Any, name: str, *tables: str) -> None:
    """A keyspace made for a test on both Cassandra clusters, with ``tables`` (CQL, ``{ks}`` for its name)."""
    with endpoints.cassandra_sessions() as (src, dst):
        for s in (src, dst):
            s.execute(f"CREATE KEYSPACE {name} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
            for ddl in tables:
                s.execute(ddl.format(ks=name), timeout=60)


def drop_test_platform(topo: Topology, endpoints: Any, name: str) -> None:
    """Drop what a test made under ``name``: its keyspace on both clusters and its schema on the
    target and the primary (the standby follows)."""
    with endpoints.cassandra_sessions() as (src, dst):
        for s in (src, dst):
            s.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=60)
    for server in ("target", "primary"):
        with admin(topo, server) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def make_test_platform(topo: Topology, endpoints: Any, name: str, pg_ddl: list[str], cql_ddl: list[str],
                       rows: list[str] | None = None) -> None:
    """A platform of a test's own under ``name``: schema ``name`` (``pg_ddl``, ``{s}`` for its name)
    on the primary and the target, ``rows`` (SQL, ``{s}`` too) on the primary only, keyspace ``name``
    (``cql_ddl``, ``{ks}``) on both clusters; returns once the standby (the replica) has replayed it.
    Drop it with ``drop_test_platform``."""
    from tenant_migration.sample.platform import wait_standby_caught_up

    grants = {"primary": ["GRANT USAGE ON SCHEMA {s} TO migration_reader, platform_app",
                          "GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO migration_reader",
                          "GRANT SELECT ON ALL SEQUENCES IN SCHEMA {s} TO migration_reader"],
              "target": ["GRANT USAGE ON SCHEMA {s} TO migration_writer",
                         "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA {s} TO migration_writer",
                         "GRANT SELECT, UPDATE, USAGE ON ALL SEQUENCES IN SCHEMA {s} TO migration_writer"]}
    for server in ("primary", "target"):
        with admin(topo, server) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
            for ddl in pg_ddl + grants[server]:  # the roles the sample's roles.sql grants, on this schema
                conn.execute(ddl.format(s=name))
            if server == "primary":
                for stmt in rows or []:
                    conn.execute(stmt.format(s=name))
    create_keyspace(endpoints, name, *cql_ddl)
    wait_standby_caught_up(topo)


def sample_slug(topo: Topology, tenant_id: int) -> str:
    """A sample tenant's slug: a test platform's root row takes it to find its DNS records."""
    with admin(topo, "standby") as conn:
        return str(conn.execute("SELECT slug FROM platform.tenants WHERE tenant_id = %s", (tenant_id,)).fetchone()[0])


def copy_on_the_snapshot(endpoints: Any, spec: Any, run_id: str, consistent_lsn: str, gate: bool = True,
                         tmap: Any = None) -> None:
    """READY as the DAG runs it: detach the replica at the slot's point, copy both stores (then the
    post-copy gate), and reattach the replica whatever happened. ``tmap``: a test platform's."""
    from tenant_migration import replica, steps

    steps.detach_replica(endpoints, spec, run_id, consistent_lsn)
    try:
        steps.copy_postgres(endpoints, spec, run_id, tmap)
        steps.copy_cassandra(endpoints, spec, run_id, tmap)
        if gate:
            steps.gate_post_copy(endpoints, spec, run_id, tmap)
    finally:
        with endpoints.replica_control.connect(autocommit=True) as rc:
            replica.reattach(rc)


PROMOTE = {"mode": "promote", "provisioner": "tenant_migration.stack.run_standby:provisioner"}
# The local stack's RDS: moto's API, and a standby of the primary as each instance's server.
RDS = {"mode": "rds", "rds": {"source_instance": "platform-primary", "poll_seconds": 0.2, "timeout_minutes": 2,
                              "servers": "tenant_migration.stack.run_standby:rds_servers"}}
MODES = {"local": {"mode": "local"}, "promote": PROMOTE, "rds": RDS}


def write_profile(folder: Any, name: str, replica_doc: dict[str, Any]) -> Any:
    """The sample platform's profile as ``<folder>/<name>.yaml`` with ``replica_doc`` as its
    ``replica`` section (the tenant map by its absolute path: the copy lives elsewhere)."""
    import yaml

    from tenant_migration.sample import PROFILE, SAMPLE_MAP

    doc = yaml.safe_load(PROFILE.read_text())
    doc["tenant_map"] = str(SAMPLE_MAP)
    doc["replica"] = replica_doc
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def unreachable_primary_standbys() -> Any:
    """A standby provisioner (``replica.provisioner``) whose primary nobody listens on: the local
    stack's own, pointed at a free port."""
    import dataclasses
    import socket

    from tenant_migration.stack.run_standby import LocalStandbys
    from tenant_migration.stack.topology import default_topology

    topo = default_topology()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    return LocalStandbys(dataclasses.replace(topo, pg_primary=dataclasses.replace(topo.pg_primary, port=port)))


def page_text(path: Any) -> str:
    """A Great Expectations Data Docs page as its reader sees it: no scripts, styles or tags."""
    import html
    import re
    from pathlib import Path

    text = re.sub(r"<(script|style).*?</\1>", " ", Path(path).read_text(), flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


class WebhookReceiver:
    """A small local HTTP server that records every POST it gets (path, headers, body) and answers
    ``status``: the on-call webhook's stand-in for the alert tests. ``with WebhookReceiver() as r``."""

    def __init__(self, status: int = 204) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.status = status
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def connection(self, secret: str, endpoint: str = "/hooks/migration") -> dict[str, Any]:
        """The ``tm_alerts`` Airflow connection that points at this receiver."""
        return {"conn_type": "http", "host": "127.0.0.1", "port": self.port, "schema": "http", "password": secret,
                "extra": {"endpoint": endpoint}}

    def alerts(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(r["body"]) for r in self.received]

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def rogue_trigger(topo: Topology, name: str, table: str, when: str, body: str, timing: str = "BEFORE") -> Any:
    """A trigger a deployment script left on the target (``ENABLE ALWAYS``: it fires in the copy's
    replica sessions too): ``<timing> INSERT ON <table> ... WHEN (<when>)`` runs ``body`` (plpgsql,
    before ``RETURN NEW``). A context manager; dropped at its end (a test may drop it sooner)."""
    from contextlib import contextmanager

    @contextmanager
    def installed() -> Any:
        with admin(topo, "target") as t:
            t.execute(f"CREATE OR REPLACE FUNCTION public.{name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                      f"BEGIN {body} RETURN NEW; END $$")
            t.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            t.execute(f"CREATE TRIGGER {name} {timing} INSERT ON {table} FOR EACH ROW WHEN ({when}) "
                      f"EXECUTE FUNCTION public.{name}()")
            t.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {name}")
        try:
            yield
        finally:
            with admin(topo, "target") as t:
                t.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
                t.execute(f"DROP FUNCTION IF EXISTS public.{name}()")

    return installed()


def alert_receiver(monkeypatch: Any, secret: str) -> Any:
    """A ``WebhookReceiver`` that ``tm_alerts`` resolves to in this process (the hook lookup
    patched at its seam): ``with alert_receiver(monkeypatch, secret) as r``."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    @contextmanager
    def receiving() -> Any:
        from airflow.sdk import BaseHook

        with WebhookReceiver() as r:
            conn = r.connection(secret)
            found = SimpleNamespace(host=conn["host"], port=conn["port"], schema=conn["schema"], password=secret,
                                    extra_dejson=conn["extra"])
            monkeypatch.setattr(BaseHook, "get_connection", classmethod(lambda cls, conn_id: found))
            yield r

    return receiving()


def unpaused_standalone(topo: Topology, log_path: Any, dag_id: str, env: dict[str, str] | None = None,
                        start: Any = None) -> Any:
    """For a module fixture (``yield from``): ``airflow standalone`` on the test stack with
    ``dag_id`` parsed and unpaused, stopped at the end. A run an earlier, interrupted session left
    running would hold the DAG (``max_active_runs=1``): it is marked failed first. ``start``: how
    Airflow starts (``airflow_rest.start_components`` for the CeleryExecutor; standalone by default)."""
    from tenant_migration.stack.airflow_rest import start_standalone, stop

    proc, api = (start or start_standalone)(topo, log_path, env=env)
    try:
        api.wait_for_dag(dag_id)
        for run in api.call("GET", f"/dags/{dag_id}/dagRuns?state=running&state=queued")["dag_runs"]:
            api.call("PATCH", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}", {"state": "failed"})
        api.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})
        yield api
    finally:
        stop(proc)
