"""Which Cassandra partitions belong to a tenant, and how they are cut into ledger chunks.

Design note. The shared cluster has no tenant id in any key, and a full scan of it is out of the
question (it is shared, and large). A tenant's partition keys are derived from *relational*
metadata on the detached replica (its devices and properties, ``tmap.select_tenant_rows``) and,
for time-bucketed tables, the day buckets of a bounded window.

Probing every (device, property, day) one query at a time is ``devices x properties x days``
round trips (about 11 M for a 30 k-device tenant over 90 days). Instead a chunk is read with one
multi-partition query per device, ``device_id IN (d) AND property_id IN (p1..pn) AND day IN
(w1..wk)``: the coordinator resolves absent partitions from bloom filters in memory, so the cost is
one round trip per device and window, not per partition. The IN lists are bounded (at most
``in_limit`` values of the last base column, and at most ``window_days`` days per window), which
keeps the coordinator's fan-out small; on a multi-node cluster that fan-out is the trade-off paid for
fewer round trips, and ``in_limit=1`` with one-day windows falls back to single-partition reads.

The window is ``min(requested days, tenant map retention, the table's default TTL)`` day buckets
ending today, newest first: a bucket older than the retention only holds expired cells (which are
not copied anyway). Cells written with an explicit TTL longer than the table default would be
missed by that cap; ``honour_table_ttl=False`` lifts it.

Chunks are ``cql:<table>:<nnnn>``, numbered newest window first, then by batches of
``devices_per_chunk`` devices in device-id order: stable for a frozen replica and a fixed anchor day.
A plan made on a later day keeps the ledger's first bounds (``plan_chunks`` does not overwrite), and
the catch-up re-copies the buckets after the detach watermark, so a day shift loses nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from itertools import groupby
from typing import TYPE_CHECKING, Any

from tenant_migration.cassandra import keys
from tenant_migration.ledger import Chunk
from tenant_migration.tenant_map import CassandraTableSpec, TenantMap

if TYPE_CHECKING:
    import psycopg
    from cassandra.cluster import Session

ENGINE = "cassandra"


@dataclass(frozen=True)
class PlanOptions:
    """Knobs of the plan. ``days`` is the requested window (None: the tenant map's whole retention
    window); ``hot_days`` the first, newest window."""

    days: int | None = None
    devices_per_chunk: int = 256
    hot_days: int = 2
    window_days: int = 7
    in_limit: int = 64
    honour_table_ttl: bool = True


def window_days(today: date, days: int) -> list[date]:
    """``days`` day buckets ending ``today``, newest first."""
    return [today - timedelta(days=i) for i in range(max(0, days))]


def table_window(spec: CassandraTableSpec, tmap: TenantMap, opts: PlanOptions, default_ttl_s: int) -> int:
    """How many day buckets of ``spec`` can hold live cells: see the module note."""
    n = tmap.retention_days + 1 if opts.days is None else min(opts.days, tmap.retention_days + 1)
    if opts.honour_table_ttl and default_ttl_s > 0:
        # +1: the oldest bucket is only partly expired.
        n = min(n, math.ceil(default_ttl_s / 86_400) + 1)
    return n


def split_windows(days: Sequence[date], hot_days: int, window_days: int) -> list[list[date]]:
    """Newest ``hot_days`` first, then groups of ``window_days``: recent data lands first."""
    out: list[list[date]] = []
    if not days:
        return out
    out.append(list(days[:hot_days]))
    rest = list(days[hot_days:])
    out += [rest[i:i + window_days] for i in range(0, len(rest), window_days)]
    return [w for w in out if w]


def tenant_bases(conn: psycopg.Connection, tmap: TenantMap, spec: CassandraTableSpec,
                 tenant_id: int, convert: Sequence[keys.Converter] | None = None) -> list[tuple[Any, ...]]:
    """The tenant's partition keys without the day, from ``conn``'s relational rows (the replica,
    or the target for the rows the change stream brought), sorted, each value in the driver's
    form when ``convert`` (``keys.base_converters``) is given. A row with a NULL in a key column
    names no partition (Cassandra keys are never null) and is left out."""
    from psycopg import sql

    cols = list(spec.partitions_from_columns)
    order = sql.SQL(" ORDER BY ") + sql.SQL(", ").join(sql.SQL(str(i + 1)) for i in range(len(cols)))
    query = tmap.select_tenant_rows(spec.partitions_from_table, cols) + order
    rows = [tuple(r) for r in conn.execute(query, {"tenant_id": tenant_id}).fetchall()]
    rows = [r for r in rows if None not in r]
    if convert is None:
        return _keyable(spec, rows)
    converted = keys.convert_bases(rows, convert)
    # Conversion can merge values (a timestamp's microseconds): keep each base once, in order.
    return _keyable(spec, list(dict.fromkeys(converted)))


def _keyable(spec: CassandraTableSpec, bases: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``bases`` without those that would be an empty single-column partition key: Cassandra
    refuses such a key in every statement (``Key may not be empty``), so no partition can hold it;
    the preflight refuses or reports them (``empty_key_rows``)."""
    if len(spec.partition_key) != 1:
        return bases  # an empty part of a composite key is a legal key
    return [b for b in bases if not _empty(b[0])]


