"""The tenant map: which tables belong to a tenant, and through which keys.

A platform is described declaratively (YAML, part of its profile: ``profile.py``). Each tenant-scoped
table reaches the tenant through its own column (``tenant_column``) or through one foreign-key hop
(``via``) to another tenant-scoped table, which reaches it in turn. From the hops come the load
order (parents before children) and the SQL filter that selects exactly one tenant's rows.

Invariant: every filter is built with ``psycopg.sql`` so that identifiers are quoted by the driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import yaml
from psycopg import sql

EMPTY_KEYS = ("refuse", "skip")


class TenantMapError(ValueError):
    """The tenant map is malformed or does not match the live catalog."""


@dataclass(frozen=True)
class Hop:
    column: str
    table: str
    parent_column: str


@dataclass(frozen=True)
class TableSpec:
    name: str
    key: tuple[str, ...]
    tenant_column: str | None = None
    via: Hop | None = None


@dataclass(frozen=True)
class CassandraTableSpec:
    name: str
    partition_key: tuple[str, ...]
    partitions_from_table: str
    partitions_from_columns: tuple[str, ...]
    day_column: str | None = None
    # A relational row whose value would be an empty single-column partition key (Cassandra refuses
    # it): "refuse" it in the preflight, or "skip" it (it can hold no Cassandra data) and report it.
    empty_keys: str = "refuse"


@dataclass(frozen=True)
class TenantMap:
    platform: str
    schema: str
    root_table: str
    root_key: str
    tables: dict[str, TableSpec]
    shared_tables: tuple[str, ...]
    keyspace: str
    cassandra_tables: dict[str, CassandraTableSpec] = field(default_factory=dict)
    retention_days: int = 90

    def load_order(self) -> list[str]:
        """Tables ordered parents first (the root first), stable for equal ranks."""
        graph: dict[str, set[str]] = {name: set() for name in self.tables}
        for spec in self.tables.values():
            if spec.via is not None:
                graph[spec.name].add(spec.via.table)
            elif spec.name != self.root_table:
                graph[spec.name].add(self.root_table)
        sorter = TopologicalSorter(graph)
        order: list[str] = []
        try:
            sorter.prepare()
        except CycleError as exc:
            raise TenantMapError(f"tenant map has a cycle of hops: {exc.args[1]}") from exc
        while sorter.is_active():
            ready = sorted(sorter.get_ready())
            order.extend(ready)
            sorter.done(*ready)
        return order

    def engine_tables(self) -> list[tuple[str, str]]:
        """Every table the map names, as (engine, table): PostgreSQL in load order, then Cassandra
        (what a run's plan must hold chunks for)."""
        return [("postgres", t) for t in self.load_order()] + [("cassandra", t) for t in self.cassandra_tables]

    def path(self, table: str) -> list[Hop]:
        """The hops from ``table`` up to a table that carries the tenant column."""
        hops: list[Hop] = []
        spec = self.tables[table]
        seen = {table}
        while spec.via is not None:
            hops.append(spec.via)
            spec = self.tables[spec.via.table]
            if spec.name in seen:
                raise TenantMapError(f"cycle in the hops of {table}")
            seen.add(spec.name)
        return hops

    def tenant_predicate(self, table: str, alias: str = "t") -> sql.Composed:
        """``WHERE`` predicate (with one ``%(tenant_id)s`` placeholder) selecting the tenant's rows
        of ``table`` aliased ``alias``: nested semi-joins along the hops."""
        spec = self.tables[table]
        if spec.tenant_column is not None:
            return sql.SQL("{}.{} = %(tenant_id)s").format(
                sql.Identifier(alias), sql.Identifier(spec.tenant_column)
            )
        assert spec.via is not None
        hop = spec.via
        parent_alias = f"{alias}_{len(self.path(table))}"
        return sql.SQL("{}.{} IN (SELECT {}.{} FROM {} AS {} WHERE {})").format(
            sql.Identifier(alias),
            sql.Identifier(hop.column),
            sql.Identifier(parent_alias),
            sql.Identifier(hop.parent_column),
            sql.Identifier(self.schema, hop.table),
            sql.Identifier(parent_alias),
            self.tenant_predicate(hop.table, parent_alias),
        )

    def tenant_of(self, table: str, alias: str = "t") -> sql.Composed:
        """A scalar expression giving the tenant a row of ``table`` aliased ``alias`` belongs to
        (NULL when a tenant or hop column is NULL, or the parent row is missing): the tenant column,
        or correlated look-ups along the hops. For naming the owner of a few rows, not for scans."""
        spec = self.tables[table]
        if spec.tenant_column is not None:
            return sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(spec.tenant_column))
        assert spec.via is not None
        hop = spec.via
        parent_alias = f"{alias}_{len(self.path(table))}"
        return sql.SQL("(SELECT {} FROM {} AS {} WHERE {}.{} = {}.{} LIMIT 1)").format(
            self.tenant_of(hop.table, parent_alias),
            sql.Identifier(self.schema, hop.table),
            sql.Identifier(parent_alias),
            sql.Identifier(parent_alias),
            sql.Identifier(hop.parent_column),
            sql.Identifier(alias),
            sql.Identifier(hop.column),
        )

    def select_tenant_rows(self, table: str, columns: list[str]) -> sql.Composed:
        """``SELECT cols FROM schema.table t WHERE <tenant predicate>``."""
        return sql.SQL("SELECT {} FROM {} AS t WHERE {}").format(
            sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in columns),
            sql.Identifier(self.schema, table),
            self.tenant_predicate(table),
        )

    def qualified(self, table: str) -> sql.Identifier:
        return sql.Identifier(self.schema, table)


