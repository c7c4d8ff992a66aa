"""Where every server of the local stack lives: one place, read by the stack, the Airflow
connections, the docker-compose check and the tests."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class PgServer:
    name: str
    host: str
    port: int

    def dsn(self, user: str, password: str, dbname: str = "platform") -> str:
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{dbname}"


@dataclass(frozen=True)
class CassandraNode:
    name: str
    host: str
    native_port: int
    storage_port: int
    cluster_name: str
    jmx_port: int


@dataclass(frozen=True)
class Topology:
    state_dir: Path
    pg_primary: PgServer = PgServer("pg-primary", "127.0.0.1", 55432)
    pg_standby: PgServer = PgServer("pg-standby", "127.0.0.1", 55433)
    pg_target: PgServer = PgServer("pg-target", "127.0.0.1", 55434)
    cassandra_source: CassandraNode = CassandraNode(
        "cassandra-source", "127.0.0.2", 9042, 7000, "platform-shared", 7199
    )
    cassandra_target: CassandraNode = CassandraNode(
        "cassandra-target", "127.0.0.3", 9042, 7000, "tenant-vpc", 7299
    )
    moto_host: str = "127.0.0.1"
    moto_port: int = 55500
    airflow_api_port: int = 58080
    pg_dbname: str = "platform"
    # Roles. The superuser is for the stack itself; the migration uses least-privilege roles
    # created by the schema (see sample/sql/roles.sql).
    pg_superuser: str = "stack_admin"
    pg_superpassword: str = "stack-admin-local"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pg_servers(self) -> tuple[PgServer, ...]:
        return (self.pg_primary, self.pg_standby, self.pg_target)

    @property
    def cassandra_nodes(self) -> tuple[CassandraNode, ...]:
        return (self.cassandra_source, self.cassandra_target)

    @property
    def moto_url(self) -> str:
        return f"http://{self.moto_host}:{self.moto_port}"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    @property
    def airflow_home(self) -> Path:
        return self.state_dir / "airflow"


def default_topology() -> Topology:
    state = Path(os.environ.get("TM_STATE_DIR", REPO_ROOT / ".stack")).resolve()
    return Topology(state_dir=state)
