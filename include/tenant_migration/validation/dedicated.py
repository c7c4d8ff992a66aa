"""Is the target dedicated to the tenant? The preflight's look at the target before a new run.

The target is the tenant's own deployment: a row or a partition of anyone else on it would be
copied beside, compared against and finally shipped with the tenant's data, and the gates would
fail late (a checksum mismatch, after hours of copy) with a message that suggests corruption. So
a new run first reads the target:

* PostgreSQL: per table of the tenant map, rows whose tenant (through the map's hops) is not the
  tenant, NULL included (a row of nobody fails the final gate too). One anti-semi-join per table,
  ``LIMIT``-ed; the owner of the rows shown is looked up along the hops.
* Cassandra: per table, the target's partitions (one paged ``SELECT DISTINCT``) whose base key is
  none of the tenant's on the source replica; the owner of the ones shown is looked up there.
* The ledger: a live run of another tenant on this target.

A run that resumes (its id is in the ledger) is not checked again: the target was checked at its
first preflight and only the run wrote to it since.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from psycopg import sql

from tenant_migration.tenant_map import TenantMap

if TYPE_CHECKING:
    import psycopg
    from cassandra.cluster import Session

SHOWN = 3  # rows or partitions named per table


def _owner(value: Any) -> str:
    return "no tenant" if value is None else f"tenant {value}"


def _key(columns: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{c}={v}" for c, v in zip(columns, values, strict=True))


def live_runs_of_others(tconn: psycopg.Connection, tenant_id: int) -> list[str]:
    """Runs of another tenant that are live in the target's ledger (none when it has no ledger)."""
    row = tconn.execute("SELECT to_regclass('tm_control.runs') IS NOT NULL").fetchone()
    if not (row and row[0]):
        return []
    rows = tconn.execute("SELECT run_id, tenant_id FROM tm_control.runs WHERE status = 'running' AND tenant_id <> %s "
                         "ORDER BY started_at", (tenant_id,)).fetchall()
    return [f"target ledger: run {r[0]} of tenant {r[1]} is live on this target; one target serves one tenant "
            "(finish or abort that run, and empty the target, first)" for r in rows]


def foreign_rows(tconn: psycopg.Connection, tmap: TenantMap, tenant_id: int, shown: int = SHOWN) -> list[str]:
    """Per table of the tenant map, the target's rows that are not the tenant's, with their owner."""
    problems = []
    for table in tmap.load_order():
        spec = tmap.tables[table]
        q = sql.SQL("SELECT {keys}, {owner} FROM {t} AS t WHERE ({pred}) IS NOT TRUE LIMIT {n}").format(
            keys=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in spec.key),
            owner=tmap.tenant_of(table), t=tmap.qualified(table), pred=tmap.tenant_predicate(table),
            n=sql.Literal(shown + 1))
        rows = tconn.execute(q, {"tenant_id": tenant_id}).fetchall()
        if not rows:
            continue
        named = "; ".join(f"{_key(spec.key, r[:-1])}: {_owner(r[-1])}" for r in rows[:shown])
        more = ", and more" if len(rows) > shown else ""
        problems.append(f"target postgres {tmap.schema}.{table}: holds rows that are not tenant {tenant_id}'s "
                        f"({named}{more})")
    return problems


def foreign_partitions(rconn: psycopg.Connection, dst: Session, tmap: TenantMap, tenant_id: int,
                       shown: int = SHOWN) -> list[str]:
    """Per Cassandra table of the tenant map, the target's partitions whose base key is none of the
    tenant's on the source replica (``rconn``), with the owner the source gives them."""
    from tenant_migration.cassandra import plan as cql_plan
    from tenant_migration.cassandra.copy import table_shape
    from tenant_migration.cassandra.fingerprint import foreign_bases

    problems = []
    for name, spec in tmap.cassandra_tables.items():
        owned = set(cql_plan.tenant_bases(rconn, tmap, spec, tenant_id,
                                          cql_plan.converters_for(dst, tmap.keyspace, spec)))
        shape = table_shape(dst, tmap.keyspace, name)
        seen, foreign, found = foreign_bases(dst, shape, cql_plan.base_columns(spec, shape.partition_key), owned, shown)
        if not foreign:
            continue
        named = "; ".join(f"{label}: {owner_on_source(rconn, tmap, spec.partitions_from_table, spec.partitions_from_columns, base)}"
                          for label, base in found)
        problems.append(f"target cassandra {tmap.keyspace}.{name}: {foreign} of its {seen} partitions are not "
                        f"tenant {tenant_id}'s ({named}{', and more' if foreign > len(found) else ''})")
    return problems


def owner_on_source(rconn: psycopg.Connection, tmap: TenantMap, table: str, columns: Sequence[str],
                    base: Sequence[Any]) -> str:
    """Whose row of ``table`` has ``columns`` = ``base`` on the source, in words."""
    q = sql.SQL("SELECT {owner} FROM {t} AS t WHERE {match} LIMIT 1").format(
        owner=tmap.tenant_of(table), t=tmap.qualified(table),
        match=sql.SQL(" AND ").join(sql.SQL("t.{} = %s").format(sql.Identifier(c)) for c in columns))
    try:
        row = rconn.execute(q, tuple(base)).fetchone()
    except Exception as exc:  # a key whose driver form PostgreSQL does not take back: say so, do not fail
        return f"owner unknown ({type(exc).__name__})"
    return "no row on the source" if row is None else f"{_owner(row[0])} on the source"


def target_problems(rconn: psycopg.Connection, tconn: psycopg.Connection, dst: Session, tmap: TenantMap,
                    tenant_id: int) -> list[str]:
    """Everything on the target that is not the tenant's (see the module note), in words."""
    return live_runs_of_others(tconn, tenant_id) + foreign_rows(tconn, tmap, tenant_id) + \
        foreign_partitions(rconn, dst, tmap, tenant_id)
