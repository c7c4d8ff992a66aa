"""docker-compose.yaml cannot run here (no Docker engine): check that it describes the local
stack's topology, ports and connection settings."""

from __future__ import annotations

from pathlib import Path

import yaml

from tenant_migration.stack import airflow_env
from tenant_migration.stack.topology import REPO_ROOT, slotted_topology


def test_compose_has_the_same_topology(tmp_path: Path) -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())
    services = compose["services"]
    topo = slotted_topology(tmp_path, 0)
    expected_ports = {
        "pg-primary": f"{topo.pg_primary.host}:{topo.pg_primary.port}:5432",
        "pg-standby": f"{topo.pg_standby.host}:{topo.pg_standby.port}:5432",
        "pg-target": f"{topo.pg_target.host}:{topo.pg_target.port}:5432",
        "cassandra-source": f"{topo.cassandra_source.host}:{topo.cassandra_source.native_port}:9042",
        "cassandra-target": f"{topo.cassandra_target.host}:{topo.cassandra_target.native_port}:9042",
        "moto": f"{topo.moto_host}:{topo.moto_port}:5000",
    }
    for name, port in expected_ports.items():
        assert name in services, f"docker-compose.yaml lacks {name}"
        assert port in services[name].get("ports", []), f"{name}: expected port mapping {port}"
    assert "wal_level=logical" in services["pg-primary"]["command"]
    assert services["cassandra-source"]["environment"]["CASSANDRA_CLUSTER_NAME"] == topo.cassandra_source.cluster_name
    assert services["cassandra-target"]["environment"]["CASSANDRA_CLUSTER_NAME"] == topo.cassandra_target.cluster_name
    for svc in ("airflow-apiserver", "airflow-scheduler", "airflow-worker", "redis", "airflow-db"):
        assert svc in services
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    stack_env = airflow_env.environment(topo)
    for key in ("AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT",  # a dead worker's tasks retried as locally
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL",
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT", "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL"):
        assert env[key] == stack_env[key], key
    # ADR 8: Airflow's metadata lives in a PostgreSQL of its own there too, not on a platform server.
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert "@airflow-db/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert airflow_env.sql_alchemy_conn(topo).startswith("postgresql+psycopg2://")
    assert f":{topo.pg_airflow.port}/" in airflow_env.sql_alchemy_conn(topo)
    assert services["airflow-scheduler"]["image"].startswith("apache/airflow:3.")
    local = airflow_env.connections(topo)
    host_of = {topo.pg_primary.port: "pg-primary", topo.pg_standby.port: "pg-standby", topo.pg_target.port: "pg-target"}
    for conn_id, conn in local.items():
        key = f"AIRFLOW_CONN_{conn_id.upper()}"
        assert key in env, f"docker-compose.yaml lacks {key}"
        composed = yaml.safe_load(env[key])
        assert composed["conn_type"] == conn["conn_type"]
        if conn["conn_type"] == "postgres":
            assert composed["host"] == host_of[conn["port"]]
            assert composed["login"] == conn["login"]
            assert composed["schema"] == conn["schema"]
        if conn["conn_type"] == "cassandra":  # keyspaces come from the platform profile, not the connection
            assert "schema" not in composed and "schema" not in conn
    for mount in ("./dags:", "./plugins:", "./include:"):
        assert any(v.startswith(mount) for v in services["airflow-scheduler"]["volumes"])


def test_compose_runs_what_the_local_stack_runs() -> None:
    """The same PostgreSQL major for every server, Airflow's included; the project's requirements in
    every Airflow container; the copy pools created."""
    from tenant_migration.stack import pg_layout
    from tenant_migration.stack.__main__ import POOLS

    services = yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())["services"]
    major = pg_layout.DEFAULT_PG_BIN.parent.name  # /usr/lib/postgresql/<major>/bin
    for name, svc in services.items():
        if svc["image"].startswith("postgres:"):
            assert svc["image"] == f"postgres:{major}", name
        if svc["image"].startswith("apache/airflow:"):
            assert "pip install --no-deps -q -r /requirements.lock" in " ".join(svc["entrypoint"]), name
            assert any(v.startswith("./requirements.lock:") for v in svc["volumes"]), name
    init = " ".join(services["airflow-init"]["command"])
    for pool, slots, _ in POOLS:
        assert f"airflow pools set {pool} {slots} " in init, pool
