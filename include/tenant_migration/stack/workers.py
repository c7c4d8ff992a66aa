"""Celery workers of the local stack: ``stack up --workers N`` (``make stack-up WORKERS=2``) runs
Airflow with the CeleryExecutor, Redis as its broker and the stack's Airflow metadata PostgreSQL as
the result backend, and N ``airflow celery worker`` processes on this machine. ``--workers 0`` (the
default) keeps the LocalExecutor.

Each worker runs in a process group of its own (so that a test can SIGKILL one, task processes
included) and names itself: ``tm-worker-<i>`` as its Celery hostname and in the host name Airflow
records on every task instance it runs (``hostname``), so that the UI and the tests tell which
worker ran a batch even when all of them share one machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tenant_migration.stack.common import ServiceStatus, StackError, read_pid
from tenant_migration.stack.topology import Topology

QUEUE = "default"
CONCURRENCY = 4  # task processes per worker; the copy pools bound how many copy batches run at once
NAME_ENV = "TM_WORKER_NAME"


def hostname() -> str:
    """Airflow's ``[core] hostname_callable`` under the stack's Celery workers: the machine's name
    and the worker's own (``host:tm-worker-1``)."""
    name = os.environ.get(NAME_ENV)
    return f"{socket.getfqdn()}:{name}" if name else socket.getfqdn()


def _config(topo: Topology) -> Path:
    return topo.state_dir / "executor.json"


def wanted(topo: Topology) -> int:
    """How many workers the stack runs: ``$TM_WORKERS`` when set (a test's own), else what
    ``stack up --workers N`` recorded (0: LocalExecutor)."""
    if os.environ.get("TM_WORKERS", "").strip():
        return int(os.environ["TM_WORKERS"])
    try:
        return int(json.loads(_config(topo).read_text()).get("workers", 0))
    except (OSError, ValueError):
        return 0


def set_wanted(topo: Topology, n: int) -> None:
    if not 0 <= n <= 16:
        raise StackError(f"--workers must be 0..16, got {n}")
    topo.state_dir.mkdir(parents=True, exist_ok=True)
    _config(topo).write_text(json.dumps({"workers": n}))


def celery_environment(topo: Topology, metadata_conn: str) -> dict[str, str]:
    """What turns the stack's Airflow into a CeleryExecutor deployment (workers, scheduler, API);
    ``metadata_conn``: Airflow's metadata database, also the Celery result backend."""
    from tenant_migration.stack import redis

    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": redis.url(topo),
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata_conn,
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tenant_migration.stack.workers.hostname",
    }


def _dir(topo: Topology) -> Path:
    return topo.state_dir / "celery"


def _pidfile(topo: Topology, i: int) -> Path:
    return _dir(topo) / f"worker-{i}.pid"


def worker_name(i: int) -> str:
    return f"tm-worker-{i}"


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def start(topo: Topology, n: int, env: dict[str, str], concurrency: int = CONCURRENCY) -> list[int]:
    """Start workers 1..n that do not run yet; their pids. ``env``: the stack's Airflow environment
    with ``celery_environment``."""
    _dir(topo).mkdir(parents=True, exist_ok=True)
    topo.logs_dir.mkdir(parents=True, exist_ok=True)
    airflow = str(Path(sys.executable).with_name("airflow"))
    pids = []
    for i in range(1, n + 1):
        pid = read_pid(_pidfile(topo, i))
        if pid is not None and _alive(pid):
            pids.append(pid)
            continue
        log = (topo.logs_dir / f"celery-{worker_name(i)}.log").open("ab")
        proc = subprocess.Popen(
            [airflow, "celery", "worker", "--queues", QUEUE, "--concurrency", str(concurrency),
             "--celery-hostname", f"{worker_name(i)}@%h"],
            env={**env, NAME_ENV: worker_name(i)}, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        _pidfile(topo, i).write_text(str(proc.pid))
        pids.append(proc.pid)
    return pids


def kill(topo: Topology, i: int, sig: int = signal.SIGKILL) -> int | None:
    """Signal worker ``i``'s whole process group (the worker, its pool, the task processes)."""
    pid = read_pid(_pidfile(topo, i))
    if not _alive(pid):
        return None
    assert pid is not None
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return None
    return pid


def stop(topo: Topology, grace_s: float = 30.0) -> None:
    """Stop every worker (warm shutdown, then SIGKILL of what is left after ``grace_s``)."""
    if not _dir(topo).exists():
        return
    for pidfile in sorted(_dir(topo).glob("worker-*.pid")):
        pid = read_pid(pidfile)
        if _alive(pid):
            assert pid is not None
            with_group = [pid]
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                with_group = []
            deadline = time.monotonic() + grace_s
            while with_group and _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):  # gone between the look and the kill
                    os.killpg(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)


def status(topo: Topology) -> list[ServiceStatus]:
    rows = []
    for i in range(1, wanted(topo) + 1):
        pid = read_pid(_pidfile(topo, i))
        rows.append(ServiceStatus(f"celery {worker_name(i)}", f"queue {QUEUE}", _alive(pid), f"pid {pid}" if pid else ""))
    return rows
