"""PostgreSQL part of the local stack: a logical-decoding primary, its streaming hot standby, a target,
and Airflow's own metadata database.

The first three servers stand in for the shared platform's primary, the read replica the migration
pauses, and the tenant's dedicated database; the fourth holds Airflow's metadata only (ADR 8). They all run as the unprivileged service user (PostgreSQL refuses root),
listen on 127.0.0.1 only, and keep everything under ``<state_dir>/pg``.

Idempotence rules: a running server is left alone, a stopped one is started, a standby whose data
directory is missing is cloned again from the primary. Anything half-made is reported, never removed.
The superuser password only ever travels through files readable by the service user alone
(``initdb --pwfile``, a libpq passfile), never through a command line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import re
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, cast
from urllib.parse import quote

from tenant_migration.stack.common import (
    ServiceStatus,
    StackError,
    ensure_service_user,
    is_root,
    own_dir,
    port_open,
    read_pid,
    require_binary,
    require_port_free,
    run_service,
    tail,
    wait_for,
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


@dataclass(frozen=True)
class StartRecord:
    """What ``up`` did to one server and how long it took, so slow starts show up in CI logs."""

    server: str
    action: str  # "already running" | "started" | "initialized" | "cloned"
    seconds: float  # whole step, including initdb / pg_basebackup
    start_seconds: float  # pg_ctl start until a real query answers; 0 when already running


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


# --------------------------------------------------------------------------------------------------
# Creating servers
# --------------------------------------------------------------------------------------------------


def _prepare_dirs(topo: Topology) -> None:
    ensure_service_user()
    own_dir(pg_root(topo))
    own_dir(topo.logs_dir)
    _ensure_socket_dir(socket_dir(topo))
    _write_private(pgpass_file(topo), pgpass_content(topo))


def _ensure_socket_dir(path: Path) -> None:
    """Create the socket dir 0700 for the service user: local connections are `trust`.

    It may live in world-writable /tmp under a predictable name, so never follow a symlink there
    and refuse a directory that another user made.
    """
    if is_root():
        user = pwd.getpwnam(ensure_service_user())
        uid, gid = user.pw_uid, user.pw_gid
    else:
        uid, gid = os.geteuid(), os.getegid()
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid not in (uid, 0):
        raise StackError(
            f"{path} (PostgreSQL socket directory) exists but is not a directory made by this stack "
            f"(symlink, file, or owned by uid {info.st_uid}). Remove it and run `make stack-up` again."
        )
    if info.st_uid != uid and is_root():
        os.lchown(path, uid, gid)
    os.chmod(path, 0o700, follow_symlinks=False)


def _write_server_files(topo: Topology, role: Role) -> None:
    """(Re)write our include file and pg_hba.conf; postgresql.conf only gains one include line."""
    directory = data_dir(topo, role)
    _write_private(directory / MANAGED_CONF, render_conf(server_settings(topo, role)))
    _write_private(directory / "pg_hba.conf", hba_conf(server_of(topo, role).host))
    auto = directory / "postgresql.auto.conf"
    if role == "standby" and auto.exists():
        # pg_basebackup -R wrote the primary's address into postgresql.auto.conf, which is read
        # last: keep it pointing at the primary of the current topology (ports can move).
        primary = server_of(topo, "primary")
        text = auto.read_text()
        fixed = re.sub(r"host=\S+ port=\d+", f"host={primary.host} port={primary.port}", text)
        if fixed != text:
            _write_private(auto, fixed)
    main_conf = directory / "postgresql.conf"
    include = f"include '{MANAGED_CONF}'"
    text = main_conf.read_text()
    if include not in text:
        with main_conf.open("a") as fh:
            fh.write(f"\n# tenant_migration local stack\n{include}\n")


def _initdb(topo: Topology, role: Role) -> None:
    directory = data_dir(topo, role)
    require_port_free(server_of(topo, role).host, server_of(topo, role).port, server_of(topo, role).name)
    own_dir(directory)
    os.chmod(directory, 0o700)
    pwfile = pg_root(topo) / f".initdb-pw-{role}"
    _write_private(pwfile, topo.pg_superpassword + "\n")
    try:
        _run(
            topo,
            [
                pg_tool("initdb"),
                "-D",
                str(directory),
                "-U",
                topo.pg_superuser,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ],
        )
    finally:
        pwfile.unlink(missing_ok=True)
    _write_server_files(topo, role)
    _write_private(directory / READY_MARKER, f"initialized {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n", 0o600)


def _clone_standby(topo: Topology) -> None:
    """``pg_basebackup -R -X stream`` from the primary, holding WAL in a physical slot.

    The slot keeps the primary's WAL while the standby is stopped or paused. If it already exists
    (the standby's data dir was removed) and nothing uses it, it is reused rather than dropped.
    """
    standby, primary = topo.pg_standby, topo.pg_primary
    require_port_free(standby.host, standby.port, standby.name)
    row = _query(
        topo,
        "primary",
        f"SELECT slot_type, active FROM pg_replication_slots WHERE slot_name = '{STANDBY_SLOT}'",
    )
    if row and (row[0] != "physical" or row[1]):
        raise StackError(
            f"replication slot {STANDBY_SLOT} on {primary.name} is "
            f"{'in use' if row[1] else 'not a physical slot'}, so the standby cannot be re-created. "
            "Stop whatever uses it, or run `make stack-reset`."
        )
    directory = data_dir(topo, "standby")
    slot_args = ["-S", STANDBY_SLOT] if row else ["-C", "-S", STANDBY_SLOT]
    _run(
        topo,
        [
            pg_tool("pg_basebackup"),
            "-h",
            primary.host,
            "-p",
            str(primary.port),
            "-U",
            topo.pg_superuser,
            "-D",
            str(directory),
            "-R",
            "-X",
            "stream",
            *slot_args,
            "--checkpoint=fast",
            "-w",
        ],
        timeout=600,
    )
    _write_server_files(topo, "standby")
    _write_private(directory / READY_MARKER, f"cloned {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n", 0o600)


def _ensure_database(topo: Topology, role: Role) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(superuser_dsn(topo, role, "postgres"), connect_timeout=3, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (topo.pg_dbname,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(topo.pg_dbname)))


def _ensure_airflow_database(topo: Topology) -> None:
    """Airflow's login role (password from the stack's secrets) owning its own database."""
    import psycopg
    from psycopg import sql

    from tenant_migration.stack.airflow_env import airflow_db_password

    user, dbname = topo.airflow_db_user, topo.airflow_dbname
    with psycopg.connect(superuser_dsn(topo, "airflow", "postgres"), connect_timeout=3, autocommit=True) as conn:
        password = sql.Literal(airflow_db_password(topo))
        verb = "ALTER" if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone() else "CREATE"
        conn.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(user), password))
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(dbname), sql.Identifier(user)))


def airflow_db_migrated(topo: Topology) -> bool:
    """True when Airflow's schema exists in its database (``airflow db migrate`` ran there)."""
    try:
        row = _query(topo, "airflow", "SELECT to_regclass('public.alembic_version') IS NOT NULL", topo.airflow_dbname)
    except Exception:  # not up, or no database yet
        return False
    return row == (True,)


