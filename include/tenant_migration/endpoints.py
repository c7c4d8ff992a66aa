"""Where the migration reads and writes: resolved from Airflow connections at run time (never at
parse time), or from the local stack's connections file in benchmarks and tests.

An ``Endpoints`` carries credentials: it is never logged, pushed to XCom or written to a report.
``__repr__`` hides passwords for that reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenant_migration import connections as names

if TYPE_CHECKING:
    import psycopg
    from cassandra.cluster import Cluster, Session


@dataclass(frozen=True)
class PgEndpoint:
    host: str
    port: int
    user: str
    password: str
    dbname: str

    def __repr__(self) -> str:
        return f"PgEndpoint({self.user}@{self.host}:{self.port}/{self.dbname})"

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}/{self.dbname}"

    def sqlalchemy_url(self) -> str:
        """For Great Expectations' SQL data source. Holds the password: never log it."""
        from urllib.parse import quote

        return (f"postgresql+psycopg://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
                f"@{self.host}:{self.port}/{quote(self.dbname, safe='')}")

    def connect(self, autocommit: bool = False, application_name: str = "tenant_migration") -> psycopg.Connection:
        import psycopg

        try:
            return psycopg.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self.password,
                dbname=self.dbname,
                autocommit=autocommit,
                connect_timeout=10,
                application_name=application_name,
            )
        except psycopg.OperationalError as exc:
            # The driver's message can echo connection parameters; keep only its first line.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConnectionError(f"cannot reach PostgreSQL {self.label} as {self.user}: {first}") from None


@dataclass(frozen=True)
class CassandraEndpoint:
    host: str
    port: int
    keyspace: str

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}/{self.keyspace}"

    @contextmanager
    def session(self, request_timeout: float = 30.0) -> Iterator[Session]:
        cluster = self.cluster(request_timeout)
        try:
            try:
                session = cluster.connect()
            except Exception as exc:  # NoHostAvailable carries per-host errors
                raise ConnectionError(f"cannot reach Cassandra {self.label}: {exc}") from None
            yield session
        finally:
            cluster.shutdown()

    def cluster(self, request_timeout: float = 30.0) -> Cluster:
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import WhiteListRoundRobinPolicy

        profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([self.host]), request_timeout=request_timeout)
        return Cluster(
            contact_points=[self.host],
            port=self.port,
            protocol_version=5,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=10,
            control_connection_timeout=10,
            # No schema or token metadata: one host per endpoint (no token-aware routing), and the
            # few tables a step needs are read from system_schema (``cassandra.schema.table_columns``). The
            # whole schema at every connect cost 0.04-0.3 s per cluster, in every gate and task.
            schema_metadata_enabled=False,
            token_metadata_enabled=False,
        )


@dataclass(frozen=True)
class HttpEndpoint:
    """An admin API, from an Airflow HTTP connection (``schema`` the URL scheme, as the HTTP
    provider reads it; ``extra.headers`` sent with every call). Holds credentials: never logged."""

    base_url: str
    login: str | None = None
    password: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        return f"HttpEndpoint({self.base_url})"

    @classmethod
    def from_conn(cls, host: str | None, port: int | None, schema: str | None, login: str | None,
                  password: str | None, extra: dict[str, Any] | None) -> HttpEndpoint:
        if not host:
            raise KeyError("an HTTP connection needs a host")
        base = host if "://" in host else f"{schema or 'http'}://{host}"
        if port and "://" not in host:
            base += f":{int(port)}"
        headers = (extra or {}).get("headers") or {}
        return cls(base.rstrip("/"), login or None, password or None, tuple(sorted((str(k), str(v)) for k, v in headers.items())))


@dataclass(frozen=True)
class AwsEndpoint:
    region: str
    endpoint_url: str | None
    access_key: str | None
    secret_key: str | None

    def __repr__(self) -> str:
        return f"AwsEndpoint({self.region}, {self.endpoint_url})"

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service,
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )


