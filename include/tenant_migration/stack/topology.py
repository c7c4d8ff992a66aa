"""Where every server of the local stack lives: one place, read by the stack, the Airflow
connections, the docker-compose check and the tests."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, replace
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
    pg_primary: PgServer = PgServer("pg-primary", "127.0.0.1", 15432)
    pg_standby: PgServer = PgServer("pg-standby", "127.0.0.1", 15433)
    pg_target: PgServer = PgServer("pg-target", "127.0.0.1", 15434)
    # Airflow's own metadata database (ADR 8): a cluster of its own, never one the migration touches.
    pg_airflow: PgServer = PgServer("pg-airflow", "127.0.0.1", 15435)
    cassandra_source: CassandraNode = CassandraNode(
        "cassandra-source", "127.0.0.2", 9042, 7000, "platform-shared", 7199
    )
    cassandra_target: CassandraNode = CassandraNode(
        "cassandra-target", "127.0.0.3", 9042, 7000, "tenant-vpc", 7299
    )
    moto_host: str = "127.0.0.1"
    moto_port: int = 15500
    airflow_api_port: int = 18080
    # The Celery broker of the distributed executor (``stack up WORKERS=N``; unused by LocalExecutor).
    redis_port: int = 16379
    pg_dbname: str = "platform"
    airflow_dbname: str = "airflow"
    airflow_db_user: str = "airflow"
    # Roles. The superuser is for the stack itself; the migration uses least-privilege roles
    # created by the schema (see sample/sql/roles.sql).
    pg_superuser: str = "stack_admin"
    pg_superpassword: str = field(default="", repr=False)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pg_servers(self) -> tuple[PgServer, ...]:
        return (self.pg_primary, self.pg_standby, self.pg_target, self.pg_airflow)

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


def admin_password(state_dir: Path) -> str:
    """The stack superuser's password: random per stack, kept in ``admin_password`` (0600)."""
    path = state_dir / "admin_password"
    if path.exists():
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password)
    return password


def slotted_topology(state_dir: Path, slot: int) -> Topology:
    """Slot 0 is the default stack; slot N shifts every port and the Cassandra addresses so that
    several stacks (a developer's and a CI clone's, say) can run side by side on one machine."""
    if not 0 <= slot <= 9:
        raise ValueError(f"TM_STACK_SLOT must be 0..9, got {slot}")
    base = Topology(state_dir=state_dir)
    shift = 100 * slot
    return replace(
        base,
        pg_primary=replace(base.pg_primary, port=base.pg_primary.port + shift),
        pg_standby=replace(base.pg_standby, port=base.pg_standby.port + shift),
        pg_target=replace(base.pg_target, port=base.pg_target.port + shift),
        pg_airflow=replace(base.pg_airflow, port=base.pg_airflow.port + shift),
        cassandra_source=replace(base.cassandra_source, host=f"127.0.{slot}.2", jmx_port=base.cassandra_source.jmx_port + 1000 * slot),
        cassandra_target=replace(base.cassandra_target, host=f"127.0.{slot}.3", jmx_port=base.cassandra_target.jmx_port + 1000 * slot),
        moto_port=base.moto_port + shift,
        redis_port=base.redis_port + shift,
        airflow_api_port=base.airflow_api_port + shift,
        pg_superpassword=admin_password(state_dir),
    )


def default_topology() -> Topology:
    """The stack of this checkout: ``TM_STATE_DIR`` (default ``.stack/``), ``TM_STACK_SLOT`` (default 0)."""
    state = Path(os.environ.get("TM_STATE_DIR", REPO_ROOT / ".stack")).resolve()
    return slotted_topology(state, int(os.environ.get("TM_STACK_SLOT", "0")))
