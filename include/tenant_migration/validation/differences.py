"""Where two sides differ, key by key: the evidence a failing comparison gate puts on its page.

A comparison gate compares aggregates (per chunk: row count and checksum, or Cassandra's per-partition
fingerprints), which say *that* a chunk differs, not *where*. Only for the units that differ, this
module reads the rows again on both sides and names a bounded sample of the differing keys with both
sides' values:

- PostgreSQL: every key of the chunk with its row hash on both sides (the same ``row_hash`` as the
  checksum), the keys whose hash differs or that one side lacks, then those rows' values
  (``to_jsonb``) on both sides, column by column.
- Cassandra: the differing partitions' rows on both sides (key, each column's value and WRITETIME,
  the cells past the comparison's watermark left out as the fingerprint leaves them out), row by
  row and cell by cell.

Nothing here runs for a passing gate. Values are shown as text, each cut at ``VALUE_CHARS``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from psycopg import sql

from tenant_migration.tenant_map import TenantMap

if TYPE_CHECKING:
    import psycopg
    from cassandra.cluster import Session

    from tenant_migration.cassandra.shape import TableShape

KEYS_PER_UNIT = 5  # differing keys named per differing unit
UNITS = 5  # differing units looked into per table
VALUE_CHARS = 120
MISSING = "(no row)"


def _text(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else json.dumps(value, default=str) if isinstance(
        value, (dict, list)) else str(value)
    return text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS] + "..."


def _key_label(columns: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{c}={v}" for c, v in zip(columns, values, strict=True))


def compare_rows(table: str, key_label: str, source: dict[str, Any] | None,
                 target: dict[str, Any] | None) -> dict[str, Any]:
    """One differing key: the columns whose values differ (both present), or the whole row on the
    side that has it."""
    out: dict[str, Any] = {"table": table, "key": key_label}
    if source is None or target is None:
        out["source"] = MISSING if source is None else {k: _text(v) for k, v in source.items()}
        out["target"] = MISSING if target is None else {k: _text(v) for k, v in target.items()}
        return out
    out["columns"] = [{"column": c, "source": _text(source.get(c)), "target": _text(target.get(c))}
                      for c in dict.fromkeys([*source, *target]) if source.get(c) != target.get(c)]
    return out


def postgres_differences(replica: psycopg.Connection, target: psycopg.Connection, tmap: TenantMap, tenant_id: int,
                         table: str, bounds: dict[str, Any] | None, limit: int = KEYS_PER_UNIT) -> list[dict[str, Any]]:
    """The first ``limit`` keys (in key order) of one chunk (``bounds``; None: the whole table)
    whose rows differ between the replica (the tenant's rows) and the target (every row in the
    range, as the post-copy gate counts them), each with both sides' values."""
    from tenant_migration.postgres.catalog import columns
    from tenant_migration.postgres.copy import row_hash, unhashable_columns
    from tenant_migration.postgres.planner import chunk_predicate, range_predicate

    key = tmap.tables[table].key
    cols = [c for c, _ in columns(replica, tmap.schema, table)]
    text_cols = unhashable_columns(replica, tmap.schema, table, cols)
    keys = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in key)
    hashed = row_hash(cols, "t", text_cols)

    def hashes(conn: psycopg.Connection, pred: sql.Composable) -> dict[tuple[Any, ...], int]:
        q = sql.SQL("SELECT {}, {} FROM {} AS t WHERE {}").format(keys, hashed, tmap.qualified(table), pred)
        return {tuple(r[:-1]): r[-1] for r in conn.execute(q, {"tenant_id": tenant_id})}

    on_source = hashes(replica, chunk_predicate(tmap, table, bounds) if bounds else tmap.tenant_predicate(table))
    on_target = hashes(target, range_predicate(bounds) if bounds else tmap.tenant_predicate(table))
    differing = sorted((k for k in on_source.keys() | on_target.keys() if on_source.get(k) != on_target.get(k)),
                       key=lambda k: tuple((v is None, str(type(v)), v) for v in k))[:limit]

    def row(conn: psycopg.Connection, values: tuple[Any, ...]) -> dict[str, Any] | None:
        match = sql.SQL(" AND ").join(sql.SQL("t.{} = %s").format(sql.Identifier(c)) for c in key)
        found = conn.execute(sql.SQL("SELECT to_jsonb(t) FROM {} AS t WHERE {}").format(
            tmap.qualified(table), match), values).fetchone()
        return None if found is None else dict(found[0])

    return [compare_rows(table, _key_label(key, k), row(replica, k) if k in on_source else None,
                         row(target, k) if k in on_target else None) for k in differing]


