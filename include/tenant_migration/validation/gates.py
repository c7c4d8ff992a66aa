"""The gates of a migration, as Great Expectations suites built at run time.

- ``preflight``: on the source replica, for the tenant: keys unique and non-null, no orphans along
  foreign keys, no row of the tenant referencing another tenant's row, schema parity with the target.
- ``post_copy``: per table (and per chunk where the ledger has them), row counts and checksums equal
  on replica and target, recomputed now (re-running the gate re-evaluates the data as it is).
- ``final``: no row of another tenant on the target, every chunk of the run done.
- ``dns_shift_<p>``: between two steps of a weighted DNS shift, every record read back with the
  step's weights and the target answering (a few light probes, no data scan).

Every query is an aggregate or returns only violating rows: no gate reads whole tables into Python.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tenant_migration.postgres.catalog import ForeignKey, columns, foreign_keys, schema_drift
from tenant_migration.postgres.sequences import sequence_uses
from tenant_migration.tenant_map import TenantMap
from tenant_migration.validation.gx_gate import FrameCheck, Gate, GateResult, SqlCheck


def _cols(alias: str, cols: tuple[str, ...]) -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c)) for c in cols)


def tenant_row_ctes(conn: psycopg.Connection, tmap: TenantMap, tenant_id: int,
                    fks: list[ForeignKey]) -> tuple[dict[str, sql.Identifier], str]:
    """One ``MATERIALIZED`` CTE per tenant-scoped table holding the tenant's rows (only the columns
    the checks read), each built from its parent's CTE: every table's share of the tenant is
    selected ONCE, parents first, instead of once per check along the whole chain of hops. The
    planner cannot estimate a chain of nested ``IN`` semi-joins, and it chose whole-table scans for
    a small tenant (0.42 s for the demo tenant's 46 checks; 0.07 s with these CTEs, measured).
    ``fks``: the foreign keys between the map's tables. Returns each table's CTE name and the
    ``WITH`` clause."""
    names = {t: sql.Identifier(f"tenant__{t}") for t in tmap.tables}
    needed: dict[str, list[str]] = {t: list(spec.key) for t, spec in tmap.tables.items()}

    def need(table: str, cols: tuple[str, ...]) -> None:
        needed[table] += [c for c in cols if c not in needed[table]]

    for table, spec in tmap.tables.items():
        if spec.via is not None:
            need(table, (spec.via.column,))
            need(spec.via.table, (spec.via.parent_column,))
    for fk in fks:
        need(fk.table, fk.columns)
        need(fk.ref_table, fk.ref_columns)
    parts = []
    for table in tmap.load_order():
        spec = tmap.tables[table]
        if spec.via is None:
            where = tmap.tenant_predicate(table)
        else:
            where = sql.SQL("t.{} IN (SELECT {} FROM {})").format(
                sql.Identifier(spec.via.column), sql.Identifier(spec.via.parent_column), names[spec.via.table])
        parts.append(sql.SQL("{} AS MATERIALIZED (SELECT {} FROM {} AS t WHERE {})").format(
            names[table], _cols("t", tuple(needed[table])), tmap.qualified(table), where))
    ctes = sql.SQL("WITH ") + sql.SQL(", ").join(parts)
    return names, ctes.as_string(conn).replace("%(tenant_id)s", str(int(tenant_id)))


def preflight_sql_checks(conn: psycopg.Connection, tmap: TenantMap, tenant_id: int) -> tuple[str, list[SqlCheck]]:
    """The tenant's data on the source is sound enough to copy: the ``WITH`` clause of the tenant's
    rows (``tenant_row_ctes``) and the checks, each returning its violating rows."""
    checks: list[SqlCheck] = []
    fks = [fk for fk in foreign_keys(conn, tmap.schema) if fk.table in tmap.tables and fk.ref_table in tmap.tables]
    rows, ctes = tenant_row_ctes(conn, tmap, tenant_id, fks)

    def render(q: sql.Composable) -> str:
        return q.as_string(conn)

    for table, spec in tmap.tables.items():
        key = spec.key
        checks.append(SqlCheck(
            f"{table}__key_unique",
            render(sql.SQL("SELECT {k}, count(*) AS copies FROM {rows} AS t GROUP BY {k} HAVING count(*) > 1").format(
                k=_cols("t", key), rows=rows[table])),
            f"{table}: key ({', '.join(key)}) unique among the tenant's rows"))
        checks.append(SqlCheck(
            f"{table}__key_not_null",
            render(sql.SQL("SELECT {k} FROM {rows} AS t WHERE {nulls}").format(
                k=_cols("t", key), rows=rows[table],
                nulls=sql.SQL(" OR ").join(sql.SQL("t.{} IS NULL").format(sql.Identifier(c)) for c in key))),
            f"{table}: key ({', '.join(key)}) never null"))
    for fk in fks:
        child_cols = _cols("t", fk.columns)
        join = sql.SQL(" AND ").join(
            sql.SQL("p.{} = t.{}").format(sql.Identifier(pc), sql.Identifier(cc))
            for pc, cc in zip(fk.ref_columns, fk.columns, strict=True))
        not_null = sql.SQL(" AND ").join(sql.SQL("t.{} IS NOT NULL").format(sql.Identifier(c)) for c in fk.columns)
        name = f"{fk.table}__{'_'.join(fk.columns)}"
        checks.append(SqlCheck(
            f"{name}__no_orphan",
            render(sql.SQL("SELECT {kc}, {fc} FROM {rows} AS t WHERE {nn} "
                           "AND NOT EXISTS (SELECT 1 FROM {parent} AS p WHERE {j})").format(
                kc=_cols("t", tmap.tables[fk.table].key), fc=child_cols, rows=rows[fk.table], nn=not_null,
                parent=tmap.qualified(fk.ref_table), j=join)),
            f"{fk.table}.{','.join(fk.columns)} -> {fk.ref_table}: every referenced row exists"))
        checks.append(SqlCheck(
            f"{name}__same_tenant",
            render(sql.SQL("SELECT {kc}, {fc} FROM {rows} AS t WHERE {nn} AND EXISTS (SELECT 1 FROM {parent} AS p WHERE {j}) "
                           "AND NOT EXISTS (SELECT 1 FROM {prows} AS p WHERE {j})").format(
                kc=_cols("t", tmap.tables[fk.table].key), fc=child_cols, rows=rows[fk.table], nn=not_null,
                parent=tmap.qualified(fk.ref_table), j=join, prows=rows[fk.ref_table])),
            f"{fk.table}.{','.join(fk.columns)} -> {fk.ref_table}: the referenced row belongs to the same tenant"))
    return ctes, checks


def preflight_gate(replica: psycopg.Connection, target: psycopg.Connection, tmap: TenantMap, tenant_id: int,
                   folder: Path, started: float | None = None, drift: list[str] | None = None) -> GateResult:
    """Every pushed-down check in one statement on the replica, schema parity from the catalogs
    (``drift`` when the caller already computed it), one GX validation per frame."""
    started = time.monotonic() if started is None else started
    problems = schema_drift(replica, target, tmap) if drift is None else drift
    gate = Gate("preflight", folder)
    preflight_checks(gate, replica, tmap, tenant_id, problems)
    return gate.finish(started)


def preflight_checks(gate: Gate, replica: psycopg.Connection, tmap: TenantMap, tenant_id: int,
                     problems: list[str]) -> None:
    """The preflight gate's checks, added to ``gate`` (its ``finish`` validates them and writes the
    evidence): the replica's pushed-down checks (suite ``source``: keys, orphans, same tenant) and
    schema parity (suite ``schema``; ``problems``: the drift)."""
    ctes, sql_checks = preflight_sql_checks(replica, tmap, tenant_id)
    gate.sql("source", replica, sql_checks, ctes=ctes)
    gate.violations("schema", "schema_parity",
                    "every tenant-scoped table has the same columns and types on source and target",
                    len(problems), list(problems)[:50])


def side_checksums(conn: psycopg.Connection, tmap: TenantMap, units: list[tuple[str, dict[str, Any] | None]],
                   tenant_id: int, *, whole_range: bool) -> list[tuple[int, str]]:
    """(count, checksum) of each unit (table, chunk bounds or None for the whole table) as ``conn``
    sees it now, with copy.py's own ``checksum_query``; the catalog is read once per table."""
    from tenant_migration.postgres.copy import checksum_query, unhashable_columns

    shapes: dict[str, tuple[list[str], frozenset[str]]] = {}
    out = []
    for table, bounds in units:
        if table not in shapes:
            cols = [c for c, _ in columns(conn, tmap.schema, table)]
            shapes[table] = (cols, unhashable_columns(conn, tmap.schema, table, cols))
        cols, text_cols = shapes[table]
        q = checksum_query(tmap, table, cols, bounds, text_cols, whole_range=whole_range and bounds is not None)
        row = conn.execute(q, {"tenant_id": tenant_id}).fetchone()
        assert row is not None
        out.append((int(row[0]), str(row[1])))
    return out


