"""Chunk planner: split each table's rows OF ONE TENANT into key ranges of about ``chunk_rows``.

Why not ``min..max`` of the table: the tenant's keys are scattered among other tenants' keys (and
the sample data adds holes, zero and negative keys and +-2**40 outliers), so even splits of the
table's key space give mostly empty chunks and a few huge ones. The planner instead numbers the
tenant's own keys in key order (``row_number`` over the tenant predicate, on the detached replica)
and cuts at every ~``chunk_rows``-th key, balanced so that chunk sizes differ by at most one row.

Design note (invariants):
* Ranges are half-open, ``(lower, upper]`` on the key as a row value (composite keys compare
  lexicographically, as PostgreSQL row comparison and the btree do). The first chunk has no lower
  bound and the last no upper bound, so the chunks of a table cover its whole key space: a row the
  plan did not see still belongs to exactly one chunk.
* Large tables are planned from a Bernoulli sample (see ``plan_table``); small ones exactly.
* A table with no rows for the tenant gets one unbounded chunk: copying it deletes stale target
  rows and proves 0 = 0.
* Bounds are JSON-safe (uuids and other non-numbers as their PostgreSQL text form, bytea as
  ``\\x<hex>``, integers as numbers) and are rendered back as untyped literals that PostgreSQL
  coerces to the key column's type: the range compares as the column's type, whatever it is.
* The plan is made once per run and persisted in the ledger in one transaction; asking again
  returns the stored plan, so chunk ids (``pg:<table>:<nnnn>``) are stable across retries.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from tenant_migration import ledger
from tenant_migration.postgres import catalog
from tenant_migration.tenant_map import TenantMap

ENGINE = "postgres"
DEFAULT_CHUNK_ROWS = 250_000


def chunk_id(table: str, index: int, width: int = 4) -> str:
    """Readable, sortable id: ``pg:rules:0003``."""
    return f"pg:{table}:{index:0{width}d}"


def json_key_value(value: Any) -> Any:
    """A key value as JSON keeps it exactly: ints as numbers, everything else as its text form."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()  # bytea's own text form (str() would give "b'...'")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _key_row(key: Sequence[str], alias: str) -> sql.Composable:
    cols = [sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c)) for c in key]
    return cols[0] if len(cols) == 1 else sql.SQL("({})").format(sql.SQL(", ").join(cols))


def _value_row(values: Sequence[Any]) -> sql.Composable:
    lits = [sql.Literal(v) for v in values]
    return lits[0] if len(lits) == 1 else sql.SQL("({})").format(sql.SQL(", ").join(lits))


def range_predicate(bounds: dict[str, Any], alias: str = "t") -> sql.Composable:
    """``(key) > lower AND (key) <= upper`` for a chunk's bounds (``TRUE`` when unbounded)."""
    key = bounds["key"]
    parts: list[sql.Composable] = []
    if bounds.get("lower") is not None:
        parts.append(sql.SQL("{} > {}").format(_key_row(key, alias), _value_row(bounds["lower"])))
    if bounds.get("upper") is not None:
        parts.append(sql.SQL("{} <= {}").format(_key_row(key, alias), _value_row(bounds["upper"])))
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("TRUE")


def chunk_predicate(tmap: TenantMap, table: str, bounds: dict[str, Any], alias: str = "t") -> sql.Composable:
    """The chunk's rows: its key range AND the tenant predicate (one ``%(tenant_id)s``)."""
    return sql.SQL("{} AND {}").format(range_predicate(bounds, alias), tmap.tenant_predicate(table, alias))


def boundary_query(tmap: TenantMap, table: str, key: Sequence[str], chunk_rows: int) -> sql.Composed:
    """Keys closing each chunk, plus the last key (whose row number is the tenant's row count).

    ``n = ceil(total / chunk_rows)`` chunks; row ``rn`` closes a chunk when ``floor(rn*n/total)``
    steps up, which spreads the remainder so chunk sizes differ by at most one.
    """
    keys = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in key)
    outer = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in key)
    return sql.SQL(
        "SELECT {outer}, s.rn, s.total FROM ("
        " SELECT {keys}, row_number() OVER (ORDER BY {keys}) AS rn, count(*) OVER () AS total"
        " FROM {table} AS t WHERE {pred}) AS s,"
        " LATERAL (SELECT GREATEST(1, ceil(s.total::numeric / {chunk}))::bigint AS n) AS c"
        " WHERE s.rn = s.total OR (s.rn * c.n) / s.total <> ((s.rn - 1) * c.n) / s.total"
        " ORDER BY s.rn"
    ).format(
        outer=outer, keys=keys, table=tmap.qualified(table), pred=tmap.tenant_predicate(table),
        chunk=sql.Literal(int(chunk_rows)),
    )


SAMPLE_ROWS = 20_000


def sample_query(tmap: TenantMap, table: str, key: Sequence[str], percent: float) -> sql.Composed:
    """The tenant's keys among a Bernoulli sample of the table, in key order."""
    keys = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in key)
    return sql.SQL(
        "SELECT {keys} FROM {table} AS t TABLESAMPLE BERNOULLI ({pct}) REPEATABLE (7) WHERE {pred} ORDER BY {keys}"
    ).format(keys=keys, table=tmap.qualified(table), pct=sql.Literal(percent), pred=tmap.tenant_predicate(table))


