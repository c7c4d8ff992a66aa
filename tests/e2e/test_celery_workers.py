"""The migration DAG on a real distributed executor: Airflow's components with the CeleryExecutor,
Redis (Debian's redis-server) as the broker, the stack's Airflow PostgreSQL as the result backend,
and two ``airflow celery worker`` processes. Task instances say which worker ran them (the stack's
workers name themselves in Airflow's ``hostname``): the copy batches ran on both, and nothing was
lost (``gate_final`` passed, every chunk done once)."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from helpers import admin

from tenant_migration.stack import airflow_env, redis, workers
from tenant_migration.stack.airflow_rest import AirflowRest, start_components, stop

pytestmark = pytest.mark.e2e

DAG = "tenant_migration"
TENANT = 8  # several chunks per table at chunk_rows=100: enough batches to spread
WORKERS = 2
FORM = {"tenant_id": TENANT, "chunk_rows": 100, "max_tasks": 4, "min_task_seconds": 0, "require_approval": False,
        "max_ttl_wait_s": 1, "drain_seconds": 3, "drain_quiet_s": 2, "load_rate": 100, "load_seconds": 2,
        "load_max_p99_ms": 2000, "load_min_rate_pct": 50}
BATCHES = ("ready.copy_postgres_batch", "ready.copy_cassandra_batch")


@pytest.fixture(scope="module")
def celery(topo, tmp_path_factory) -> Iterator[AirflowRest]:
    before = os.environ.get("TM_WORKERS")
    os.environ["TM_WORKERS"] = str(WORKERS)
    proc = None
    try:
        redis.up(topo)
        env = {**os.environ, **airflow_env.environment(topo)}
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        workers.start(topo, WORKERS, env, concurrency=2)
        proc, api = start_components(topo, tmp_path_factory.mktemp("airflow") / "components.log",
                                     env={"TM_WORKERS": str(WORKERS)})
        api.wait_for_dag(DAG)
        for run in api.call("GET", f"/dags/{DAG}/dagRuns?state=running&state=queued")["dag_runs"]:
            api.call("PATCH", f"/dags/{DAG}/dagRuns/{run['dag_run_id']}", {"state": "failed"})
        api.call("PATCH", f"/dags/{DAG}", {"is_paused": False})
        yield api
    finally:
        if proc is not None:
            stop(proc)
        workers.stop(topo)
        redis.down(topo)
        if before is None:
            os.environ.pop("TM_WORKERS", None)
        else:
            os.environ["TM_WORKERS"] = before


def test_copy_batches_spread_over_two_celery_workers_and_nothing_is_lost(celery, topo, tiny_dataset) -> None:
    from tenant_migration.sample import platform

    platform.demo_reset(topo)
    started = time.monotonic()
    run_id = celery.trigger(DAG, celery.form_conf(DAG, **FORM))
    assert celery.wait_run(DAG, run_id) == "success"
    wall = time.monotonic() - started
    tis = celery.task_instances(DAG, run_id)
    ran_on = {(ti["task_id"], ti["map_index"]): ti["hostname"] for ti in tis if ti["task_id"] in BATCHES}
    names = Counter(h.rsplit(":", 1)[-1] for h in ran_on.values())
    assert len(ran_on) >= 4, ran_on
    assert set(names) == {workers.worker_name(i) for i in range(1, WORKERS + 1)}, ran_on  # both workers copied
    states = {ti["task_id"]: ti["state"] for ti in tis}
    assert states["gate_final"] == "success"
    with admin(topo, "target") as t:
        chunks = t.execute("SELECT status, attempts, count(*) FROM tm_control.chunks WHERE run_id = %s GROUP BY 1, 2",
                           (f"{DAG}/{run_id}",)).fetchall()
    assert [(s, a) for s, a, _ in chunks] == [("done", 1)], chunks  # every chunk done, each copied once
    print(f"workers per batch: {dict(sorted(ran_on.items()))}; batches per worker {dict(names)}; "
          f"DAG wall {wall:.1f} s with {WORKERS} workers")