# --------------------------------------------------------------------------------------------------
# Starting and stopping
# --------------------------------------------------------------------------------------------------


def _start(topo: Topology, role: Role) -> float:
    """Start a stopped server and wait until it answers a query; returns the seconds it took."""
    server, directory, log = server_of(topo, role), data_dir(topo, role), log_file(topo, role)
    # A postmaster killed a moment ago can linger as a zombie until init reaps it; PostgreSQL's own
    # pidfile check (kill 0) would still see it alive and refuse to start.
    stale = directory / "postmaster.pid"
    wait_for(
        lambda: read_pid(stale) is None or postmaster_pid(directory) is not None,
        30,
        f"the dead postmaster of {server.name} to be reaped ({stale})",
    )
    if postmaster_pid(directory) is not None:
        return 0.0  # someone else started it meanwhile
    require_port_free(server.host, server.port, server.name)
    _write_server_files(topo, role)
    began = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        log_offset = log.stat().st_size if log.exists() else 0
        try:
            _run(
                topo,
                [pg_tool("pg_ctl"), "-D", str(directory), "-l", str(log), "-w", "-t", str(START_TIMEOUT_S), "start"],
                timeout=START_TIMEOUT_S + 30,
            )
            break
        except StackError as exc:
            # After a kill -9 of the postmaster its children need a moment to notice and detach
            # from the old shared memory; the new postmaster refuses to start until they have.
            with log.open("rb") as fh:  # only what this attempt wrote, not an old failure
                fh.seek(log_offset)
                recent = fh.read().decode(errors="replace")
            transient = ("pre-existing shared memory block", 'lock file "postmaster.pid" already exists')
            if any(t in recent for t in transient) and attempts < 10:
                time.sleep(1)
                continue
            raise StackError(f"{server.name} did not start. See {log}:\n{tail(log, 25)}\n{exc}") from exc
    wait_for(lambda: _answers(topo, role), START_TIMEOUT_S, server.name, log)
    return time.monotonic() - began