def _cells(session: Session, shape: TableShape, pk: tuple[Any, ...],
           max_writetime: int | None) -> dict[tuple[Any, ...], dict[str, Any]]:
    """One partition's rows: clustering key -> {column: value, ``writetime(column)``: ...}, the
    cells written after ``max_writetime`` left out (and a row left with none of its cells)."""
    from tenant_migration.cassandra.copy import cql_ident
    from tenant_migration.cassandra.prints import _writetime

    regular = list(shape.regular)
    selected = ", ".join([cql_ident(c) for c in shape.primary_key]
                         + [f"{cql_ident(c)}, {_writetime(shape, c)}" for c in regular])
    where = " AND ".join(f"{cql_ident(c)} = %s" for c in shape.partition_key)
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    nkey = len(shape.primary_key)
    for r in session.execute(f"SELECT {selected} FROM {shape.qualified} WHERE {where}", tuple(pk)):
        r = tuple(r)
        cells: dict[str, Any] = {}
        for i, c in enumerate(regular):
            value, wt = r[nkey + 2 * i], r[nkey + 2 * i + 1]
            newest = max(wt) if isinstance(wt, list) and wt else wt
            if wt is None or (max_writetime is not None and isinstance(newest, int) and newest > max_writetime):
                continue
            cells[c], cells[f"writetime({c})"] = value, wt
        if cells or not regular:
            rows[r[len(shape.partition_key):nkey]] = cells
    return rows


def cassandra_differences(source: Session, target: Session, shape: TableShape, partitions: Sequence[tuple[Any, ...]],
                          max_writetime: int | None = None, limit: int = KEYS_PER_UNIT) -> list[dict[str, Any]]:
    """The first ``limit`` differing rows of the given partitions (plain partition keys), each
    with both sides' values and write times, cell by cell."""
    out: list[dict[str, Any]] = []
    clustering = list(shape.clustering_key)
    for pk in partitions:
        a, b = _cells(source, shape, pk, max_writetime), _cells(target, shape, pk, max_writetime)
        for ck in sorted(a.keys() | b.keys(), key=repr):
            if a.get(ck) == b.get(ck):
                continue
            label = _key_label(list(shape.partition_key) + clustering, tuple(pk) + tuple(ck))
            out.append(compare_rows(shape.table, label, a.get(ck), b.get(ck)))
            if len(out) >= limit:
                return out
    return out


def fingerprint_frame(report: Any, source: Session | None = None, target: Session | None = None,
                      tmap: TenantMap | None = None, max_writetime: int | None = None) -> Any:
    """A ``FingerprintReport`` as a comparison frame (``gx_gate.Gate.compare``): per chunk, both
    sides' rows and fingerprints and the partitions compared; with both sessions, the differing
    chunks' ``differences`` (up to ``UNITS`` chunks per table, read now)."""
    import pandas as pd

    from tenant_migration.cassandra.shape import table_shape

    by_chunk: dict[str, list[tuple[Any, ...]]] = {}
    for p in report.partitions:
        if p.get("pk") is not None:
            by_chunk.setdefault(p["chunk_id"], []).append(tuple(p["pk"]))
    looked: dict[str, int] = {}
    shapes: dict[str, Any] = {}
    rows = []
    for r in report.records():
        diffs = None
        if not r["match"] and source is not None and target is not None and tmap is not None \
                and looked.get(r["table"], 0) < UNITS and by_chunk.get(r["chunk_id"]):
            looked[r["table"]] = looked.get(r["table"], 0) + 1
            if r["table"] not in shapes:
                shapes[r["table"]] = table_shape(target, tmap.keyspace, r["table"])
            found = cassandra_differences(source, target, shapes[r["table"]], by_chunk[r["chunk_id"]], max_writetime)
            diffs = json.dumps(found, default=str) if found else None
        rows.append({"unit": r["chunk_id"], "table": r["table"], "source_rows": r["source_rows"],
                     "target_rows": r["target_rows"], "source_checksum": r["source_hash"],
                     "target_checksum": r["target_hash"], "partitions": r["partitions"],
                     "mismatched": ", ".join(r["mismatched"][:20]), "differences": diffs})
    return pd.DataFrame(rows, columns=["unit", "table", "source_rows", "target_rows", "source_checksum",
                                       "target_checksum", "partitions", "mismatched", "differences"])
