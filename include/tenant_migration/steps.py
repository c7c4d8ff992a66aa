"""One function per DAG task: the work of each step, callable without a scheduler.

Every step is keyed by (run id, step) and is safe to retry or clear by hand: it reads the ledger
and does only the work not yet done. Steps return small JSON-able summaries for XCom: no
credentials, no row data.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tenant_migration import ledger, replica, sizing
from tenant_migration.cassandra import copy as cql_copy
from tenant_migration.cassandra import plan as cql_plan
from tenant_migration.cassandra import schema as cql_schema
from tenant_migration.cassandra.fingerprint import fingerprint_chunks
from tenant_migration.cutover import dns, registrations
from tenant_migration.endpoints import Endpoints
from tenant_migration.postgres import cdc, sequences
from tenant_migration.postgres import copy as pg_copy
from tenant_migration.postgres import planner as pg_planner
from tenant_migration.postgres.catalog import schema_drift
from tenant_migration.spec import MigrationSpec
from tenant_migration.tenant_map import TenantMap, load_tenant_map
from tenant_migration.validation import dedicated, gates, gx_gate
from tenant_migration.validation.counts import GateFailed
from tenant_migration.validation.gx_gate import GateResult

log = logging.getLogger(__name__)


class PreflightError(RuntimeError):
    """The migration cannot start; nothing was written."""


def reports_dir() -> Path:
    base = os.environ.get("TM_REPORTS_DIR") or str(Path(os.environ.get("TM_STATE_DIR", ".stack")) / "reports")
    return Path(base)


@contextmanager
def step(conn: psycopg.Connection, run_id: str, name: str) -> Iterator[dict[str, Any]]:
    """Record started/finished/failed events of a step around its body."""
    detail: dict[str, Any] = {}
    ledger.record_event(conn, run_id, name, "started")
    try:
        yield detail
    except Exception as exc:
        ledger.record_event(conn, run_id, name, "failed", {"error": f"{type(exc).__name__}: {exc}"[:2000]})
        raise
    ledger.record_event(conn, run_id, name, "finished", detail)


def tenant_slug(conn: psycopg.Connection, tmap: TenantMap, tenant_id: int) -> str | None:
    row = conn.execute(
        sql.SQL("SELECT slug FROM {} WHERE {} = %s").format(tmap.qualified(tmap.root_table), sql.Identifier(tmap.root_key)),
        (tenant_id,),
    ).fetchone()
    return str(row[0]) if row else None


def fingerprint(ep: Endpoints, tmap: TenantMap, tenant_id: int) -> str:
    return ledger.context_fingerprint(
        replica=ep.replica.label,
        target=ep.target.label,
        cassandra_source=ep.cassandra_source.label,
        cassandra_target=ep.cassandra_target.label,
        tenant_map=tmap.platform + ":" + ",".join(tmap.load_order()),
        tenant=str(tenant_id),
    )


def preflight(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Check every precondition, then register the run. Nothing is written before all checks pass."""
    tmap = tmap or load_tenant_map()
    began = datetime.now(UTC)
    started = time.monotonic()
    gx_gate.warm_up_gx()
    problems: list[str] = []
    with ep.replica.connect(autocommit=True) as rconn, ep.target.connect() as tconn:
        slug = tenant_slug(rconn, tmap, spec.tenant_id)
        if slug is None:
            raise PreflightError(f"tenant {spec.tenant_id} does not exist on the source replica {ep.replica.label}")
        # Cassandra's schema and the DNS zone are asked while the replica is checked.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="preflight") as pool:
            cassandra = pool.submit(cassandra_drift, ep, tmap)
            zone = pool.submit(dns_problems, ep, spec, slug)
            drift = schema_drift(rconn, tconn, tmap)
            # The replica's checks only on a schema that matches the tenant map's (else the drift
            # is the error to show, not a failed query); nothing is written yet.
            checks = None if drift else gates.preflight_checks(rconn, tmap, spec.tenant_id, drift)
            problems += drift + cassandra.result() + zone.result()
        skipped: dict[str, int] = {}
        if not problems:
            with ep.cassandra_target.session() as dst:
                problems += empty_key_problems(rconn, dst, tmap, spec.tenant_id, skipped)
                if not ledger.run_known(tconn, run_id):
                    # A new run: the target holds nothing of anyone else (a resumed run checked it first).
                    problems += dedicated.target_problems(rconn, tconn, dst, tmap, spec.tenant_id)
        if problems:
            raise PreflightError("preflight failed, nothing was written:\n  - " + "\n  - ".join(problems))
        assert checks is not None
        gate = gx_gate.finish_gate("preflight", checks, reports_dir() / _safe(run_id), started)
        if not gate.passed:
            raise PreflightError(f"{gate.summary()}\nnothing was written; report: {gate.html_path}")
        if spec.dry_run:
            return {"tenant_id": spec.tenant_id, "slug": slug, "dry_run": True, "report": str(gate.html_path),
                    "empty_keys_skipped": skipped}
        new = ledger.start_run(tconn, run_id, spec.tenant_id, fingerprint(ep, tmap, spec.tenant_id), spec.to_dict())
        _record_gate(tconn, run_id, gate)
        ledger.record_event(tconn, run_id, "preflight", "started", at=began)
        ledger.record_event(tconn, run_id, "preflight", "finished",
                            {"slug": slug, "new_run": new, "empty_keys_skipped": skipped})
    return {"tenant_id": spec.tenant_id, "slug": slug, "new_run": new, "dry_run": False, "empty_keys_skipped": skipped}


def cassandra_drift(ep: Endpoints, tmap: TenantMap) -> list[str]:
    """Each Cassandra table of the tenant map on both clusters, from system_schema (every table's
    columns asked at once, one round trip): missing, or columns that differ in name, kind,
    position or type."""
    problems = []
    with ep.cassandra_sessions() as (s_src, s_dst):
        asked = {(side, name): session.execute_async(cql_schema.COLUMNS_QUERY, (tmap.keyspace, name))
                 for side, session in (("source", s_src), ("target", s_dst)) for name in tmap.cassandra_tables}
        for name in tmap.cassandra_tables:
            a = cql_schema.columns_of(asked[("source", name)].result())
            b = cql_schema.columns_of(asked[("target", name)].result())
            if not a:
                problems.append(f"cassandra {tmap.keyspace}.{name}: missing on the source")
            elif not b:
                problems.append(f"cassandra {tmap.keyspace}.{name}: missing on the target")
            elif a != b:  # (name, kind, position, type): a type changed is drift too
                problems.append(f"cassandra {tmap.keyspace}.{name}: columns differ (only on the source: "
                                f"{sorted(set(a) - set(b))}, only on the target: {sorted(set(b) - set(a))})")
            else:
                problems += key_problems(tmap, name, a)
    return problems


def key_problems(tmap: TenantMap, name: str, columns: list[tuple[str, str, int, str]]) -> list[str]:
    """The tenant map's partition key is the table's, and every column the relational rows supply
    has a type the plan can hold (``cassandra.keys``)."""
    from tenant_migration.cassandra import keys

    spec = tmap.cassandra_tables[name]
    where = f"cassandra {tmap.keyspace}.{name}"
    actual = [c[0] for c in sorted((c for c in columns if c[1] == "partition_key"), key=lambda c: c[2])]
    if list(spec.partition_key) != actual:
        return [f"{where}: the tenant map's partition_key {list(spec.partition_key)} is not the table's {actual}"]
    types = keys.column_types(columns)
    problems = [f"{where}: partition-key column {c} has type {types[c]}, which cannot be planned from relational "
                "rows (supported: scalars, uuid/timeuuid, inet, decimal, date, timestamp, blob, tuples)"
                for c in cql_plan.base_columns(spec) if not keys.supported(types[c])]
    if len(cql_plan.base_columns(spec)) != len(spec.partitions_from_columns):
        problems.append(f"{where}: partitions_from names {len(spec.partitions_from_columns)} columns for "
                        f"{len(cql_plan.base_columns(spec))} partition-key columns {cql_plan.base_columns(spec)}")
    for col, kind, _, cql_type in columns:
        if kind in ("partition_key", "clustering"):
            continue
        if cql_type == "counter":
            problems.append(f"{where}: column {col} is a counter, which cannot be copied with its write time "
                            "(counters take no USING TIMESTAMP, and a re-copy would add twice)")
        elif _non_frozen_udt(cql_type):
            problems.append(f"{where}: column {col} is a non-frozen user-defined type ({cql_type}), whose fields "
                            "are not copied cell by cell (supported: scalars, frozen types, set, list, map)")
    return problems


