"""Where each PostgreSQL server of the local stack lives and how it is configured (binaries, paths,
sockets, settings, HBA, passfile, DSNs: pure, what the unit tests check), and the small file and
process helpers the servers are made and run with (``stack.postgres`` makes and runs them)."""

from __future__ import annotations

import hashlib
import os
import pwd
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from tenant_migration.stack.common import (
    StackError,
    ensure_service_user,
    is_root,
    read_pid,
    require_binary,
    run_service,
)
from tenant_migration.stack.topology import PgServer, Topology

Role = Literal["primary", "standby", "target", "airflow"]
ROLES: tuple[Role, ...] = ("primary", "standby", "target", "airflow")

DEFAULT_PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_BIN_ENV = "TM_PG_BIN"
INSTALL_HINT = (
    "Install the PostgreSQL 15 server with `apt-get install -y postgresql-15 postgresql-contrib`, "
    f"or point {PG_BIN_ENV} at a directory holding initdb, pg_ctl, pg_basebackup and pg_isready."
)
STANDBY_SLOT = "standby_slot"
MANAGED_CONF = "tenant_migration.conf"
READY_MARKER = ".tm-initialized"
# sockaddr_un.sun_path is 108 bytes with the NUL; PostgreSQL refuses longer socket paths. Keep margin.
MAX_SOCKET_PATH = 100
START_TIMEOUT_S = 60
STREAMING_TIMEOUT_S = 45.0
ConfValue = str | int | bool


# --------------------------------------------------------------------------------------------------
# Binaries and paths (pure: these are what the unit tests check)
# --------------------------------------------------------------------------------------------------


def pg_bin() -> Path:
    """Directory of the PostgreSQL server binaries: ``$TM_PG_BIN`` or Debian's PostgreSQL 15 path.

    Read at call time (not import time) so tests and CI can point it elsewhere.
    """
    override = os.environ.get(PG_BIN_ENV, "").strip()
    return Path(override) if override else DEFAULT_PG_BIN


PG_BIN = pg_bin()


def pg_tool(name: str) -> str:
    """Absolute path of one PostgreSQL binary, or StackError with the install command."""
    return require_binary(str(pg_bin() / name), INSTALL_HINT)


def pg_root(topo: Topology) -> Path:
    return topo.state_dir / "pg"


def data_dir(topo: Topology, role: Role) -> Path:
    return pg_root(topo) / role


def server_of(topo: Topology, role: Role) -> PgServer:
    return {"primary": topo.pg_primary, "standby": topo.pg_standby, "target": topo.pg_target,
            "airflow": topo.pg_airflow}[role]


def log_file(topo: Topology, role: Role) -> Path:
    return topo.logs_dir / f"{server_of(topo, role).name}.log"


def pgpass_file(topo: Topology) -> Path:
    return pg_root(topo) / "pgpass"


def timings_file(topo: Topology) -> Path:
    return pg_root(topo) / "timings.json"


def socket_path(directory: Path, port: int) -> str:
    return f"{directory}/.s.PGSQL.{port}"


def socket_dir(topo: Topology) -> Path:
    """Unix socket directory shared by the three servers.

    ``<state_dir>/pg/run`` when the resulting socket path fits in ``sun_path``; otherwise a directory
    under /tmp named after a hash of the state dir, so it is stable for one state dir (it is written
    into postgresql.conf) and distinct between two checkouts.
    """
    preferred = pg_root(topo) / "run"
    longest_port = max(s.port for s in topo.pg_servers)
    if len(socket_path(preferred, longest_port)) <= MAX_SOCKET_PATH:
        return preferred
    digest = hashlib.sha256(str(topo.state_dir).encode()).hexdigest()[:12]
    # Predictable name on purpose (it must be found again); _ensure_socket_dir refuses one it did not make.
    return Path("/tmp") / f"tm-pg-{digest}"  # noqa: S108


