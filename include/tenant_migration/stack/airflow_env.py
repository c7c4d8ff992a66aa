"""Airflow's view of the local stack: generated passwords, ``AIRFLOW_CONN_*`` connections, and the
environment every Airflow command of the project runs with.

Passwords are made once per stack (``.stack/secrets.json``, mode 0600) and are never printed; the
connections file is the single JSON source that becomes ``AIRFLOW_CONN_*`` variables.
"""

from __future__ import annotations

import json
import os
import secrets as pysecrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tenant_migration.connections import (
    CONN_AIRFLOW_API,
    CONN_AWS,
    CONN_CASSANDRA_SOURCE,
    CONN_CASSANDRA_TARGET,
    CONN_REPLICA_CONTROL,
    CONN_SOURCE_CDC,
    CONN_SOURCE_OPERATOR,
    CONN_SOURCE_PRIMARY,
    CONN_SOURCE_REPLICA,
    CONN_TARGET,
)
from tenant_migration.stack import prewarm, workers
from tenant_migration.stack.topology import REPO_ROOT, Topology

ROLES = ("migration_reader", "migration_writer", "migration_operator", "platform_app")
AIRFLOW_ADMIN = "airflow_admin"  # the UI/REST user of the local Airflow (simple auth manager)
AIRFLOW_DB = "airflow_db"  # Airflow's login role on its metadata server (ADR 8)
# The REST user the tasks write run notes as (``run_note``): the simple auth manager's ``user``
# role (it may edit DAG runs; no connection, variable, pool or user admin).
AIRFLOW_NOTES = "airflow_run_notes"
RUN_NOTES_USER = "tm_run_notes"
SECRETS = (*ROLES, AIRFLOW_ADMIN, AIRFLOW_DB, AIRFLOW_NOTES)
# The connection ids it writes are the migration's own (``tenant_migration.connections``).


def load_secrets(topo: Topology) -> dict[str, str]:
    """Passwords of the project's database roles, created on first use. A stack made before a
    secret existed gains it; the passwords it already has are kept."""
    path = topo.state_dir / "secrets.json"
    data: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if all(name in data for name in SECRETS):
        return data
    data.update({name: pysecrets.token_urlsafe(18) for name in SECRETS if name not in data})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    return data


def role_passwords(topo: Topology) -> dict[str, str]:
    """Passwords of the database roles only."""
    secrets = load_secrets(topo)
    return {role: secrets[role] for role in ROLES}


def airflow_db_password(topo: Topology) -> str:
    return load_secrets(topo)[AIRFLOW_DB]


def sql_alchemy_conn(topo: Topology) -> str:
    """Airflow's metadata database: its own PostgreSQL server of the stack (ADR 8), through psycopg2."""
    pg = topo.pg_airflow
    user, password = quote(topo.airflow_db_user, safe=""), quote(airflow_db_password(topo), safe="")
    return f"postgresql+psycopg2://{user}:{password}@{pg.host}:{pg.port}/{topo.airflow_dbname}"


def connections(topo: Topology) -> dict[str, dict[str, Any]]:
    pw = load_secrets(topo)

    def pg(server_host: str, port: int, role: str) -> dict[str, Any]:
        return {
            "conn_type": "postgres",
            "host": server_host,
            "port": port,
            "login": role,
            "password": pw[role],
            "schema": topo.pg_dbname,
        }

    def cassandra(host: str, port: int) -> dict[str, Any]:
        return {
            "conn_type": "cassandra",
            "host": host,
            "port": port,
            "extra": {
                "load_balancing_policy": "DCAwareRoundRobinPolicy",
                "load_balancing_policy_args": {"local_dc": "datacenter1"},
                "protocol_version": 5,
            },
        }

    p, s, t = topo.pg_primary, topo.pg_standby, topo.pg_target
    cs, ct = topo.cassandra_source, topo.cassandra_target
    return {
        CONN_SOURCE_PRIMARY: pg(p.host, p.port, "platform_app"),
        CONN_SOURCE_OPERATOR: pg(p.host, p.port, "migration_operator"),
        CONN_SOURCE_CDC: pg(p.host, p.port, "migration_reader"),
        CONN_SOURCE_REPLICA: pg(s.host, s.port, "migration_reader"),
        CONN_REPLICA_CONTROL: pg(s.host, s.port, "migration_operator"),
        CONN_TARGET: pg(t.host, t.port, "migration_writer"),
        CONN_CASSANDRA_SOURCE: cassandra(cs.host, cs.native_port),
        CONN_CASSANDRA_TARGET: cassandra(ct.host, ct.native_port),
        CONN_AIRFLOW_API: {
            "conn_type": "http",
            "host": "127.0.0.1",
            "port": topo.airflow_api_port,
            "schema": "http",
            "login": RUN_NOTES_USER,
            "password": load_secrets(topo)[AIRFLOW_NOTES],
        },
        CONN_AWS: {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": topo.moto_url, "region_name": "us-east-1"},
        },
    }


