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
from tenant_migration.validation.gx_gate import (
    FrameCheck,
    GateResult,
    SqlCheck,
    finish_gate,
    run_frame_checks,
    run_sql_checks,
)


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
    return finish_gate("preflight", preflight_checks(replica, tmap, tenant_id, problems), folder, started)


def preflight_checks(replica: psycopg.Connection, tmap: TenantMap, tenant_id: int,
                     problems: list[str]) -> list[dict[str, Any]]:
    """The preflight gate's checks, validated, nothing written yet (``finish_gate`` writes the
    evidence): the replica's pushed-down checks and schema parity (``problems``: the drift)."""
    import pandas as pd

    ctes, sql_checks = preflight_sql_checks(replica, tmap, tenant_id)
    checks = run_sql_checks("preflight", replica, sql_checks, ctes=ctes)
    frame = pd.DataFrame({"problem": problems or []}, dtype="object")
    frame["unit"] = frame["problem"]
    checks += run_frame_checks("preflight", frame, [FrameCheck(
        "schema_parity", "ExpectTableRowCountToEqual", {"value": 0},
        "every tenant-scoped table has the same columns and types on source and target")], "unit")
    if not frame.empty:
        checks[-1]["unexpected"] = list(frame["problem"])
    return checks


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
    one thread each, so the gate costs the slower side rather than the sum."""
    import pandas as pd

    from tenant_migration import ledger

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
    return pd.DataFrame([{"unit": label, "source_rows": a[0], "target_rows": b[0],
                          "source_checksum": a[1], "target_checksum": b[1]}
                         for label, a, b in zip(labels, on_replica, dst, strict=True)],
                        columns=["unit", "source_rows", "target_rows", "source_checksum", "target_checksum"])


def comparison_checks(what: str) -> list[FrameCheck]:
    return [
        FrameCheck(f"{what}_rows_equal", "ExpectColumnPairValuesToBeEqual",
                   {"column_A": "source_rows", "column_B": "target_rows"}, f"{what}: row counts equal on both sides"),
        FrameCheck(f"{what}_checksums_equal", "ExpectColumnPairValuesToBeEqual",
                   {"column_A": "source_checksum", "column_B": "target_checksum"},
                   f"{what}: checksums equal on both sides"),
    ]


def post_copy_gate(frame: Any, folder: Path, started: float | None = None,
                   coverage: tuple[psycopg.Connection, SqlCheck] | None = None) -> GateResult:
    """``coverage``: the target and ``plan_coverage_check`` (every table of the map planned)."""
    started = time.monotonic() if started is None else started
    # A failing check carries the offending chunks' numbers on both sides (``run_frame_checks``).
    checks = run_frame_checks("post_copy", frame, comparison_checks("post_copy"), "unit")
    if coverage is not None:
        checks += run_sql_checks("post_copy", coverage[0], [coverage[1]])
    return finish_gate("post_copy", checks, folder, started)


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
        # row belongs to nobody -- certainly not to this tenant.
        q = sql.SQL("SELECT {k} FROM {t} AS t WHERE ({pred}) IS NOT TRUE").format(
            k=_cols("t", spec.key), t=tmap.qualified(table), pred=tmap.tenant_predicate(table))
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
    tenant (``steps.cassandra_ownership``), validated as a frame: none may be foreign.
    ``history``: per day-bucketed table, the days planned and the retention window's
    (``steps.history_frame``), each short one a failure unless ``accepted`` says it is intended.
    ``late``: the comparison of the partitions planned after the detach (``steps.late_frame``).
    ``after_flip``: the tenant's writes on the shared platform after the flip, compared with the
    target (``steps.after_flip_frame``).
    ``registrations``: per side the profile's switch runs on, whether the tenant's registrations
    are still suspended there (``finish.registrations_frame``): none may be."""
    started = time.monotonic() if started is None else started
    checks = run_sql_checks("final", target, final_sql_checks(target, tmap, tenant_id, run_id))
    if registrations is not None:
        checks += run_frame_checks("final", registrations, [FrameCheck(
            "registrations__back_on", "ExpectColumnValuesToBeBetween", {"column": "suspended", "min_value": 0,
                                                                         "max_value": 0},
            f"the registrations of tenant {tenant_id} are enabled again on every side that takes traffic")], "unit")
    if late is not None:
        checks += late_checks("final", late)
    if after_flip is not None:
        checks += after_flip_checks("final", after_flip)
    if cassandra is not None:
        frame_checks = [FrameCheck(
            "cassandra__only_this_tenant", "ExpectColumnValuesToBeBetween",
            {"column": "foreign_partitions", "min_value": 0, "max_value": 0},
            f"every Cassandra partition on the target belongs to a device of tenant {tenant_id}")]
        if history is not None:  # the same per-table frame, one validation
            cassandra = with_history(cassandra, history)
            frame_checks.append(HISTORY_CHECK)
        found = run_frame_checks("final", cassandra, frame_checks, "unit")
        bad = cassandra[cassandra["foreign_partitions"] > 0]
        if not bad.empty:
            found[0]["unexpected"] = [p for names in bad["offending"] for p in names.split("; ") if p][:50]
        checks += found
    elif history is not None:
        checks += run_frame_checks("final", with_history(history, history), [HISTORY_CHECK], "unit")
    return finish_gate("final", checks, folder, started)


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


