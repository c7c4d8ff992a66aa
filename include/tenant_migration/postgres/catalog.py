"""What the live catalogs say: columns and types of the tenant-scoped tables on both sides.

The copy streams binary COPY, which needs identical column lists and types on source and target;
``schema_drift`` names every difference before anything is written.
"""

from __future__ import annotations

import psycopg

from tenant_migration.tenant_map import TenantMap


def columns(conn: psycopg.Connection, schema: str, table: str) -> list[tuple[str, str]]:
    """(column, formatted type) in ordinal order; empty when the table does not exist."""
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum",
        (schema, table),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def schema_drift(source: psycopg.Connection, target: psycopg.Connection, tmap: TenantMap) -> list[str]:
    """Human-readable differences between source and target for every tenant-scoped table."""
    problems: list[str] = []
    for table in tmap.load_order():
        src = columns(source, tmap.schema, table)
        dst = columns(target, tmap.schema, table)
        if not src:
            problems.append(f"{tmap.schema}.{table}: missing on the source")
            continue
        if not dst:
            problems.append(f"{tmap.schema}.{table}: missing on the target")
            continue
        src_types, dst_types = dict(src), dict(dst)
        for col, typ in src:
            if col not in dst_types:
                problems.append(f"{tmap.schema}.{table}.{col}: missing on the target (source type {typ})")
            elif dst_types[col] != typ:
                problems.append(f"{tmap.schema}.{table}.{col}: type {typ} on the source, {dst_types[col]} on the target")
        for col, typ in dst:
            if col not in src_types:
                problems.append(f"{tmap.schema}.{table}.{col}: only on the target ({typ})")
        if [c for c, _ in src if c in dst_types] != [c for c, _ in dst if c in src_types]:
            problems.append(f"{tmap.schema}.{table}: column order differs between source and target")
    return problems