_NATIVE_TYPES = frozenset({"ascii", "bigint", "blob", "boolean", "date", "decimal", "double", "duration", "float",
                           "inet", "int", "smallint", "text", "time", "timestamp", "timeuuid", "tinyint", "uuid",
                           "varchar", "varint"})


def _non_frozen_udt(cql_type: str) -> bool:
    """A bare type name that no native type, collection, tuple, vector or ``frozen<>`` is."""
    return "<" not in cql_type and cql_type not in _NATIVE_TYPES


def empty_key_problems(rconn: psycopg.Connection, session: Any, tmap: TenantMap, tenant_id: int,
                       skipped: dict[str, int]) -> list[str]:
    """The tenant's relational rows that would be an empty single-column partition key, which
    Cassandra refuses (``cql_plan.empty_key_rows``): a problem per table, or, where the tenant map
    says ``empty_keys: skip``, counted in ``skipped`` and logged (such a key can hold no data)."""
    problems = []
    for name, spec in tmap.cassandra_tables.items():
        types = keys_types(session, tmap.keyspace, name)
        count, named = cql_plan.empty_key_rows(rconn, tmap, spec, tenant_id, types)
        if not count:
            continue
        rows = ", ".join(named) + (f" and {count - len(named)} more" if count > len(named) else "")
        if spec.empty_keys == "skip":
            skipped[name] = count
            log.warning("cassandra %s.%s: %d row(s) of the tenant have an empty partition key %s (%s): skipped, "
                        "as the tenant map says (Cassandra can hold no partition under an empty key)",
                        tmap.keyspace, name, count, spec.partition_key[0], rows)
            continue
        problems.append(f"cassandra {tmap.keyspace}.{name}: {count} row(s) of tenant {tenant_id} would have an "
                        f"empty partition key {spec.partition_key[0]}, which Cassandra refuses: {rows}. Fix the "
                        "rows, or set 'empty_keys: skip' on this table in the tenant map to leave them out")
    return problems


def keys_types(session: Any, keyspace: str, table: str) -> dict[str, str]:
    from tenant_migration.cassandra import keys

    return keys.column_types(cql_schema.table_columns(session, keyspace, table))


def dns_problems(ep: Endpoints, spec: MigrationSpec, slug: str) -> list[str]:
    """The tenant's records and its target endpoints' records exist in the zone."""
    problems = []
    r53 = ep.aws.client("route53")
    try:
        zid = dns.zone_id(r53, spec.dns_zone)
        existing = dns.records(r53, zid)
        for plan in dns.tenant_records(spec.dns_zone, slug, spec.target_endpoint_prefix):
            if plan.name not in existing:
                problems.append(f"dns {plan.name}: no record")
            if plan.tenant_target not in existing:
                problems.append(f"dns {plan.tenant_target}: the tenant's target endpoint has no record")
    except dns.DnsError as exc:
        problems.append(f"dns: {exc}")
    return problems


def _record_gate(tconn: psycopg.Connection, run_id: str, gate: GateResult) -> None:
    ledger.record_gate(tconn, run_id, gate.gate, gate.passed, gate.summary(), gate.evidence(), str(gate.html_path))


def detach_replica(ep: Endpoints, spec: MigrationSpec, run_id: str, min_lsn: str | None = None) -> dict[str, Any]:
    """Pause WAL replay on the standby, at or after ``min_lsn`` (the change-capture slot's
    consistent point: every change after the detach point is then in the stream)."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    with ep.replica_control.connect(autocommit=True) as rc, ep.target.connect() as tconn:
        with step(tconn, run_id, "detach_replica") as detail:
            point = replica.detach(rc, min_lsn=min_lsn)
            # The run's change-capture slot predates the first detach, so a later snapshot is safe.
            ledger.record_detach(tconn, run_id, point.lsn, point.commit_time, allow_later=True)
            detail.update(point.to_dict())
    return point.to_dict()


class KeptForResume(RuntimeError):
    """A teardown kept its resource (detached replica, change-capture slot) because the work that
    needs it failed and can be resumed by clearing the failed tasks (ADR 7). The teardown fails so
    that the held resource shows red in the UI and is re-run by a *Clear -> Only failed*."""


def _gate_passed(tconn: psycopg.Connection, run_id: str, gate: str) -> bool:
    row = tconn.execute("SELECT passed FROM tm_control.gates WHERE run_id = %s AND gate = %s "
                        "ORDER BY attempt DESC LIMIT 1", (run_id, gate)).fetchone()
    return bool(row and row[0])


def _keep_for_resume(ep: Endpoints, run_id: str, gate: str, resource: str) -> None:
    """Raise ``KeptForResume`` when the run is live and the phase needing ``resource`` has not
    passed ``gate``: a clear of its failed tasks needs the same snapshot and the same stream.
    Releases (returns) when the phase passed, or when the run is not live (never registered:
    dry run or refused preflight; finished; or aborted -- the way to give the resource up)."""
    with ep.target.connect(autocommit=True) as tconn:
        row = tconn.execute("SELECT to_regclass('tm_control.runs') IS NOT NULL").fetchone()
        run = ledger.run_row(tconn, run_id) if row and row[0] else None
        if run is None or run["status"] != "running" or _gate_passed(tconn, run_id, gate):
            return
        ledger.record_event(tconn, run_id, f"keep_{resource}", "info", {"until_gate": gate})
    raise KeptForResume(
        f"{resource} kept for a resume: the {gate!r} gate of run {run_id} has not passed. Fix the cause, then "
        f"clear the failed task instances (only failed, with downstream): this teardown runs again and releases "
        f"it. To give up instead: mark the ledger run aborted (runbook: Abort), then clear this task.")


def reattach_replica(ep: Endpoints, spec: MigrationSpec, run_id: str, keep_for_resume: bool = True) -> dict[str, Any]:
    """Teardown of the detach: resume replay once the copy passed its gate, or whenever the run is
    not live. After a failed copy the replica stays at the run's snapshot (``KeptForResume``) so
    that clearing the failed chunk tasks copies from the same point in time the gate compares.
    ``keep_for_resume=False`` (unattended rehearsals) always releases."""
    if keep_for_resume:
        _keep_for_resume(ep, run_id, "post_copy", "detached replica")
    with ep.replica_control.connect(autocommit=True) as rc:
        before = replica.reattach(rc)
    return {"state_before": before}


def copy_shared_tables(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Give the target the shared reference tables the tenant's rows point at (replaced whole)."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    from tenant_migration.postgres.shared import copy_shared_tables as copy_shared

    tmap = tmap or load_tenant_map()
    with ep.replica.connect(autocommit=True) as rconn, ep.target.connect(autocommit=True) as tconn:
        with step(tconn, run_id, "copy_shared_tables") as detail:
            copied = {c.table: c.rows for c in copy_shared(rconn, tconn, tmap)}
            detail["tables"] = copied
    return copied


def plan_postgres(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> list[str]:
    """Plan the tenant's PostgreSQL chunks on its own key distribution (once per run; a re-run
    reads the stored plan) and return the ids of the chunks not done yet, in load order."""
    if spec.dry_run:
        return []
    tmap = tmap or load_tenant_map()
    with ep.replica.connect(autocommit=True) as rconn, ep.target.connect() as tconn:
        chunks = pg_planner.plan_postgres(rconn, tconn, tmap, run_id, spec.tenant_id, spec.chunk_rows)
        done = {c.chunk_id for c in chunks if ledger.chunk_status(tconn, run_id, c.chunk_id) == ledger.ChunkStatus.DONE}
        tconn.commit()
    return [c.chunk_id for c in chunks if c.chunk_id not in done]


def copy_postgres_batch(ep: Endpoints, spec: MigrationSpec, run_id: str, chunk_ids: list[str],
                        tmap: TenantMap | None = None) -> dict[str, Any]:
    """Copy the given PostgreSQL chunks, one atomic target transaction each: one mapped task's work.
    Chunks already done are skipped, so clearing this task redoes only what is not done."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    tmap = tmap or load_tenant_map()
    started = time.monotonic()
    results = pg_copy.copy_chunks(ep.replica, ep.target, tmap, run_id, spec.tenant_id, chunk_ids)
    skipped = sum(int(r.skipped) for r in results)
    return {"chunks": len(chunk_ids), "copied": len(results) - skipped, "skipped": skipped,
            "rows": sum(r.rows for r in results), "seconds": round(time.monotonic() - started, 3)}


