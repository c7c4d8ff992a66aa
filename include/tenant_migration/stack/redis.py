"""Redis: the Celery broker of the local stack's distributed executor (``stack up --workers N``).

Debian's ``redis-server`` as the service user, on loopback only, with no persistence: a broker of
task messages that Airflow's scheduler re-sends when they are lost (a task's state lives in
Airflow's metadata database, never in the broker), so a restart empty is correct.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tenant_migration.stack.common import (
    ServiceStatus,
    StackError,
    as_service_user,
    own_dir,
    read_pid,
    require_port_free,
    stop_pidfile_process,
    wait_for,
)
from tenant_migration.stack.topology import Topology

HOST = "127.0.0.1"


def _dir(topo: Topology) -> Path:
    return topo.state_dir / "redis"


def _pidfile(topo: Topology) -> Path:
    return _dir(topo) / "redis.pid"


def url(topo: Topology, db: int = 0) -> str:
    return f"redis://{HOST}:{topo.redis_port}/{db}"


def ping(topo: Topology, timeout: float = 2.0) -> bool:
    """Redis answers ``PING`` with ``+PONG`` (the protocol by hand: no client needed here)."""
    try:
        with socket.create_connection((HOST, topo.redis_port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def up(topo: Topology) -> float:
    """Start redis-server if it does not answer; seconds spent (0 when it already ran)."""
    if ping(topo):
        return 0.0
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError("redis-server is missing: `make system-deps` installs Debian's redis-server")
    own_dir(_dir(topo))
    own_dir(topo.logs_dir)
    stop_pidfile_process(_pidfile(topo))
    require_port_free(HOST, topo.redis_port, "redis")
    started = time.monotonic()
    log = topo.logs_dir / "redis.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            as_service_user([binary, "--bind", HOST, "--port", str(topo.redis_port), "--dir", str(_dir(topo)),
                             "--save", "", "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no"]),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    _pidfile(topo).write_text(str(proc.pid))
    wait_for(lambda: ping(topo), 30, "redis-server", log)
    return time.monotonic() - started


def down(topo: Topology) -> None:
    stop_pidfile_process(_pidfile(topo))


def status(topo: Topology) -> list[ServiceStatus]:
    pid = read_pid(_pidfile(topo))
    return [ServiceStatus("redis", f"{HOST}:{topo.redis_port}", ping(topo), f"pid {pid}" if pid else "")]
