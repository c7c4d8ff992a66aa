"""READY: preflight, the change stream's slot, the replica detached, the plan and the copy of both
stores, the post-copy gate, the replica reattached (steps of ``dags/tenant_migration.py``)."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import psycopg

from tenant_migration import ledger, profile, progress, sizing
from tenant_migration.cassandra import copy as cql_copy
from tenant_migration.cassandra import plan as cql_plan
from tenant_migration.cassandra import schema as cql_schema
from tenant_migration.cassandra.fingerprint import fingerprint_chunks
from tenant_migration.cutover import dns, registrations
from tenant_migration.endpoints import Endpoints
from tenant_migration.flows import replica_modes
from tenant_migration.flows.common import (
    PreflightError,
    detach_lsn,
    dns_plans,
    fingerprint,
    hold_for_resume,
    profile_of,
    record_gate_result,
    reports_dir,
    safe_name,
    step,
    tenant_slug,
)
from tenant_migration.postgres import cdc
from tenant_migration.postgres import copy as pg_copy
from tenant_migration.postgres import planner as pg_planner
from tenant_migration.postgres.catalog import check_tenant_map
from tenant_migration.profile import Profile
from tenant_migration.spec import MigrationSpec
from tenant_migration.tenant_map import TenantMap
from tenant_migration.validation import dedicated, gates, gx_gate
from tenant_migration.validation.counts import GateFailed
from tenant_migration.validation.differences import fingerprint_frame

log = logging.getLogger(__name__)




def preflight(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Check every precondition, then register the run. Nothing is written before all checks pass."""
    prof = profile_of(spec)
    tmap = tmap or prof.tenant_map
    began = datetime.now(UTC)
    started = time.monotonic()
    gx_gate.warm_up_gx(reports_dir() / safe_name(run_id))
    problems: list[str] = []
    with ep.replica.connect(autocommit=True) as rconn, ep.target.connect() as tconn, \
            ThreadPoolExecutor(max_workers=3, thread_name_prefix="preflight") as pool:
        cassandra = pool.submit(cassandra_drift, ep, tmap)
        # The tenant map against the live catalogs first: the look-ups below read its tables.
        mapped = check_tenant_map(rconn, tconn, tmap)
        if any(p.startswith(f"{tmap.schema}.{tmap.root_table}: ") for p in mapped):
            raise PreflightError("preflight failed, nothing was written:\n  - " + "\n  - ".join(
                mapped + cassandra.result()))
        slug = tenant_slug(rconn, tmap, spec.tenant_id, prof.doc.tenant)
        if slug is None:
            raise PreflightError(f"tenant {spec.tenant_id} does not exist on the source replica {ep.replica.label} "
                                 f"(platform {prof.name!r})")
        changed = profile_changes(tconn, run_id, prof)
        if changed:
            raise PreflightError(
                f"run {run_id} was started with platform profile {prof.name!r} as it was then; it has changed since "
                f"({prof.path}):\n  - " + "\n  - ".join(changed) + "\nRestore the profile to resume this run, or abort "
                "the run (runbook: Abort) and trigger a new one; nothing was written")
        try:
            plans = dns_plans(spec, slug, prof)
        except dns.DnsError as exc:
            raise PreflightError(f"preflight failed, nothing was written:\n  - profile {prof.name!r}: {exc}") from None
        # Cassandra's schema, the DNS zone and the registration switch are asked while the replica is checked.
        zone = pool.submit(dns_problems, ep, spec, plans)
        switch = pool.submit(switch_problems, ep, prof, spec.tenant_id)
        problems += replica_modes.problems(ep, prof, rconn)
        # The replica's checks only on a catalog that matches the tenant map (else that is the
        # error to show, not a failed query); nothing is written yet.
        check = gx_gate.Gate("preflight", reports_dir() / safe_name(run_id))
        if not mapped:
            gates.preflight_checks(check, rconn, tmap, spec.tenant_id, [])
        problems += mapped + cassandra.result() + zone.result() + switch.result()
        skipped: dict[str, int] = {}
        if not problems:
            with ep.cassandra_target.session() as dst:
                problems += empty_key_problems(rconn, dst, tmap, spec.tenant_id, skipped)
                if not ledger.run_known(tconn, run_id):
                    # A new run: the target holds nothing of anyone else (a resumed run checked it first).
                    problems += dedicated.target_problems(rconn, tconn, dst, tmap, spec.tenant_id)
        if problems:
            raise PreflightError("preflight failed, nothing was written:\n  - " + "\n  - ".join(problems))
        gate = check.finish(started)
        if not gate.passed:
            raise PreflightError(f"{gate.summary()}\nnothing was written; Data Docs: {gate.report}")
        out = {"tenant_id": spec.tenant_id, "slug": slug, "platform": prof.name, "empty_keys_skipped": skipped}
        if spec.dry_run:
            return {**out, "dry_run": True, "report": str(gate.report)}
        new = ledger.start_run(tconn, run_id, spec.tenant_id, fingerprint(ep, tmap, spec.tenant_id, prof),
                               {**spec.to_dict(), "profile": prof.document})
        record_gate_result(tconn, run_id, gate)
        ledger.record_event(tconn, run_id, "preflight", "started", at=began)
        ledger.record_event(tconn, run_id, "preflight", "finished",
                            {"slug": slug, "platform": prof.name, "profile_digest": prof.digest, "new_run": new,
                             "empty_keys_skipped": skipped})
    return {**out, "new_run": new, "dry_run": False}


