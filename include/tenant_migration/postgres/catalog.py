"""What the live catalogs say: columns, keys and foreign keys of the platform's tables.

The tenant map is a claim about the platform; the catalog is the truth. Before anything is copied,
``check_tenant_map`` compares the two and names every disagreement (a table that points at tenant
data but is missing from the map, a hop that is not a real foreign key, a key that is not unique,
column or type drift between source and target). The copy streams binary COPY, which needs
identical column lists and types on both sides; ``schema_drift`` is the part of that check that
looks at the target.

``load_order`` derives the copy order from every real foreign key among tenant-scoped tables
(a child's second foreign key, not only the map's hop), so a parent is loaded before
any child that references it, whatever path the map uses to reach the tenant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter

import psycopg

from tenant_migration.tenant_map import TenantMap, TenantMapError


@dataclass(frozen=True)
class ForeignKey:
    """One FK constraint, columns in constraint order."""

    name: str
    table: str
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]


def columns(conn: psycopg.Connection, schema: str, table: str) -> list[tuple[str, str]]:
    """(column, formatted type) in ordinal order; empty when the table does not exist."""
    return columns_of_tables(conn, schema, [table])[table]


def columns_of_tables(conn: psycopg.Connection, schema: str, names: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """(column, formatted type) in ordinal order of every table in ``names``, in one round trip (a
    table that does not exist maps to an empty list)."""
    out: dict[str, list[tuple[str, str]]] = {name: [] for name in names}
    rows = conn.execute(
        "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY c.relname, a.attnum",
        (schema, list(names)),
    ).fetchall()
    for table, column, typ in rows:
        out[table].append((column, typ))
    return out


def tables(conn: psycopg.Connection, schema: str) -> list[str]:
    """Ordinary and partitioned tables of ``schema`` (partitions themselves excluded)."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1",
        (schema,),
    ).fetchall()
    return [r[0] for r in rows]


def foreign_keys(conn: psycopg.Connection, schema: str) -> list[ForeignKey]:
    """Every FK whose referencing table lives in ``schema`` (references to other schemas included,
    named ``other_schema.table``)."""
    rows = conn.execute(
        """
        SELECT con.conname, c.relname,
               array(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, i)
                     JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.i),
               CASE WHEN rn.nspname = %(schema)s THEN rc.relname ELSE rn.nspname || '.' || rc.relname END,
               array(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(n, i)
                     JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.i)
        FROM pg_constraint con
        JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_class rc ON rc.oid = con.confrelid JOIN pg_namespace rn ON rn.oid = rc.relnamespace
        WHERE con.contype = 'f' AND n.nspname = %(schema)s
        ORDER BY c.relname, con.conname
        """,
        {"schema": schema},
    ).fetchall()
    return [ForeignKey(r[0], r[1], tuple(r[2]), r[3], tuple(r[4])) for r in rows]


def unique_keys(conn: psycopg.Connection, schema: str, table: str) -> list[tuple[str, ...]]:
    """Column lists of the primary key and every unique, non-partial, plain-column index whose
    columns are all NOT NULL: the keys a chunk range can be defined on."""
    rows = conn.execute(
        """
        SELECT array(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o)
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o),
               bool_and(a2.attnotnull)
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a2 ON a2.attrelid = i.indrelid AND a2.attnum = ANY (i.indkey::int2[])
        WHERE n.nspname = %s AND c.relname = %s AND i.indisunique AND i.indpred IS NULL
          AND i.indexprs IS NULL AND i.indisvalid
        GROUP BY i.indexrelid, i.indisprimary, i.indkey
        ORDER BY i.indisprimary DESC, i.indexrelid
        """,
        (schema, table),
    ).fetchall()
    return [tuple(r[0]) for r in rows if r[1]]


@dataclass(frozen=True)
class KeyInfo:
    """A table's primary key and replica identity (what the change stream carries of a row it
    updates or deletes): ``replica_identity`` d (default: the primary key), i (``identity_key``,
    an index), f (full: the whole old row), n (nothing)."""

    primary_key: tuple[str, ...]
    replica_identity: str
    identity_key: tuple[str, ...]


def key_infos(conn: psycopg.Connection, schema: str) -> dict[str, KeyInfo]:
    """``KeyInfo`` of every ordinary and partitioned table of ``schema``, in one round trip."""
    rows = conn.execute(
        """
        SELECT c.relname, c.relreplident::text,
               coalesce((SELECT array(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o)
                                      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o)
                         FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), '{}'),
               coalesce((SELECT array(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o)
                                      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o)
                         FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident), '{}')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition
        """,
        (schema,),
    ).fetchall()
    return {r[0]: KeyInfo(tuple(r[2]), r[1], tuple(r[3])) for r in rows}


