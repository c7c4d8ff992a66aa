"""moto server: the local stand-in for the AWS control plane (Route53 and RDS) over HTTP.

moto keeps its state in memory, so every ``up`` that (re)starts it leaves it empty; the DNS zone and
RDS instances are seeded by ``tenant_migration.sample.aws`` afterwards, idempotently.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tenant_migration.stack.common import (
    ServiceStatus,
    StackError,
    as_service_user,
    own_dir,
    port_open,
    read_pid,
    require_port_free,
    stop_pidfile_process,
    wait_for,
)
from tenant_migration.stack.topology import Topology


def _dir(topo: Topology) -> Path:
    return topo.state_dir / "moto"


def _pidfile(topo: Topology) -> Path:
    return _dir(topo) / "moto.pid"


def _answers(topo: Topology) -> bool:
    try:
        with urllib.request.urlopen(f"{topo.moto_url}/moto-api/", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def up(topo: Topology) -> float:
    """Start moto if it is not running; return seconds spent (0 when it already ran)."""
    own_dir(_dir(topo))
    own_dir(topo.logs_dir)
    pid = read_pid(_pidfile(topo))
    if pid is not None and _answers(topo):
        return 0.0
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    require_port_free(topo.moto_host, topo.moto_port, "moto")
    started = time.monotonic()
    moto_bin = Path(sys.executable).with_name("moto_server")
    if not moto_bin.exists():
        raise StackError(f"{moto_bin} is missing: run `make venv` to install the project's lock.")
    log = topo.logs_dir / "moto.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            as_service_user([str(moto_bin), "-H", topo.moto_host, "-p", str(topo.moto_port)]),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _pidfile(topo).write_text(str(proc.pid))
    wait_for(lambda: _answers(topo), 60, "moto server", log)
    return time.monotonic() - started


def down(topo: Topology) -> None:
    stop_pidfile_process(_pidfile(topo))


def status(topo: Topology) -> list[ServiceStatus]:
    pid = read_pid(_pidfile(topo))
    running = pid is not None and port_open(topo.moto_host, topo.moto_port)
    return [
        ServiceStatus("moto", f"{topo.moto_host}:{topo.moto_port}", running, f"pid {pid}" if pid else "")
    ]


def reset(topo: Topology) -> None:
    """Forget every resource moto holds (``POST /moto-api/reset``)."""
    req = urllib.request.Request(f"{topo.moto_url}/moto-api/reset", method="POST", data=json.dumps({}).encode())
    with urllib.request.urlopen(req, timeout=5):
        pass
