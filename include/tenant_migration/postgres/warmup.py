"""Warming the target's caches before traffic moves: a cold dedicated server would answer the
tenant's first minutes of queries from disk, exactly when everybody is watching the cutover.

What it does, in order: measure a sample of tenant queries (``EXPLAIN (ANALYZE, BUFFERS)``: shared
blocks hit vs read), ``pg_prewarm`` every tenant table and its indexes into shared buffers, read the
largest tables through once more (TOAST and the OS cache as well), and measure the same queries
again. The numbers are returned, never only logged: the cutover gate decides on them.

``pg_prewarm`` is preloaded (``shared_preload_libraries``) but the extension must exist in the
target database; creating it needs a superuser, so the stack bootstrap does it (see
``PREWARM_EXTENSION``). The function needs only SELECT on the relations, which ``migration_writer``
has.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from tenant_migration.tenant_map import TenantMap

PREWARM_EXTENSION = "CREATE EXTENSION IF NOT EXISTS pg_prewarm"


class WarmupError(RuntimeError):
    """The target cannot be warmed (the extension is missing)."""


@dataclass(frozen=True)
class BufferSample:
    shared_hit: int
    shared_read: int

    @property
    def hit_ratio(self) -> float:
        total = self.shared_hit + self.shared_read
        return self.shared_hit / total if total else 1.0


@dataclass
class WarmupReport:
    before: BufferSample
    after: BufferSample
    prewarmed_blocks: dict[str, int] = field(default_factory=dict)
    read_through_tables: list[str] = field(default_factory=list)
    queries: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hit_ratio_before"] = round(self.before.hit_ratio, 4)
        out["hit_ratio_after"] = round(self.after.hit_ratio, 4)
        return out


def _sum_buffers(plan: dict[str, Any]) -> tuple[int, int]:
    # A node's buffer counts include its children's, so the top node is the query's total.
    return int(plan.get("Shared Hit Blocks", 0)), int(plan.get("Shared Read Blocks", 0))


def sample_queries(tmap: TenantMap) -> list[sql.Composed]:
    """One tenant query per table: the tenant predicate walks the same indexes the app's lookups use."""
    return [
        sql.SQL("SELECT count(*) FROM {} AS t WHERE {}").format(tmap.qualified(name), tmap.tenant_predicate(name))
        for name in tmap.load_order()
    ]


def measure(conn: psycopg.Connection, queries: list[sql.Composed], tenant_id: int) -> BufferSample:
    """Shared blocks hit and read by ``queries``, from ``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)``."""
    hit = read = 0
    for q in queries:
        row = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}").format(q), {"tenant_id": tenant_id}).fetchone()
        assert row is not None
        doc = row[0]
        h, r = _sum_buffers(doc[0]["Plan"])
        hit, read = hit + h, read + r
    return BufferSample(hit, read)


def relations(conn: psycopg.Connection, tmap: TenantMap) -> list[tuple[str, int]]:
    """The tenant tables and their indexes, largest first, with their size in bytes."""
    rows = conn.execute(
        """
        SELECT c.oid::regclass::text, pg_relation_size(c.oid)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %(schema)s AND c.relname = ANY(%(tables)s) AND c.relkind IN ('r', 'p')
        UNION ALL
        SELECT i.indexrelid::regclass::text, pg_relation_size(i.indexrelid)
          FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %(schema)s AND c.relname = ANY(%(tables)s)
        ORDER BY 2 DESC, 1
        """,
        {"schema": tmap.schema, "tables": list(tmap.tables)},
    ).fetchall()
    return [(str(r[0]), int(r[1])) for r in rows]


def warm_up(
    conn: psycopg.Connection,
    tmap: TenantMap,
    tenant_id: int,
    read_through: int = 3,
    queries: list[sql.Composed] | None = None,
    tally: Any = None,
) -> WarmupReport:
    """Prewarm the tenant's relations on the target and return hit ratios before and after.

    ``conn`` is the target as ``migration_writer`` (autocommit is best: EXPLAIN ANALYZE runs the
    queries). Idempotent: warming a warm cache only re-reads buffers already there.
    """
    started = time.monotonic()
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_prewarm'").fetchone() is None:
        raise WarmupError(
            f"extension pg_prewarm is missing in the target database; a superuser must run `{PREWARM_EXTENSION};` "
            "there (the stack bootstrap does)"
        )
    queries = queries if queries is not None else sample_queries(tmap)
    before = measure(conn, queries, tenant_id)
    blocks: dict[str, int] = {}
    rels = relations(conn, tmap)
    if tally is not None:  # progress.Tally: relations prewarmed of those to prewarm
        tally.planned, tally.unit, tally.note = float(len(rels)), "relations prewarmed", "PostgreSQL buffers"
    for name, _size in rels:
        row = conn.execute("SELECT pg_prewarm(%s::regclass, 'buffer')", (name,)).fetchone()
        blocks[name] = int(row[0]) if row else 0
        if tally is not None:
            tally.add(1)
    tables = [name for name, _ in rels if name.split(".")[-1].strip('"') in tmap.tables][:read_through]
    for name in tables:
        # Reads every column's value (TOAST included), which prewarm of the heap alone does not.
        schema, rel = name.split(".", 1)
        conn.execute(
            sql.SQL("SELECT sum(length(t::text)) FROM {} AS t").format(sql.Identifier(schema, rel.strip('"')))
        ).fetchone()
    after = measure(conn, queries, tenant_id)
    return WarmupReport(before, after, blocks, tables, len(queries), time.monotonic() - started)
