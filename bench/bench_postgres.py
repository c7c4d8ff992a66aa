"""PostgreSQL copy benchmark: the project's chunk copier against the raw ``psql | psql`` ceiling.

Generates (or reuses) the ``bench`` preset, then copies the big tenant (id 1) from the standby to
an emptied target twice over, alternating:

* ceiling: per table, ``psql -c "COPY (tenant rows) TO STDOUT (FORMAT binary)"`` piped into
  ``psql -c "COPY t FROM STDIN (FORMAT binary)"``: no plan, no ledger, no checksum;
* project: ``copy_pending_chunks`` (planner, chunk transactions, ledger, checksums on both sides).

Both use the migration's least-privilege roles and the same tables; the target is truncated
before every pass. Best of ``--rounds`` passes for each (the machine is shared and noisy). The LAST
line is ``postgres_copy_ratio=<project rows/s / ceiling rows/s>``. With ``--index-experiment`` it
also measures loading with every index kept against loading with only the primary keys and
building the secondary indexes afterwards (superuser DDL, raw pipe), and prints both.

Run: ``TM_STATE_DIR=... TM_STACK_SLOT=... .venv/bin/python bench/bench_postgres.py``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid

import psycopg
from psycopg import sql

from tenant_migration import ledger
from tenant_migration.endpoints import Endpoints
from tenant_migration.postgres import catalog
from tenant_migration.postgres.copy import copy_pending_chunks, libpq_env, psql_binary
from tenant_migration.postgres.planner import DEFAULT_CHUNK_ROWS
from tenant_migration.sample import SAMPLE_MAP, platform
from tenant_migration.stack import postgres
from tenant_migration.stack.topology import Topology, default_topology
from tenant_migration.tenant_map import TenantMap, load_tenant_map

TENANT = 1


def raw_pipe(ep: Endpoints, tmap: TenantMap, table: str, cols: list[str], admin: psycopg.Connection) -> None:
    """One table through the raw pipe; identifiers quoted by the driver, passwords in the env."""
    select = tmap.select_tenant_rows(table, cols)
    out_sql = psycopg.ClientCursor(admin).mogrify(
        sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(select), {"tenant_id": TENANT})
    in_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
        tmap.qualified(table), sql.SQL(", ").join(sql.Identifier(c) for c in cols)).as_string(admin)
    psql = psql_binary()
    src = subprocess.Popen([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", out_sql], stdout=subprocess.PIPE,
                           env=libpq_env(ep.replica, "bench_ceiling_out"))
    # Same apply mode as the project (triggers and FK checks off), or the ceiling would not be one.
    dst = subprocess.Popen([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", "SET session_replication_role = replica",
                            "-c", in_sql], stdin=src.stdout,
                           stdout=subprocess.DEVNULL, env=libpq_env(ep.target, "bench_ceiling_in"))
    assert src.stdout is not None
    src.stdout.close()
    if dst.wait() != 0 or src.wait() != 0:
        raise RuntimeError(f"raw pipe failed for {table}")


def truncate_target(admin: psycopg.Connection, tmap: TenantMap) -> None:
    admin.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(tmap.qualified(t) for t in tmap.tables)))
    admin.execute("CHECKPOINT")


def tenant_rows(conn: psycopg.Connection, tmap: TenantMap, table: str) -> int:
    q = sql.SQL("SELECT count(*) FROM {} AS t WHERE {}").format(tmap.qualified(table), tmap.tenant_predicate(table))
    row = conn.execute(q, {"tenant_id": TENANT}).fetchone()
    assert row is not None
    return int(row[0])


def ceiling_pass(ep: Endpoints, tmap: TenantMap, order: list[str], cols: dict[str, list[str]],
                 admin: psycopg.Connection) -> tuple[float, dict[str, float]]:
    truncate_target(admin, tmap)
    per: dict[str, float] = {}
    started = time.perf_counter()
    for table in order:
        t0 = time.perf_counter()
        raw_pipe(ep, tmap, table, cols[table], admin)
        per[table] = time.perf_counter() - t0
    return time.perf_counter() - started, per


def project_pass(ep: Endpoints, tmap: TenantMap, admin: psycopg.Connection,
                 chunk_rows: int, workers: int) -> tuple[float, dict[str, float], int]:
    truncate_target(admin, tmap)
    run_id = f"bench/{uuid.uuid4().hex[:8]}"
    with ep.target.connect() as t:
        ledger.ensure_schema(t)
        with t.transaction():
            t.execute("UPDATE tm_control.runs SET status = 'aborted', finished_at = clock_timestamp() "
                      "WHERE tenant_id = %s AND status = 'running'", (TENANT,))
        ledger.start_run(t, run_id, TENANT, "bench", {"bench": True})
    started = time.perf_counter()
    results = copy_pending_chunks(ep.replica, ep.target, tmap, run_id, TENANT, chunk_rows, workers=workers)
    total = time.perf_counter() - started
    per: dict[str, float] = {}
    for r in results:
        per[r.table] = per.get(r.table, 0.0) + r.seconds
    with ep.target.connect() as t:
        ledger.finish_run(t, run_id, "succeeded")
    return total, per, len(results)


def secondary_indexes(admin: psycopg.Connection, tmap: TenantMap) -> list[tuple[str, str]]:
    """(index name, definition) of every non-unique index of the tenant tables."""
    rows = admin.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = ANY(%s) AND NOT i.indisunique ORDER BY 1",
        (tmap.schema, list(tmap.tables)),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def index_experiment(ep: Endpoints, tmap: TenantMap, order: list[str], cols: dict[str, list[str]],
                     admin: psycopg.Connection) -> None:
    """Indexes kept vs primary keys only + secondary indexes built afterwards, alternating after a
    warm-up pass (best of two each): the machine is shared, single passes are noisy."""
    ceiling_pass(ep, tmap, order, cols, admin)
    indexes = secondary_indexes(admin, tmap)
    kept: list[float] = []
    deferred: list[tuple[float, float]] = []
    for _ in range(2):
        kept.append(ceiling_pass(ep, tmap, order, cols, admin)[0])
        truncate_target(admin, tmap)
        for name, _ in indexes:
            admin.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(name)))
        try:
            t0 = time.perf_counter()
            for table in order:
                raw_pipe(ep, tmap, table, cols[table], admin)
            load = time.perf_counter() - t0
        finally:
            t1 = time.perf_counter()
            for _, definition in indexes:
                admin.execute(definition)
            deferred.append((load, time.perf_counter() - t1))
    best = min(deferred, key=sum)
    print(f"index experiment (raw pipe, big tenant, best of 2): all indexes kept {min(kept):.2f}s "
          f"(passes {', '.join(f'{k:.2f}' for k in kept)}); primary keys only {best[0]:.2f}s + "
          f"{len(indexes)} secondary indexes built after {best[1]:.2f}s = {sum(best):.2f}s "
          f"(passes {', '.join(f'{sum(d):.2f}' for d in deferred)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="chunks copied at once by the project")
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--index-experiment", action="store_true")
    args = parser.parse_args(argv)

    topo: Topology = default_topology()
    platform.load_data(topo, args.preset, 7)
    ep = Endpoints.from_file(topo.state_dir / "connections.json")
    tmap = load_tenant_map(SAMPLE_MAP)
    with psycopg.connect(postgres.superuser_dsn(topo, topo.pg_target, topo.pg_dbname), autocommit=True) as admin, \
            ep.replica.connect(autocommit=True) as replica:
        order = catalog.load_order(replica, tmap)
        cols = {t: [c for c, _ in catalog.columns(replica, tmap.schema, t)] for t in order}
        rows = {t: tenant_rows(replica, tmap, t) for t in order}
        total_rows = sum(rows.values())
        print(f"tenant {TENANT}: {total_rows:,} rows in {len(order)} tables; chunk_rows={args.chunk_rows}, "
              f"project workers={args.workers}")
        if args.index_experiment:
            index_experiment(ep, tmap, order, cols, admin)

        best_ceiling: tuple[float, dict[str, float]] | None = None
        best_project: tuple[float, dict[str, float], int] | None = None
        for _ in range(args.rounds):
            c = ceiling_pass(ep, tmap, order, cols, admin)
            print(f"  ceiling pass {c[0]:.2f}s", flush=True)
            if best_ceiling is None or c[0] < best_ceiling[0]:
                best_ceiling = c
            p = project_pass(ep, tmap, admin, args.chunk_rows, args.workers)
            print(f"  project pass {p[0]:.2f}s ({p[2]} chunks)", flush=True)
            if best_project is None or p[0] < best_project[0]:
                best_project = p
        assert best_ceiling is not None and best_project is not None
        # The last pass left the project's copy on the target: prove it is the tenant's rows.
        for t in order:
            got = tenant_rows(admin, tmap, t)
            if got != rows[t]:
                raise SystemExit(f"{t}: target has {got} tenant rows, source {rows[t]}")
        truncate_target(admin, tmap)

    print("per table: rows / seconds of that table's pipe (ceiling) or chunks (project; chunks of two "
          "workers overlap, so per-table project rates understate; the total is wall time)")
    print(f"{'table':<22}{'rows':>11}{'ceiling rows/s':>16}{'project rows/s':>16}")
    for t in order:
        c_s, p_s = best_ceiling[1][t], best_project[1].get(t, 0.0)
        print(f"{t:<22}{rows[t]:>11,}{rows[t] / max(c_s, 1e-9):>16,.0f}{rows[t] / max(p_s, 1e-9):>16,.0f}")
    ceiling_rate = total_rows / best_ceiling[0]
    project_rate = total_rows / best_project[0]
    print(f"{'total':<22}{total_rows:>11,}{ceiling_rate:>16,.0f}{project_rate:>16,.0f}"
          f"   (ceiling {best_ceiling[0]:.2f}s, project {best_project[0]:.2f}s incl. planning, {best_project[2]} chunks)")
    print(f"postgres_copy_ratio={project_rate / ceiling_rate:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
