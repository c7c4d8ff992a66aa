"""Benchmark: the project's Cassandra copier against the raw write ceiling, same run, same rows.

1. The ``demo`` preset is on the source (generated when missing).
2. The big tenant's (id 1) chunks are planned into a throw-away ledger run on the target.
3. The project copier (``copy_pending``: reads the source, carries WRITETIME/TTL, rate limiter off,
   ``--processes`` processes) copies them into the emptied target: rows/s A.
4. The same rows, already in memory as INSERT parameters (read beforehand, untimed), are written
   into the emptied target by the simplest fast writer: one prepared ``INSERT ... USING TIMESTAMP
   ? AND TTL ?`` per row through ``execute_concurrent_with_args`` in one process: rows/s B.

Prints rows/s for both, processes/cores, and last ``cassandra_copy_ratio=<A/B>``. Both sides share
the machine with both Cassandra nodes, so the ratio (not the absolute rates) is what carries over.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from tenant_migration import ledger
from tenant_migration.cassandra import plan
from tenant_migration.cassandra.copy import CopyOptions, copy_pending, cql_ident, iter_pages, table_shape
from tenant_migration.endpoints import Endpoints
from tenant_migration.sample import SAMPLE_MAP, platform
from tenant_migration.sample.data import BIG_TENANT_ID
from tenant_migration.stack.topology import default_topology
from tenant_migration.tenant_map import load_tenant_map


def _truncate(session: Any, keyspace: str, tables: list[str]) -> None:
    for t in tables:
        session.execute(f"TRUNCATE {cql_ident(keyspace)}.{cql_ident(t)}", timeout=120)


def _in_memory_rows(ep: Endpoints, tmap: Any, chunks: list[ledger.Chunk]) -> dict[str, list[tuple[Any, ...]]]:
    """INSERT parameters of every live row of the chunks, read from the source (not timed)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    opts = CopyOptions()
    with ep.cassandra_source.session() as src:
        for name in tmap.cassandra_tables:
            spec = tmap.cassandra_tables[name]
            shape = table_shape(src, tmap.keyspace, name)
            nkey, nreg = len(shape.primary_key), len(shape.regular)
            meta = ", ".join(f"{cql_ident(c)}, WRITETIME({cql_ident(c)}), TTL({cql_ident(c)})" for c in shape.regular)
            where = " AND ".join(f"{cql_ident(c)} IN ?" for c in shape.partition_key)
            stmt = src.prepare(f"SELECT {', '.join(cql_ident(c) for c in shape.primary_key)}, {meta} "
                               f"FROM {shape.qualified} WHERE {where}")
            groups = [g for c in chunks if c.table_name == name
                      for g in plan.read_groups(c.bounds, shape.partition_key, spec.day_column)]
            rows = out.setdefault(name, [])
            for page in iter_pages(src, stmt, groups, read_concurrency=16, fetch_size=5000, opts=opts):
                for r in page:
                    rows.append((*r[:nkey], *r[nkey::3][:nreg], r[nkey + 1], r[nkey + 2] or 0))
    return out


def _ceiling(ep: Endpoints, tmap: Any, rows: dict[str, list[tuple[Any, ...]]], concurrency: int) -> tuple[int, float]:
    from cassandra.concurrent import execute_concurrent_with_args

    total = 0
    with ep.cassandra_target.session() as dst:
        stmts = {}
        for name in rows:
            shape = table_shape(dst, tmap.keyspace, name)
            cols = shape.primary_key + shape.regular
            stmts[name] = dst.prepare(
                f"INSERT INTO {shape.qualified} ({', '.join(cql_ident(c) for c in cols)}) "
                f"VALUES ({', '.join('?' for _ in cols)}) USING TIMESTAMP ? AND TTL ?")
        started = time.monotonic()
        for name, params in rows.items():
            for ok, res in execute_concurrent_with_args(dst, stmts[name], params, concurrency=concurrency,
                                                        raise_on_first_error=True, results_generator=True):
                assert ok, res
            total += len(params)
        return total, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--tenant", type=int, default=BIG_TENANT_ID)
    ap.add_argument("--processes", type=int, default=1, help="copier processes (2 measured no faster on 2 cores)")
    ap.add_argument("--batch-rows", type=int, default=CopyOptions.batch_rows)
    ap.add_argument("--concurrency", type=int, default=CopyOptions.concurrency)
    ap.add_argument("--ceiling-concurrency", type=int, default=128)
    ap.add_argument("--max-chunks", type=int, default=0, help="only the first N chunks (0: all)")
    ap.add_argument("--days", type=int, default=4)
    args = ap.parse_args(argv)

    topo = default_topology()
    platform.load_data(topo, args.preset, 7)
    ep = Endpoints.from_file(topo.state_dir / "connections.json")
    tmap = load_tenant_map(SAMPLE_MAP)
    run_id = f"bench/cql-{uuid.uuid4().hex[:8]}"
    tables = list(tmap.cassandra_tables)
    with ep.replica.connect(autocommit=True) as rconn, ep.target.connect() as tconn, \
            ep.cassandra_source.session() as src:
        with tconn.transaction():
            ledger.ensure_schema(tconn)
            # The bench run must not collide with a live run of the same tenant: abort leftovers.
            tconn.execute("UPDATE tm_control.runs SET status = 'aborted' WHERE run_id LIKE 'bench/cql-%%' "
                          "AND status = 'running'")
        ledger.start_run(tconn, run_id, args.tenant, "bench", {"bench": "cassandra"})
        chunks = plan.plan_tenant(rconn, tmap, args.tenant, datetime.now(UTC).date(),
                                  plan.PlanOptions(days=args.days), session=src)
        if args.max_chunks:
            chunks = chunks[:args.max_chunks]
        ledger.plan_chunks(tconn, run_id, chunks)
    print(f"tenant {args.tenant}: {len(chunks)} chunks planned", flush=True)

    with ep.cassandra_target.session() as dst:
        _truncate(dst, tmap.keyspace, tables)
    opts = CopyOptions(processes=args.processes, batch_rows=args.batch_rows, concurrency=args.concurrency)
    report = copy_pending(ep, run_id, tmap, opts)
    project_rps = report.rows / report.seconds
    print(f"project copier: {report.rows} rows in {report.seconds:.1f}s = {project_rps:,.0f} rows/s "
          f"({report.processes} process(es), batch_rows={opts.batch_rows}, concurrency={opts.concurrency}, "
          "reads the source, WRITETIME+TTL)", flush=True)

    rows = _in_memory_rows(ep, tmap, chunks)
    with ep.cassandra_target.session() as dst:
        _truncate(dst, tmap.keyspace, tables)
    n, secs = _ceiling(ep, tmap, rows, args.ceiling_concurrency)
    ceiling_rps = n / secs
    print(f"ceiling writer: {n} rows in {secs:.1f}s = {ceiling_rps:,.0f} rows/s "
          f"(1 process, execute_concurrent concurrency={args.ceiling_concurrency}, rows in memory, no reads)")
    if n != report.rows:
        print(f"WARNING: row counts differ (project {report.rows}, ceiling {n})")
    with ep.target.connect() as tconn:
        ledger.finish_run(tconn, run_id, "aborted")
    print(f"cores: {os.cpu_count()} (shared by both Cassandra nodes, PostgreSQL and the benchmark); "
          f"project {report.processes} process(es), ceiling 1 process")
    print(f"cassandra_copy_ratio={project_rps / ceiling_rps:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