def profile_changes(tconn: psycopg.Connection, run_id: str, prof: Profile) -> list[str]:
    """What changed in the profile since the run ``run_id`` started with it (nothing for a new run)."""
    started_with = ledger.run_spec(tconn, run_id).get("profile")
    if started_with is None:
        return []
    return profile.changes(started_with, prof.document)


def switch_problems(ep: Endpoints, prof: Profile, tenant_id: int) -> list[str]:
    """The profile's registration switch answers for the tenant (its ``status``), on its connection;
    the connections it resumes on are defined. Reads only."""
    switch = prof.registrations
    where = f"profile {prof.name!r} registrations"
    problems = []
    for conn_id in switch.resume_also_on:
        try:
            ep.http(conn_id) if switch.kind == "http" else ep.postgres(conn_id)
        except KeyError as exc:
            problems.append(f"{where}.resume_also_on: {exc.args[0]}")
    try:
        with registrations.side(ep, switch, switch.connection) as side:
            state = side.status(tenant_id)
    except KeyError as exc:
        return [*problems, f"{where}.connection: {exc.args[0]}"]
    except (registrations.RegistrationError, psycopg.Error, ConnectionError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, registrations.RegistrationError):  # the switch's own errors name their call
            first = f"{type(exc).__name__}: {first}"
        return [*problems, f"{where}.status (connection {switch.connection}) does not answer for tenant "
                           f"{tenant_id}: {first}"]
    if state.active:
        log.info("registrations of tenant %s are suspended already: %s", tenant_id, state.to_dict())
    return problems


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
    actual = [col for col, _ in cql_schema.partition_key(columns)]
    supplied = (f"the relational rows (partitions_from {tmap.schema}.{spec.partitions_from_table}: "
                f"{', '.join(spec.partitions_from_columns)}) nor the day bucket "
                f"({'day_column: ' + spec.day_column if spec.day_column else 'no day_column'})")
    if list(spec.partition_key) != actual:
        unsupplied = [c for c in actual if c not in spec.partition_key]
        return [f"{where}: partition-key column {c} is supplied neither by {supplied}" for c in unsupplied] + [
            f"{where}: the tenant map's partition_key {list(spec.partition_key)} is not the table's {actual}"]
    types = keys.column_types(columns)
    base = cql_plan.base_columns(spec)
    if spec.day_column is not None:
        if spec.day_column not in actual:
            return [f"{where}: day_column {spec.day_column} is not a partition-key column ({actual})"]
        if types[spec.day_column] != "date":
            return [f"{where}: day_column {spec.day_column} has type {types[spec.day_column]}; the day bucket is a "
                    "CQL date"]
    if len(base) > len(spec.partitions_from_columns):
        return [f"{where}: partition-key column {c} is supplied neither by {supplied}"
                for c in base[len(spec.partitions_from_columns):]]
    problems = [f"{where}: partition-key column {c} has type {types[c]}, which cannot be planned from relational "
                "rows (supported: scalars, uuid/timeuuid, inet, decimal, date, timestamp, blob, tuples)"
                for c in base if not keys.supported(types[c])]
    if len(base) != len(spec.partitions_from_columns):
        problems.append(f"{where}: partitions_from names {len(spec.partitions_from_columns)} columns for "
                        f"{len(base)} partition-key columns {base}")
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


def dns_problems(ep: Endpoints, spec: MigrationSpec, plans: list[dns.RecordPlan]) -> list[str]:
    """The tenant's records and its target endpoints' records exist in the zone."""
    problems = []
    r53 = ep.aws.client("route53")
    try:
        zid = dns.zone_id(r53, spec.dns_zone)
        existing = dns.records(r53, zid)
        for plan in plans:
            if plan.name not in existing:
                problems.append(f"dns {plan.name}: no record")
            if plan.tenant_target not in existing:
                problems.append(f"dns {plan.tenant_target}: the tenant's target endpoint has no record")
    except dns.DnsError as exc:
        problems.append(f"dns: {exc}")
    return problems


