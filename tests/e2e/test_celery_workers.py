"""The migration DAG on a real distributed executor: Airflow's components with the CeleryExecutor,
Redis (Debian's redis-server) as the broker, the stack's Airflow PostgreSQL as the result backend,
and two ``airflow celery worker`` processes, while a fleet of the tenant writes through its DNS
records the whole run. Task instances say which worker ran them (the stack's workers name
themselves in Airflow's ``hostname``).

1. The copy batches ran on both workers and nothing was lost: ``gate_final`` passed, every chunk
   done once, every write the fleet saw acknowledged is on the target.
2. A worker lost in the middle of a copy batch (its whole process tree SIGKILLed, as when its
   machine goes: Airflow's supervisor puts each task process in a process group of its own, so the
   worker's group alone is not all of it): the scheduler fails the silent task after the stack's
   heartbeat timeout, its retry runs on the other worker, skips the chunks the lost worker finished
   and redoes only the ones it was inside; every chunk ends done once, the gates pass, the fleet
   lost nothing.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fleet_run import FleetRun, check_nothing_lost, fleet_config, prepare
from helpers import admin, unpaused_standalone

from tenant_migration.stack import airflow_env, redis, workers
from tenant_migration.stack.airflow_rest import AirflowRest, start_components

pytestmark = pytest.mark.e2e

DAG = "tenant_migration"
TENANT = 8  # several chunks per table at chunk_rows=100: enough batches to spread
WORKERS = 2
NORMAL_TTL = 2  # the records' TTL before the run (what the TTL wait waits out)
FORM = {"tenant_id": TENANT, "chunk_rows": 100, "max_tasks": 4, "min_task_seconds": 0, "require_approval": False,
        "max_ttl_wait_s": NORMAL_TTL, "lowered_ttl": 1, "drain_seconds": 3, "drain_quiet_s": 2, "load_rate": 100,
        "load_seconds": 2, "load_max_p99_ms": 2000, "load_min_rate_pct": 50}
BATCHES = ("ready.copy_postgres_batch", "ready.copy_cassandra_batch")


@pytest.fixture(scope="module")
def celery(topo, tmp_path_factory) -> Iterator[AirflowRest]:
    before = os.environ.get("TM_WORKERS")
    os.environ["TM_WORKERS"] = str(WORKERS)
    try:
        redis.up(topo)
        env = {**os.environ, **airflow_env.environment(topo)}
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        workers.start(topo, WORKERS, env, concurrency=2)
        yield from unpaused_standalone(topo, tmp_path_factory.mktemp("airflow") / "components.log", DAG,
                                       env={"TM_WORKERS": str(WORKERS)}, start=start_components)
    finally:
        workers.stop(topo)
        redis.down(topo)
        if before is None:
            os.environ.pop("TM_WORKERS", None)
        else:
            os.environ["TM_WORKERS"] = before


def _chunks(topo, run_key: str, engine: str | None = None) -> dict[str, tuple[str, int]]:
    """chunk id -> (status, attempts) of the run (of one store)."""
    with admin(topo, "target") as t:
        rows = t.execute("SELECT chunk_id, status, attempts FROM tm_control.chunks WHERE run_id = %s "
                         "AND (%s::text IS NULL OR engine = %s)", (run_key, engine, engine)).fetchall()
    return {c: (s, a) for c, s, a in rows}


def _batches(topo, run_key: str, engine: str) -> list[list[str]]:
    """The chunk ids of each mapped copy task of the store, as each recorded them."""
    with admin(topo, "target") as t:
        rows = t.execute("SELECT detail->'chunk_ids' FROM tm_control.events WHERE run_id = %s AND step = 'copy_batch' "
                         "AND detail->>'engine' = %s", (run_key, engine)).fetchall()
    return [list(r[0]) for r in rows]


def _worker_of(ti: dict) -> str:
    return str(ti.get("hostname") or "").rsplit(":", 1)[-1]


@dataclass
class Victim:
    map_index: int
    worker: int  # the stack's worker number
    chunk_ids: list[str]  # the batch of the task instance caught
    at_kill: dict[str, str]  # every chunk's status of the run, read the moment the worker died

    @property
    def interrupted(self) -> set[str]:
        """The batch's chunks the lost worker was inside (``running`` with nobody left to end them)."""
        return {c for c in self.chunk_ids if self.at_kill[c] == "running"}

    @property
    def done(self) -> set[str]:
        return {c for c in self.chunk_ids if self.at_kill[c] == "done"}