def _empty(value: Any) -> bool:
    return isinstance(value, str | bytes | bytearray | memoryview) and len(value) == 0


def empty_key_rows(conn: psycopg.Connection, tmap: TenantMap, spec: CassandraTableSpec, tenant_id: int,
                   types: dict[str, str], shown: int = 3) -> tuple[int, list[str]]:
    """The tenant's rows of ``spec``'s relational table whose value would be the table's whole
    partition key, and empty (text '' or an empty blob): (how many, the first ``shown`` named by
    their primary key). None on a composite partition key or one of another type."""
    from psycopg import sql

    if len(spec.partition_key) != 1 or spec.partition_key[0] == spec.day_column:
        return 0, []
    cql_type = types.get(spec.partition_key[0], "")
    if cql_type not in ("text", "varchar", "ascii", "blob"):
        return 0, []
    col = sql.SQL("t.{}").format(sql.Identifier(spec.partitions_from_columns[0]))
    empty = sql.SQL("octet_length({}) = 0" if cql_type == "blob" else "{}::text = ''").format(col)
    table = spec.partitions_from_table
    key = list(tmap.tables[table].key) if table in tmap.tables else list(spec.partitions_from_columns)
    base = tmap.select_tenant_rows(table, key)
    q = sql.SQL("SELECT *, count(*) OVER () FROM ({} AND {}) AS e ORDER BY 1 LIMIT {}").format(
        base, empty, sql.Literal(shown))
    rows = conn.execute(q, {"tenant_id": tenant_id}).fetchall()
    if not rows:
        return 0, []
    named = [f"{tmap.schema}.{table}(" + ", ".join(f"{c}={v!r}" for c, v in zip(key, r[:-1], strict=True)) + ")"
             for r in rows]
    return int(rows[0][-1]), named


def base_columns(spec: CassandraTableSpec, partition_key: Sequence[str] | None = None) -> list[str]:
    """The partition-key columns the relational rows supply (all but the day column)."""
    return [c for c in (partition_key or spec.partition_key) if c != spec.day_column]


def converters_for(session: Session | None, keyspace: str, spec: CassandraTableSpec) -> list[keys.Converter] | None:
    """The base columns' converters from the table's types on ``session`` (None without one)."""
    if session is None:
        return None
    from tenant_migration.cassandra.schema import table_columns

    types = keys.column_types(table_columns(session, keyspace, spec.name))
    return keys.base_converters(types, base_columns(spec))