def server_settings(topo: Topology, role: Role) -> dict[str, ConfValue]:
    """postgresql.conf settings we own, per role.

    Primary: ``wal_level=logical`` (logical decoding for CDC), slots and senders for the standby,
    commit timestamps for ordering. The standby mirrors the primary (hot standby requires its limits
    to be at least the primary's, and a promoted standby must keep decoding). The target only needs
    ``replica``. Airflow's metadata cluster commits asynchronously: a crash of this local server
    loses at most the last few hundred milliseconds of task state (the tasks' own progress is in the
    ledger), and every task state change, XCom and heartbeat stops waiting for a WAL flush.
    """
    server = server_of(topo, role)
    settings: dict[str, ConfValue] = {
        "listen_addresses": server.host,
        "port": server.port,
        "unix_socket_directories": str(socket_dir(topo)),
        "unix_socket_permissions": "0700",
        "wal_level": "logical",
        "max_wal_senders": 10,
        "max_replication_slots": 10,
        # A failed run keeps its logical slot until resumed or aborted (ADR 7): bound the WAL it
        # can hold on the shared primary (an invalidated slot makes the resume fail loudly).
        "max_slot_wal_keep_size": "4GB",
        "hot_standby": True,
        "hot_standby_feedback": True,
        "shared_preload_libraries": "pg_prewarm",
        "track_commit_timestamp": True,
        "shared_buffers": "256MB",
        "fsync": True,
        "synchronous_commit": "on",
        "password_encryption": "scram-sha-256",
        "logging_collector": False,
        "log_line_prefix": "%m [%p] %q%u@%d ",
        "cluster_name": server.name,
    }
    if role in ("target", "airflow"):
        settings["wal_level"] = "replica"
        settings["track_commit_timestamp"] = False
    if role == "airflow":
        settings["synchronous_commit"] = "off"
        settings["shared_buffers"] = "128MB"
        # standalone: api-server, scheduler, dag-processor, triggerer and LocalExecutor workers, each
        # with its own SQLAlchemy pool (5 + 10 overflow)
        settings["max_connections"] = 200
    return settings


