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
    """Drop what a test made under ``name``: its keyspace on both clusters and its schema on the target."""
    with endpoints.cassandra_sessions() as (src, dst):
        for s in (src, dst):
            s.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=60)
    with admin(topo, "target") as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def copy_on_the_snapshot(endpoints: Any, spec: Any, run_id: str, consistent_lsn: str, gate: bool = True) -> None:
    """READY as the DAG runs it: detach the replica at the slot's point, copy both stores (then the
    post-copy gate), and reattach the replica whatever happened."""
    from tenant_migration import replica, steps

    steps.detach_replica(endpoints, spec, run_id, consistent_lsn)
    try:
        steps.copy_postgres(endpoints, spec, run_id)
        steps.copy_cassandra(endpoints, spec, run_id)
        if gate:
            steps.gate_post_copy(endpoints, spec, run_id)
    finally:
        with endpoints.replica_control.connect(autocommit=True) as rc:
            replica.reattach(rc)