def sequence_checks(gate: str, frame: Any) -> list[dict[str, Any]]:
    """Every sequence of the migrated tables (``steps.sequence_frame``) past the source's next
    value and the target column's maximum. None to check: one passing entry says so."""
    if frame.empty:
        return [{"name": "sequences_past_source", "success": True, "observed": 0, "unexpected": [],
                 "describe": "sequences and identities of the migrated tables: none", "validation": None}]
    found = run_frame_checks(gate, frame, [FrameCheck(
        "sequences_past_source", "ExpectColumnValuesToBeBetween", {"column": "short_by", "min_value": 0, "max_value": 0},
        "every sequence of the migrated tables hands out keys past the source's and past the target's rows")], "unit")
    bad = frame[frame["short_by"] > 0]
    if not bad.empty:
        found[0]["unexpected"] = [f"{r.unit}: target next {r.target_next}, source next {r.source_next}, target max "
                                  f"{r.target_max}" for r in bad.itertuples()][:50]
    return found


def late_checks(gate: str, late: Any) -> list[dict[str, Any]]:
    """The partitions planned after the detach (``steps.late_frame``) equal on both sides. A run
    that planned none has nothing to compare: one passing entry says so (no validation of an
    empty frame)."""
    if late.empty:
        return [{"name": "late_partitions_compared", "success": True, "observed": 0, "unexpected": [],
                 "describe": "partitions planned after the detach (rows the change stream brought): none planned",
                 "validation": None}]
    return run_frame_checks(gate, late, comparison_checks("late_partitions"), "unit")


def after_flip_checks(gate: str, after: Any) -> list[dict[str, Any]]:
    """The tenant's writes the shared platform took after the flip (``steps.after_flip_frame``: per
    Cassandra table and for the change stream) are all on the target. A run that never flipped
    has nothing to compare: one passing entry says so."""
    if after.empty:
        return [{"name": "writes_after_flip_on_target", "success": True, "observed": 0, "unexpected": [],
                 "describe": "writes of the tenant on the shared platform after the flip: the run never flipped",
                 "validation": None}]
    checks = run_frame_checks(gate, after, [FrameCheck(
        "writes_after_flip_on_target", "ExpectColumnValuesToBeBetween",
        {"column": "missing", "min_value": 0, "max_value": 0},
        "every write of the tenant the shared platform took after the flip (stragglers) is on the target")], "unit")
    bad = after[after["missing"] != 0]
    if not bad.empty:
        checks[-1]["unexpected"] = [f"{u}: {o}" for u, o in zip(bad["unit"], bad["offending"], strict=True)]
    return checks


def coverage_checks(gate: str, coverage: Any) -> list[dict[str, Any]]:
    """Every base the target's rows give each Cassandra table (``steps.coverage_frame``) is planned."""
    checks = run_frame_checks(gate, coverage, [FrameCheck(
        "cassandra__every_row_planned", "ExpectColumnValuesToBeBetween",
        {"column": "unplanned", "min_value": 0, "max_value": 0},
        "every device / property row of the tenant on the target has its Cassandra partitions planned")], "unit")
    bad = coverage[coverage["unplanned"] > 0]
    if not bad.empty:
        checks[-1]["unexpected"] = [f"{u}: {o}" for u, o in zip(bad["unit"], bad["offending"], strict=True)]
    return checks


def dns_shift_gate(percent: int, weights: Any, probes: Any, folder: Path, started: float | None = None) -> GateResult:
    """Between weighted DNS steps: ``weights`` (unit = record, ``target_weight`` read back,
    ``expected``) and ``probes`` (unit = probe, ``ok`` 1 or 0, ``detail``) of the target."""
    started = time.monotonic() if started is None else started
    gate = f"dns_shift_{percent}"
    checks = run_frame_checks(gate, weights, [FrameCheck(
        "records_at_step_weights", "ExpectColumnPairValuesToBeEqual",
        {"column_A": "target_weight", "column_B": "expected"},
        f"every record of the tenant sends {percent} % of answers to the target")], "unit")
    checks += run_frame_checks(gate, probes, [FrameCheck(
        "target_healthy", "ExpectColumnValuesToBeBetween", {"column": "ok", "min_value": 1, "max_value": 1},
        "the target's PostgreSQL, Cassandra and endpoint records answer")], "unit")
    return finish_gate(gate, checks, folder, started)