def key_problem(table: str, primary_key: Sequence[str], replica_identity: str, identity_key: Sequence[str],
                unique_keys: Sequence[Sequence[str]], schema: str) -> str | None:
    """Why the engine cannot migrate ``table`` for want of a key (None: it can). A table needs a
    primary key, or a replica identity that carries a unique NOT NULL key (an index, or the full
    row with such a key): without one, test_decoding prints no old row for an update or a delete,
    so the change stream cannot say which row changed, and chunks have no total order."""
    if primary_key and replica_identity in ("d", "i", "f"):
        return None
    if replica_identity == "i" and identity_key:
        return None
    if replica_identity == "f" and unique_keys:
        return None
    where = f"{schema}.{table}" if schema else table
    if primary_key:  # REPLICA IDENTITY NOTHING
        return (f"{where}: REPLICA IDENTITY NOTHING: the change stream carries no key for its updates and deletes; "
                f"ALTER TABLE {where} REPLICA IDENTITY DEFAULT")
    hint = ""
    if unique_keys:
        hint = (f" ({', '.join(unique_keys[0])} is unique and NOT NULL: make it the primary key, or "
                f"ALTER TABLE {where} REPLICA IDENTITY USING INDEX <that index>)")
    return (f"{where}: no primary key: the change stream would carry no key for its updates and deletes, and the "
            f"copy's chunks need one; add a PRIMARY KEY{hint}")


def carry_problems(conn: psycopg.Connection, schema: str, names: Sequence[str]) -> list[str]:
    """Columns of ``names`` that the binary COPY cannot carry, one line each naming table and
    column: a generated column (COPY refuses it in either direction), or a type with no binary
    send/receive function anywhere in it (an array's element, a domain's base, a composite's
    field): COPY ... (FORMAT binary) fails on such a type mid-copy ("no binary output function")."""
    rows = conn.execute(
        """
        WITH RECURSIVE cols AS (
            SELECT c.relname AS tab, a.attname AS col, a.attnum, a.attgenerated::text AS gen, a.atttypid AS top,
                   a.atttypid AS oid, 0 AS depth
            FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
          UNION
            SELECT cols.tab, cols.col, cols.attnum, cols.gen, cols.top, inner_t.oid, cols.depth + 1
            FROM cols JOIN pg_type t ON t.oid = cols.oid
            CROSS JOIN LATERAL (
                SELECT t.typbasetype AS oid WHERE t.typtype = 'd'
                UNION ALL SELECT t.typelem WHERE t.typcategory = 'A' AND t.typelem <> 0
                UNION ALL SELECT f.atttypid FROM pg_attribute f
                          WHERE t.typtype = 'c' AND f.attrelid = t.typrelid AND f.attnum > 0 AND NOT f.attisdropped
            ) inner_t
            WHERE cols.depth < 16
        )
        SELECT cols.tab, cols.col, min(cols.gen), format_type(min(cols.top::int)::oid, NULL),
               array_agg(DISTINCT format_type(t.oid, NULL)) FILTER (WHERE t.typsend = 0 OR t.typreceive = 0)
        FROM cols JOIN pg_type t ON t.oid = cols.oid
        GROUP BY cols.tab, cols.col, cols.attnum
        ORDER BY cols.tab, cols.attnum
        """,
        (schema, list(names)),
    ).fetchall()
    problems = []
    for table, column, generated, typ, no_binary in rows:
        if generated:
            problems.append(f"{schema}.{table}.{column}: a generated column (GENERATED ALWAYS AS ... STORED), which "
                            "COPY cannot read or write; the copy cannot carry it (make it a plain column filled by the "
                            "application or a trigger, or leave the table out)")
        if no_binary:
            inner = "" if no_binary == [typ] else f" (through {', '.join(no_binary)})"
            problems.append(f"{schema}.{table}.{column}: type {typ}{inner} has no binary send/receive function, so "
                            "the binary COPY cannot carry it")
    return problems


def schema_drift(source: psycopg.Connection, target: psycopg.Connection, tmap: TenantMap) -> list[str]:
    """Human-readable differences between source and target for every tenant-scoped table."""
    problems: list[str] = []
    order = tmap.load_order()
    on_source = columns_of_tables(source, tmap.schema, order)
    on_target = columns_of_tables(target, tmap.schema, order)
    for table in order:
        src, dst = on_source[table], on_target[table]
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