def _require(mapping: dict[str, Any], key: str, where: str) -> Any:
    if key not in mapping:
        raise TenantMapError(f"{where}: missing '{key}'")
    return mapping[key]


def parse_tenant_map(doc: dict[str, Any]) -> TenantMap:
    pg = _require(doc, "postgres", "tenant map")
    root = _require(pg, "tenant_root", "postgres")
    raw_tables = _require(pg, "tables", "postgres")
    tables: dict[str, TableSpec] = {}
    for name, raw in raw_tables.items():
        where = f"postgres.tables.{name}"
        key = tuple(_require(raw, "key", where))
        if not key:
            raise TenantMapError(f"{where}: empty key")
        has_col, has_via = "tenant_column" in raw, "via" in raw
        if has_col == has_via:
            raise TenantMapError(f"{where}: give exactly one of 'tenant_column' or 'via'")
        via = None
        if has_via:
            v = raw["via"]
            via = Hop(
                column=_require(v, "column", where + ".via"),
                table=_require(v, "table", where + ".via"),
                parent_column=v.get("parent_column", ""),
            )
        tables[name] = TableSpec(name=name, key=key, tenant_column=raw.get("tenant_column"), via=via)
    for spec in list(tables.values()):
        if spec.via is None:
            continue
        parent = tables.get(spec.via.table)
        if parent is None:
            raise TenantMapError(
                f"postgres.tables.{spec.name}.via: table '{spec.via.table}' is not tenant-scoped in the map"
            )
        if not spec.via.parent_column:
            if len(parent.key) != 1:
                raise TenantMapError(
                    f"postgres.tables.{spec.name}.via: parent '{parent.name}' has a composite key; "
                    "name 'parent_column'"
                )
            tables[spec.name] = TableSpec(
                spec.name, spec.key, None, Hop(spec.via.column, spec.via.table, parent.key[0])
            )
    root_table = _require(root, "table", "postgres.tenant_root")
    if root_table not in tables:
        raise TenantMapError(f"postgres.tenant_root: '{root_table}' must also be listed in tables")
    cass = doc.get("cassandra") or {}
    ctables: dict[str, CassandraTableSpec] = {}
    for name, raw in (cass.get("tables") or {}).items():
        where = f"cassandra.tables.{name}"
        src = _require(raw, "partitions_from", where)
        ctables[name] = CassandraTableSpec(
            name=name,
            partition_key=tuple(_require(raw, "partition_key", where)),
            partitions_from_table=_require(src, "table", where + ".partitions_from"),
            partitions_from_columns=tuple(_require(src, "columns", where + ".partitions_from")),
            day_column=raw.get("day_column"),
            empty_keys=str(raw.get("empty_keys", "refuse")),
        )
        if ctables[name].empty_keys not in EMPTY_KEYS:
            raise TenantMapError(f"{where}.empty_keys: '{ctables[name].empty_keys}' is not one of {list(EMPTY_KEYS)}")
    tmap = TenantMap(
        platform=str(doc.get("platform", "unnamed")),
        schema=str(pg.get("schema", "public")),
        root_table=root_table,
        root_key=_require(root, "key", "postgres.tenant_root"),
        tables=tables,
        shared_tables=tuple(pg.get("shared_tables", [])),
        keyspace=str(cass.get("keyspace", "")),
        cassandra_tables=ctables,
        retention_days=int(cass.get("retention_days", 90)),
    )
    tmap.load_order()
    for name in tables:
        tmap.path(name)
    return tmap


def load_tenant_map(path: Path | str) -> TenantMap:
    with Path(path).open() as fh:
        # libyaml's safe loader when PyYAML has it (8x faster; every gate and task loads the map).
        doc = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader
    if not isinstance(doc, dict):
        raise TenantMapError(f"{path}: not a YAML mapping")
    return parse_tenant_map(doc)