def _estimated_rows(conn: psycopg.Connection, tmap: TenantMap, table: str) -> float:
    row = conn.execute(
        "SELECT c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (tmap.schema, table),
    ).fetchone()
    return float(row[0]) if row and row[0] is not None else -1.0


def _chunks(table: str, key: list[str], cuts: list[list[Any]], sizes: list[int], exact: bool) -> list[ledger.Chunk]:
    edges: list[list[Any] | None] = [None, *cuts, None]
    width = max(4, len(str(len(edges) - 2)))
    label = "planned_rows" if exact else "estimated_rows"
    return [
        ledger.Chunk(chunk_id(table, i, width), ENGINE, table,
                     {"key": key, "lower": edges[i], "upper": edges[i + 1], label: sizes[i]})
        for i in range(len(edges) - 1)
    ]


def plan_table(
    replica: psycopg.Connection,
    tmap: TenantMap,
    table: str,
    tenant_id: int,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    sample_rows: int = SAMPLE_ROWS,
) -> list[ledger.Chunk]:
    """The chunks of one table for one tenant, planned on the tenant's own key distribution.

    Small tables (up to ``sample_rows`` by the catalog's estimate, or never analyzed) are planned
    exactly with a window over every tenant key. Larger ones from a Bernoulli sample of about
    ``sample_rows`` table rows: the tenant predicate then runs on the sampled rows only (index
    lookups into the parents instead of hashing them whole), which cut planning of the bench's
    big tenant from 11 s to well under a second. A sample only moves boundaries, never coverage:
    the outer chunks are unbounded, so every tenant row lands in exactly one chunk whatever the
    sample saw; chunk sizes are then ``~chunk_rows`` (``estimated_rows`` in the bounds).
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be positive")
    key = list(tmap.tables[table].key)
    params = {"tenant_id": tenant_id}
    reltuples = _estimated_rows(replica, tmap, table)
    if 0 < sample_rows < reltuples:
        percent = round(100.0 * sample_rows / reltuples, 6)
        sample = replica.execute(sample_query(tmap, table, key, percent), params).fetchall()
        estimate = round(len(sample) * 100.0 / percent)
        n = math_chunks(estimate, chunk_rows)
        picks = sorted({(i * len(sample)) // n - 1 for i in range(1, n)} - {-1})
        cuts = [[json_key_value(v) for v in sample[j]] for j in picks]
        deduped = [c for i, c in enumerate(cuts) if i == 0 or c != cuts[i - 1]]
        per = round(estimate / (len(deduped) + 1))
        return _chunks(table, key, deduped, [per] * (len(deduped) + 1), exact=False)
    rows = replica.execute(boundary_query(tmap, table, key, chunk_rows), params).fetchall()
    total = int(rows[-1][-1]) if rows else 0
    closing = [r for r in rows if r[-2] < r[-1]]
    ends = [0, *(int(r[-2]) for r in closing), total]
    cuts = [[json_key_value(v) for v in r[: len(key)]] for r in closing]
    return _chunks(table, key, cuts, [ends[i + 1] - ends[i] for i in range(len(ends) - 1)], exact=True)


def plan_postgres(
    replica: psycopg.Connection,
    target: psycopg.Connection,
    tmap: TenantMap,
    run_id: str,
    tenant_id: int,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> list[ledger.Chunk]:
    """Plan every tenant-scoped table once per run and persist the plan; on a re-run, return the
    stored plan unchanged (so chunk ids and bounds never move under a resume).

    Returned in copy order: tables in FK load order, chunks by id.
    """
    order = catalog.load_order(replica, tmap)
    # Serialise planners of the same run (two retries racing): the second one finds the first's plan.
    if target.execute("SELECT 1 FROM tm_control.runs WHERE run_id = %s FOR UPDATE", (run_id,)).fetchone() is None:
        target.rollback()
        raise ledger.LedgerError(f"run {run_id} is not registered in the ledger (start_run first)")
    stored = ledger.run_chunks(target, run_id, ENGINE)
    if not stored:
        planned: list[ledger.Chunk] = []
        for table in order:
            planned += plan_table(replica, tmap, table, tenant_id, chunk_rows)
        ledger.plan_chunks(target, run_id, planned)
        ledger.record_event(target, run_id, "plan_postgres", "info",
                            {"chunk_rows": chunk_rows, "chunks": len(planned), "tables": order})
        stored = ledger.run_chunks(target, run_id, ENGINE)
    target.commit()
    rank = {t: i for i, t in enumerate(order)}
    return sorted(stored, key=lambda c: (rank.get(c.table_name, len(rank)), c.chunk_id))


def math_chunks(total: int, chunk_rows: int) -> int:
    """How many chunks the planner makes for ``total`` rows (for tests and estimates)."""
    return max(1, math.ceil(total / chunk_rows))
