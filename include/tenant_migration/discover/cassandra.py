"""Which relational rows supply each Cassandra table's partition key: the Cassandra half of a draft.

Pure: the input is the keyspace's tables (partition-key columns and types, default TTLs, from
``system_schema``) and the placed relational tables (``placement.Draft``). A partition-key column
is supplied by a placed table that has a column of the same name and a compatible type; one
``date`` column that no relational table supplies is the day bucket (``day_column``). Among the
tables that supply every other column, the draft prefers one whose primary key is among them
(each row one partition, no duplicates), then the shallowest, then the name. A table nothing
supplies is refused naming the columns, with the closest candidate.

The retention (how many day buckets a plan walks back) is the keyspace's longest default TTL in
days, rounded up; without one the engine's default (90) and a comment that says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from tenant_migration.discover.placement import Catalog, Draft, Refused
from tenant_migration.tenant_map import CassandraTableSpec

DEFAULT_RETENTION_DAYS = 90

# CQL type -> the PostgreSQL types (``format_type``, before any "(" modifier) that can supply it.
_COMPATIBLE: dict[str, frozenset[str]] = {
    "uuid": frozenset({"uuid", "text", "character varying"}),
    "timeuuid": frozenset({"uuid"}),
    "text": frozenset({"text", "character varying", "character", "citext", "name"}),
    "bigint": frozenset({"bigint", "integer", "smallint"}),
    "int": frozenset({"integer", "smallint"}),
    "smallint": frozenset({"smallint"}),
    "tinyint": frozenset({"smallint"}),
    "varint": frozenset({"bigint", "integer", "smallint", "numeric"}),
    "boolean": frozenset({"boolean"}),
    "date": frozenset({"date"}),
    "timestamp": frozenset({"timestamp with time zone", "timestamp without time zone"}),
    "decimal": frozenset({"numeric"}),
    "double": frozenset({"double precision"}),
    "float": frozenset({"real"}),
    "inet": frozenset({"inet"}),
    "blob": frozenset({"bytea"}),
}
_COMPATIBLE["varchar"] = _COMPATIBLE["ascii"] = _COMPATIBLE["text"]


def compatible(cql_type: str, pg_type: str) -> bool:
    return pg_type.split("(")[0].strip() in _COMPATIBLE.get(cql_type, frozenset())


@dataclass(frozen=True)
class CqlTableInfo:
    name: str
    partition_key: tuple[tuple[str, str], ...]  # (column, CQL type), key order
    default_ttl: int = 0  # seconds; 0: none


@dataclass
class KeyspaceDraft:
    keyspace: str
    tables: dict[str, CassandraTableSpec] = field(default_factory=dict)
    refused: list[Refused] = field(default_factory=list)
    retention_days: int = DEFAULT_RETENTION_DAYS
    retention_from: str = ""  # the table whose TTL gave it ("": the default)

    def lines(self) -> list[str]:
        out = ["cassandra:", f"  keyspace: {self.keyspace}", "  tables:" if self.tables else "  tables: {}"]
        for name, spec in self.tables.items():
            out += [f"    {name}:",
                    f"      partition_key: [{', '.join(spec.partition_key)}]",
                    f"      partitions_from: {{table: {spec.partitions_from_table}, "
                    f"columns: [{', '.join(spec.partitions_from_columns)}]}}"]
            if spec.day_column:
                out.append(f"      day_column: {spec.day_column}")
        for r in self.refused:
            out.append(f"    # refused {r.table}: {r.reason}")
        why = (f"the default TTL of {self.retention_from}" if self.retention_from else
               "no table has a default TTL: the engine's default; set the platform's retention")
        out.append(f"  retention_days: {self.retention_days}  # {why}")
        return out


def draft_keyspace(keyspace: str, tables: Sequence[CqlTableInfo], draft: Draft, cat: Catalog) -> KeyspaceDraft:
    out = KeyspaceDraft(keyspace)
    for t in sorted(tables, key=lambda t: t.name):
        spec, reason = _match(t, draft, cat)
        if spec is not None:
            out.tables[t.name] = spec
        else:
            out.refused.append(Refused(t.name, "no-supplier", reason))
    ttls = [(t.default_ttl, t.name) for t in tables if t.name in out.tables and t.default_ttl > 0]
    if ttls:
        ttl, name = max(ttls)
        out.retention_days, out.retention_from = max(1, math.ceil(ttl / 86_400)), f"{name} ({ttl} s)"
    return out


def _match(t: CqlTableInfo, draft: Draft, cat: Catalog) -> tuple[CassandraTableSpec | None, str]:
    key = [c for c, _ in t.partition_key]
    types = dict(t.partition_key)
    ranked = []
    partial: list[tuple[int, str, list[str]]] = []
    for order, (name, placed) in enumerate(draft.placed.items()):
        have = dict(cat.tables[name].columns)
        supplied = [c for c in key if c in have and compatible(types[c], have[c])]
        missing = [c for c in key if c not in supplied]
        day = None
        if len(missing) == 1 and types[missing[0]] == "date":
            day, missing = missing[0], []
        if missing or not supplied:
            partial.append((len(supplied), name, supplied))
            continue
        pk = cat.tables[name].primary_key
        ranked.append(((0 if pk and set(pk) <= set(supplied) else 1, day is not None, placed.depth, order),
                       name, supplied, day))
    if not ranked:
        near = max(partial, key=lambda p: p[0], default=None)  # the first of the most supplied, breadth-first
        closest = (f"; closest: {cat.schema}.{near[1]} has {', '.join(near[2])}" if near and near[0] else "")
        unsupplied = [c for c in key if not near or c not in near[2]]
        return None, (f"partition-key column(s) {', '.join(unsupplied)} supplied neither by a tenant table's column of "
                      f"the same name and a compatible type nor by the day bucket (one date column){closest}")
    _, name, supplied, day = min(ranked)
    return CassandraTableSpec(name=t.name, partition_key=tuple(key), partitions_from_table=name,
                              partitions_from_columns=tuple(c for c in key if c != day), day_column=day), ""