def _running_batch(api: AirflowRest, topo, run_id: str, task: str) -> tuple[dict, list[str]] | None:
    """A mapped copy task instance running on a worker, with the chunk ids it holds (the batch its
    rendered arguments name, as it recorded it in the ledger)."""
    for ti in api.task_instances(DAG, run_id):
        if ti["task_id"] != task or ti["state"] != "running" or not _worker_of(ti).startswith("tm-worker-"):
            continue
        rendered = str(_ti(api, run_id, task, ti["map_index"]).get("rendered_fields"))
        for ids in _batches(topo, f"{DAG}/{run_id}", task.split("_")[1]):
            if f"'{ids[0]}'" in rendered:
                return ti, ids
    return None


def _lose_worker_mid_batch(api: AirflowRest, topo, run_id: str, task: str, timeout: float = 600) -> Victim:
    """Lose the worker of a mapped copy task the moment its batch has a chunk done, one being
    copied and one not started: the ledger is polled alone every 10 ms once the task instance, its
    worker and its chunks are known, and the chunks' statuses are read again right after the kill
    (a dead process changes nothing: what is ``running`` then was interrupted)."""
    run_key = f"{DAG}/{run_id}"
    deadline = time.monotonic() + timeout
    with admin(topo, "target") as t:
        t.autocommit = True
        while time.monotonic() < deadline:
            found = _running_batch(api, topo, run_id, task)
            if found is None:
                time.sleep(0.2)
                continue
            ti, ids = found
            worker = int(_worker_of(ti).rsplit("-", 1)[-1])
            while time.monotonic() < deadline:
                status = dict(t.execute("SELECT chunk_id, status FROM tm_control.chunks WHERE run_id = %s "
                                        "AND chunk_id = ANY(%s)", (run_key, ids)).fetchall())
                done = sum(status[c] == "done" for c in ids)
                running = sum(status[c] == "running" for c in ids)
                if done == len(ids):
                    break  # this batch ended before it was caught: try another
                if done and running and done + running < len(ids):
                    assert workers.kill(topo, worker), f"worker {worker} was not running"
                    at_kill = dict(t.execute("SELECT chunk_id, status FROM tm_control.chunks WHERE run_id = %s",
                                             (run_key,)).fetchall())
                    return Victim(ti["map_index"], worker, ids, at_kill)
                time.sleep(0.01)
    raise AssertionError(f"no {task} caught between chunks within {timeout}s")


def _ti(api: AirflowRest, run_id: str, task: str, map_index: int) -> dict:
    return api.call("GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task}/{map_index}")


def test_copy_batches_spread_over_two_celery_workers_and_nothing_is_lost(celery, topo, endpoints, tiny_dataset,
                                                                          tmp_path) -> None:
    slug = prepare(topo, endpoints, TENANT, NORMAL_TTL)
    with FleetRun(endpoints, fleet_config(TENANT, slug), tmp_path / "journal.jsonl") as fleet:
        started = time.monotonic()
        run_id = celery.trigger(DAG, celery.form_conf(DAG, **FORM))
        assert celery.wait_run(DAG, run_id) == "success"
        wall = time.monotonic() - started
    tis = celery.task_instances(DAG, run_id)
    ran_on = {(ti["task_id"], ti["map_index"]): _worker_of(ti) for ti in tis if ti["task_id"] in BATCHES}
    names = Counter(ran_on.values())
    assert len(ran_on) >= 4, ran_on
    assert set(names) == {workers.worker_name(i) for i in range(1, WORKERS + 1)}, ran_on  # both workers copied
    states = {ti["task_id"]: ti["state"] for ti in tis}
    assert states["gate_final"] == "success"
    chunks = Counter(_chunks(topo, f"{DAG}/{run_id}").values())
    assert set(chunks) == {("done", 1)}, chunks  # every chunk done, each copied once
    check_nothing_lost(fleet, endpoints, f"{DAG}/{run_id}", tmp_path)
    print(f"workers per batch: {dict(sorted(ran_on.items()))}; batches per worker {dict(names)}; "
          f"DAG wall {wall:.1f} s with {WORKERS} workers")