@dataclass(frozen=True)
class Endpoints:
    replica: PgEndpoint
    replica_control: PgEndpoint
    source_operator: PgEndpoint
    source_primary: PgEndpoint
    source_cdc: PgEndpoint
    target: PgEndpoint
    cassandra_source: CassandraEndpoint
    cassandra_target: CassandraEndpoint
    aws: AwsEndpoint
    # PostgreSQL connections a platform's profile names besides the roles above (its admin role for
    # the registration switch, say), by connection id.
    others: dict[str, PgEndpoint] = field(default_factory=dict, repr=False)
    apis: dict[str, HttpEndpoint] = field(default_factory=dict, repr=False)

    def with_replica_at(self, host: str, port: int) -> Endpoints:
        """The same endpoints with the replica's two roles (read, control) on another server: the
        run's own standby in ``replica.mode: promote`` (a clone: same roles, same database)."""
        from dataclasses import replace

        return replace(self, replica=replace(self.replica, host=host, port=port),
                       replica_control=replace(self.replica_control, host=host, port=port))

    def http(self, conn_id: str) -> HttpEndpoint:
        """The admin API of HTTP connection ``conn_id``: one the connections file holds, or (in
        Airflow, or from ``AIRFLOW_CONN_*``) any connection Airflow resolves."""
        if conn_id in self.apis:
            return self.apis[conn_id]
        try:
            from airflow.sdk import BaseHook

            c = BaseHook.get_connection(conn_id)
        except Exception as exc:  # outside Airflow, or Airflow has no such connection
            raise KeyError(f"connection '{conn_id}' is not defined ({type(exc).__name__})") from None
        return HttpEndpoint.from_conn(c.host, c.port, c.schema, c.login, c.password, c.extra_dejson)

    def postgres(self, conn_id: str) -> PgEndpoint:
        """The PostgreSQL endpoint of connection ``conn_id``: one of the migration's roles, one the
        connections file holds, or (in Airflow) any connection Airflow resolves."""
        known = {names.CONN_SOURCE_REPLICA: self.replica, names.CONN_REPLICA_CONTROL: self.replica_control,
                 names.CONN_SOURCE_OPERATOR: self.source_operator, names.CONN_SOURCE_PRIMARY: self.source_primary,
                 names.CONN_SOURCE_CDC: self.source_cdc, names.CONN_TARGET: self.target, **self.others}
        if conn_id in known:
            return known[conn_id]
        try:
            from airflow.sdk import BaseHook

            c = BaseHook.get_connection(conn_id)
        except Exception as exc:
            raise KeyError(f"connection '{conn_id}' is not defined ({type(exc).__name__})") from None
        return PgEndpoint(str(c.host), int(c.port or 5432), str(c.login), c.password or "", str(c.schema))

    @classmethod
    def from_conn_dicts(cls, conns: dict[str, dict[str, Any]]) -> Endpoints:
        def pg(conn_id: str) -> PgEndpoint:
            c = _get(conns, conn_id)
            return PgEndpoint(c["host"], int(c.get("port") or 5432), c["login"], c.get("password") or "", c["schema"])

        def cass(conn_id: str) -> CassandraEndpoint:
            c = _get(conns, conn_id)
            return CassandraEndpoint(c["host"], int(c.get("port") or 9042), c.get("schema") or "")

        aws = _get(conns, names.CONN_AWS)
        extra = _extra(aws)
        return cls(
            replica=pg(names.CONN_SOURCE_REPLICA),
            replica_control=pg(names.CONN_REPLICA_CONTROL),
            source_operator=pg(names.CONN_SOURCE_OPERATOR),
            source_primary=pg(names.CONN_SOURCE_PRIMARY),
            source_cdc=pg(names.CONN_SOURCE_CDC),
            target=pg(names.CONN_TARGET),
            cassandra_source=cass(names.CONN_CASSANDRA_SOURCE),
            cassandra_target=cass(names.CONN_CASSANDRA_TARGET),
            others={cid: pg(cid) for cid, c in conns.items()
                    if c.get("conn_type") == "postgres" and cid not in _ROLES},
            apis={cid: HttpEndpoint.from_conn(c.get("host"), c.get("port"), c.get("schema"), c.get("login"),
                                              c.get("password"), _extra(c)) for cid, c in conns.items()
                  if c.get("conn_type") == "http"},
            aws=AwsEndpoint(
                region=extra.get("region_name", "us-east-1"),
                endpoint_url=extra.get("endpoint_url"),
                access_key=aws.get("login"),
                secret_key=aws.get("password"),
            ),
        )

    @contextmanager
    def cassandra_sessions(self) -> Iterator[tuple[Session, Session]]:
        """Sessions on the source and the target cluster, connected at the same time: a connect is
        several round trips and a schema read (0.1-0.3 s each on the local stack), and most steps
        need both. Both are shut down on the way out, whatever happened."""
        target = self.cassandra_target.session()
        with ExitStack() as stack, ThreadPoolExecutor(max_workers=1, thread_name_prefix="connect-target") as pool:
            connecting = pool.submit(target.__enter__)
            try:
                src = stack.enter_context(self.cassandra_source.session())
            finally:
                dst = connecting.result()
                stack.push(target)
            yield src, dst

    @contextmanager
    def cassandra_sessions_soon(self) -> Iterator[Future[tuple[Session, Session]]]:
        """``cassandra_sessions()`` connecting in the background: the caller does its PostgreSQL
        work meanwhile and takes the sessions (``.result()``, which raises a connect error) when
        it needs them. Both are shut down on the way out, whatever happened."""
        sessions = self.cassandra_sessions()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="connect-cassandra") as pool:
            connecting = pool.submit(sessions.__enter__)
            try:
                yield connecting
            finally:
                if connecting.exception() is None:
                    sessions.__exit__(None, None, None)

    @classmethod
    def from_file(cls, path: Path) -> Endpoints:
        return cls.from_conn_dicts(json.loads(path.read_text()))

    @classmethod
    def from_airflow(cls) -> Endpoints:
        """Resolve every connection through Airflow (env vars, secrets backends, metadata DB)."""
        from airflow.sdk import BaseHook

        conns: dict[str, dict[str, Any]] = {}
        for conn_id in (*_ROLES, names.CONN_CASSANDRA_SOURCE, names.CONN_CASSANDRA_TARGET, names.CONN_AWS):
            c = BaseHook.get_connection(conn_id)
            conns[conn_id] = {
                "host": c.host,
                "port": c.port,
                "login": c.login,
                "password": c.password,
                "schema": c.schema,
                "extra": c.extra_dejson,
            }
        return cls.from_conn_dicts(conns)


_ROLES = (names.CONN_SOURCE_REPLICA, names.CONN_REPLICA_CONTROL, names.CONN_SOURCE_OPERATOR,
          names.CONN_SOURCE_PRIMARY, names.CONN_SOURCE_CDC, names.CONN_TARGET)


def _extra(conn: dict[str, Any]) -> dict[str, Any]:
    extra = conn.get("extra") or {}
    return json.loads(extra) if isinstance(extra, str) else dict(extra)


def _get(conns: dict[str, dict[str, Any]], conn_id: str) -> dict[str, Any]:
    if conn_id not in conns:
        raise KeyError(f"connection '{conn_id}' is not defined (see docs/local-stack.md: connections)")
    return conns[conn_id]