def detach_replica(ep: Endpoints, spec: MigrationSpec, run_id: str, min_lsn: str | None = None) -> dict[str, Any]:
    """Freeze the replica the copy reads at or after ``min_lsn`` (the change-capture slot's
    consistent point: every change after the detach point is then in the stream), the profile's
    way (``replica_modes``)."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    prof = profile_of(spec)
    with ep.target.connect() as tconn:
        with step(tconn, run_id, "detach_replica") as detail:
            out, commit_time = replica_modes.detach(ep, prof, tconn, run_id, min_lsn)
            # The run's change-capture slot predates the first detach, so a later snapshot is safe.
            ledger.record_detach(tconn, run_id, out["lsn"], commit_time, allow_later=True)
            detail.update(out)
    return out


def reattach_replica(ep: Endpoints, spec: MigrationSpec, run_id: str, keep_for_resume: bool = True) -> dict[str, Any]:
    """Teardown of the detach: resume replay (``local``) or drop the run's own standby
    (``promote``, ``rds``) once the copy passed its gate, or whenever the run is not live. After a
    failed copy the replica stays at the run's snapshot (``KeptForResume``) so that clearing the
    failed chunk tasks copies from the same point in time the gate compares.
    ``keep_for_resume=False`` (unattended rehearsals) always releases."""
    if keep_for_resume:
        hold_for_resume(ep, run_id, "post_copy", "detached replica")
    return replica_modes.release(ep, profile_of(spec), run_id)


def copy_shared_tables(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Give the target the shared reference tables the tenant's rows point at (replaced whole)."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    from tenant_migration.postgres.shared import copy_shared_tables as copy_shared

    tmap = tmap or profile_of(spec).tenant_map
    ep = replica_modes.copy_source(ep, profile_of(spec), run_id)
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
    tmap = tmap or profile_of(spec).tenant_map
    ep = replica_modes.copy_source(ep, profile_of(spec), run_id)
    with ep.replica.connect(autocommit=True) as rconn, ep.target.connect() as tconn:
        chunks = pg_planner.plan_postgres(rconn, tconn, tmap, run_id, spec.tenant_id, spec.chunk_rows)
        done = {c.chunk_id for c in chunks if ledger.chunk_status(tconn, run_id, c.chunk_id) == ledger.ChunkStatus.DONE}
        tconn.commit()
    return [c.chunk_id for c in chunks if c.chunk_id not in done]


def record_batch(tconn: psycopg.Connection, run_id: str, engine: str, chunk_ids: list[str]) -> None:
    """Which chunks one mapped copy task holds, named by its first (a run's batches are disjoint):
    what the batch's "Chunks of this batch" link lists (``evidence``). Once per batch."""
    if not chunk_ids:
        return
    seen = tconn.execute("SELECT 1 FROM tm_control.events WHERE run_id = %s AND step = 'copy_batch' AND "
                         "detail->>'first' = %s AND detail->'chunk_ids' = %s::jsonb LIMIT 1",
                         (run_id, chunk_ids[0], json.dumps(chunk_ids))).fetchone()
    if seen is None:
        ledger.record_event(tconn, run_id, "copy_batch", "info",
                            {"engine": engine, "first": chunk_ids[0], "chunk_ids": list(chunk_ids)})


def _progress_conn(ep: Endpoints) -> Any:
    """How a progress ticker reaches the ledger: a connection of its own, opened in its thread."""
    return lambda: ep.target.connect(autocommit=True, application_name="tenant_migration progress")


def copy_postgres_batch(ep: Endpoints, spec: MigrationSpec, run_id: str, chunk_ids: list[str],
                        tmap: TenantMap | None = None) -> dict[str, Any]:
    """Copy the given PostgreSQL chunks, one atomic target transaction each: one mapped task's work.
    Chunks already done are skipped, so clearing this task redoes only what is not done."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    tmap = tmap or profile_of(spec).tenant_map
    started = time.monotonic()
    ep = replica_modes.copy_source(ep, profile_of(spec), run_id)
    with ep.target.connect(autocommit=True) as tconn:
        wanted = set(chunk_ids)
        planned = [c for c in ledger.run_chunks(tconn, run_id, "postgres") if c.chunk_id in wanted]
        record_batch(tconn, run_id, "postgres", chunk_ids)
    with progress.chunk_ticker("copy_postgres_batch", _progress_conn(ep), run_id, "postgres", planned):
        results = pg_copy.copy_chunks(ep.replica, ep.target, tmap, run_id, spec.tenant_id, chunk_ids)
    skipped = sum(int(r.skipped) for r in results)
    return {"chunks": len(chunk_ids), "copied": len(results) - skipped, "skipped": skipped,
            "rows": sum(r.rows for r in results), "seconds": round(time.monotonic() - started, 3)}


def copy_postgres(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Plan and copy every PostgreSQL chunk of the run not done yet (outside Airflow's mapping)."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    tmap = tmap or profile_of(spec).tenant_map
    copy_shared_tables(ep, spec, run_id, tmap)
    ep = replica_modes.copy_source(ep, profile_of(spec), run_id)
    with ep.target.connect(autocommit=True) as tconn:
        with step(tconn, run_id, "copy_postgres") as detail, progress.chunk_ticker(
                "copy_postgres", _progress_conn(ep), run_id, "postgres", None):
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
    tmap = tmap or profile_of(spec).tenant_map
    ep = replica_modes.copy_source(ep, profile_of(spec), run_id)
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
    tmap = tmap or profile_of(spec).tenant_map
    plan_cassandra(ep, spec, run_id, tmap)
    with ep.target.connect(autocommit=True) as tconn:
        with step(tconn, run_id, "copy_cassandra") as detail, progress.chunk_ticker(
                "copy_cassandra", _progress_conn(ep), run_id, "cassandra", None):
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
    tmap = tmap or profile_of(spec).tenant_map
    with ep.target.connect(autocommit=True) as tconn:
        wanted = set(chunk_ids)
        chunks = [c for c in ledger.run_chunks(tconn, run_id, "cassandra") if c.chunk_id in wanted]
        missing = wanted - {c.chunk_id for c in chunks}
        if missing:
            raise PreflightError(f"chunks not in the ledger of run {run_id}: {sorted(missing)[:5]}")
        record_batch(tconn, run_id, "cassandra", chunk_ids)
        with progress.chunk_ticker("copy_cassandra_batch", _progress_conn(ep), run_id, "cassandra", chunks):
            report = cql_copy.copy_chunks(ep, run_id, tmap, cql_plan.copy_order(chunks),
                                          cql_copy.CopyOptions(concurrency=spec.cassandra_concurrency))
        ledger.record_event(tconn, run_id, "copy_cassandra", "info", {"chunks": len(chunks), **report.to_dict()})
    return report.to_dict()


def cassandra_fingerprints(ep: Endpoints, run_id: str, tmap: TenantMap) -> Any:
    """Per-chunk fingerprints (count + hash of key, value, writetime) on both sides, as a DataFrame.

    Devices keep writing to the shared cluster during the copy: only cells written at or before
    the detach watermark are compared (newer ones are the catch-up's, checked by its gate).
    """

    with ep.target.connect(autocommit=True) as tconn:
        chunks = ledger.run_chunks(tconn, run_id, "cassandra")
        _, commit_time = detach_lsn(tconn, run_id)
    watermark = int(commit_time.timestamp() * 1_000_000) if commit_time else None
    with ep.cassandra_sessions() as (src, dst):
        report = fingerprint_chunks(src, dst, tmap, chunks, max_writetime=watermark, scan_target=True)
        return fingerprint_frame(report, src, dst, tmap, watermark)


def gate_post_copy(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Counts and checksums equal on both sides for every table of both stores, recomputed now.

    Evidence (GX JSON, HTML report, ledger row) is stored first; then the gate raises.
    """
    if spec.dry_run:
        return {"skipped": "dry run"}

    tmap = tmap or profile_of(spec).tenant_map
    started = time.monotonic()
    gx_gate.warm_up_gx(reports_dir() / safe_name(run_id))
    ep = replica_modes.copy_source(ep, profile_of(spec), run_id)
    with ep.replica.connect(autocommit=True) as rconn, ep.target.connect(autocommit=True) as tconn:
        with step(tconn, run_id, "gate_post_copy") as detail, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="post-copy-cassandra") as pool:
            # Cassandra's fingerprints (driver I/O + Python hashing) while PostgreSQL scans.
            cql = pool.submit(cassandra_fingerprints, ep, run_id, tmap)
            frame = gates.post_copy_frame(rconn, tconn, tmap, spec.tenant_id, run_id)
            gate = gates.post_copy_gate(frame, reports_dir() / safe_name(run_id), started,
                                        coverage=(tconn, gates.plan_coverage_check(tconn, tmap, run_id)),
                                        cassandra=cql.result())
            record_gate_result(tconn, run_id, gate)
            detail.update({"passed": gate.passed, "report": str(gate.report), "seconds": round(gate.seconds, 3)})
    if not gate.passed:
        raise GateFailed(f"{gate.summary()} (Data Docs: {gate.report})")
    return {"passed": True, "summary": gate.summary(), "report": str(gate.report)}


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