# A task whose worker died with it (the machine lost, the worker's whole process tree killed) stays
# ``running`` until its heartbeats are missed this long; then the scheduler fails it into its retry.
# Airflow's 300 s is five minutes of a copy batch nobody runs; a task's supervisor heartbeats every
# 5 s ([workers] min_heartbeat_interval), so 60 s is twelve missed beats, not a slow API server.
HEARTBEAT_TIMEOUT_S = 60
HEARTBEAT_DETECTION_S = 5
# A task a Celery worker had taken from the broker but not started when it died is stranded: the
# broker hands it out again only after its visibility timeout (hours), and Airflow sees it
# ``queued`` until this timeout (600 s by default) re-queues it. Under the migration's pools a
# queued task waits only for a free worker slot (seconds), so 120 s is a lost worker, not a busy
# one -- provided the workers have at least as many slots as the pools (README, Celery workers).
QUEUED_TIMEOUT_S = 120
QUEUED_CHECK_S = 15


def environment(topo: Topology) -> dict[str, str]:
    """Environment for every Airflow command of the local stack (``make demo``, tests, standalone)."""
    home = topo.airflow_home
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn(topo),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(topo.airflow_api_port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{topo.airflow_api_port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{topo.airflow_api_port}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"admin:admin,{RUN_NOTES_USER}:user",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "simple_auth_manager_passwords.json"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": str(HEARTBEAT_DETECTION_S),
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": str(QUEUED_TIMEOUT_S),
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": str(QUEUED_CHECK_S),
        "GX_ANALYTICS_ENABLED": "false",
        "TM_STATE_DIR": str(topo.state_dir),
        "TM_REPORTS_DIR": str(topo.state_dir / "reports"),
    }
    for conn_id, conn in {**connections(topo), **platform_connections(topo)}.items():
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    if workers.wanted(topo):  # ``stack up --workers N``: the CeleryExecutor, Redis, N workers
        env.update(workers.celery_environment(topo, sql_alchemy_conn(topo)))
    return env


def platform_connections(topo: Topology) -> dict[str, dict[str, Any]]:
    """The connections the hosted platforms' profiles name besides the migration's roles (an admin
    API, say): each platform module's ``connections(topo)``."""
    from tenant_migration.stack.platforms import hosted_platforms

    out: dict[str, dict[str, Any]] = {}
    for hosted in hosted_platforms():
        if hasattr(hosted, "connections"):
            out.update(hosted.connections(topo))
    return out


def write_files(topo: Topology) -> Path:
    """Write ``connections.json`` and the Airflow UI password file (both 0600) and Airflow's local
    settings (the scheduler's import warm-up); return the first."""
    topo.airflow_home.mkdir(parents=True, exist_ok=True)
    users = topo.airflow_home / "simple_auth_manager_passwords.json"
    fd = os.open(users, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        secrets = load_secrets(topo)
        json.dump({"admin": secrets[AIRFLOW_ADMIN], RUN_NOTES_USER: secrets[AIRFLOW_NOTES]}, fh)
    # Airflow imports $AIRFLOW_HOME/config/airflow_local_settings.py in every process: the
    # scheduler warms its LocalExecutor workers' imports there (stack/prewarm.py).
    (topo.airflow_home / "config").mkdir(exist_ok=True)
    (topo.airflow_home / "config" / "airflow_local_settings.py").write_text(prewarm.LOCAL_SETTINGS)
    path = topo.state_dir / "connections.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({**connections(topo), **platform_connections(topo)}, fh, indent=2)
    return path
