"""The stack's switch to the CeleryExecutor (``stack up --workers N``): how many workers, the
environment it gives every Airflow component, the names workers leave on task instances."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tenant_migration.stack import airflow_env, redis, workers
from tenant_migration.stack.common import StackError
from tenant_migration.stack.topology import slotted_topology


@pytest.fixture
def topo(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("TM_WORKERS", raising=False)
    return slotted_topology(tmp_path / "stack", 3)


def test_the_default_stack_keeps_the_local_executor(topo) -> None:
    assert workers.wanted(topo) == 0
    assert airflow_env.environment(topo)["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert "AIRFLOW__CELERY__BROKER_URL" not in airflow_env.environment(topo)


def test_workers_turn_on_celery_with_redis_and_the_metadata_database(topo, monkeypatch) -> None:
    workers.set_wanted(topo, 2)
    env = airflow_env.environment(topo)
    assert workers.wanted(topo) == 2 and env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == f"redis://127.0.0.1:{16379 + 300}/0" == redis.url(topo)
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "tenant_migration.stack.workers.hostname"
    monkeypatch.setenv("TM_WORKERS", "0")  # a test's own choice wins over the stack's
    assert airflow_env.environment(topo)["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    with pytest.raises(StackError, match=r"0\.\.16"):
        workers.set_wanted(topo, 17)


def test_a_worker_names_itself_on_the_task_instances_it_runs(monkeypatch) -> None:
    monkeypatch.delenv(workers.NAME_ENV, raising=False)
    plain = workers.hostname()
    monkeypatch.setenv(workers.NAME_ENV, "tm-worker-2")
    assert workers.hostname() == f"{plain}:tm-worker-2"


def test_a_dead_workers_tasks_are_retried_within_minutes(topo) -> None:
    env = airflow_env.environment(topo)
    assert int(env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"]) == airflow_env.HEARTBEAT_TIMEOUT_S == 60
    assert float(env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL"]) <= 10
    # and what it had taken from the broker but not started, within two and a half
    assert float(env["AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT"]) + float(
        env["AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL"]) <= 150


def _fake_worker(topo, i: int) -> subprocess.Popen:
    """A stand-in for worker ``i`` (a real process tree, started the way ``workers.start`` starts
    one): a shell whose child moves to a process group of its own, as Airflow's task processes do."""
    script = "python3 -c 'import os, time; os.setpgid(0, 0); time.sleep(600)' & sleep 600"
    proc = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    workers._dir(topo).mkdir(parents=True, exist_ok=True)
    workers._pidfile(topo, i).write_text(str(proc.pid))
    return proc


def _wait(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _own_group(topo, i: int, pid: int) -> list[int]:
    """The worker's processes that left its process group (the stand-in task process)."""
    out = []
    for p in workers.processes(topo, i):
        try:
            if os.getpgid(p) != pid:
                out.append(p)
        except ProcessLookupError:
            pass
    return out


def test_losing_a_worker_kills_its_whole_tree_and_a_killed_worker_is_not_taken_for_running(topo) -> None:
    proc = _fake_worker(topo, 1)
    try:
        assert _wait(lambda: proc.pid in workers.processes(topo, 1) and _own_group(topo, 1, proc.pid)), workers.processes(topo, 1)
        task = _own_group(topo, 1, proc.pid)
        killed = workers.kill(topo, 1)
        assert proc.pid in killed and set(task) <= set(killed), (killed, task)
        assert _wait(lambda: workers.processes(topo, 1) == []), "a process in a group of its own survived"
        # The worker is this process's child: a zombie until reaped, which kill(pid, 0) still finds.
        assert not workers._alive(proc.pid)
        assert workers.kill(topo, 1) == []  # nothing left to kill
    finally:
        for pid in workers.processes(topo, 1):
            os.kill(pid, signal.SIGKILL)


def test_the_workers_group_alone_leaves_its_task_processes(topo) -> None:
    proc = _fake_worker(topo, 2)
    try:
        assert _wait(lambda: proc.pid in workers.processes(topo, 2) and _own_group(topo, 2, proc.pid))
        task = _own_group(topo, 2, proc.pid)
        assert workers.kill(topo, 2, whole_tree=False) == [proc.pid]
        # the task process, in a group of its own, lives on
        assert _wait(lambda: workers.processes(topo, 2) == task), (workers.processes(topo, 2), task)
    finally:
        for pid in workers.processes(topo, 2):
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