def post_copy_frame(replica: psycopg.Connection, target: psycopg.Connection, tmap: TenantMap,
                    tenant_id: int, run_id: str | None = None) -> Any:
    """Per chunk of the run (per table when the run has no chunk plan): count and order-independent
    checksum on both sides, recomputed now -- not read from the ledger: re-running the gate
    re-evaluates the data as it is. The replica (the tenant's rows in the chunk's range) and the
    target (every row in the range: the target is the tenant's own) are scanned at the same time,
    one thread each, so the gate costs the slower side rather than the sum. A chunk that differs
    gets its differing keys with both sides' values (``differences``: up to ``UNITS`` chunks per
    table, read only then)."""
    import json

    import pandas as pd

    from tenant_migration import ledger
    from tenant_migration.validation.differences import UNITS, postgres_differences

    chunks = ledger.run_chunks(target, run_id, "postgres") if run_id else []
    if chunks:
        labels = [c.chunk_id for c in chunks]
        units: list[tuple[str, dict[str, Any] | None]] = [(c.table_name, c.bounds) for c in chunks]
    else:
        labels = [f"postgres:{t}" for t in tmap.load_order()]
        units = [(t, None) for t in tmap.load_order()]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="post-copy-target") as pool:
        on_target = pool.submit(side_checksums, target, tmap, units, tenant_id, whole_range=True)
        on_replica = side_checksums(replica, tmap, units, tenant_id, whole_range=False)
        dst = on_target.result()
    rows = []
    looked: dict[str, int] = {}
    for label, (table, bounds), a, b in zip(labels, units, on_replica, dst, strict=True):
        diffs = None
        if a != b and looked.get(table, 0) < UNITS:
            looked[table] = looked.get(table, 0) + 1
            diffs = json.dumps(postgres_differences(replica, target, tmap, tenant_id, table, bounds), default=str)
        rows.append({"unit": label, "table": table, "source_rows": a[0], "target_rows": b[0],
                     "source_checksum": a[1], "target_checksum": b[1], "differences": diffs})
    return pd.DataFrame(rows, columns=["unit", "table", "source_rows", "target_rows", "source_checksum",
                                       "target_checksum", "differences"])


