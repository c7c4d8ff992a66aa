"""Celery workers of the local stack: ``stack up --workers N`` (``make stack-up WORKERS=2``) runs
Airflow with the CeleryExecutor, Redis as its broker and the stack's Airflow metadata PostgreSQL as
the result backend, and N ``airflow celery worker`` processes on this machine. ``--workers 0`` (the
default) keeps the LocalExecutor.

Each worker runs in a session of its own (so that a test can SIGKILL all of it, the task processes
Airflow puts in process groups of their own included: ``kill``) and names itself: ``tm-worker-<i>`` as its Celery hostname and in the host name Airflow
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
    """Whether ``pid`` runs. A killed worker this process started stays a zombie until it is
    reaped, and a zombie still answers ``kill(pid, 0)``: reap it here, and take any zombie for dead."""
    if pid is None:
        return False
    with contextlib.suppress(ChildProcessError):  # not our child: its parent reaps it
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


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


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return None if fields[0] == "Z" else int(fields[3])  # state, ppid, pgrp, session


def processes(topo: Topology, i: int) -> list[int]:
    """Every live process of worker ``i``: the worker, its pool, and the task processes with their
    children. Airflow's supervisor puts each task process in a process group of its own (so a
    signal to the worker's group does not reach it), and a task process whose supervisor died is
    re-parented away from the worker; all of them stay in the session the worker was started in,
    which is how they are found. (Their environment is no guide: Celery's process titles overwrite
    what ``/proc/<pid>/environ`` shows.)"""
    leader = read_pid(_pidfile(topo, i))
    if leader is None:
        return []
    return sorted(int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and _session_of(int(e.name)) == leader)


def kill(topo: Topology, i: int, sig: int = signal.SIGKILL, whole_tree: bool = True) -> list[int]:
    """Signal worker ``i``'s process group (the worker and its pool); with ``whole_tree`` every
    other process of the worker too (the task processes and what they started): what losing the
    worker's machine does. The pids signalled; [] when the worker was not running."""
    pid = read_pid(_pidfile(topo, i))
    if not _alive(pid):
        return []
    assert pid is not None
    hit = processes(topo, i) if whole_tree else []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    for other in hit:
        with contextlib.suppress(ProcessLookupError):
            os.kill(other, sig)
    return sorted({pid, *hit})


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