def default_ttl(session: Session | None, keyspace: str, table: str) -> int:
    """The table's ``default_time_to_live`` from ``system_schema`` (no data is read)."""
    if session is None:
        return 0
    row = session.execute("SELECT default_time_to_live FROM system_schema.tables "
                          "WHERE keyspace_name = %s AND table_name = %s", (keyspace, table)).one()
    if row is None:
        raise KeyError(f"{keyspace}.{table}")
    return int(row[0] or 0)


def plan_table(bases: Sequence[tuple[Any, ...]], spec: CassandraTableSpec, windows: Sequence[Sequence[date]],
               opts: PlanOptions, first_seq: int = 0, late: bool = False) -> list[Chunk]:
    """Chunks of one table: window-major, then device batches. Pure (unit-tested).

    A table without a base gets ONE chunk with no partition (``bases`` empty) covering every
    planned day: the ledger then always names every table of the tenant map, so an empty plan
    is a fact the gates can see (0 = 0), never a table silently missing from the plan.
    ``first_seq`` numbers chunks after those already planned; ``late`` marks chunks planned after
    the detach for rows the change stream brought (``plan_late``)."""
    by_device = [list(g) for _, g in groupby(bases, key=lambda b: b[0])]
    batches = [by_device[i:i + opts.devices_per_chunk] for i in range(0, len(by_device), opts.devices_per_chunk)]
    wins: Sequence[Sequence[date] | None] = windows if spec.day_column else [None]
    chunks: list[Chunk] = []
    seq = first_seq
    extra = {"late": True} if late else {}
    if not batches:
        days = sorted({d for w in windows for d in w}, reverse=True) if spec.day_column else []
        return [Chunk(f"cql:{spec.name}:{seq:04d}", ENGINE, spec.name,
                      {"table": spec.name, "window": 0, "base_range": [], "bases": [],
                       "days": [d.isoformat() for d in days], **extra})]
    for w_no, win in enumerate(wins):
        for batch in batches:
            bounds = {
                "table": spec.name,
                "window": w_no,
                "base_range": [grp[0][0] for grp in (batch[0], batch[-1])],
                "bases": [list(b) for grp in batch for b in grp],
                "days": [d.isoformat() for d in win] if win is not None else [],
                **extra,
            }
            chunks.append(Chunk(f"cql:{spec.name}:{seq:04d}", ENGINE, spec.name, bounds))
            seq += 1
    return chunks


def plan_tenant(
    replica: psycopg.Connection,
    tmap: TenantMap,
    tenant_id: int,
    today: date,
    opts: PlanOptions | None = None,
    session: Session | None = None,
) -> list[Chunk]:
    """Every Cassandra chunk of the tenant, in copy order (``copy_order``). ``session`` (the source)
    is only used for schema metadata (default TTLs, the key columns' types)."""
    opts = opts or PlanOptions()
    chunks: list[Chunk] = []
    for name, spec in tmap.cassandra_tables.items():
        ndays = table_window(spec, tmap, opts, default_ttl(session, tmap.keyspace, name))
        windows = split_windows(window_days(today, ndays), opts.hot_days, opts.window_days)
        bases = tenant_bases(replica, tmap, spec, tenant_id, converters_for(session, tmap.keyspace, spec))
        chunks += plan_table(bases, spec, windows, opts)
    return copy_order(chunks)


def plan_late(conn: psycopg.Connection, tmap: TenantMap, tenant_id: int, planned: Sequence[Chunk],
              recent: Sequence[date], opts: PlanOptions | None = None, session: Session | None = None) -> list[Chunk]:
    """Chunks for the tenant's bases that ``conn``'s rows hold and ``planned`` does not: devices,
    properties... that the change stream brought to the target after the detach. They cover the
    plan's own days of the table plus ``recent`` (the days since the detach), so a row that moved
    in from elsewhere brings its history too; ids continue the table's numbering. Pure but for the
    reads; the caller stores them (under the run's lock) and copies them."""
    opts = opts or PlanOptions()
    by_table: dict[str, list[Chunk]] = {}
    for c in planned:
        by_table.setdefault(c.table_name, []).append(c)
    out: list[Chunk] = []
    for name, fresh in unplanned_bases(conn, tmap, tenant_id, planned, session).items():
        if not fresh:
            continue
        spec, mine = tmap.cassandra_tables[name], by_table.get(name, [])
        days = sorted({date.fromisoformat(d) for c in mine for d in c.bounds.get("days", [])} | set(recent),
                      reverse=True)
        first = 1 + max(int(c.chunk_id.rsplit(":", 1)[1]) for c in mine) if mine else 0
        out += plan_table(fresh, spec, split_windows(days, opts.hot_days, opts.window_days), opts,
                          first_seq=first, late=True)
    return out