def copy_postgres(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Plan and copy every PostgreSQL chunk of the run not done yet (outside Airflow's mapping)."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    tmap = tmap or load_tenant_map()
    copy_shared_tables(ep, spec, run_id, tmap)
    with ep.target.connect(autocommit=True) as tconn:
        with step(tconn, run_id, "copy_postgres") as detail:
            results = pg_copy.copy_pending_chunks(ep.replica, ep.target, tmap, run_id, spec.tenant_id, spec.chunk_rows)
            out: dict[str, Any] = {}
            for r in results:
                t = out.setdefault(r.table, {"rows": 0, "chunks": 0, "skipped": 0})
                t["rows"] += r.rows
                t["chunks"] += 1
                t["skipped"] += int(r.skipped)
            detail["tables"] = out
    return out


def plan_cassandra(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> list[str]:
    """Plan the tenant's Cassandra chunks into the ledger (once per run; stable ids) and return
    the ids of those not done yet, newest day window first."""
    if spec.dry_run:
        return []
    tmap = tmap or load_tenant_map()
    with ep.replica.connect(autocommit=True) as rconn, ep.target.connect(autocommit=True) as tconn, \
            ep.cassandra_source.session() as src:
        if not ledger.run_chunks(tconn, run_id, "cassandra"):
            chunks = cql_plan.plan_tenant(rconn, tmap, spec.tenant_id, datetime.now(UTC).date(),
                                          cql_plan.PlanOptions(days=spec.plan_days), session=src)
            ledger.plan_chunks(tconn, run_id, chunks)
        return [c.chunk_id for c in cql_plan.copy_order(ledger.pending_chunks(tconn, run_id, "cassandra"))]


def copy_cassandra(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Copy every Cassandra chunk of the run not done yet (cells with their WRITETIME and TTL)."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    tmap = tmap or load_tenant_map()
    plan_cassandra(ep, spec, run_id, tmap)
    with ep.target.connect(autocommit=True) as tconn:
        with step(tconn, run_id, "copy_cassandra") as detail:
            report = cql_copy.copy_pending(ep, run_id, tmap, cql_copy.CopyOptions(concurrency=spec.cassandra_concurrency))
            detail.update(report.to_dict())
    return report.to_dict()


def batches(ep: Endpoints, spec: MigrationSpec, run_id: str, engine: str) -> list[list[str]]:
    """Plan one store's chunks and deal the ids not done yet, in order, into mapped copy tasks
    sized by estimated work (``sizing``): ``min_task_seconds`` each at least, ``max_tasks`` at most."""
    ids = plan_postgres(ep, spec, run_id) if engine == "postgres" else plan_cassandra(ep, spec, run_id)
    if not ids:
        return []
    with ep.target.connect(autocommit=True) as tconn:
        planned = {c.chunk_id: c for c in ledger.run_chunks(tconn, run_id, engine)}
    return sizing.size_batches([planned[i] for i in ids], spec.max_tasks, spec.min_task_seconds)


def copy_cassandra_batch(ep: Endpoints, spec: MigrationSpec, run_id: str, chunk_ids: list[str],
                         tmap: TenantMap | None = None) -> dict[str, Any]:
    """Copy the given Cassandra chunks (those already done are skipped): one mapped task's work."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    tmap = tmap or load_tenant_map()
    with ep.target.connect(autocommit=True) as tconn:
        wanted = set(chunk_ids)
        chunks = [c for c in ledger.run_chunks(tconn, run_id, "cassandra") if c.chunk_id in wanted]
        missing = wanted - {c.chunk_id for c in chunks}
        if missing:
            raise PreflightError(f"chunks not in the ledger of run {run_id}: {sorted(missing)[:5]}")
        report = cql_copy.copy_chunks(ep, run_id, tmap, cql_plan.copy_order(chunks),
                                      cql_copy.CopyOptions(concurrency=spec.cassandra_concurrency))
        ledger.record_event(tconn, run_id, "copy_cassandra", "info", {"chunks": len(chunks), **report.to_dict()})
    return report.to_dict()


def cassandra_fingerprints(ep: Endpoints, run_id: str, tmap: TenantMap) -> Any:
    """Per-chunk fingerprints (count + hash of key, value, writetime) on both sides, as a DataFrame.

    Devices keep writing to the shared cluster during the copy: only cells written at or before
    the detach watermark are compared (newer ones are the catch-up's, checked by its gate).
    """
    import pandas as pd

    with ep.target.connect(autocommit=True) as tconn:
        chunks = ledger.run_chunks(tconn, run_id, "cassandra")
        _, commit_time = _detach_lsn(tconn, run_id)
    watermark = int(commit_time.timestamp() * 1_000_000) if commit_time else None
    with ep.cassandra_sessions() as (src, dst):
        report = fingerprint_chunks(src, dst, tmap, chunks, max_writetime=watermark, scan_target=True)
    frame = pd.DataFrame([{
        "unit": f"{r['chunk_id']}", "source_rows": r["source_rows"], "target_rows": r["target_rows"],
        "source_checksum": r["source_hash"], "target_checksum": r["target_hash"],
        "mismatched": ", ".join(r["mismatched"][:20]),
    } for r in report.records()], columns=["unit", "source_rows", "target_rows", "source_checksum", "target_checksum",
                                           "mismatched"])
    return frame


def gate_post_copy(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Counts and checksums equal on both sides for every table of both stores, recomputed now.

    Evidence (GX JSON, HTML report, ledger row) is stored first; then the gate raises.
    """
    if spec.dry_run:
        return {"skipped": "dry run"}
    import pandas as pd

    tmap = tmap or load_tenant_map()
    started = time.monotonic()
    gx_gate.warm_up_gx()
    with ep.replica.connect(autocommit=True) as rconn, ep.target.connect(autocommit=True) as tconn:
        with step(tconn, run_id, "gate_post_copy") as detail, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="post-copy-cassandra") as pool:
            # Cassandra's fingerprints (driver I/O + Python hashing) while PostgreSQL scans.
            cql = pool.submit(cassandra_fingerprints, ep, run_id, tmap)
            frame = gates.post_copy_frame(rconn, tconn, tmap, spec.tenant_id, run_id)
            frame = pd.concat([frame, cql.result()], ignore_index=True)
            gate = gates.post_copy_gate(frame, reports_dir() / _safe(run_id), started,
                                        coverage=(tconn, gates.plan_coverage_check(tconn, tmap, run_id)))
            _record_gate(tconn, run_id, gate)
            detail.update({"passed": gate.passed, "report": str(gate.html_path), "seconds": round(gate.seconds, 3)})
    if not gate.passed:
        raise GateFailed(f"{gate.summary()} (report: {gate.html_path})")
    return {"passed": True, "summary": gate.summary(), "report": str(gate.html_path)}


def cassandra_ownership(dst: Any, tconn: psycopg.Connection, tmap: TenantMap, tenant_id: int) -> Any:
    """Per Cassandra table of the tenant map, on the target: partitions read and partitions whose
    base key (device, property...) is no row of the target's PostgreSQL (which the final gate
    checks holds the tenant only, devices registered after the flip included): a DataFrame."""
    import pandas as pd

    from tenant_migration.cassandra.fingerprint import foreign_partitions

    rows = []
    for name, spec in tmap.cassandra_tables.items():
        # The tenant's rows only (a NULL-tenant row on the target owns nothing), keys in the
        # driver's form so that they compare with what Cassandra returns.
        owned = set(cql_plan.tenant_bases(tconn, tmap, spec, tenant_id,
                                          cql_plan.converters_for(dst, tmap.keyspace, spec)))
        shape = cql_copy.table_shape(dst, tmap.keyspace, name)
        seen, foreign, named = foreign_partitions(dst, shape, cql_plan.base_columns(spec, shape.partition_key), owned)
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


def late_frame(ep: Endpoints, tconn: psycopg.Connection, tmap: TenantMap, run_id: str) -> Any:
    """Fingerprints of the chunks planned after the detach (rows the change stream brought), over
    all their days, on both sides: cells written before the DNS flip began (after it, the target
    takes the tenant's own writes). Empty when the run planned none."""
    import pandas as pd

    late = [c for c in ledger.run_chunks(tconn, run_id, "cassandra") if c.bounds.get("late")]
    columns = ["unit", "source_rows", "target_rows", "source_checksum", "target_checksum"]
    if not late:
        return pd.DataFrame([], columns=columns)
    flipped = ledger.flip_time(tconn, run_id)
    upto = int(flipped.timestamp() * 1_000_000) if flipped else None
    with ep.cassandra_sessions() as (src, dst):
        report = fingerprint_chunks(src, dst, tmap, late, max_writetime=upto)
    return pd.DataFrame([{"unit": r["chunk_id"], "source_rows": r["source_rows"], "target_rows": r["target_rows"],
                          "source_checksum": r["source_hash"], "target_checksum": r["target_hash"]}
                         for r in report.records()], columns=columns)


def plan_late_partitions(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap,
                         step_name: str, source: Any = None) -> dict[str, Any]:
    """Plan Cassandra chunks for the tenant's rows the change stream brought to the target after the
    detach (new devices, properties...: ``plan.plan_late``) and copy every late chunk not done yet,
    over the plan's days and the days since the detach. Safe to repeat: a base is planned once
    (under the run's row lock, so two callers never number chunks alike), done chunks are skipped."""
    from tenant_migration.cassandra.catchup import recent_days

    with ep.target.connect() as tconn, ExitStack() as stack:
        src = source if source is not None else stack.enter_context(ep.cassandra_source.session())
        _, commit_time = _detach_lsn(tconn, run_id)
        tconn.execute("SELECT 1 FROM tm_control.runs WHERE run_id = %s FOR UPDATE", (run_id,))
        planned = ledger.run_chunks(tconn, run_id, "cassandra")
        recent = recent_days((commit_time or datetime.now(UTC)) - timedelta(minutes=15), datetime.now(UTC))
        new = cql_plan.plan_late(tconn, tmap, spec.tenant_id, planned, recent, session=src)
        if new:
            ledger.plan_chunks(tconn, run_id, new)
        tconn.commit()
        pending = [c for c in ledger.pending_chunks(tconn, run_id, "cassandra") if c.bounds.get("late")]
        tconn.commit()
    out: dict[str, Any] = {"planned": len(new), "bases": sum(len(c.bounds["bases"]) for c in new
                                                           if c.bounds.get("window", 0) == 0),
                           "copied_chunks": 0, "rows": 0}
    if pending:
        report = cql_copy.copy_chunks(ep, run_id, tmap, cql_plan.copy_order(pending),
                                      cql_copy.CopyOptions(concurrency=spec.cassandra_concurrency))
        out.update({"copied_chunks": len(report.chunks_done), "rows": report.rows})
    if new or pending:
        with ep.target.connect(autocommit=True) as tconn:
            ledger.record_event(tconn, run_id, step_name, "info", {"late_partitions": out})
    return out


def coverage_frame(tconn: psycopg.Connection, session: Any, tmap: TenantMap, tenant_id: int, run_id: str) -> Any:
    """Per Cassandra table: the tenant's bases in the target's rows (the replica's plus what the
    change stream brought) and how many of them no chunk of the run plans."""
    import pandas as pd

    missing = cql_plan.unplanned_bases(tconn, tmap, tenant_id, ledger.run_chunks(tconn, run_id, "cassandra"),
                                       session=session)
    return pd.DataFrame([{"unit": f"cassandra:{name}", "unplanned": len(bases),
                          "offending": "; ".join(map(str, bases[:10]))} for name, bases in missing.items()],
                        columns=["unit", "unplanned", "offending"])


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


def gate_final(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Nothing of another tenant on the target (PostgreSQL rows, Cassandra partitions); the
    registrations back on; every chunk of the run done."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    tmap = tmap or load_tenant_map()
    started = time.monotonic()
    gx_gate.warm_up_gx()
    with ep.target.connect() as tconn:
        with step(tconn, run_id, "gate_final") as detail:
            with ep.cassandra_target.session() as dst:
                owned = cassandra_ownership(dst, tconn, tmap, spec.tenant_id)
                history = history_frame(dst, tconn, tmap, run_id, spec.partial_history_ok)
            late = late_frame(ep, tconn, tmap, run_id)
            after = after_flip_frame(ep, spec, tconn, tmap, run_id)
            gate = gates.final_gate(tconn, tmap, spec.tenant_id, run_id, reports_dir() / _safe(run_id), started,
                                    cassandra=owned, history=history, late=late, after_flip=after)
            _record_gate(tconn, run_id, gate)
            detail.update({"passed": gate.passed, "report": str(gate.html_path),
                           "writes_after_flip": after.drop(columns=["offending"]).to_dict("records")})
    if not gate.passed:
        raise GateFailed(f"{gate.summary()} (report: {gate.html_path})")
    return {"passed": True, "summary": gate.summary(), "report": str(gate.html_path)}


def write_evidence(run_id: str, gate: str, evidence: dict[str, Any]) -> Path:
    folder = reports_dir() / _safe(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"gate_{gate}.json"
    path.write_text(json.dumps(evidence, indent=2, default=str))
    return path


def _safe(run_id: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)


def flip_dns(ep: Endpoints, spec: MigrationSpec, run_id: str, slug: str) -> dict[str, Any]:
    """Point the tenant's records at its dedicated endpoints: at once, or in the weighted steps of
    ``dns_shift_percent_steps``. Converges when run again (not retried blindly: a cutover task).

    Every try, and every step of a shift, first checks its preconditions as they are at that
    moment (``ensure_registrations_suspended``, ``ensure_dns_ready``): a try after a control-plane
    outage never flips on a TTL lowered, or registrations suspended, only in an earlier try."""
    r53 = ep.aws.client("route53")
    zid = dns.zone_id(r53, spec.dns_zone)
    plans = dns.tenant_records(spec.dns_zone, slug, spec.target_endpoint_prefix)
    before = {p.name: _answer(r53, zid, p.name) for p in plans}
    if spec.dry_run:
        return {"skipped": "dry run", "before": before}
    with ep.target.connect(autocommit=True) as tconn, step(tconn, run_id, "flip_dns") as detail:
        started = time.monotonic()
        if spec.dns_shift_percent_steps:
            detail["shift"] = shift_dns(ep, spec, run_id, slug, tconn)
        else:
            detail["preconditions"] = flip_preconditions(ep, spec, run_id, slug, tconn, r53, zid, plans)
            _flip_begins(tconn, run_id, 100)
            dns.point_records(r53, zid, plans, to_tenant=True, ttl=spec.lowered_ttl)
        after = {p.name: dns.resolve(r53, zid, p.name) for p in plans}
        detail.update({"before": before, "after": after, "seconds": round(time.monotonic() - started, 3)})
    return {"before": before, "after": after}


def _answer(r53: Any, zid: str, name: str) -> list[str]:
    """What a client resolves for ``name`` now; ``[name, "(no record)"]`` when the zone lost it."""
    try:
        return dns.resolve(r53, zid, name)
    except dns.DnsError:
        return [name, "(no record)"]


def flip_preconditions(ep: Endpoints, spec: MigrationSpec, run_id: str, slug: str, tconn: psycopg.Connection,
                       r53: Any, zid: str, plans: list[dns.RecordPlan]) -> dict[str, Any]:
    """Registrations suspended and the records' TTL lowered and waited out, both checked now."""
    regs = ensure_registrations_suspended(ep, spec, run_id, tconn, "flip_dns")
    ttl = ensure_dns_ready(spec, run_id, tconn, r53, zid, plans, "flip_dns")
    return {"registrations": regs, "dns": ttl}


def _flip_begins(tconn: psycopg.Connection, run_id: str, percent: int) -> None:
    """Mark, before the first change batch that moves records towards the target, when the target
    may begin to take the tenant's writes (``ledger.flip_time``)."""
    if ledger.last_event(tconn, run_id, "dns_flip_begins") is None:
        ledger.record_event(tconn, run_id, "dns_flip_begins", "info", {"percent": percent})


def shift_dns(ep: Endpoints, spec: MigrationSpec, run_id: str, slug: str, tconn: psycopg.Connection,
              tmap: TenantMap | None = None) -> list[dict[str, Any]]:
    """The weighted shift: each step ONE change batch (wait INSYNC, read back), then the dwell,
    then the ``dns_shift_<p>`` gate, then the next step; the 100 % step leaves the simple record
    the direct flip leaves. Run again after a failure, it resumes at the first step at or above
    the weight the records have now: traffic never moves back to the source. Each step checks
    the flip's preconditions first (``flip_preconditions``)."""
    r53 = ep.aws.client("route53")
    zid = dns.zone_id(r53, spec.dns_zone)
    plans = dns.tenant_records(spec.dns_zone, slug, spec.target_endpoint_prefix)
    now = dns.record_sets(r53, zid)
    at = min((dns.target_weight(now.get(p.name, []), p) or 0) for p in plans)
    done: list[dict[str, Any]] = []
    for percent in [p for p in spec.dns_shift_percent_steps if p >= at]:
        checked = flip_preconditions(ep, spec, run_id, slug, tconn, r53, zid, plans)
        _flip_begins(tconn, run_id, percent)
        weights = dns.shift_records(r53, zid, plans, percent, ttl=spec.lowered_ttl,
                                    comment=f"tenant migration shift {percent} %")
        ledger.record_event(tconn, run_id, "dns_shift", "info", {"percent": percent, "weights": weights})
        done.append({"percent": percent, "weights": weights, "preconditions": checked})
        if percent == 100:
            break
        time.sleep(spec.dns_shift_dwell_s)
        done[-1]["gate"] = gate_dns_shift(ep, spec, run_id, slug, percent, tconn, tmap)
    return done


def gate_dns_shift(ep: Endpoints, spec: MigrationSpec, run_id: str, slug: str, percent: int,
                   tconn: psycopg.Connection, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Between two shift steps: the records still carry the step's weights and the target answers
    (the tenant's root row on its PostgreSQL, its Cassandra node, its endpoint records)."""
    import pandas as pd

    tmap = tmap or load_tenant_map()
    started = time.monotonic()
    gx_gate.warm_up_gx()
    r53 = ep.aws.client("route53")
    zid = dns.zone_id(r53, spec.dns_zone)
    plans = dns.tenant_records(spec.dns_zone, slug, spec.target_endpoint_prefix)
    sets = dns.record_sets(r53, zid)
    weights = pd.DataFrame([{"unit": p.name, "target_weight": dns.target_weight(sets.get(p.name, []), p),
                             "expected": percent, "records": dns.describe_sets(sets.get(p.name, []))} for p in plans])
    weights["target_weight"] = weights["target_weight"].fillna(-1).astype(int)

    def probe(name: str, check: Any) -> dict[str, Any]:
        try:
            ok, detail = check()
        except Exception as exc:  # a probe that cannot answer is a failed probe, named with its error
            ok, detail = False, f"{type(exc).__name__}: {exc}"[:300]
        return {"unit": name, "ok": int(bool(ok)), "detail": str(detail)}

    def pg() -> tuple[bool, str]:
        with ep.target.connect(autocommit=True) as conn:
            found = tenant_slug(conn, tmap, spec.tenant_id)
        return found == slug, f"tenant row: {found!r}"

    def cql() -> tuple[bool, str]:
        with ep.cassandra_target.session() as s:
            row = s.execute("SELECT release_version FROM system.local").one()
        return row is not None, f"release {row[0] if row else None}"

    probes = pd.DataFrame([probe("postgres target", pg), probe("cassandra target", cql)]
                          + [probe(f"dns {p.tenant_target}",
                                   lambda p=p: (True, " -> ".join(dns.resolve(r53, zid, p.tenant_target))))
                             for p in plans])
    gate = gates.dns_shift_gate(percent, weights, probes, reports_dir() / _safe(run_id), started)
    _record_gate(tconn, run_id, gate)
    if not gate.passed:
        raise GateFailed(f"{gate.summary()} (report: {gate.html_path}); the records stay at {percent} %: "
                         f"clear flip_dns to resume the shift, or run tenant_rollback to go back")
    return {"passed": True, "report": str(gate.html_path)}


def report(ep: Endpoints, spec: MigrationSpec, run_id: str, dns_result: dict[str, Any] | None,
           tmap: TenantMap | None = None) -> dict[str, Any]:
    """Summarise the run from the ledger (rows per table, time per step, DNS) and close it: failed
    when a chunk is not done or a table of the tenant map has no plan at all."""
    folder = reports_dir() / _safe(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    if spec.dry_run:
        text = f"dry run for tenant {spec.tenant_id}: preflight passed, nothing was written\n"
        (folder / "summary.txt").write_text(text)
        return {"dry_run": True, "summary": str(folder / "summary.txt")}
    tmap = tmap or load_tenant_map()
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
    lines = [f"Tenant migration {run_id}: tenant {spec.tenant_id}", "", "Rows and partitions per table:"]
    lines += [f"  {name:<33} NOT PLANNED: nothing copied or compared" for name in unplanned]
    for (engine, table), t in sorted(per_table.items()):
        parts = f"{t['partitions']:>9} partitions" if engine == "cassandra" else " " * 20
        lines.append(f"  {engine:<10} {table:<22} {t['rows']:>10} rows {parts}  {t['done']}/{t['chunks']} chunks done"
                     + (f", {t['retried']} retried" if t["retried"] else ""))
    lines += ["", "Time per step:"]
    lines += [f"  {name:<26} {secs:8.2f} s" for name, secs in steps]
    lines += [f"  copy {eng:<21} {wall:8.2f} s wall  ({n} chunks, {rows} rows, {busy:.2f} s of chunk work)"
              for eng, n, rows, busy, wall in copies]
    lines += ["", "Gates:"]
    lines += [f"  {g:<26} {'passed' if ok else 'FAILED':<7} {sec or 0:6.2f} s  {path}" for g, ok, sec, path in gate_rows]
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


def create_cdc_slot(ep: Endpoints, spec: MigrationSpec, run_id: str) -> dict[str, Any]:
    """Create the run's logical slot on the primary BEFORE the detach: no change can fall between
    the replica's snapshot and the stream. Idempotent: an existing slot of the run is kept."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    name = cdc.slot_name_for(run_id)
    with ep.source_cdc.connect(autocommit=True) as src, ep.target.connect(autocommit=True) as tconn:
        with step(tconn, run_id, "create_cdc_slot") as detail:
            slot = cdc.create_slot(src, name)
            detail.update({"slot": name, "consistent_lsn": slot.consistent_lsn})
    return {"slot": name, "consistent_lsn": slot.consistent_lsn}


def drop_cdc_slot(ep: Endpoints, spec: MigrationSpec, run_id: str, keep_for_resume: bool = True) -> dict[str, Any]:
    """Teardown: drop the run's slot once the final gate passed (it reads the stream for writes the
    shared platform took after the drain), or whenever the run is not live (abort). After an
    earlier failure the slot is kept (``KeptForResume``): a resumed run replays from its first
    detach point, and a slot re-created later would miss changes (ADR 4)."""
    if keep_for_resume:
        _keep_for_resume(ep, run_id, "final", "change-capture slot")
    name = cdc.slot_name_for(run_id)
    with ep.source_cdc.connect(autocommit=True) as src:
        dropped = cdc.drop_slot(src, name)
    return {"slot": name, "dropped": dropped}


def _detach_lsn(tconn: psycopg.Connection, run_id: str) -> tuple[str, datetime | None]:
    run = ledger.run_row(tconn, run_id)
    if run is None or run.get("detach_lsn") is None:
        raise PreflightError(f"run {run_id} has no detach point: detach_replica must run first")
    return str(run["detach_lsn"]), run.get("detach_commit_time")


def catch_up_postgres(ep: Endpoints, spec: MigrationSpec, run_id: str, until_now: bool = False,
                      tmap: TenantMap | None = None, step_name: str | None = None) -> dict[str, Any]:
    """Stream the tenant's changes committed on the primary after the detach point until the lag is
    under the threshold (``until_now``: until everything committed before this call is applied)."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    tmap = tmap or load_tenant_map()
    name = cdc.slot_name_for(run_id)
    with ep.source_cdc.connect(autocommit=True) as src, ep.target.connect(autocommit=True) as tconn:
        start_lsn, _ = _detach_lsn(tconn, run_id)
        until = None
        if until_now:
            row = src.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            until = row[0] if row else None
        name_ = step_name or ("final_catch_up" if until_now else "catch_up_postgres")
        with step(tconn, run_id, name_) as detail:
            report = cdc.catch_up(src, tconn, tmap, spec.tenant_id, run_id, name, start_lsn,
                                  max_lag_bytes=spec.max_lag_bytes, timeout=spec.catch_up_timeout_s, until_lsn=until)
            detail.update(report.to_dict())
    return report.to_dict()


def final_catch_up(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """GO, registrations suspended: everything the primary committed until now onto the target,
    then the Cassandra partitions of the rows it brought (``plan_late_partitions``). A clear after
    a failure in the window finds registrations resumed by the teardown: suspended again first."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    tmap = tmap or load_tenant_map()
    with ep.target.connect(autocommit=True) as tconn:
        regs = ensure_registrations_suspended(ep, spec, run_id, tconn, "final_catch_up")
    out = catch_up_postgres(ep, spec, run_id, until_now=True, tmap=tmap)
    out["registrations"] = regs
    out["late_partitions"] = plan_late_partitions(ep, spec, run_id, tmap, "final_catch_up")
    out["sequences"] = advance_sequences(ep, spec, run_id, tmap)
    return out


def migrated_tables(tmap: TenantMap) -> list[str]:
    """Every PostgreSQL table a run writes on the target: the tenant's and the shared ones."""
    return tmap.load_order() + list(tmap.shared_tables)


def advance_sequences(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap) -> dict[str, Any]:
    """Every sequence the migrated tables draw from set on the target past the primary's, with
    ``sequence_headroom`` (``postgres.sequences``); idempotent, only ever forward."""
    with ep.source_cdc.connect(autocommit=True) as src, ep.target.connect(autocommit=True) as tconn:
        with step(tconn, run_id, "advance_sequences") as detail:
            found = sequences.advance(src, tconn, tmap.schema, migrated_tables(tmap), spec.sequence_headroom)
            moved = [st for st in found if st.set_to is not None]
            for st in moved:
                log.info("sequence %s: set to %d on the target (source next %d, target column max %s, headroom %d)",
                         st.use.label, st.set_to, st.source_next, st.target_max, spec.sequence_headroom)
            detail.update({"sequences": len(found), "advanced": [st.use.label for st in moved]})
    return {"sequences": len(found), "advanced": len(moved)}


def sequence_frame(src: psycopg.Connection, tconn: psycopg.Connection, tmap: TenantMap) -> Any:
    """Per sequence of the migrated tables: both sides' next values, the target column's maximum,
    and how far the target is short of both (0 when it is past them)."""
    import pandas as pd

    rows = [{"unit": f"sequence:{st.use.label}", "source_next": st.source_next, "target_next": st.target_next,
             "target_max": st.target_max, "short_by": max(0, st.needed(0) - st.target_next)}
            for st in sequences.states(src, tconn, tmap.schema, migrated_tables(tmap))]
    return pd.DataFrame(rows, columns=["unit", "source_next", "target_next", "target_max", "short_by"])


def catch_up_cassandra(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Re-copy the buckets at or after the detach watermark until the recent partitions match."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    from tenant_migration.cassandra import catchup as cql_catchup

    tmap = tmap or load_tenant_map()
    with ep.target.connect(autocommit=True) as tconn:
        _, commit_time = _detach_lsn(tconn, run_id)
        watermark = commit_time or datetime.now(UTC)
        with step(tconn, run_id, "catch_up_cassandra") as detail:
            # Rows the change stream brought so far (it runs beside this task): their partitions
            # are planned and copied first; later ones are the gate's and the final catch-up's.
            detail["late_partitions"] = plan_late_partitions(ep, spec, run_id, tmap, "catch_up_cassandra")
            chunks = ledger.run_chunks(tconn, run_id, "cassandra")
            with ep.cassandra_sessions() as (src, dst):
                passes = cql_catchup.catch_up(src, dst, tmap, chunks, watermark,
                                              opts=cql_copy.CopyOptions(concurrency=spec.cassandra_concurrency))
            out = {"passes": [p.to_dict() for p in passes], "converged": bool(passes and passes[-1].converged),
                   "late_partitions": detail["late_partitions"]}
            detail.update(out)
    if not out["converged"]:
        raise GateFailed(f"cassandra catch-up did not converge in {len(passes)} passes: {passes[-1].to_dict()}")
    return out


def warm_up(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Warm the target's caches before traffic arrives: PostgreSQL buffers and Cassandra partitions."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    from tenant_migration.cassandra import warmup as cql_warmup
    from tenant_migration.postgres import warmup as pg_warmup

    tmap = tmap or load_tenant_map()
    with ep.target.connect(autocommit=True) as tconn:
        with step(tconn, run_id, "warm_up") as detail:
            pg_report = pg_warmup.warm_up(tconn, tmap, spec.tenant_id).to_dict()
            with ep.cassandra_target.session() as dst:
                cql_report = cql_warmup.warm_up(dst, tmap, ledger.run_chunks(tconn, run_id, "cassandra")).to_dict()
            detail.update({"postgres": pg_report, "cassandra": cql_report})
    return {"postgres": pg_report, "cassandra": cql_report}


def load_check(ep: Endpoints, spec: MigrationSpec, run_id: str) -> dict[str, Any]:
    """SET phase: drive the target at the tenant's write shape and rate; p99 and errors gate it."""
    if spec.dry_run or spec.load_rate == 0:
        return {"skipped": "dry run" if spec.dry_run else "load_rate is 0"}
    from tenant_migration.fleet import loadcheck

    try:
        return loadcheck.load_check(ep, spec, run_id, rate=spec.load_rate, seconds=spec.load_seconds,
                                    max_p99_ms=spec.load_max_p99_ms, max_errors=0,
                                    min_rate_fraction=spec.load_min_rate_pct / 100)
    except loadcheck.LoadCheckFailed as exc:
        raise GateFailed(str(exc)) from exc


def gate_catch_up(ep: Endpoints, spec: MigrationSpec, run_id: str, gate_name: str = "catch_up",
                  tmap: TenantMap | None = None) -> dict[str, Any]:
    """Lag under the threshold and the latest changes present on the target (both stores)."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    import pandas as pd

    from tenant_migration.cassandra.catchup import recent_days

    tmap = tmap or load_tenant_map()
    started = time.monotonic()
    gx_gate.warm_up_gx()
    # The primary kept taking writes while the tasks between the catch-up and this gate ran
    # (warm-up, load check, scheduling): the target is that far behind. Bring it up to this moment
    # first, then measure. A stream that cannot get there within catch_up_timeout_s is not raised
    # here: it shows in the lag below, and the check fails with the numbers. Both Cassandra
    # clusters connect meanwhile.
    with ExitStack() as cassandra:
        sessions = cassandra.enter_context(ep.cassandra_sessions_soon())
        with suppress(cdc.CatchUpTimeout):
            catch_up_postgres(ep, spec, run_id, until_now=True, tmap=tmap, step_name=f"gate_{gate_name}_catch_up")
        with ep.source_cdc.connect(autocommit=True) as src, ep.target.connect(autocommit=True) as tconn:
            # PostgreSQL first, while the clusters are still connecting.
            lag = measure_cdc_lag(src, tconn, run_id)
            seqs = sequence_frame(src, tconn, tmap) if gate_name == "pre_flip" else None
            _, commit_time = _detach_lsn(tconn, run_id)
            days = recent_days((commit_time or datetime.now(UTC)) - timedelta(minutes=15), datetime.now(UTC))
            # Devices keep writing: compare the cells written before the last Cassandra catch-up
            # began (its converged pass began later, so every one of them must be on the target).
            row = tconn.execute("SELECT max(at) FROM tm_control.events WHERE run_id = %s "
                                "AND step = 'catch_up_cassandra' AND kind = 'started'", (run_id,)).fetchone()
            upto = int(row[0].timestamp() * 1_000_000) if row and row[0] else None
            # The partitions of the rows that catch-up brought (devices created since): planned and
            # copied before they are measured, so the coverage check below sees the target as it is.
            s_src, s_dst = sessions.result()
            plan_late_partitions(ep, spec, run_id, tmap, f"gate_{gate_name}_catch_up", source=s_src)
            chunks = ledger.run_chunks(tconn, run_id, "cassandra")
            coverage = coverage_frame(tconn, s_src, tmap, spec.tenant_id, run_id)
            report = fingerprint_chunks(s_src, s_dst, tmap, chunks, days=days, max_writetime=upto,
                                        scan_target=True, held=ledger.partitions_by_table(tconn, run_id))
            cassandra.close()  # both clusters shut down before the verdict, as the other gates do
            lag_frame = pd.DataFrame([{"unit": "postgres:cdc", "lag_bytes": lag["lag_bytes"],
                                       "lag_seconds": lag["lag_seconds"]}])
            recent = pd.DataFrame([{"unit": r["chunk_id"], "source_rows": r["source_rows"], "target_rows": r["target_rows"],
                                    "source_checksum": r["source_hash"], "target_checksum": r["target_hash"]}
                                   for r in report.records()],
                                  columns=["unit", "source_rows", "target_rows", "source_checksum", "target_checksum"])
            checks = gx_gate.run_frame_checks(gate_name, lag_frame, [
                gx_gate.FrameCheck("lag_bytes_under_threshold", "ExpectColumnValuesToBeBetween",
                                   {"column": "lag_bytes", "min_value": 0, "max_value": spec.max_lag_bytes},
                                   f"change capture lag at most {spec.max_lag_bytes} bytes"),
                gx_gate.FrameCheck("lag_seconds_under_threshold", "ExpectColumnValuesToBeBetween",
                                   {"column": "lag_seconds", "min_value": 0, "max_value": spec.max_lag_seconds},
                                   f"change capture lag at most {spec.max_lag_seconds} s"),
            ], "unit")
            checks += gx_gate.run_frame_checks(gate_name, recent, gates.comparison_checks("recent_buckets"), "unit")
            checks += gates.coverage_checks(gate_name, coverage)
            if seqs is not None:
                checks += gates.sequence_checks(gate_name, seqs)
            gate = gx_gate.finish_gate(gate_name, checks, reports_dir() / _safe(run_id), started)
            _record_gate(tconn, run_id, gate)
    if not gate.passed:
        raise GateFailed(f"{gate.summary()} (report: {gate.html_path})")
    return {"passed": True, "lag": lag, "report": str(gate.html_path)}


def measure_cdc_lag(src: psycopg.Connection, tconn: psycopg.Connection, run_id: str) -> dict[str, Any]:
    """Lag of the run's change stream as it is now, without consuming it: WAL bytes between the
    slot's confirmed position and the head when a decodable change is pending (else 0), and the
    age of the oldest pending change (else 0)."""
    slot = cdc.slot_name_for(run_id)
    row = src.execute(
        "SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s",
        (slot,)).fetchone()
    if row is None:
        raise GateFailed(f"the run's change-capture slot {slot} does not exist")
    first_xid = cdc.first_pending_xid(src, slot)
    pending = first_xid is not None
    prog = cdc.read_progress(tconn, run_id)
    age = None
    if first_xid is not None:
        # How old the oldest change not yet applied is (commit timestamps are on: the stack sets
        # track_commit_timestamp); else, on a primary without them, seconds since the stream was
        # last processed (an upper bound).
        try:
            got = src.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp() - pg_xact_commit_timestamp(%s::xid))::float8",
                              (first_xid,)).fetchone()
            age = got[0] if got else None
        except psycopg.Error:
            age = None
        if age is None and prog:
            got = tconn.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp() - updated_at)::float8 "
                                "FROM tm_control.cdc_progress WHERE run_id = %s", (run_id,)).fetchone()
            age = got[0] if got else None
    return {"lag_bytes": int(row[0] or 0) if pending else 0, "lag_seconds": max(0.0, float(age or 0.0)),
            "pending": pending, "applied_lsn": prog.applied_lsn if prog else None}


def suspend_registrations(ep: Endpoints, spec: MigrationSpec, run_id: str) -> dict[str, Any]:
    """Setup of the critical window: the platform refuses the tenant's new users and devices until
    resumed or until the expiry passes (the dead-man switch holds even if Airflow dies)."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    with ep.source_operator.connect(autocommit=True) as op, ep.target.connect(autocommit=True) as tconn:
        window = registrations.suspend(op, spec.tenant_id, timedelta(minutes=spec.suspension_minutes),
                                       f"tenant migration {run_id}")
        ledger.record_event(tconn, run_id, "registrations_suspended", "info", window.to_dict())
    return window.to_dict()


def resume_registrations(ep: Endpoints, spec: MigrationSpec, run_id: str, keep_for_resume: bool = True) -> dict[str, Any]:
    """Teardown: registrations come back on the source and on the target, whatever failed.

    When the cutover did not finish (the run is live and its ``post_flip`` gate has not passed),
    the task then fails on purpose (``KeptForResume``, ADR 10): a *Clear -> Only failed* of the
    failed work runs it again after the flip, while the cleared tasks suspend registrations
    again first (``final_catch_up``, ``flip_dns``). ``keep_for_resume=False`` (unattended
    rehearsals) never fails for that."""
    with ep.source_operator.connect(autocommit=True) as op:
        source = registrations.resume(op, spec.tenant_id)
    target: dict[str, Any] | None = None
    with ep.target.connect(autocommit=True) as tconn:
        try:
            target = registrations.resume(tconn, spec.tenant_id).to_dict()
        except registrations.RegistrationError:
            target = None  # the tenant's settings row never reached the target (failed early)
        if not spec.dry_run and ledger.run_row(tconn, run_id) is not None:
            ledger.record_event(tconn, run_id, "registrations_resumed", "info", source.to_dict())
            window = suspension_window(tconn, run_id)
            if window is not None:
                ledger.record_event(tconn, run_id, "suspension_window", "info", {"seconds": window})
    if keep_for_resume and not spec.dry_run:
        try:
            _keep_for_resume(ep, run_id, "post_flip", "registrations")
        except KeptForResume as exc:
            raise KeptForResume(
                f"registrations of tenant {spec.tenant_id} were resumed although the cutover did not finish (the "
                f"'post_flip' gate of run {run_id} has not passed). Fix the cause, then clear the failed task "
                f"instances (only failed, with downstream): the cleared tasks suspend registrations again before "
                f"the flip, and this teardown runs again after it. To give up instead: mark the ledger run "
                f"aborted (runbook: Abort), then clear this task.") from exc
    return {"source": source.to_dict(), "target": target}


def suspension_window(tconn: psycopg.Connection, run_id: str) -> float | None:
    row = tconn.execute(
        "SELECT EXTRACT(EPOCH FROM MAX(at) FILTER (WHERE step = 'registrations_resumed') "
        "- MIN(at) FILTER (WHERE step = 'registrations_suspended'))::float8 FROM tm_control.events WHERE run_id = %s",
        (run_id,)).fetchone()
    return float(row[0]) if row and row[0] is not None else None


def gate_pre_flip(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Before the flip: everything the source committed is on the target, every sequence of the
    migrated tables is past the source's, and registrations are off."""
    out = gate_catch_up(ep, spec, run_id, gate_name="pre_flip", tmap=tmap)
    if spec.dry_run:
        return out
    with ep.source_operator.connect(autocommit=True) as op:
        state = registrations.status(op, spec.tenant_id)
    if not state.active:
        raise GateFailed(f"pre_flip: registrations of tenant {spec.tenant_id} are not suspended ({state.to_dict()})")
    return out


def lower_dns_ttl(ep: Endpoints, spec: MigrationSpec, run_id: str, slug: str) -> dict[str, Any]:
    """Lower the records' TTL, then wait out the old TTL: at the flip no client holds an older answer.
    A retry (or a clear) waits only what is left of the wait begun by an earlier try."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    r53 = ep.aws.client("route53")
    zid = dns.zone_id(r53, spec.dns_zone)
    plans = dns.tenant_records(spec.dns_zone, slug, spec.target_endpoint_prefix)
    with ep.target.connect(autocommit=True) as tconn:
        out = ensure_dns_ready(spec, run_id, tconn, r53, zid, plans, "lower_dns_ttl")
        ledger.record_event(tconn, run_id, "lower_dns_ttl", "info", out)
    return out


def ensure_dns_ready(spec: MigrationSpec, run_id: str, tconn: psycopg.Connection, r53: Any, zid: str,
                     plans: list[dns.RecordPlan], by: str) -> dict[str, Any]:
    """The flip's DNS precondition, checked NOW (not taken from an earlier try): every record of the
    tenant has at most the lowered TTL, and the old TTL has passed since it was lowered (at most
    ``max_ttl_wait_s``: the operator's cap). Where it does not hold -- a control plane that came back
    with the records reset to a long TTL -- it lowers again and waits again. Returns what it found,
    lowered and waited; refuses (``DnsError``) when a record is missing from the zone."""
    sets = dns.record_sets(r53, zid)
    missing = dns.missing_records(sets, plans)
    if missing:
        raise dns.DnsError(f"the zone {spec.dns_zone} holds no record for {', '.join(missing)}: the DNS control "
                           f"plane lost them. Restore the records (pointing at the shared platform), then clear "
                           f"this task")
    high = dns.ttls_above(sets, plans, spec.lowered_ttl)
    last = ledger.last_event(tconn, run_id, "dns_ttl_lowered")
    relowered = bool(high) and last is not None
    if high or last is None:
        # Never lowered in this run, or raised again since: lower now and wait the old TTL from now.
        old = dns.lower_ttl(r53, zid, plans, spec.lowered_ttl)
        wait = float(min(old, spec.max_ttl_wait_s))
        detail: dict[str, Any] = {"old_ttl": old, "new_ttl": spec.lowered_ttl, "wait_s": wait, "found_above": high, "by": by}
        ledger.record_event(tconn, run_id, "dns_ttl_lowered", "info", detail)
        remaining = wait
        if wait < old:
            log.warning("the records' old TTL is %ss; waiting %ss (max_ttl_wait_s): clients may keep the old "
                        "answer up to %ss after the flip, the drain waits for their writes", old, wait, old - wait)
    else:
        _, detail, since = last
        remaining = max(0.0, float(detail.get("wait_s", 0)) - since)
    if remaining > 0:
        time.sleep(remaining)
    if relowered:
        log.warning("the tenant's records were back at a TTL above %ss (%s): lowered again, waited %.0fs",
                    spec.lowered_ttl, ", ".join(f"{n} {t}s" for n, t in high.items()), remaining)
    return {"old_ttl": detail["old_ttl"], "new_ttl": spec.lowered_ttl, "waited_s": round(remaining, 3),
            "found_above": high, "lowered_again": relowered}


def ensure_registrations_suspended(ep: Endpoints, spec: MigrationSpec, run_id: str, tconn: psycopg.Connection,
                                   by: str) -> dict[str, Any]:
    """The flip's other precondition, checked NOW: the tenant's registrations are suspended. A clear
    after a failed flip finds them resumed (the teardown ran); they are suspended again here, with
    a fresh expiry, and the teardown (failed on purpose, ``resume_registrations``) runs again after."""
    with ep.source_operator.connect(autocommit=True) as op:
        state = registrations.status(op, spec.tenant_id)
        if state.active:
            return {"suspended_again": False, "until": state.to_dict()["suspended_until"]}
        window = registrations.suspend(op, spec.tenant_id, timedelta(minutes=spec.suspension_minutes),
                                       f"tenant migration {run_id}")
    ledger.record_event(tconn, run_id, "registrations_suspended", "info", {**window.to_dict(), "by": by})
    return {"suspended_again": True, "until": window.to_dict()["suspended_until"], "found": state.to_dict()}


def drain_stragglers(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """After the flip, clients with a stale DNS answer still write to the shared platform: keep
    bringing those writes over (Cassandra buckets and the change stream) until they have stopped
    (``cutover.drain``): at least ``drain_seconds``, then ``drain_quiet_s`` without a new write; a
    tenant still writing there after ``drain_max_s`` fails the task with what it saw."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    from tenant_migration.cassandra import catchup as cql_catchup
    from tenant_migration.cassandra.ratelimit import TokenBucket
    from tenant_migration.cutover import drain

    tmap = tmap or load_tenant_map()
    opts = cql_copy.CopyOptions(concurrency=spec.cassandra_concurrency)
    limiter = TokenBucket(opts.rows_per_second)
    with ep.target.connect(autocommit=True) as tconn, step(tconn, run_id, "drain_stragglers") as detail:
        flipped = ledger.flip_time(tconn, run_id)
        if flipped is None:
            raise PreflightError(f"run {run_id} never flipped its DNS records: flip_dns must run before the drain")
        # A weighted shift sent writes to both sides since it began; clocks drift by a minute at most.
        since = min(datetime.now(UTC) - timedelta(minutes=15), flipped - timedelta(minutes=1))
        late_planned: list[dict[str, Any]] = []
        with ep.cassandra_sessions() as (src, dst):

            def one_pass(n: int) -> drain.Seen:
                chunks = ledger.run_chunks(tconn, run_id, "cassandra")
                cql = cql_catchup.drain_pass(src, dst, tmap, chunks, since, flipped, pass_no=n, opts=opts,
                                             limiter=limiter)
                pg = catch_up_postgres(ep, spec, run_id, until_now=True, tmap=tmap, step_name="drain_postgres")
                if pg["changes_applied"] or n == 1:  # rows the stream brought may own new partitions
                    late_planned.append(plan_late_partitions(ep, spec, run_id, tmap, "drain_stragglers", source=src))
                prog = cdc.read_progress(tconn, run_id)
                newest_change = prog.applied_commit_time if prog and pg["changes_applied"] else None
                return drain.Seen(cql.rows, cql.late_cells, cql.newest_writetime, int(pg["changes_applied"]),
                                  newest_change)

            def on_pass(p: drain.DrainPass) -> None:
                log.info("drain pass %d at %.0fs: %d Cassandra cells on the shared side after the flip, %d relational "
                         "changes, %s", p.pass_no, p.at_s, p.seen.late_cells, p.seen.changes,
                         "new writes" if p.new_writes else "quiet")

            try:
                result = drain.until_quiet(one_pass, min_seconds=spec.drain_seconds, quiet_seconds=spec.drain_quiet_s,
                                           max_seconds=spec.drain_max_s, poll_seconds=_drain_poll(spec),
                                           on_pass=on_pass)
            except drain.DrainNotQuiet as exc:
                ledger.record_event(tconn, run_id, "drain_not_quiet", "info", exc.result.to_dict())
                raise
        out = {**result.to_dict(), "flip_at": flipped.isoformat(),
               "cassandra_passes": [{"rows": p.seen.rows_copied, "late_cells": p.seen.late_cells}
                                    for p in result.passes],
               "cassandra_rows": sum(p.seen.rows_copied for p in result.passes),
               "late_partitions": {"planned": sum(x["planned"] for x in late_planned),
                                   "rows": sum(x["rows"] for x in late_planned)}}
        detail.update(out)
    return {k: v for k, v in out.items() if k != "pass_log"}


def _drain_poll(spec: MigrationSpec) -> float:
    """Seconds between drain passes: a third of the quiet window, 1 to 10 s."""
    return float(max(1, min(10, spec.drain_quiet_s // 3 or 1)))


def gate_post_flip(ep: Endpoints, spec: MigrationSpec, run_id: str, slug: str, drained: dict[str, Any],
                   tmap: TenantMap | None = None) -> dict[str, Any]:
    """Every record of the tenant answers the target endpoint; the straggler drain ran; the
    partitions planned after the detach hold the same cells on both sides up to the flip."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    import pandas as pd

    tmap = tmap or load_tenant_map()
    started = time.monotonic()
    gx_gate.warm_up_gx()
    r53 = ep.aws.client("route53")
    zid = dns.zone_id(r53, spec.dns_zone)
    rows = []
    for plan in dns.tenant_records(spec.dns_zone, slug, spec.target_endpoint_prefix):
        chain = dns.resolve(r53, zid, plan.name)
        rows.append({"unit": plan.name, "answer": chain[1], "expected": plan.tenant_target})
    frame = pd.DataFrame(rows)
    passes = pd.DataFrame([{"unit": f"pass {i}", "rows": p.get("rows", 0)}
                           for i, p in enumerate(drained.get("cassandra_passes", []), 1)], columns=["unit", "rows"])
    checks = gx_gate.run_frame_checks("post_flip", frame, [gx_gate.FrameCheck(
        "records_answer_target", "ExpectColumnPairValuesToBeEqual", {"column_A": "answer", "column_B": "expected"},
        "every record of the tenant answers the target endpoint")], "unit")
    checks += gx_gate.run_frame_checks("post_flip", passes, [gx_gate.FrameCheck(
        "drain_ran", "ExpectTableRowCountToBeBetween", {"min_value": 1},
        "the straggler drain made at least one pass")], "unit")
    with ep.target.connect(autocommit=True) as tconn:
        checks += gates.late_checks("post_flip", late_frame(ep, tconn, tmap, run_id))
        gate = gx_gate.finish_gate("post_flip", checks, reports_dir() / _safe(run_id), started)
        _record_gate(tconn, run_id, gate)
    if not gate.passed:
        raise GateFailed(f"{gate.summary()} (report: {gate.html_path})")
    return {"passed": True, "report": str(gate.html_path)}
