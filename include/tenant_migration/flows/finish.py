"""After the flip: the final gate (nothing of another tenant, the whole history, every write after
the flip on the target), the slot dropped, the run's report."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from tenant_migration import ledger
from tenant_migration.cassandra import copy as cql_copy
from tenant_migration.cassandra import plan as cql_plan
from tenant_migration.cutover import registrations
from tenant_migration.endpoints import Endpoints
from tenant_migration.flows.common import hold_for_resume, profile_of, record_gate_result, reports_dir, safe_name, step
from tenant_migration.flows.go import suspension_window
from tenant_migration.flows.set import late_frame
from tenant_migration.postgres import cdc
from tenant_migration.spec import MigrationSpec
from tenant_migration.tenant_map import TenantMap
from tenant_migration.validation import gates, gx_gate
from tenant_migration.validation.counts import GateFailed

log = logging.getLogger(__name__)




def cassandra_ownership(dst: Any, tconn: psycopg.Connection, tmap: TenantMap, tenant_id: int,
                        ep: Endpoints | None = None) -> Any:
    """Per Cassandra table of the tenant map, on the target: partitions read and partitions whose
    base key (device, property...) is no row of the target's PostgreSQL (which the final gate
    checks holds the tenant only, devices registered after the flip included): a DataFrame.
    With ``ep``, each foreign partition named says whose it is on the source replica (asked only
    when there is one)."""
    import pandas as pd

    from tenant_migration.cassandra.fingerprint import foreign_bases
    from tenant_migration.validation.dedicated import owner_on_source

    rows = []
    for name, spec in tmap.cassandra_tables.items():
        # The tenant's rows only (a NULL-tenant row on the target owns nothing), keys in the
        # driver's form so that they compare with what Cassandra returns.
        owned = set(cql_plan.tenant_bases(tconn, tmap, spec, tenant_id,
                                          cql_plan.converters_for(dst, tmap.keyspace, spec)))
        shape = cql_copy.table_shape(dst, tmap.keyspace, name)
        seen, foreign, found = foreign_bases(dst, shape, cql_plan.base_columns(spec, shape.partition_key), owned)
        named = [label for label, _ in found]
        if found and ep is not None:
            with ep.replica.connect(autocommit=True) as rconn:
                named = [f"{label}: {owner_on_source(rconn, tmap, spec.partitions_from_table, spec.partitions_from_columns, base)}"
                         for label, base in found]
        rows.append({"unit": f"cassandra:{name}", "partitions": seen, "foreign_partitions": foreign,
                     "offending": "; ".join(named)})
    return pd.DataFrame(rows, columns=["unit", "partitions", "foreign_partitions", "offending"])


def history_frame(session: Any, tconn: psycopg.Connection, tmap: TenantMap, run_id: str, accepted: bool) -> Any:
    """Per day-bucketed Cassandra table: the day buckets the run planned (before the detach) and
    those the retention window holds (``plan.table_window`` without a requested limit)."""
    import pandas as pd

    chunks = [c for c in ledger.run_chunks(tconn, run_id, "cassandra") if not c.bounds.get("late")]
    rows = []
    for name, spec in tmap.cassandra_tables.items():
        if spec.day_column is None:
            continue
        planned = len({d for c in chunks if c.table_name == name for d in c.bounds.get("days", [])})
        window = cql_plan.table_window(spec, tmap, cql_plan.PlanOptions(days=None),
                                       cql_plan.default_ttl(session, tmap.keyspace, name))
        rows.append({"unit": f"cassandra:{name}", "planned_days": planned, "window_days": window,
                     "missing_days": max(0, window - planned), "accepted": bool(accepted)})
    return pd.DataFrame(rows, columns=["unit", "planned_days", "window_days", "missing_days", "accepted"])


AFTER_FLIP_COLUMNS = ["unit", "after_flip", "after_drain", "newest", "missing", "offending"]


def after_flip_frame(ep: Endpoints, spec: MigrationSpec, tconn: psycopg.Connection, tmap: TenantMap,
                     run_id: str) -> Any:
    """The tenant's writes the shared platform took after the flip (stragglers), per Cassandra table
    (cells written after the flip in the tenant's partitions) and for the change stream (the
    tenant's changes not applied yet), with how many of them came after the drain ended and how
    many the target lacks (``offending`` names them). Empty when the run never flipped."""
    import pandas as pd

    from tenant_migration.cassandra.catchup import late_writes

    flipped = ledger.flip_time(tconn, run_id)
    if flipped is None:
        return pd.DataFrame([], columns=AFTER_FLIP_COLUMNS)
    drained = tconn.execute("SELECT MAX(at) FROM tm_control.events WHERE run_id = %s AND step = 'drain_stragglers' "
                            "AND kind = 'finished'", (run_id,)).fetchone()
    drain_end = drained[0] if drained else None
    rows: list[dict[str, Any]] = []
    with ep.cassandra_sessions() as (src, dst):
        found = late_writes(src, dst, tmap, ledger.run_chunks(tconn, run_id, "cassandra"),
                            flipped - timedelta(minutes=1), int(flipped.timestamp() * 1_000_000),
                            int(drain_end.timestamp() * 1_000_000) if drain_end else None)
    for f in found:
        newest = datetime.fromtimestamp(f.newest_writetime / 1_000_000, UTC).isoformat() if f.newest_writetime else ""
        rows.append({"unit": f"cassandra:{f.table}", "after_flip": f.cells, "after_drain": f.after_drain,
                     "newest": newest, "missing": f.missing, "offending": "; ".join(f.missing_sample)})
    if cdc.read_progress(tconn, run_id) is not None:  # the run streamed changes: its slot must still be there
        name = cdc.slot_name_for(run_id)
        with ep.source_cdc.connect(autocommit=True) as src_pg:
            alive = src_pg.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                                   (name,)).fetchone()
            if alive and alive[0]:
                pending = cdc.pending_tenant_changes(src_pg, tconn, tmap, spec.tenant_id, run_id, name)
                after_drain = sum(1 for m in pending.missing if drain_end and m.commit_time and m.commit_time > drain_end)
                rows.append({"unit": "postgres:change stream", "after_flip": pending.tenant_changes,
                             "after_drain": after_drain, "newest": pending.newest.isoformat() if pending.newest else "",
                             "missing": len(pending.missing) + int(pending.truncated),
                             "offending": "; ".join(m.label() for m in pending.missing[:20])
                                          + ("; more changes pending than peeked" if pending.truncated else "")})
            else:
                rows.append({"unit": "postgres:change stream", "after_flip": 0, "after_drain": 0, "newest": "",
                             "missing": -1, "offending": f"the run's change stream {name} was dropped before this "
                                                        f"gate: the tenant's relational writes after the drain "
                                                        f"cannot be checked"})
    return pd.DataFrame(rows, columns=AFTER_FLIP_COLUMNS)


def registrations_frame(ep: Endpoints, spec: MigrationSpec) -> Any:
    """Per connection the profile's registration switch runs on: is the tenant still suspended
    there? A side that holds no flag for the tenant is left out (nothing to resume there)."""
    import pandas as pd

    switch = profile_of(spec).registrations
    rows = []
    for conn_id in [switch.connection, *switch.resume_also_on]:
        with registrations.side(ep, switch, conn_id) as side:
            try:
                state = side.status(spec.tenant_id)
            except registrations.NotOnThisSide:
                continue
        rows.append({"unit": f"registrations@{conn_id}", "suspended": int(state.active),
                     "state": json.dumps(state.to_dict(), default=str)})
    return pd.DataFrame(rows, columns=["unit", "suspended", "state"])


def gate_final(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Nothing of another tenant on the target (PostgreSQL rows, Cassandra partitions); the
    registrations back on; every chunk of the run done."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    tmap = tmap or profile_of(spec).tenant_map
    started = time.monotonic()
    gx_gate.warm_up_gx(reports_dir() / safe_name(run_id))
    with ep.target.connect() as tconn:
        with step(tconn, run_id, "gate_final") as detail:
            with ep.cassandra_target.session() as dst:
                owned = cassandra_ownership(dst, tconn, tmap, spec.tenant_id, ep)
                history = history_frame(dst, tconn, tmap, run_id, spec.partial_history_ok)
            late = late_frame(ep, tconn, tmap, run_id)
            after = after_flip_frame(ep, spec, tconn, tmap, run_id)
            regs = registrations_frame(ep, spec)
            gate = gates.final_gate(tconn, tmap, spec.tenant_id, run_id, reports_dir() / safe_name(run_id), started,
                                    cassandra=owned, history=history, late=late, after_flip=after,
                                    registrations=regs)
            record_gate_result(tconn, run_id, gate)
            detail.update({"passed": gate.passed, "report": str(gate.report),
                           "writes_after_flip": after.drop(columns=["offending"]).to_dict("records")})
    if not gate.passed:
        raise GateFailed(f"{gate.summary()} (Data Docs: {gate.report})")
    return {"passed": True, "summary": gate.summary(), "report": str(gate.report)}


def report(ep: Endpoints, spec: MigrationSpec, run_id: str, dns_result: dict[str, Any] | None,
           tmap: TenantMap | None = None) -> dict[str, Any]:
    """Summarise the run from the ledger (rows per table, time per step, DNS) and close it: failed
    when a chunk is not done or a table of the tenant map has no plan at all."""
    folder = reports_dir() / safe_name(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    if spec.dry_run:
        text = f"dry run for tenant {spec.tenant_id}: preflight passed, nothing was written\n"
        (folder / "summary.txt").write_text(text)
        return {"dry_run": True, "summary": str(folder / "summary.txt")}
    prof = profile_of(spec)
    tmap = tmap or prof.tenant_map
    with ep.target.connect() as tconn:
        chunks = ledger.chunk_rows(tconn, run_id)
        steps = [(n, sec) for n, sec in ledger.step_durations(tconn, run_id) if sec == sec]  # drop NaN
        copies = tconn.execute(
            "SELECT engine, count(*), COALESCE(sum(rows_copied), 0), "
            "COALESCE(sum(EXTRACT(EPOCH FROM finished_at - started_at)), 0)::float8, "
            "COALESCE(EXTRACT(EPOCH FROM max(finished_at) - min(started_at)), 0)::float8 "
            "FROM tm_control.chunks WHERE run_id = %s GROUP BY engine ORDER BY engine", (run_id,)).fetchall()
        gate_rows = tconn.execute(
            "SELECT DISTINCT ON (gate) gate, passed, (evidence->>'seconds')::float8, report_path FROM tm_control.gates "
            "WHERE run_id = %s ORDER BY gate, attempt DESC", (run_id,)).fetchall()
        window = suspension_window(tconn, run_id)
        drain_row = ledger.last_event(tconn, run_id, "drain_stragglers")
        final_row = tconn.execute("SELECT detail FROM tm_control.events WHERE run_id = %s AND step = 'gate_final' "
                                  "AND kind = 'finished' ORDER BY event_id DESC LIMIT 1", (run_id,)).fetchone()
        not_done = [c["chunk_id"] for c in chunks if c["status"] != "done"]
        planned_tables = {(c["engine"], c["table_name"]) for c in chunks}
        unplanned = [f"{e} {t}" for e, t in tmap.engine_tables() if (e, t) not in planned_tables]
        ledger.finish_run(tconn, run_id, "failed" if not_done or unplanned else "succeeded")
    per_table: dict[tuple[str, str], dict[str, int]] = {}
    for c in chunks:
        t = per_table.setdefault((c["engine"], c["table_name"]), {"rows": 0, "partitions": 0, "chunks": 0, "done": 0,
                                                                  "retried": 0})
        t["rows"] += c["rows_copied"] or 0
        t["partitions"] += c["partitions"] or 0
        t["chunks"] += 1
        t["done"] += int(c["status"] == "done")
        t["retried"] += int((c["attempts"] or 0) > 1)
    lines = [f"Tenant migration {run_id}: tenant {spec.tenant_id}, platform {prof.name} ({prof.path}, "
             f"profile {prof.digest})", "", "Rows and partitions per table:"]
    lines += [f"  {name:<33} NOT PLANNED: nothing copied or compared" for name in unplanned]
    for (engine, table), t in sorted(per_table.items()):
        parts = f"{t['partitions']:>9} partitions" if engine == "cassandra" else " " * 20
        lines.append(f"  {engine:<10} {table:<22} {t['rows']:>10} rows {parts}  {t['done']}/{t['chunks']} chunks done"
                     + (f", {t['retried']} retried" if t["retried"] else ""))
    lines += ["", "Time per step:"]
    lines += [f"  {name:<26} {secs:8.2f} s" for name, secs in steps]
    lines += [f"  copy {eng:<21} {wall:8.2f} s wall  ({n} chunks, {rows} rows, {busy:.2f} s of chunk work)"
              for eng, n, rows, busy, wall in copies]
    lines += ["", "Gates (each a Great Expectations Checkpoint; its Data Docs page):"]
    lines += [f"  {g:<26} {'passed' if ok else 'FAILED':<7} {sec or 0:6.2f} s  {path}" for g, ok, sec, path in gate_rows]
    docs = folder / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    if docs.exists():
        lines.append(f"  every gate's Validation Results: {docs}")
    if window is not None:
        lines += ["", f"Registrations were suspended for {window:.1f} s."]
    stragglers = straggler_lines(drain_row[1] if drain_row else {}, (final_row[0] or {}) if final_row else {})
    lines += stragglers
    if dns_result:
        lines += ["", "DNS answer before and after the flip:"]
        for name, chain in (dns_result.get("before") or {}).items():
            after = (dns_result.get("after") or {}).get(name, ["(not flipped)"])
            lines.append(f"  {name}\n    before: {' -> '.join(chain)}\n    after:  {' -> '.join(after)}")
    text = "\n".join(lines) + "\n"
    (folder / "summary.txt").write_text(text)
    summary = {"chunks": chunks, "steps": steps, "dns": dns_result, "suspension_window_s": window,
               "writes_after_flip": (final_row[0] or {}).get("writes_after_flip") if final_row else None,
               "copies": [dict(zip(["engine", "chunks", "rows", "chunk_seconds", "wall_seconds"], c, strict=True))
                          for c in copies],
               "gates": [dict(zip(["gate", "passed", "seconds", "report"], g, strict=True)) for g in gate_rows]}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if unplanned:
        raise RuntimeError(f"run {run_id} has no plan for the tenant map's table(s): {', '.join(unplanned)} "
                           "(nothing of them was copied or compared)")
    if not_done:
        raise RuntimeError(f"run {run_id} has chunks not done: {', '.join(not_done)}")
    return {"summary": str(folder / "summary.txt"), "tables": len(chunks)}


def straggler_lines(drain: dict[str, Any], final: dict[str, Any]) -> list[str]:
    """The report's lines on the tenant's writes that reached the shared platform after the flip:
    what the drain saw and copied, and what ``gate_final`` found after it (late writes)."""
    lines: list[str] = []
    if drain.get("passes"):
        lines += ["", "Writes of the tenant on the shared platform after the flip (stragglers):",
                  f"  drain: {drain.get('seconds', 0):.1f} s in {drain['passes']} passes, ended after "
                  f"{drain.get('quiet_seconds', 0):.1f} s without a new write; {drain.get('late_cells', 0)} Cassandra "
                  f"cells and {drain.get('changes', 0)} relational changes seen, newest at "
                  f"{drain.get('newest_write') or '-'}"]
    for row in final.get("writes_after_flip") or []:
        lines.append(f"  {row['unit']:<26} {row['after_flip']:>7} after the flip, {row['after_drain']:>5} after the "
                     f"drain ended, newest {row['newest'] or '-'}, missing on the target: {row['missing']}")
    return lines


# ---------------------------------------------------------------------------------------------
# Change capture (READY/SET) and cutover (GO)
# ---------------------------------------------------------------------------------------------


def drop_cdc_slot(ep: Endpoints, spec: MigrationSpec, run_id: str, keep_for_resume: bool = True) -> dict[str, Any]:
    """Teardown: drop the run's slot once the final gate passed (it reads the stream for writes the
    shared platform took after the drain), or whenever the run is not live (abort). After an
    earlier failure the slot is kept (``KeptForResume``): a resumed run replays from its first
    detach point, and a slot re-created later would miss changes (ADR 4)."""
    if keep_for_resume:
        hold_for_resume(ep, run_id, "final", "change-capture slot")
    name = cdc.slot_name_for(run_id)
    with ep.source_cdc.connect(autocommit=True) as src:
        dropped = cdc.drop_slot(src, name)
    return {"slot": name, "dropped": dropped}