def post_copy_gate(frame: Any, folder: Path, started: float | None = None,
                   coverage: tuple[psycopg.Connection, SqlCheck] | None = None, cassandra: Any = None) -> GateResult:
    """``frame``: PostgreSQL's comparison (``post_copy_frame``); ``cassandra``: Cassandra's
    (``differences.fingerprint_frame``); ``coverage``: the target and ``plan_coverage_check``
    (every table of the map planned)."""
    started = time.monotonic() if started is None else started
    gate = Gate("post_copy", folder)
    gate.compare("postgres", frame, "postgres")
    if cassandra is not None:
        gate.compare("cassandra", cassandra, "cassandra")
    if coverage is not None:
        gate.sql("plan", coverage[0], [coverage[1]])
    return gate.finish(started)


def plan_coverage_check(conn: psycopg.Connection, tmap: TenantMap, run_id: str) -> SqlCheck:
    """Every table the tenant map names has chunks in the run's plan (an empty table has its one
    empty chunk): a plan that failed to store, or a table left out, is a violation naming it."""
    names = tmap.engine_tables()
    q = sql.SQL("SELECT m.engine || ' ' || m.table_name AS unplanned_table FROM (VALUES {}) AS m(engine, table_name) "
                "WHERE NOT EXISTS "
                "(SELECT 1 FROM tm_control.chunks c WHERE c.run_id = {} AND c.engine = m.engine "
                "AND c.table_name = m.table_name)").format(
        sql.SQL(", ").join(sql.SQL("({}, {})").format(sql.Literal(e), sql.Literal(t)) for e, t in names),
        sql.Literal(run_id))
    return SqlCheck("ledger__every_table_planned", q.as_string(conn),
                    "the run's plan has chunks for every table of the tenant map (PostgreSQL and Cassandra)")


