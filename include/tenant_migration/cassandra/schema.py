"""A Cassandra table's columns from ``system_schema``: what the plan (key types), the copy (its
shape) and the preflight (drift) read of a table, in one query each."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cassandra.cluster import Session

COLUMNS_QUERY = ("SELECT column_name, kind, position, type FROM system_schema.columns "
                 "WHERE keyspace_name = %s AND table_name = %s")


def table_columns(session: Session, keyspace: str, table: str) -> list[tuple[str, str, int, str]]:
    """(name, kind, position, CQL type) of the table's columns, by name, from ``system_schema``
    (empty: no such table). The sessions keep no schema metadata
    (``endpoints.CassandraEndpoint.cluster``): one query for the table a step needs instead of the
    whole schema at every connect."""
    return columns_of(session.execute(COLUMNS_QUERY, (keyspace, table)))


def columns_of(rows: Iterable[Any]) -> list[tuple[str, str, int, str]]:
    return sorted((str(r[0]), str(r[1]), int(r[2]), str(r[3])) for r in rows)


def partition_key(columns: Iterable[tuple[str, str, int, str]]) -> list[tuple[str, str]]:
    """(name, CQL type) of the partition-key columns of ``columns`` (``table_columns``), in key order."""
    return [(c[0], c[3]) for c in sorted((c for c in columns if c[1] == "partition_key"), key=lambda c: c[2])]
