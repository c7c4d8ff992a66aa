"""Airflow's overhead on a migration run: task instance timings (Airflow's metadata DB) against the
chunk work recorded in the ledger (``tm_control.chunks``), for the copy phase and the whole DAG.

Run it after ``make demo`` (or after any run of ``tenant_migration`` on the local stack):

    .venv/bin/python bench/bench_airflow_overhead.py [--run-id RUN_ID]

Definitions (all from recorded timestamps, nothing re-run):

* chunk work: sum over the run's chunks of ``finished_at - started_at`` (one chunk = one target
  transaction or one Cassandra token range, measured inside the library).
* copy phase: every ``ready.copy_*_batch`` instance holds a pool slot from the moment it is queued
  until it ends; ``slot time`` is the sum of those spans (``start_date`` when the executor records
  no queue time, as under ``dags test``). ``airflow_copy_overhead = 1 - chunk work / slot time``:
  the share of the copy tasks' time spent on anything but copying chunks (scheduling, task runner
  start, DAG parse, connections, the batch's own bookkeeping).
* whole DAG: ``DAG wall`` from the run's (or its first task's) start to its end; ``idle`` is the part of it when no task
  instance was running (the scheduler between dependent tasks, task runner start-up). The whole
  DAG also spends time on work that is not copying (gates, catch-up, TTL wait, drain), so
  ``chunk work / DAG wall`` is printed but is not an overhead figure; ``idle / DAG wall`` is.

Prints the numbers, and last ``airflow_copy_overhead=<ratio>`` (target: under 0.10).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime

from tenant_migration.endpoints import Endpoints
from tenant_migration.stack import airflow_env
from tenant_migration.stack.topology import default_topology

DAG_ID = "tenant_migration"
COPY_TASKS = ("ready.copy_postgres_batch", "ready.copy_cassandra_batch")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-id", help="Airflow run id (default: the latest successful run of tenant_migration)")
    args = parser.parse_args(argv)
    topo = default_topology()
    os.environ.update(airflow_env.environment(topo))  # Airflow reads its configuration at import
    from airflow.models import DagRun, TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(DagRun).where(DagRun.dag_id == DAG_ID)
        query = (query.where(DagRun.run_id == args.run_id) if args.run_id
                 else query.where(DagRun.state == "success").order_by(DagRun.start_date.desc()).limit(1))
        run = session.scalars(query).first()
        if run is None:
            print(f"no {'run ' + args.run_id if args.run_id else 'successful run'} of {DAG_ID} in the Airflow DB "
                  "(run `make demo` first)", file=sys.stderr)
            return 1
        tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == DAG_ID,
                                                         TaskInstance.run_id == run.run_id)).all()
        timings = [(ti.task_id, ti.map_index, ti.queued_dttm, ti.start_date, ti.end_date) for ti in tis
                   if ti.start_date and ti.end_date]
        run_id, run_start, run_end = run.run_id, run.start_date, run.end_date
    ledger_run = f"{DAG_ID}/{run_id}"
    ep = Endpoints.from_file(topo.state_dir / "connections.json")
    with ep.target.connect() as conn:
        rows = conn.execute(
            "SELECT engine, count(*), COALESCE(sum(rows_copied), 0), "
            "COALESCE(sum(EXTRACT(EPOCH FROM finished_at - started_at)), 0)::float8 "
            "FROM tm_control.chunks WHERE run_id = %s AND status = 'done' GROUP BY engine ORDER BY engine",
            (ledger_run,)).fetchall()
    if not rows:
        print(f"the ledger has no done chunks for {ledger_run}", file=sys.stderr)
        return 1
    chunk_work = sum(r[3] for r in rows)
    copies = [t for t in timings if t[0] in COPY_TASKS]
    slot_time = sum((end - (queued or start)).total_seconds() for _, _, queued, start, end in copies)
    copy_wall = (max(t[4] for t in copies) - min(t[2] or t[3] for t in copies)).total_seconds()
    # A cleared run's start_date is reset at the clear: take the earliest task start when earlier.
    first = min([run_start, *(t[3] for t in timings)])
    dag_wall = (max([run_end, *(t[4] for t in timings)]) - first).total_seconds()
    busy = union_seconds([(t[3], t[4]) for t in timings])

    print(f"run {run_id} ({len(timings)} task instances, {len(copies)} copy tasks)")
    for engine, n, nrows, secs in rows:
        print(f"  chunk work {engine:<10} {n:5d} chunks {nrows:>10} rows {secs:9.2f} s")
    print(f"copy phase: wall {copy_wall:.2f} s, slot time {slot_time:.2f} s, chunk work {chunk_work:.2f} s")
    print(f"whole DAG:  wall {dag_wall:.2f} s, tasks running {busy:.2f} s, idle {dag_wall - busy:.2f} s "
          f"({(dag_wall - busy) / dag_wall:.3f} of the wall), chunk work / wall {chunk_work / dag_wall:.3f}")
    print(f"airflow_dag_idle_ratio={(dag_wall - busy) / dag_wall:.3f}")
    print(f"airflow_copy_overhead={1 - chunk_work / slot_time:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