def final_sql_checks(conn: psycopg.Connection, tmap: TenantMap, tenant_id: int, run_id: str) -> list[SqlCheck]:
    checks = []
    for table, spec in tmap.tables.items():
        # IS NOT TRUE, not NOT: a NULL tenant (or hop) column makes the predicate NULL, and such a
        # row belongs to nobody -- certainly not to this tenant. Each violating row says whose it is.
        q = sql.SQL("SELECT {k}, {owner} AS owner_tenant, {expected} AS expected_tenant FROM {t} AS t "
                    "WHERE ({pred}) IS NOT TRUE").format(
            k=_cols("t", spec.key), owner=tmap.tenant_of(table), expected=sql.Literal(int(tenant_id)),
            t=tmap.qualified(table), pred=tmap.tenant_predicate(table))
        checks.append(SqlCheck(f"{table}__only_this_tenant",
                               q.as_string(conn).replace("%(tenant_id)s", str(int(tenant_id))),
                               f"{table}: every row on the target belongs to tenant {tenant_id}"))
    for use in sequence_uses(conn, tmap.schema, tmap.load_order() + list(tmap.shared_tables)):
        # The sequence would hand out a key a target row holds (a straggler past the headroom).
        checks.append(SqlCheck(
            f"{use.table}__{use.column}__sequence_past_rows",
            sql.SQL("SELECT {label} AS sequence, s.next, m.max FROM (SELECT last_value + CASE WHEN is_called THEN {inc} "
                    "ELSE 0 END AS next FROM {seq}) s, (SELECT max({col}) AS max FROM {t}) m WHERE s.next <= m.max").format(
                label=sql.Literal(use.label), inc=sql.Literal(use.increment), seq=use.ident(),
                col=sql.Identifier(use.column), t=tmap.qualified(use.table)).as_string(conn),
            f"{use.label}: the next key is past every row on the target"))
    checks.append(SqlCheck(
        "ledger__every_chunk_done",
        sql.SQL("SELECT chunk_id, status FROM tm_control.chunks WHERE run_id = {} AND status <> 'done'").format(
            sql.Literal(run_id)).as_string(conn),
        "the ledger shows every chunk of the run done"))
    checks.append(plan_coverage_check(conn, tmap, run_id))
    return checks


def final_gate(target: psycopg.Connection, tmap: TenantMap, tenant_id: int, run_id: str, folder: Path,
               started: float | None = None, cassandra: Any = None, history: Any = None,
               late: Any = None, after_flip: Any = None, registrations: Any = None) -> GateResult:
    """``cassandra``: per table, the target's partitions and those of no device / property of the
    tenant (``steps.cassandra_ownership``): none may be foreign.
    ``history``: per day-bucketed table, the days planned and the retention window's
    (``steps.history_frame``), each short one a failure unless ``accepted`` says it is intended.
    ``late``: the comparison of the partitions planned after the detach (``steps.late_frame``).
    ``after_flip``: the tenant's writes on the shared platform after the flip, compared with the
    target (``steps.after_flip_frame``).
    ``registrations``: per side the profile's switch runs on, whether the tenant's registrations
    are still suspended there (``finish.registrations_frame``): none may be."""
    started = time.monotonic() if started is None else started
    gate = Gate("final", folder)
    gate.sql("postgres", target, final_sql_checks(target, tmap, tenant_id, run_id))
    if registrations is not None:
        gate.expect("registrations", registrations, [FrameCheck(
            "registrations__back_on", "ExpectColumnValuesToBeBetween", {"column": "suspended", "min_value": 0,
                                                                         "max_value": 0},
            f"the registrations of tenant {tenant_id} are enabled again on every side that takes traffic")])
    if late is not None:
        late_checks(gate, late)
    if after_flip is not None:
        after_flip_checks(gate, after_flip)
    if cassandra is not None:
        for row in cassandra.itertuples():
            gate.violations("cassandra", f"{row.unit}__only_this_tenant",
                            f"{row.unit}: every partition on the target belongs to a device of tenant {tenant_id} "
                            f"({row.partitions} partitions)",
                            int(row.foreign_partitions), [p for p in str(row.offending or "").split("; ") if p][:20])
    if history is not None:
        gate.expect("history", with_history(history, history), [HISTORY_CHECK])
    return gate.finish(started)