def _is_streaming(topo: Topology) -> bool:
    try:
        row = _query(
            topo,
            "standby",
            "SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver LIMIT 1)",
        )
    except Exception:
        return False
    return row == (True, "streaming")


def _bring_up(topo: Topology, role: Role) -> StartRecord:
    server, directory = server_of(topo, role), data_dir(topo, role)
    began = time.monotonic()
    action = "started"
    state = data_dir_state(directory)
    if state == "partial":
        raise _partial_error(topo, role)
    if state == "missing":
        if role == "standby":
            _clone_standby(topo)
            action = "cloned"
        else:
            _initdb(topo, role)
            action = "initialized"

    start_seconds = 0.0
    if postmaster_pid(directory) is not None:
        # Ours and alive: leave it alone, but make sure it is (still) answering. It may also be
        # dying (killed a moment ago): then it is started below like any stopped server.
        wait_for(
            lambda: postmaster_pid(directory) is None or _answers(topo, role),
            START_TIMEOUT_S,
            f"{server.name} (already running)",
            log_file(topo, role),
        )
    if postmaster_pid(directory) is None:
        start_seconds = _start(topo, role)
    elif action == "started":
        action = "already running"

    if role == "airflow":
        _ensure_airflow_database(topo)
    elif role != "standby":
        _ensure_database(topo, role)
    elif (directory / "standby.signal").exists():
        # Also when it was already running: after a primary restart it reconnects within
        # wal_retrieve_retry_interval (5 s). A promoted standby (no standby.signal) is left as is.
        wait_for(
            lambda: _is_streaming(topo),
            STREAMING_TIMEOUT_S,
            f"{server.name} streaming from {topo.pg_primary.name}",
            log_file(topo, role),
        )
    return StartRecord(server.name, action, round(time.monotonic() - began, 3), round(start_seconds, 3))


def up(topo: Topology) -> list[StartRecord]:
    """Bring primary, standby, target and Airflow's server up (idempotently); return what was done, with timings.

    The timings are also written to ``<state_dir>/pg/timings.json``.
    """
    for tool in ("initdb", "pg_ctl", "pg_basebackup", "pg_isready", "postgres"):
        pg_tool(tool)
    for role in ROLES:  # fail before touching anything if a port we need is someone else's
        if postmaster_pid(data_dir(topo, role)) is None:
            server = server_of(topo, role)
            require_port_free(server.host, server.port, server.name)
    _prepare_dirs(topo)
    records = [_bring_up(topo, role) for role in ("primary", "standby", "target", "airflow")]
    timings_file(topo).write_text(
        json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "servers": [asdict(r) for r in records]}, indent=2)
        + "\n"
    )
    return records


def down(topo: Topology) -> None:
    """Stop standby, primary, target, Airflow's server with ``pg_ctl stop -m fast``; stopped or absent ones are skipped.

    The standby goes first so it does not spin reconnecting to a primary that is going away.
    """
    for role in ("standby", "primary", "target", "airflow"):
        directory = data_dir(topo, role)
        if postmaster_pid(directory) is None:
            continue
        try:
            _run(
                topo,
                [pg_tool("pg_ctl"), "-D", str(directory), "-m", "fast", "-w", "-t", str(START_TIMEOUT_S), "stop"],
                timeout=START_TIMEOUT_S + 30,
            )
        except StackError:
            if postmaster_pid(directory) is not None:  # raced with a stop of its own: fine
                raise


