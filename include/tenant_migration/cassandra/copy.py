"""Copying a tenant's Cassandra partitions, cell by cell, with their WRITETIME and remaining TTL.

Design note: Cassandra resolves conflicts last-write-wins by write timestamp. Every cell is
written on the target ``USING TIMESTAMP <source writetime> AND TTL <remaining ttl>``, so a re-copy
is idempotent and never overwrites a newer value written directly on the target, and an expired
cell is never resurrected (it is not read). The tenant's partitions are computed from relational
metadata (``plan_partitions``): no scan of the shared cluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from tenant_migration.tenant_map import CassandraTableSpec, TenantMap

if TYPE_CHECKING:
    from cassandra.cluster import Session


@dataclass(frozen=True)
class TableShape:
    keyspace: str
    table: str
    partition_key: tuple[str, ...]
    clustering_key: tuple[str, ...]
    regular: tuple[str, ...]

    @property
    def primary_key(self) -> tuple[str, ...]:
        return self.partition_key + self.clustering_key


@dataclass(frozen=True)
class CopyStats:
    table: str
    partitions: int  # planned (probed) partition keys
    rows: int
    cells: int
    seconds: float
    nonempty: int = 0  # partitions that held at least one live row


def table_shape(session: Session, keyspace: str, table: str) -> TableShape:
    meta = session.cluster.metadata.keyspaces[keyspace].tables[table]
    pk = tuple(c.name for c in meta.partition_key)
    ck = tuple(c.name for c in meta.clustering_key)
    regular = tuple(name for name in meta.columns if name not in pk and name not in ck)
    return TableShape(keyspace, table, pk, ck, regular)


def retention_days(today: date, days: int) -> list[date]:
    """Day buckets of the window, newest first (recent data becomes usable on the target first)."""
    return [today - timedelta(days=i) for i in range(days)]


def plan_partitions(
    replica: psycopg.Connection, tmap: TenantMap, spec: CassandraTableSpec, tenant_id: int, days: Sequence[date]
) -> list[tuple[Any, ...]]:
    """Partition keys of the tenant in ``spec``'s table, from the replica's relational rows."""
    from psycopg import sql

    cols = list(spec.partitions_from_columns)
    query = tmap.select_tenant_rows(spec.partitions_from_table, cols) + sql.SQL(" ORDER BY 1, 2" if len(cols) > 1 else " ORDER BY 1")
    bases = [tuple(r) for r in replica.execute(query, {"tenant_id": tenant_id}).fetchall()]
    if spec.day_column is None:
        return bases
    # Newest day first across all devices: the most recent data is usable on the target soonest.
    return [base + (day,) for day in days for base in bases]


def _cql_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PartitionCopier:
    """Copies whole partitions of one table from ``source`` to ``target`` sessions."""

    def __init__(self, source: Session, target: Session, shape: TableShape, concurrency: int = 64) -> None:
        self.source = source
        self.target = target
        self.shape = shape
        self.concurrency = concurrency
        ks_t = f"{_cql_ident(shape.keyspace)}.{_cql_ident(shape.table)}"
        where = " AND ".join(f"{_cql_ident(c)} = ?" for c in shape.partition_key)
        meta_cols = ", ".join(
            f"{_cql_ident(c)}, WRITETIME({_cql_ident(c)}), TTL({_cql_ident(c)})" for c in shape.regular
        )
        key_cols = ", ".join(_cql_ident(c) for c in shape.primary_key)
        self._select = source.prepare(f"SELECT {key_cols}, {meta_cols} FROM {ks_t} WHERE {where}")
        self._select.fetch_size = 5000
        self._count = target.prepare(f"SELECT count(*) FROM {ks_t} WHERE {where}")
        self._count_src = source.prepare(f"SELECT count(*) FROM {ks_t} WHERE {where}")
        self._ks_t = ks_t
        self._inserts: dict[tuple[str, ...], Any] = {}

    def _insert_for(self, cols: tuple[str, ...]) -> Any:
        stmt = self._inserts.get(cols)
        if stmt is None:
            all_cols = self.shape.primary_key + cols
            stmt = self.target.prepare(
                f"INSERT INTO {self._ks_t} ({', '.join(_cql_ident(c) for c in all_cols)}) "
                f"VALUES ({', '.join('?' for _ in all_cols)}) USING TIMESTAMP ? AND TTL ?"
            )
            self._inserts[cols] = stmt
        return stmt

    def _writes_for_row(self, row: Sequence[Any]) -> Iterator[tuple[Any, tuple[Any, ...]]]:
        nkey = len(self.shape.primary_key)
        key = tuple(row[:nkey])
        groups: dict[tuple[int, int], list[tuple[str, Any]]] = {}
        for i, col in enumerate(self.shape.regular):
            value, wt, ttl = row[nkey + 3 * i], row[nkey + 3 * i + 1], row[nkey + 3 * i + 2]
            if wt is None:  # no live cell for this column
                continue
            groups.setdefault((wt, ttl or 0), []).append((col, value))
        for (wt, ttl), cells in groups.items():
            cols = tuple(c for c, _ in cells)
            yield self._insert_for(cols), key + tuple(v for _, v in cells) + (wt, ttl)

    def copy(self, partitions: Iterable[tuple[Any, ...]], batch: int = 512) -> CopyStats:
        from cassandra.concurrent import execute_concurrent, execute_concurrent_with_args

        started = time.monotonic()
        nparts = nrows = ncells = nonempty = 0
        buf: list[tuple[Any, ...]] = []

        def flush() -> None:
            nonlocal nrows, ncells, nonempty
            reads = execute_concurrent_with_args(
                self.source, self._select, buf, concurrency=self.concurrency, raise_on_first_error=True
            )
            writes: list[tuple[Any, tuple[Any, ...]]] = []
            for ok, result in reads:
                assert ok
                had_rows = False
                for row in result:
                    had_rows = True
                    nrows += 1
                    for stmt, params in self._writes_for_row(row):
                        ncells += len(params) - len(self.shape.primary_key) - 2
                        writes.append((stmt, params))
                nonempty += had_rows
            if writes:
                execute_concurrent(self.target, writes, concurrency=self.concurrency, raise_on_first_error=True)
            buf.clear()

        for pk in partitions:
            buf.append(pk)
            nparts += 1
            if len(buf) >= batch:
                flush()
        if buf:
            flush()
        return CopyStats(self.shape.table, nparts, nrows, ncells, time.monotonic() - started, nonempty)

    def count(self, partitions: Iterable[tuple[Any, ...]], on_target: bool) -> int:
        from cassandra.concurrent import execute_concurrent_with_args

        session, stmt = (self.target, self._count) if on_target else (self.source, self._count_src)
        total = 0
        parts = list(partitions)
        for ok, result in execute_concurrent_with_args(session, stmt, parts, concurrency=self.concurrency):
            assert ok
            total += int(result.one()[0])
        return total
