"""How many mapped copy tasks a store's chunks go into, and which chunks each carries.

Airflow charges every task instance a fixed cost (queueing, the task runner's start and DAG parse,
imports and connections, its return value and state through the execution API) that does not
depend on how much it copies: measured ~0.6 s per task under ``airflow dags test`` and several
seconds under ``airflow standalone`` (docs/benchmarks.md, ``bench/bench_airflow_overhead.py``). That overhead
stays under 10 % of a copy task's time only when the task carries at least ~9x it in chunk work.
So the number of tasks follows the estimated work: ``estimated seconds / min_task_seconds``, at
least 1, at most ``max_tasks`` (the copy pools' slots: more never run in parallel anyway).

A chunk's work is estimated from what the plan already knows, without reading data:
PostgreSQL chunks from their planned (or estimated) row count, Cassandra chunks from the
partitions they read (device bases x day buckets), each plus a per-chunk cost (a target
transaction and a checksum read-back, resp. a ledger round trip and prepared statements). The
rates are this machine's, measured on the demo dataset; they only decide how the chunks are
grouped, never what is copied, so an estimate off by 2x costs some parallelism or some overhead,
not correctness.

Pure functions: unit-tested without any server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tenant_migration.ledger import Chunk

# Rates behind the estimate, measured here (2 shared cores). PostgreSQL: demo tenant 3's chunks
# took 0.05-0.12 s each for 1-4,500 rows; ``make bench-postgres`` moved ~64 k rows/s per worker in
# 250 k-row chunks. Cassandra: demo tenant 3's 25 chunks read ~23,500 partitions in 21-44 s of
# chunk work beside a running ``airflow standalone`` (540-1,090/s; 81.6 s, ~290/s, once on a
# heavily loaded machine; the day-bucketed partitions are the heavy ones).
PG_CHUNK_SECONDS = 0.1  # per PostgreSQL chunk: transaction, psql pair, checksum read-back, ledger
PG_ROWS_PER_SECOND = 60_000.0
CQL_CHUNK_SECONDS = 0.2  # per Cassandra chunk: ledger round trips, prepared statements
CQL_PARTITIONS_PER_SECOND = 600.0


def chunk_seconds(chunk: Chunk) -> float:
    """Estimated copy seconds of one planned chunk (from its bounds only)."""
    bounds = chunk.bounds or {}
    if chunk.engine == "postgres":
        rows = bounds.get("planned_rows", bounds.get("estimated_rows", 0)) or 0
        return PG_CHUNK_SECONDS + max(0.0, float(rows)) / PG_ROWS_PER_SECOND
    partitions = len(bounds.get("bases") or []) * max(1, len(bounds.get("days") or []))
    return CQL_CHUNK_SECONDS + partitions / CQL_PARTITIONS_PER_SECOND


def task_count(total_seconds: float, chunks: int, max_tasks: int, min_task_seconds: float) -> int:
    """Tasks for ``chunks`` chunks of ``total_seconds`` estimated work: each carries at least
    ``min_task_seconds`` when there is that much (``0`` = always ``max_tasks``), never more tasks
    than chunks or ``max_tasks``, never fewer than one."""
    if chunks <= 0:
        return 0
    cap = max(1, min(max_tasks, chunks))
    if min_task_seconds <= 0:
        return cap
    return max(1, min(cap, math.floor(total_seconds / min_task_seconds)))


def deal(ids: Sequence[str], weights: Sequence[float], tasks: int) -> list[list[str]]:
    """Cut ``ids`` (kept in order) into ``tasks`` contiguous batches of about equal total weight."""
    if not ids or tasks <= 0:
        return []
    if len(weights) != len(ids):
        raise ValueError("one weight per chunk id")
    tasks = min(tasks, len(ids))
    total = float(sum(weights)) or float(len(ids))
    weights = list(weights) if sum(weights) else [1.0] * len(ids)
    out: list[list[str]] = []
    current: list[str] = []
    done = 0.0
    for i, (chunk_id, w) in enumerate(zip(ids, weights, strict=True)):
        current.append(chunk_id)
        done += w
        left_ids, left_tasks = len(ids) - i - 1, tasks - len(out) - 1
        # Close the batch at its share of the total, keeping one id for each batch still to come.
        if left_tasks > 0 and (done >= total * (len(out) + 1) / tasks or left_ids == left_tasks):
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def size_batches(chunks: Sequence[Chunk], max_tasks: int, min_task_seconds: float) -> list[list[str]]:
    """The mapped copy tasks of one store: ``chunks`` (not done yet, in copy order) dealt into as
    many contiguous batches as their estimated work fills with ``min_task_seconds`` each."""
    weights = [chunk_seconds(c) for c in chunks]
    n = task_count(sum(weights), len(chunks), max_tasks, min_task_seconds)
    return deal([c.chunk_id for c in chunks], weights, n)