# --------------------------------------------------------------------------------------------------
# Status
# --------------------------------------------------------------------------------------------------


def lsn_to_int(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _primary_detail(topo: Topology) -> str:
    wal_level, lsn, slot_active, retained = _query(
        topo,
        "primary",
        f"""
        SELECT current_setting('wal_level'), pg_current_wal_lsn()::text,
               (SELECT active FROM pg_replication_slots WHERE slot_name = '{STANDBY_SLOT}'),
               (SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
                  FROM pg_replication_slots WHERE slot_name = '{STANDBY_SLOT}')""",
    )
    slot = (
        "no slot"
        if slot_active is None
        else (f"slot {'active' if slot_active else 'INACTIVE'} (retains {_human_bytes(cast(int, retained or 0))})")
    )
    return f"wal_level={wal_level} lsn={lsn} {slot}"


def _standby_detail(topo: Topology) -> str:
    in_recovery, pause, receiver, replay_lsn, replay_age = _query(
        topo,
        "standby",
        """
        SELECT pg_is_in_recovery(),
               CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() END,
               (SELECT status FROM pg_stat_wal_receiver LIMIT 1),
               pg_last_wal_replay_lsn()::text,
               extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8""",
    )
    if not in_recovery:
        return "PROMOTED (not in recovery)"
    state = "paused" if pause == "paused" else ("pausing" if pause == "pause requested" else "replaying")
    parts = [f"{receiver or 'NOT streaming'}", state, f"replay_lsn={replay_lsn}"]
    try:
        (primary_lsn,) = _query(topo, "primary", "SELECT pg_current_wal_lsn()::text")
        if replay_lsn:
            lag = lsn_to_int(cast(str, primary_lsn)) - lsn_to_int(cast(str, replay_lsn))
            parts.append(f"lag={_human_bytes(max(lag, 0))}")
    except Exception:  # primary down: the standby's own view is still useful
        parts.append("lag=? (primary unreachable)")
    if replay_age is not None:
        parts.append(f"last replayed xact {cast(float, replay_age):.0f}s ago")
    return " ".join(parts)


def status(topo: Topology) -> list[ServiceStatus]:
    """One line per server: up when our postmaster is alive and its port answers."""
    result: list[ServiceStatus] = []
    for role in ROLES:
        server, directory = server_of(topo, role), data_dir(topo, role)
        address = f"{server.host}:{server.port}"
        pid = postmaster_pid(directory)
        if pid is None:
            state = data_dir_state(directory)
            detail = {
                "missing": "not created",
                "partial": "INCOMPLETE data dir (make stack-reset)",
                "ready": "stopped",
            }[state]
            if port_open(server.host, server.port):
                detail += "; port taken by another process"
            result.append(ServiceStatus(server.name, address, False, detail))
            continue
        if not port_open(server.host, server.port):
            result.append(ServiceStatus(server.name, address, False, f"pid {pid}, port not answering"))
            continue
        try:
            if role == "primary":
                detail = _primary_detail(topo)
            elif role == "standby":
                detail = _standby_detail(topo)
            elif role == "airflow":
                (size,) = _query(topo, role, "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database")
                detail = f"Airflow metadata ({size})"
            else:
                (wal_level,) = _query(topo, role, "SELECT current_setting('wal_level')")
                detail = f"wal_level={wal_level}"
        except Exception as exc:
            result.append(ServiceStatus(server.name, address, False, f"pid {pid}, query failed: {exc}"))
            continue
        result.append(ServiceStatus(server.name, address, True, f"pid {pid} {detail}"))
    return result


__all__ = [
    "DEFAULT_PG_BIN",
    "INSTALL_HINT",
    "PG_BIN",
    "ROLES",
    "STANDBY_SLOT",
    "Role",
    "StartRecord",
    "airflow_db_migrated",
    "data_dir",
    "data_dir_state",
    "down",
    "hba_conf",
    "pg_bin",
    "pg_tool",
    "pgpass_content",
    "postmaster_pid",
    "render_conf",
    "server_settings",
    "socket_dir",
    "status",
    "superuser_dsn",
    "up",
]