@pytest.mark.parametrize("engine", ["postgres", "cassandra"])
def test_a_worker_lost_mid_batch_is_redone_on_the_other_and_nothing_is_doubled(celery, topo, endpoints, tiny_dataset,
                                                                              tmp_path, engine) -> None:
    task = f"ready.copy_{engine}_batch"
    slug = prepare(topo, endpoints, TENANT, NORMAL_TTL)
    env = {**os.environ, **airflow_env.environment(topo)}
    workers.start(topo, WORKERS, env, concurrency=2)  # both run, whatever an earlier test left
    assert all(workers.processes(topo, i) for i in range(1, WORKERS + 1))
    try:
        with FleetRun(endpoints, fleet_config(TENANT, slug), tmp_path / "journal.jsonl") as fleet:
            run_id = celery.trigger(DAG, celery.form_conf(DAG, **{**FORM, "max_tasks": 2}))
            victim = _lose_worker_mid_batch(celery, topo, run_id, task)
            killed_at = time.monotonic()
            lost = workers.worker_name(victim.worker)
            for _ in range(50):  # SIGKILL is delivered at once; the kernel reaps a moment later
                if not workers.processes(topo, victim.worker):
                    break
                time.sleep(0.1)
            assert workers.processes(topo, victim.worker) == [], "a process of the lost worker survived"
            time.sleep(2)  # nobody is left to finish what it was inside (its retry is a minute away)
            assert _chunks(topo, f"{DAG}/{run_id}", engine).keys() >= victim.interrupted
            assert all(_chunks(topo, f"{DAG}/{run_id}", engine)[c][0] == "running" for c in victim.interrupted)
            # The batch is redone by its retry on the other worker.
            deadline = time.monotonic() + 600
            while (ti := _ti(celery, run_id, task, victim.map_index))["state"] != "success":
                assert time.monotonic() < deadline and ti["state"] not in ("failed", "upstream_failed"), ti
                time.sleep(1)
            recovered_s = time.monotonic() - killed_at
            assert celery.wait_run(DAG, run_id) == "success"
            ended_s = time.monotonic() - killed_at
    finally:
        workers.start(topo, WORKERS, env, concurrency=2)  # the lost worker comes back for what follows
    run_key = f"{DAG}/{run_id}"
    states = {t["task_id"]: t["state"] for t in celery.task_instances(DAG, run_id)}
    assert states["ready.gate_post_copy"] == "success" and states["gate_final"] == "success", states
    assert ti["try_number"] >= 2, ti
    assert _worker_of(ti) != lost and _worker_of(ti).startswith("tm-worker-"), ti  # redone on the other worker

    chunks = _chunks(topo, run_key)
    assert {s for s, _ in chunks.values()} == {"done"}, chunks  # every chunk done, none left running
    redone = {c for c, (_, attempts) in chunks.items() if attempts > 1}
    assert victim.interrupted, f"the worker died between two chunks of the batch: {victim}"
    assert victim.done and set(victim.chunk_ids) - victim.done - victim.interrupted, "caught mid-batch"
    assert victim.interrupted <= redone, (redone, victim)  # what it was inside was copied again...
    running_at_kill = {c for c, s in victim.at_kill.items() if s == "running"}
    assert redone <= running_at_kill, (redone, running_at_kill)  # ...and nothing else: not started, copied once
    done_at_kill = {c for c, s in victim.at_kill.items() if s == "done"}
    assert all(chunks[c][1] == 1 for c in done_at_kill), "a chunk done before the kill was copied again"
    if engine == "postgres":  # each chunk's rows are exactly once on the target: its checksum was compared
        with admin(topo, "target") as t:
            unchecked = t.execute("SELECT chunk_id FROM tm_control.chunks WHERE run_id = %s AND engine = 'postgres' "
                                  "AND source_checksum IS DISTINCT FROM target_checksum", (run_key,)).fetchall()
        assert unchecked == [], unchecked
    check_nothing_lost(fleet, endpoints, run_key, tmp_path)
    # What the lost worker had taken from the broker but not started was re-queued by the scheduler.
    logs = celery.call("GET", f"/eventLogs?dag_id={DAG}&run_id={run_id}&limit=100")["event_logs"]
    requeued = sorted(f"{e['task_id']}[{e['map_index']}]" for e in logs if "stuck in queued" in str(e.get("event")))
    print(f"lost {lost} in {task}[{victim.map_index}] with {len(victim.done)}/{len(victim.chunk_ids)} chunks done "
          f"and {sorted(victim.interrupted)} inside; redone on {_worker_of(ti)} (try {ti['try_number']}), batch done "
          f"{recovered_s:.1f} s after the kill, the run {ended_s:.1f} s after it; chunks copied twice: {sorted(redone)}; "
          f"re-queued after the stack's {airflow_env.QUEUED_TIMEOUT_S} s queued timeout: {requeued or 'none'}")
