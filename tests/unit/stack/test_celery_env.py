"""The stack's switch to the CeleryExecutor (``stack up --workers N``): how many workers, the
environment it gives every Airflow component, the names workers leave on task instances."""

from __future__ import annotations

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
