"""Reading what discovery needs from the live catalogs: read-only, catalog tables only (a role
that may read nothing of the platform's rows can run it: ``migration_reader`` on the replica)."""

from __future__ import annotations

from typing import Any

import psycopg

from tenant_migration.cassandra.schema import columns_of, partition_key
from tenant_migration.discover.cassandra import CqlTableInfo
from tenant_migration.discover.placement import Catalog, TableInfo
from tenant_migration.postgres import catalog


def postgres_catalog(conn: psycopg.Connection, schema: str) -> Catalog:
    """Tables, columns, keys and foreign keys of ``schema``: four queries, and one per table for
    its unique keys."""
    names = catalog.tables(conn, schema)
    cols = catalog.columns_of_tables(conn, schema, names)
    keys = catalog.key_infos(conn, schema)
    tables = {}
    for name in names:
        k = keys.get(name, catalog.KeyInfo((), "d", ()))
        tables[name] = TableInfo(name, tuple(cols[name]), k.primary_key, k.replica_identity, k.identity_key,
                                 tuple(catalog.unique_keys(conn, schema, name)))
    return Catalog(schema, tables, catalog.foreign_keys(conn, schema))


def cassandra_tables(session: Any, keyspace: str) -> list[CqlTableInfo]:
    """Every table of ``keyspace``: its partition key (columns and types) and default TTL."""
    ttls = {str(r[0]): int(r[1] or 0) for r in session.execute(
        "SELECT table_name, default_time_to_live FROM system_schema.tables WHERE keyspace_name = %s", (keyspace,))}
    by_table: dict[str, list[Any]] = {}
    for r in session.execute("SELECT table_name, column_name, kind, position, type FROM system_schema.columns "
                             "WHERE keyspace_name = %s", (keyspace,)):
        by_table.setdefault(str(r[0]), []).append(r[1:])
    out = []
    for name in sorted(ttls):
        key = tuple(partition_key(columns_of(by_table.get(name, []))))
        out.append(CqlTableInfo(name, key, ttls[name]))
    return out