def check_tenant_map(source: psycopg.Connection, target: psycopg.Connection, tmap: TenantMap) -> list[str]:
    """Every disagreement between the tenant map and the live catalogs, one readable line each
    naming table and column. Raises nothing: the caller (preflight) decides, after collecting all.

    Checked on the source: every table of the map is in the catalog (else the closest names);
    every table with a FK into a tenant-scoped table is in the map (tenant-scoped or shared), else
    its rows would silently stay behind; every hop is a real FK (else the semi-join filter means
    nothing); every tenant column exists; every key is the primary key or a NOT NULL unique key
    (chunk ranges need a total order without duplicates) and the table has a primary key or a
    replica identity the change stream can key on (``key_problem``); every column is one the
    binary COPY can carry (``carry_problems``). Then ``schema_drift`` between source and target.
    """
    import difflib

    s = tmap.schema
    problems: list[str] = []
    present = set(tables(source, s))
    fks = foreign_keys(source, s)
    scoped = set(tmap.tables)
    known = scoped | set(tmap.shared_tables)

    def missing(table: str, what: str, key: str) -> str:
        near = difflib.get_close_matches(table, sorted(present), n=3)
        hint = f"; did you mean {' or '.join(near)}?" if near else (
            f" (schema {s} has {len(present)} tables)" if present else f" (schema {s} has no tables on the source)")
        return f"{s}.{table}: {what} in the tenant map ({key}) but not in the source catalog{hint}"

    for table in sorted(present - known):
        for fk in fks:
            if fk.table == table and fk.ref_table in scoped:
                problems.append(
                    f"{s}.{table}.{','.join(fk.columns)}: references tenant-scoped {s}.{fk.ref_table} "
                    f"(FK {fk.name}) but {s}.{table} is missing from the tenant map (neither tenant-scoped nor shared)"
                )
    for table in tmap.shared_tables:
        if table not in present:
            problems.append(missing(table, "a shared table", "postgres.shared_tables"))

    names = sorted(n for n in scoped if n in present)
    cols_of = columns_of_tables(source, s, names)
    keys_of = key_infos(source, s)
    for name in sorted(scoped):
        spec = tmap.tables[name]
        if name not in present:
            problems.append(missing(name, "a tenant-scoped table", f"postgres.tables.{name}"))
            continue
        cols = dict(cols_of[name])
        if spec.tenant_column is not None and spec.tenant_column not in cols:
            problems.append(f"{s}.{name}.{spec.tenant_column}: tenant column does not exist on the source")
        for col in spec.key:
            if col not in cols:
                problems.append(f"{s}.{name}.{col}: key column does not exist on the source")
        uniques = unique_keys(source, s, name)
        info = keys_of.get(name, KeyInfo((), "d", ()))
        why = key_problem(name, info.primary_key, info.replica_identity, info.identity_key, uniques, s)
        if why:
            problems.append(why)
        elif all(c in cols for c in spec.key) and not any(set(k) == set(spec.key) for k in uniques):
            problems.append(
                f"{s}.{name}.{','.join(spec.key)}: key is not the primary key or a NOT NULL unique key on the source"
            )
        hop = spec.via
        if hop is not None:
            real = any(
                fk.table == name and fk.ref_table == hop.table
                and (hop.column, hop.parent_column) in zip(fk.columns, fk.ref_columns, strict=True)
                and len(fk.columns) == 1
                for fk in fks
            )
            if not real:
                problems.append(
                    f"{s}.{name}.{hop.column}: the map's hop to {s}.{hop.table}.{hop.parent_column} "
                    "is not a foreign key in the source catalog"
                )
    for cname, cspec in tmap.cassandra_tables.items():
        where, rel = f"cassandra {tmap.keyspace}.{cname}", cspec.partitions_from_table
        if rel not in scoped:
            problems.append(f"{where}: partitions_from.table {rel} is not a tenant-scoped table of the tenant map")
        elif rel in cols_of:
            have = dict(cols_of[rel])
            problems += [f"{where}: partitions_from {s}.{rel} has no column {col} (its columns: {', '.join(have)})"
                         for col in cspec.partitions_from_columns if col not in have]
    problems += carry_problems(source, s, names + sorted(t for t in tmap.shared_tables if t in present))
    problems += [p for p in schema_drift(source, target, tmap) if not p.endswith(": missing on the source")]
    return problems


def load_order(conn: psycopg.Connection, tmap: TenantMap) -> list[str]:
    """Tenant-scoped tables, parents first, from the map's hops AND every real FK among them.

    Stable: tables that become ready together are sorted by name. Self-references are ignored
    (a chunk holds both ends, and FKs are not checked during apply). A cycle raises
    TenantMapError naming it: such a schema needs a decision the map cannot express.
    """
    try:
        return order_tables(tmap, foreign_keys(conn, tmap.schema))
    except CycleError as exc:
        raise TenantMapError(f"foreign keys among tenant-scoped tables form a cycle: {exc.args[1]}") from exc


def order_tables(tmap: TenantMap, fks: Sequence[ForeignKey]) -> list[str]:
    """``load_order`` on foreign keys already read (discovery's cycle check); raises ``CycleError``."""
    graph: dict[str, set[str]] = {name: set() for name in tmap.tables}
    for spec in tmap.tables.values():
        if spec.via is not None:
            graph[spec.name].add(spec.via.table)
        elif spec.name != tmap.root_table:
            graph[spec.name].add(tmap.root_table)
    for fk in fks:
        if fk.table in graph and fk.ref_table in graph and fk.ref_table != fk.table:
            graph[fk.table].add(fk.ref_table)
    sorter = TopologicalSorter(graph)
    sorter.prepare()
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        order.extend(ready)
        sorter.done(*ready)
    return order
