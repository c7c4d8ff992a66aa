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
import json
import os
import pwd
import re
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

from tenant_migration.stack.common import (
    ServiceStatus,
    StackError,
    ensure_service_user,
    is_root,
    own_dir,
    port_open,
    read_pid,
    require_port_free,
    tail,
    wait_for,
)
from tenant_migration.stack.pg_layout import (  # noqa: F401  (re-exported: the old home of these names)
    DEFAULT_PG_BIN,
    INSTALL_HINT,
    MANAGED_CONF,
    MAX_SOCKET_PATH,
    PG_BIN,
    PG_BIN_ENV,
    READY_MARKER,
    ROLES,
    STANDBY_SLOT,
    START_TIMEOUT_S,
    STREAMING_TIMEOUT_S,
    ConfValue,
    Role,
    _answers,
    _partial_error,
    _query,
    _resolve_server,
    _run,
    _service_env,
    _write_private,
    conf_value,
    data_dir,
    data_dir_state,
    hba_conf,
    log_file,
    pg_bin,
    pg_root,
    pg_tool,
    pgpass_content,
    pgpass_escape,
    pgpass_file,
    postmaster_pid,
    render_conf,
    server_of,
    server_settings,
    socket_dir,
    socket_path,
    superuser_dsn,
    timings_file,
)
from tenant_migration.stack.topology import Topology


@dataclass(frozen=True)
class StartRecord:
    """What ``up`` did to one server and how long it took, so slow starts show up in CI logs."""

    server: str
    action: str  # "already running" | "started" | "initialized" | "cloned"
    seconds: float  # whole step, including initdb / pg_basebackup
    start_seconds: float  # pg_ctl start until a real query answers; 0 when already running


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