def conf_value(value: ConfValue) -> str:
    """Render one value the way postgresql.conf parses it (strings single-quoted, '' escapes)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def render_conf(settings: Mapping[str, ConfValue]) -> str:
    lines = ["# Managed by tenant_migration.stack.postgres; rewritten before every start.\n"]
    lines += [f"{key} = {conf_value(value)}\n" for key, value in settings.items()]
    return "".join(lines)


def hba_conf(host: str = "127.0.0.1") -> str:
    """Client auth: the (0700) socket trusts the service user; TCP needs a SCRAM password.

    Only 127.0.0.1/32 is listed: nothing else can reach the servers anyway, and an explicit list
    makes an accidental wider ``listen_addresses`` fail closed.
    """
    return (
        "# Managed by tenant_migration.stack.postgres.\n"
        "# TYPE  DATABASE     USER  ADDRESS          METHOD\n"
        "local   all          all                    trust\n"
        "local   replication  all                    trust\n"
        f"host    all          all   {host}/32     scram-sha-256\n"
        f"host    replication  all   {host}/32     scram-sha-256\n"
    )


def pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def pgpass_content(topo: Topology) -> str:
    """libpq passfile for the stack superuser on every server of the stack (replication included)."""
    user, password = pgpass_escape(topo.pg_superuser), pgpass_escape(topo.pg_superpassword)
    return "".join(f"{s.host}:{s.port}:*:{user}:{password}\n" for s in topo.pg_servers)


def superuser_dsn(topo: Topology, server: PgServer | str, dbname: str | None = None) -> str:
    """libpq URL for the stack superuser on ``server`` (a PgServer, a role, or a server name).

    For the stack's own checks and admin tasks; the migration itself uses least-privilege roles.
    """
    pg = _resolve_server(topo, server)
    user = quote(topo.pg_superuser, safe="")
    password = quote(topo.pg_superpassword, safe="")
    db = quote(dbname or topo.pg_dbname, safe="")
    return f"postgresql://{user}:{password}@{pg.host}:{pg.port}/{db}"


def _resolve_server(topo: Topology, server: PgServer | str) -> PgServer:
    if isinstance(server, PgServer):
        return server
    for role in ROLES:
        pg = server_of(topo, role)
        if server in (role, pg.name):
            return pg
    raise ValueError(f"unknown PostgreSQL server {server!r}; expected one of {ROLES} or their names")


# --------------------------------------------------------------------------------------------------
# Files and processes
# --------------------------------------------------------------------------------------------------


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``path`` owned by the service user, created with ``mode`` (no readable window)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        if is_root():
            user = pwd.getpwnam(ensure_service_user())
            os.fchown(fd, user.pw_uid, user.pw_gid)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _service_env(topo: Topology) -> dict[str, str]:
    """Environment for PostgreSQL tools: no inherited PG* settings, our passfile, C messages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSFILE"] = str(pgpass_file(topo))
    env["PGCONNECT_TIMEOUT"] = "5"
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def _run(topo: Topology, cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # cwd: tools run as the service user, which may not be able to enter the caller's cwd.
    return run_service(cmd, env=_service_env(topo), cwd=str(pg_root(topo)), stdin=subprocess.DEVNULL, timeout=timeout)


def postmaster_pid(directory: Path) -> int | None:
    """Pid of the live postmaster of ``directory``, or None (no pidfile, dead, or pid reused)."""
    pid = read_pid(directory / "postmaster.pid")
    if pid is None:
        return None
    try:
        proc_stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return pid  # no /proc: trust the pidfile
    # "<pid> (<comm>) <state> ...": a zombie (killed, not yet reaped) counts as dead; another
    # program that reused the pid is not ours.
    comm, _, rest = proc_stat.partition("(")[2].rpartition(")")
    state = rest.split()[0] if rest.split() else "?"
    if state in ("Z", "X") or not comm.startswith(("postgres", "postmaster")):
        return None
    return pid


def data_dir_state(directory: Path) -> Literal["missing", "ready", "partial"]:
    """ "ready" only once our setup finished (marker written last); anything in between is "partial"."""
    if not directory.exists() or not any(directory.iterdir()):
        return "missing"
    if (directory / "PG_VERSION").is_file() and (directory / READY_MARKER).is_file():
        return "ready"
    return "partial"


def _partial_error(topo: Topology, role: Role) -> StackError:
    directory = data_dir(topo, role)
    return StackError(
        f"{directory} exists but is not a complete {server_of(topo, role).name} data directory "
        "(initdb or pg_basebackup was interrupted?). Nothing was deleted. Run `make stack-reset` "
        f"to start the stack from scratch, or remove {directory} yourself and run `make stack-up` again."
    )


def _query(topo: Topology, role: Role, sql: str, dbname: str | None = None) -> tuple[object, ...]:
    """One row of ``sql`` as the stack superuser over TCP (the path every client really uses)."""
    import psycopg

    with psycopg.connect(superuser_dsn(topo, role, dbname or "postgres"), connect_timeout=3, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    return tuple(row) if row is not None else ()


def _answers(topo: Topology, role: Role) -> bool:
    """Ready = ``pg_isready`` says so and a real authenticated query returns."""
    server = server_of(topo, role)
    probe = subprocess.run(
        [
            pg_tool("pg_isready"),
            "-q",
            "-h",
            server.host,
            "-p",
            str(server.port),
            "-t",
            "2",
            "-d",
            "postgres",
            "-U",
            topo.pg_superuser,
        ],
        capture_output=True,
        env=_service_env(topo),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if probe.returncode != 0:
        return False
    try:
        return _query(topo, role, "SELECT 1") == (1,)
    except Exception:  # any failure just means "not yet"
        return False