def unplanned_bases(conn: psycopg.Connection, tmap: TenantMap, tenant_id: int, planned: Sequence[Chunk],
                    session: Session | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Per Cassandra table, the tenant's bases in ``conn``'s rows that no chunk of ``planned`` names
    (a gate's coverage check: empty everywhere once every row's partitions are planned)."""
    known: dict[str, set[tuple[Any, ...]]] = {}
    for c in planned:
        known.setdefault(c.table_name, set()).update(tuple(b) for b in c.bounds["bases"])
    return {name: [b for b in tenant_bases(conn, tmap, spec, tenant_id, converters_for(session, tmap.keyspace, spec))
                   if b not in known.get(name, set())]
            for name, spec in tmap.cassandra_tables.items()}


def copy_order(chunks: Sequence[Chunk]) -> list[Chunk]:
    """Newest window first across all tables, then table and chunk id: the tenant's most recent
    data becomes usable on the target soonest, whichever table it is in."""
    return sorted(chunks, key=lambda c: (int(c.bounds.get("window", 0)), c.chunk_id))


@dataclass(frozen=True)
class ReadGroup:
    """One multi-partition read: an IN list per partition-key column (their cartesian product is
    exactly the group's partitions)."""

    values: tuple[list[Any], ...]

    def partitions(self) -> Iterator[tuple[Any, ...]]:
        from itertools import product

        return product(*self.values)


def read_groups(bounds: dict[str, Any], partition_key: Sequence[str], day_column: str | None,
                in_limit: int = 64, days_override: Sequence[date] | None = None) -> list[ReadGroup]:
    """The reads that cover a chunk's partitions: bases grouped by their prefix, IN on the last base
    column (at most ``in_limit`` values) and IN on the day column."""
    bases = [tuple(b) for b in bounds["bases"]]
    if days_override is not None:
        days: list[Any] = list(days_override)
    else:
        days = [date.fromisoformat(d) for d in bounds.get("days", [])]
    base_cols = [c for c in partition_key if c != day_column]
    groups: list[ReadGroup] = []
    if day_column is not None and not days:
        return groups
    for prefix, members in groupby(bases, key=lambda b: b[:-1]):
        lasts = [m[-1] for m in members]
        for i in range(0, len(lasts), in_limit):
            by_col: dict[str, list[Any]] = {c: [v] for c, v in zip(base_cols[:-1], prefix, strict=True)}
            by_col[base_cols[-1]] = lasts[i:i + in_limit]
            if day_column is not None:
                by_col[day_column] = days
            groups.append(ReadGroup(tuple(by_col[c] for c in partition_key)))
    return groups


def planned_count(bounds: dict[str, Any], day_column: str | None) -> int:
    """How many partition keys a chunk covers (``len(chunk_partitions(...))``, without listing them)."""
    return len(bounds["bases"]) * (len(bounds.get("days", [])) if day_column is not None else 1)


def chunk_partitions(bounds: dict[str, Any], partition_key: Sequence[str], day_column: str | None) -> list[tuple[Any, ...]]:
    """Every partition key a chunk covers (in partition-key column order)."""
    return [p for g in read_groups(bounds, partition_key, day_column, in_limit=1 << 30) for p in g.partitions()]
