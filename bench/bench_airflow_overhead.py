"""Airflow's overhead on a migration run: task instance timings (Airflow's metadata DB) against the
chunk work recorded in the ledger (``tm_control.chunks``), for the copy phase and the whole DAG.

Two ways to run it:

    # measure a run that already happened (after ``make demo``, or ``--run-id`` of any run)
    .venv/bin/python bench/bench_airflow_overhead.py [--run-id RUN_ID]

    # run the demo migration under a real ``airflow standalone`` and measure it (make bench-airflow-standalone)
    .venv/bin/python bench/bench_airflow_overhead.py --standalone [--tenant 3] [--runs 2] [--set PARAM=JSON]

    # the same under the CeleryExecutor with 1, then 2 workers, on the same data (make bench-workers)
    .venv/bin/python bench/bench_airflow_overhead.py --celery 1,2 [--tenant 3] [--runs 1] [--set PARAM=JSON]

``--standalone`` loads the demo dataset (a no-op when loaded), resets the demo target
(``platform.demo_reset``), starts ``airflow standalone`` on the stack, then for each run triggers
``tenant_migration`` through the REST API with the conf the UI form sends (every param at its
default, the demo's rehearsal values filled in: no approval), waits for it, measures it, and
stops the standalone it started.

Definitions (all from recorded timestamps, nothing re-run):

* chunk work: sum over the run's chunks of ``finished_at - started_at`` (one chunk = one target
  transaction or one Cassandra token range, measured inside the library).
* copy phase: every ``ready.copy_*_batch`` instance holds a pool slot from the moment it is queued
  until it ends; ``slot time`` is the sum of those spans (``start_date`` when the executor records
  no queue time, as under ``dags test``). ``airflow_copy_overhead = 1 - chunk work / slot time``:
  the share of the copy tasks' time spent on anything but copying chunks (scheduling, task runner
  start, DAG parse, connections, the batch's own bookkeeping).
* per copy task (its chunks are the plan task's XCom entry at its map index): ``queued`` =
  queued -> start (the executor picking it up, the task runner starting and parsing the DAG),
  ``before`` = start -> its first chunk starts (imports, connections, the batch's ledger reads),
  ``between`` = gaps between its chunks, ``after`` = its last chunk ends -> task end (return
  value to XCom, state through the execution API, runner exit).
* whole DAG: ``DAG wall`` from the run's (or its first task's) start to its end; ``idle`` is the part of it when no task
  instance was running (the scheduler between dependent tasks, task runner start-up). The whole
  DAG also spends time on work that is not copying (gates, catch-up, TTL wait, drain), so
  ``chunk work / DAG wall`` is printed but is not an overhead figure; ``idle / DAG wall`` is.

``--celery 1,2`` starts Redis, the workers and Airflow's components (``stack up --workers N`` does
the same) for each count in turn, triggers the same migration on the same data, and prints each
count's copy phase and DAG wall, then ``celery_copy_speedup=`` (copy wall with the first count ÷
with the last) and ``celery_dag_speedup=``. On one 2-core machine every worker shares the same two
cores with the servers, so this measures the executor's spreading, not what more machines add.

Prints the numbers, and last ``airflow_copy_overhead=<ratio>`` (target: under 0.10; with several
runs, the median, the spread printed above it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime
from typing import Any

from tenant_migration.endpoints import Endpoints
from tenant_migration.stack import airflow_env
from tenant_migration.stack.topology import Topology, default_topology

DAG_ID = "tenant_migration"
COPY_TASKS = {"ready.copy_postgres_batch": ("ready.plan_postgres", "postgres"),
              "ready.copy_cassandra_batch": ("ready.plan_cassandra", "cassandra")}


def union_seconds(spans: list[tuple[datetime, datetime]]) -> float:
    """Length of the union of time intervals."""
    total, current = 0.0, None
    for start, end in sorted(spans):
        if current is None or start > current[1]:
            if current is not None:
                total += (current[1] - current[0]).total_seconds()
            current = [start, end]
        else:
            current[1] = max(current[1], end)
    if current is not None:
        total += (current[1] - current[0]).total_seconds()
    return total


hosts: dict[str, dict[tuple[str, int], str]] = {}  # run -> (task, map index) -> the host Airflow recorded


def _airflow_run(run_id: str | None) -> tuple[Any, list[tuple[str, int, Any, Any, Any]], dict[str, list]] | None:
    """The run, its task instance timings, and each copy task's planned batches (the plan's XCom)."""
    from airflow.models import DagRun, TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(DagRun).where(DagRun.dag_id == DAG_ID)
        query = (query.where(DagRun.run_id == run_id) if run_id
                 else query.where(DagRun.state == "success").order_by(DagRun.start_date.desc()).limit(1))
        run = session.scalars(query).first()
        if run is None:
            return None
        tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == DAG_ID,
                                                         TaskInstance.run_id == run.run_id)).all()
        timings = [(ti.task_id, ti.map_index, ti.queued_dttm, ti.start_date, ti.end_date) for ti in tis
                   if ti.start_date and ti.end_date]
        hosts[run.run_id] = {(ti.task_id, ti.map_index): ti.hostname or "" for ti in tis}
        plans: dict[str, list] = {}
        for plan_task, _ in COPY_TASKS.values():
            row = session.scalars(select(XComModel).where(
                XComModel.dag_id == DAG_ID, XComModel.run_id == run.run_id, XComModel.task_id == plan_task,
                XComModel.key == "return_value")).first()
            plans[plan_task] = XComModel.deserialize_value(row) if row is not None else []
        session.expunge(run)
    return run, timings, plans


def measure(topo: Topology, run_id: str | None) -> dict[str, Any] | None:
    """Print the numbers of one run (the latest successful one when ``run_id`` is None); return them."""
    found = _airflow_run(run_id)
    if found is None:
        print(f"no {'run ' + run_id if run_id else 'successful run'} of {DAG_ID} in the Airflow DB "
              "(run `make demo` first)", file=sys.stderr)
        return None
    run, timings, plans = found
    ledger_run = f"{DAG_ID}/{run.run_id}"
    ep = Endpoints.from_file(topo.state_dir / "connections.json")
    with ep.target.connect() as conn:
        rows = conn.execute(
            "SELECT engine, count(*), COALESCE(sum(rows_copied), 0), "
            "COALESCE(sum(EXTRACT(EPOCH FROM finished_at - started_at)), 0)::float8 "
            "FROM tm_control.chunks WHERE run_id = %s AND status = 'done' GROUP BY engine ORDER BY engine",
            (ledger_run,)).fetchall()
        chunk_times = {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT chunk_id, started_at, finished_at FROM tm_control.chunks WHERE run_id = %s AND status = 'done'",
            (ledger_run,))}
    if not rows:
        print(f"the ledger has no done chunks for {ledger_run}", file=sys.stderr)
        return None
    chunk_work = sum(r[3] for r in rows)
    copies = sorted((t for t in timings if t[0] in COPY_TASKS), key=lambda t: (t[0], t[1]))
    slot_time = sum((end - (queued or start)).total_seconds() for _, _, queued, start, end in copies)
    copy_wall = (max(t[4] for t in copies) - min(t[2] or t[3] for t in copies)).total_seconds()
    # A cleared run's start_date is reset at the clear: take the earliest task start when earlier.
    first = min([run.start_date, *(t[3] for t in timings)])
    dag_wall = (max([run.end_date, *(t[4] for t in timings)]) - first).total_seconds()
    busy = union_seconds([(t[3], t[4]) for t in timings])

    print(f"run {run.run_id} ({len(timings)} task instances, {len(copies)} copy tasks)")
    for engine, n, nrows, secs in rows:
        print(f"  chunk work {engine:<10} {n:5d} chunks {nrows:>10} rows {secs:9.2f} s")
    print("  per copy task (s):        chunks   queued   before  between    after    fixed     work  host")
    fixed_total: dict[str, float] = {"queued": 0.0, "before": 0.0, "between": 0.0, "after": 0.0}
    for task_id, map_index, queued, start, end in copies:
        batches = plans.get(COPY_TASKS[task_id][0]) or []
        ids = batches[map_index] if 0 <= map_index < len(batches) else []
        spans = sorted(chunk_times[c] for c in ids if c in chunk_times)
        if not spans:
            print(f"  {task_id}[{map_index}]: no done chunk of its batch (cleared run?)")
            continue
        # Only chunks this instance ran count (a cleared batch skips chunks done earlier).
        spans = [s for s in spans if s[0] >= start] or spans
        work = sum((b - a).total_seconds() for a, b in spans)
        parts = {"queued": ((start - queued).total_seconds() if queued else 0.0),
                 "before": (spans[0][0] - start).total_seconds(),
                 "between": (spans[-1][1] - spans[0][0]).total_seconds() - work,
                 "after": (end - spans[-1][1]).total_seconds()}
        for k, v in parts.items():
            fixed_total[k] += v
        host = hosts.get(run.run_id, {}).get((task_id, map_index), "")
        print(f"  {task_id.split('.')[-1]:<21}[{map_index}] {len(spans):6d} " + " ".join(
            f"{v:8.2f}" for v in parts.values()) + f" {sum(parts.values()):8.2f} {work:8.2f}  {host}")
    n = max(1, len(copies))
    print("  mean fixed cost per copy task: " + ", ".join(f"{k} {v / n:.2f} s" for k, v in fixed_total.items())
          + f" (total {sum(fixed_total.values()) / n:.2f} s)")
    print(f"copy phase: wall {copy_wall:.2f} s, slot time {slot_time:.2f} s, chunk work {chunk_work:.2f} s")
    print(f"whole DAG:  wall {dag_wall:.2f} s, tasks running {busy:.2f} s, idle {dag_wall - busy:.2f} s "
          f"({(dag_wall - busy) / dag_wall:.3f} of the wall), chunk work / wall {chunk_work / dag_wall:.3f}")
    overhead = 1 - chunk_work / slot_time
    print(f"airflow_dag_idle_ratio={(dag_wall - busy) / dag_wall:.3f}")
    return {"run_id": run.run_id, "copy_tasks": len(copies), "slot_time": slot_time, "chunk_work": chunk_work,
            "copy_wall": copy_wall,
            "overhead": overhead, "dag_wall": dag_wall, "idle": dag_wall - busy,
            "fixed_per_task": {k: v / n for k, v in fixed_total.items()}}


def run_standalone(topo: Topology, tenant: int, runs: int, overrides: dict[str, Any],
                   workers_n: int = 0) -> list[dict[str, Any]]:
    """Trigger the demo migration ``runs`` times through a real Airflow and measure each:
    ``airflow standalone`` (LocalExecutor), or with ``workers_n`` the CeleryExecutor's components
    with that many workers."""
    from tenant_migration.demo import demo_params
    from tenant_migration.sample import platform
    from tenant_migration.stack import redis, workers
    from tenant_migration.stack.airflow_rest import start_components, start_standalone, stop

    platform.load_data(topo, "demo", 7)
    what = f"celery-{workers_n}" if workers_n else "standalone"
    log = topo.logs_dir / f"bench-airflow-{what}.log"
    if workers_n:
        os.environ["TM_WORKERS"] = str(workers_n)
        redis.up(topo)
        workers.start(topo, workers_n, {**os.environ, **airflow_env.environment(topo)})
    print(f"[bench] starting airflow ({what}; log: {log})", flush=True)
    try:
        proc, api = (start_components if workers_n else start_standalone)(
            topo, log, env={"TM_WORKERS": str(workers_n)} if workers_n else None)
    except BaseException:
        if workers_n:
            workers.stop(topo)
        raise
    results: list[dict[str, Any]] = []
    try:
        api.wait_for_dag(DAG_ID)
        api.call("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
        for i in range(runs):
            platform.demo_reset(topo)
            conf = api.form_conf(DAG_ID, **{**demo_params(tenant), **overrides})
            began = time.monotonic()
            run_id = api.trigger(DAG_ID, conf)
            state = api.wait_run(DAG_ID, run_id)
            print(f"[bench] run {i + 1}/{runs} {run_id}: {state} after {time.monotonic() - began:.1f} s "
                  "(trigger to end, as the REST client saw it)", flush=True)
            if state != "success":
                raise SystemExit(f"run {run_id} ended {state}; see {log} and the task logs")
            result = measure(topo, run_id)
            if result is None:
                raise SystemExit(f"run {run_id} could not be measured")
            print(f"airflow_copy_overhead={result['overhead']:.3f}", flush=True)
            results.append(result)
    finally:
        stop(proc)
        if workers_n:
            workers.stop(topo)
            redis.down(topo)
            os.environ.pop("TM_WORKERS", None)
    return results


def run_celery(topo: Topology, tenant: int, runs: int, overrides: dict[str, Any], counts: list[int]) -> int:
    """The same migration on the same data under 1, 2, ... Celery workers; the walls side by side."""
    by_count = {n: run_standalone(topo, tenant, runs, overrides, workers_n=n) for n in counts}
    print("\nworkers  runs  copy wall  DAG wall  copy tasks  slot time  chunk work")
    med: dict[int, tuple[float, float]] = {}
    for n, results in by_count.items():
        copy_wall = statistics.median(r["copy_wall"] for r in results)
        dag_wall = statistics.median(r["dag_wall"] for r in results)
        med[n] = (copy_wall, dag_wall)
        print(f"{n:>7}{len(results):>6}{copy_wall:>9.1f} s{dag_wall:>8.1f} s{results[0]['copy_tasks']:>12}"
              f"{statistics.median(r['slot_time'] for r in results):>9.1f} s"
              f"{statistics.median(r['chunk_work'] for r in results):>10.1f} s")
    first, last = counts[0], counts[-1]
    print(f"celery_copy_speedup={med[first][0] / med[last][0]:.3f}  ({first} -> {last} workers, copy phase wall)")
    print(f"celery_dag_speedup={med[first][1] / med[last][1]:.3f}  ({first} -> {last} workers, DAG wall)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-id", help="Airflow run id (default: the latest successful run of tenant_migration)")
    parser.add_argument("--standalone", action="store_true",
                        help="run the demo migration under airflow standalone (REST trigger) and measure it")
    parser.add_argument("--tenant", type=int, default=int(os.environ.get("DEMO_TENANT", "3")))
    parser.add_argument("--runs", type=int, default=1, help="with --standalone: migrations to run and measure")
    parser.add_argument("--set", action="append", default=[], metavar="PARAM=JSON",
                        help="with --standalone: override one param of the form's conf")
    parser.add_argument("--celery", metavar="N,N", help="run under the CeleryExecutor with each worker count in turn")
    args = parser.parse_args(argv)
    topo = default_topology()
    if args.celery:
        counts = [int(n) for n in args.celery.split(",")]
        if not counts or min(counts) < 1 or max(counts) > 16:
            parser.error("--celery takes worker counts 1..16, as in 1,2")
        os.environ["TM_WORKERS"] = str(counts[0])  # the executor Airflow reads at import
        os.environ.update(airflow_env.environment(topo))
        overrides = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
        return run_celery(topo, args.tenant, args.runs, overrides, counts)
    os.environ.update(airflow_env.environment(topo))  # Airflow reads its configuration at import
    if not args.standalone:
        result = measure(topo, args.run_id)
        if result is None:
            return 1
        print(f"airflow_copy_overhead={result['overhead']:.3f}")
        return 0
    overrides = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
    results = run_standalone(topo, args.tenant, args.runs, overrides)
    print("\nrun                                   copy tasks  slot time  chunk work  overhead  DAG wall")
    for r in results:
        print(f"{r['run_id']:<38}{r['copy_tasks']:>10}{r['slot_time']:>10.1f} s{r['chunk_work']:>10.1f} s"
              f"{r['overhead']:>9.3f}{r['dag_wall']:>9.1f} s")
    overheads = [r["overhead"] for r in results]
    print(f"copy overhead over {len(results)} runs: min {min(overheads):.3f}, max {max(overheads):.3f}")
    print(f"airflow_copy_overhead={statistics.median(overheads):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