HISTORY_CHECK = FrameCheck(
    "cassandra__whole_history", "ExpectColumnValuesToBeBetween",
    {"column": "unaccepted_missing_days", "min_value": 0, "max_value": 0},
    "every day bucket of the retention window is planned (or partial_history_ok says a shorter window is intended)")


def with_history(frame: Any, history: Any) -> Any:
    """``frame`` (per ``cassandra:<table>`` unit) with ``history``'s columns (``steps.history_frame``)
    and ``unaccepted_missing_days``: the missing days, 0 where the operator accepted a short window
    or the table has no day bucket."""
    out = frame.merge(history, on="unit", how="left") if "missing_days" not in frame.columns else frame.copy()
    missing = out["missing_days"].fillna(0).astype(int)
    accepted = out["accepted"].astype("boolean").fillna(True).astype(bool)
    out["missing_days"] = missing
    out["unaccepted_missing_days"] = missing.where(~accepted, 0)
    return out


def sequence_checks(gate: Gate, frame: Any) -> None:
    """Every sequence of the migrated tables (``steps.sequence_frame``) past the source's next
    value and the target column's maximum: one check, its sample the sequences short, with the
    numbers of both sides."""
    short = frame[frame["short_by"] > 0] if not frame.empty else frame
    gate.violations("sequences", "sequences_past_source",
                    f"every sequence of the migrated tables ({len(frame)}) hands out keys past the source's and "
                    "past the target's rows", len(short),
                    [{"sequence": r.unit, "target_next": r.target_next, "source_next": r.source_next,
                      "target_max": r.target_max} for r in short.itertuples()][:50])


def late_checks(gate: Gate, late: Any) -> None:
    """The partitions planned after the detach (``steps.late_frame``) equal on both sides. A run
    that planned none has nothing to compare: one check says so."""
    if late.empty:
        gate.violations("late_partitions", "late_partitions_compared",
                        "partitions planned after the detach (rows the change stream brought): none planned", 0, [])
        return
    gate.compare("late_partitions", late, "cassandra")


def after_flip_checks(gate: Gate, after: Any) -> None:
    """The tenant's writes the shared platform took after the flip (``steps.after_flip_frame``: per
    Cassandra table and for the change stream) are all on the target. A run that never flipped
    has nothing to compare: one check says so."""
    describe = "every write of the tenant the shared platform took after the flip (stragglers) is on the target"
    if after.empty:
        gate.violations("after_flip", "writes_after_flip_on_target", f"{describe}: the run never flipped", 0, [])
        return
    for r in after.itertuples():
        missing = int(r.missing)
        gate.violations("after_flip", f"{r.unit}__after_flip_on_target",
                        f"{r.unit}: {describe} ({r.after_flip} after the flip)", abs(missing) if missing else 0,
                        [p for p in str(r.offending or "").split("; ") if p][:20])


def coverage_checks(gate: Gate, coverage: Any) -> None:
    """Every base the target's rows give each Cassandra table (``steps.coverage_frame``) is planned."""
    for r in coverage.itertuples():
        gate.violations("coverage", f"{r.unit}__every_row_planned",
                        f"{r.unit}: every device / property row of the tenant on the target has its Cassandra "
                        "partitions planned", int(r.unplanned), [p for p in str(r.offending or "").split("; ") if p][:20])


def dns_shift_gate(percent: int, weights: Any, probes: Any, folder: Path, started: float | None = None) -> GateResult:
    """Between weighted DNS steps: ``weights`` (unit = record, ``target_weight`` read back,
    ``expected``) and ``probes`` (unit = probe, ``ok`` 1 or 0, ``detail``) of the target."""
    started = time.monotonic() if started is None else started
    gate = Gate(f"dns_shift_{percent}", folder)
    gate.expect("dns", weights, [FrameCheck(
        "records_at_step_weights", "ExpectColumnPairValuesToBeEqual",
        {"column_A": "target_weight", "column_B": "expected"},
        f"every record of the tenant sends {percent} % of answers to the target")])
    gate.expect("target", probes, [FrameCheck(
        "target_healthy", "ExpectColumnValuesToBeBetween", {"column": "ok", "min_value": 1, "max_value": 1},
        "the target's PostgreSQL, Cassandra and endpoint records answer")])
    return gate.finish(started)
