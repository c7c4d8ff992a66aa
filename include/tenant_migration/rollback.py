"""The way back: after a DNS flip, return a tenant to the shared platform.

Design note. After the flip the tenant's rows on the target are authoritative: every write the
tenant made since reached the target (the straggler drain brought the late writes to the shared
platform over too). Going back is therefore a copy in the other direction, with the roles swapped
(``WayBack``): the target is the reader, the shared primary the writer (as ``migration_writer``,
which exists on the primary with the same grants and password as on the target).

* PostgreSQL: per table, ONE primary transaction deletes the tenant's rows (tenant predicate) and
  re-loads the target's, with ``session_replication_role = replica`` (no platform trigger fires,
  no per-row FK check), then compares count and checksum of both sides before COMMIT. Tables go
  children first (reverse load order): a child's tenant predicate joins its parents, which must
  still be the old ones when the child's old rows are deleted.
* Cassandra: only cells written after the flip can be missing on the shared cluster. The chunks
  are planned from the TARGET's relational rows (devices created after the flip included), over
  the day buckets since the flip, and copied with their WRITETIME and TTL from ``min_writetime`` =
  flip minus a clock-skew margin: last-write-wins makes the copy idempotent.
* Progress lives in the ledger under the rollback's own run id (chunks ``back:<table>`` and
  ``cql:...``): a retry or a clear redoes only what is not done. The primary transaction commits
  before its ledger mark (two servers): a crash in between redoes one table, idempotently.
* Nothing is written unless ``confirm_tenant_slug`` names the tenant (safe default).

Known limit (runbook): a write that reaches the shared platform between the flip back and the
copy-back of its table is superseded by the target's row; ``flip_dns_back`` waits out the TTL
first so the target has stopped receiving writes when the copy starts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from tenant_migration import ledger, profile
from tenant_migration.cutover import dns
from tenant_migration.endpoints import Endpoints, PgEndpoint
from tenant_migration.spec import InvalidParams
from tenant_migration.tenant_map import TenantMap

CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class WayBack:
    """Endpoints for the copy target -> shared platform. Holds credentials: never log it."""

    reader: PgEndpoint  # the tenant's dedicated target (authoritative after the flip)
    writer: PgEndpoint  # the shared primary, as migration_writer
    ledger: PgEndpoint  # the target's tm_control schema
    swapped: Endpoints  # cassandra_source = the tenant's cluster, cassandra_target = the shared one

    def __repr__(self) -> str:
        return f"WayBack({self.reader!r} -> {self.writer!r})"


def way_back(ep: Endpoints) -> WayBack:
    """Derive the reversed endpoints from the forward ones: migration_writer's credentials (from the
    target connection) on the primary's host and port."""
    writer = PgEndpoint(ep.source_primary.host, ep.source_primary.port, ep.target.user, ep.target.password,
                        ep.source_primary.dbname)
    swapped = replace(ep, cassandra_source=ep.cassandra_target, cassandra_target=ep.cassandra_source)
    return WayBack(reader=ep.target, writer=writer, ledger=ep.target, swapped=swapped)


@dataclass(frozen=True)
class RollbackSpec:
    tenant_id: int
    confirm_tenant_slug: str = ""
    migration_run_id: str = ""
    dns_zone: str = "iot.example.test."
    target_endpoint_prefix: str = "vpc"
    max_ttl_wait_s: int = 300
    cassandra_concurrency: int = 64
    platform: str = ""  # the platform profile (``MigrationSpec.platform``)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_rollback_spec(params: dict[str, Any]) -> RollbackSpec:
    known = set(RollbackSpec.__dataclass_fields__)
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidParams(f"unknown param(s): {', '.join(unknown)}")
    try:
        tenant_id = int(params["tenant_id"])
    except (KeyError, TypeError, ValueError):
        raise InvalidParams("param 'tenant_id' is required and must be an integer") from None
    return RollbackSpec(
        tenant_id=tenant_id,
        confirm_tenant_slug=str(params.get("confirm_tenant_slug") or ""),
        migration_run_id=str(params.get("migration_run_id") or ""),
        dns_zone=str(params.get("dns_zone") or RollbackSpec.dns_zone),
        target_endpoint_prefix=str(params.get("target_endpoint_prefix") or RollbackSpec.target_endpoint_prefix),
        max_ttl_wait_s=int(params.get("max_ttl_wait_s", RollbackSpec.max_ttl_wait_s)),
        cassandra_concurrency=int(params.get("cassandra_concurrency", RollbackSpec.cassandra_concurrency)),
        platform=str(params.get("platform") or ""),
    )


class RollbackRefused(RuntimeError):
    """The rollback cannot start (not confirmed, no migration run); nothing was written."""


def latest_migration_run(tconn: psycopg.Connection, tenant_id: int, exclude: str) -> str | None:
    row = tconn.execute(
        "SELECT r.run_id FROM tm_control.runs r WHERE r.tenant_id = %s AND r.run_id <> %s AND r.run_id NOT LIKE '%%/back' "
        "AND EXISTS (SELECT 1 FROM tm_control.events e WHERE e.run_id = r.run_id AND e.step = 'flip_dns') "
        "ORDER BY r.started_at DESC LIMIT 1", (tenant_id, exclude)).fetchone()
    return str(row[0]) if row else None


def check_rollback(ep: Endpoints, spec: RollbackSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Refuse unless confirmed; find the migration run and its flip; register the rollback run
    and plan its chunks. The migration run, if still live, is marked aborted (the rollback ends it)."""
    from tenant_migration.flows.common import tenant_slug

    prof = profile.named(spec.platform)
    tmap = tmap or prof.tenant_map
    back = way_back(ep)
    with back.reader.connect(autocommit=True) as tconn:
        slug = tenant_slug(tconn, tmap, spec.tenant_id, prof.doc.tenant)
        if slug is None:
            raise RollbackRefused(f"tenant {spec.tenant_id} has no row on the target: nothing to bring back")
        if spec.confirm_tenant_slug != slug:
            raise RollbackRefused(f"confirm_tenant_slug must be {slug!r} to roll tenant {spec.tenant_id} back "
                                  f"(got {spec.confirm_tenant_slug!r}); nothing was written")
        migration = spec.migration_run_id or latest_migration_run(tconn, spec.tenant_id, run_id)
        if migration is None or ledger.run_row(tconn, migration) is None:
            raise RollbackRefused(f"no flipped migration run of tenant {spec.tenant_id} in the ledger")
        flipped = ledger.flip_time(tconn, migration)
        mig = ledger.run_row(tconn, migration)
        if mig is not None and mig["status"] == "running":
            ledger.finish_run(tconn, migration, "aborted")
        fp = ledger.context_fingerprint(reader=back.reader.label, writer=back.writer.label,
                                        cassandra=ep.cassandra_source.label, migration=migration)
        new = ledger.start_run(tconn, run_id, spec.tenant_id, fp, {**spec.to_dict(), "direction": "back"})
        since = flipped or datetime.now(UTC)
        pg_chunks = [ledger.Chunk(f"back:{i:02d}:{t}", "postgres", t, {"direction": "back"})
                     for i, t in enumerate(reversed(tmap.load_order()))]
        ledger.plan_chunks(tconn, run_id, pg_chunks)
        if not ledger.run_chunks(tconn, run_id, "cassandra"):
            ledger.plan_chunks(tconn, run_id, plan_cassandra_back(tconn, ep, tmap, spec.tenant_id, since))
        detail = {"slug": slug, "migration_run": migration, "flip_at": flipped.isoformat() if flipped else None,
                  "new_run": new}
        ledger.record_event(tconn, run_id, "check_rollback", "info", detail)
    return detail


def plan_cassandra_back(tconn: psycopg.Connection, ep: Endpoints, tmap: TenantMap, tenant_id: int,
                        since: datetime) -> list[ledger.Chunk]:
    """Chunks over the buckets since the flip, from the target's rows (new devices included)."""
    from tenant_migration.cassandra import plan as cql_plan

    today = datetime.now(UTC).date()
    days = days_since(since, today)
    with ep.cassandra_target.session() as s:
        return cql_plan.plan_tenant(tconn, tmap, tenant_id, today, cql_plan.PlanOptions(days=days), session=s)


def flip_dns_back(ep: Endpoints, spec: RollbackSpec, run_id: str, slug: str) -> dict[str, Any]:
    """Point the tenant's records back at the shared platform as one simple record each (from a
    flipped record or from the weighted set of a shift stopped midway; converges), then wait out
    the TTL so the target stops receiving writes before the copy-back."""
    r53 = ep.aws.client("route53")
    zid = dns.zone_id(r53, spec.dns_zone)
    from tenant_migration.flows.common import dns_plans

    plans = dns_plans(spec, slug)
    before = {p.name: dns.resolve(r53, zid, p.name) for p in plans}
    sets = dns.record_sets(r53, zid)  # a weighted set, when a shift stopped midway: every member
    ttl = max((int(rr.get("TTL", 0)) for p in plans for rr in sets.get(p.name, [])), default=0)
    started = time.monotonic()
    dns.point_records(r53, zid, plans, to_tenant=False)
    after = {p.name: dns.resolve(r53, zid, p.name) for p in plans}
    wait = min(ttl, spec.max_ttl_wait_s)
    time.sleep(wait)
    out = {"before": before, "after": after, "waited_s": wait, "seconds": round(time.monotonic() - started, 3)}
    with ep.target.connect(autocommit=True) as tconn:
        ledger.record_event(tconn, run_id, "flip_dns_back", "info", out)
    return out


def _copy_back_table(back: WayBack, tmap: TenantMap, table: str, tenant_id: int) -> tuple[int, str, str]:
    """Delete + re-load the tenant's rows of ``table`` on the primary in one transaction; returns
    (rows, target checksum, primary checksum). Raises (and rolls back) on a mismatch."""
    from tenant_migration.postgres.catalog import columns
    from tenant_migration.postgres.copy import ChecksumMismatch, table_checksum

    with back.reader.connect() as rconn, back.writer.connect() as wconn:
        rconn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        src_rows, src_sum = table_checksum(rconn, tmap, table, tenant_id)
        cols = [c for c, _ in columns(rconn, tmap.schema, table)]
        with wconn.transaction():
            wconn.execute("SET LOCAL session_replication_role = replica")
            wconn.execute(sql.SQL("DELETE FROM {} AS t WHERE {}").format(tmap.qualified(table), tmap.tenant_predicate(table)),
                          {"tenant_id": tenant_id})
            out_q = sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(tmap.select_tenant_rows(table, cols))
            in_q = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
                tmap.qualified(table), sql.SQL(", ").join(sql.Identifier(c) for c in cols))
            with rconn.cursor() as rc, wconn.cursor() as wc:
                with rc.copy(out_q, {"tenant_id": tenant_id}) as reader, wc.copy(in_q) as writer:
                    for data in reader:
                        writer.write(data)
            dst_rows, dst_sum = table_checksum(wconn, tmap, table, tenant_id)
            if (src_rows, src_sum) != (dst_rows, dst_sum):
                raise ChecksumMismatch(f"copy-back of {table}: target {src_rows} rows {src_sum}, "
                                       f"primary {dst_rows} rows {dst_sum}; rolled back")
        rconn.rollback()
    return src_rows, src_sum, dst_sum


def catch_up_unfinished_flip(ep: Endpoints, tconn: psycopg.Connection, run_id: str,
                             tmap: TenantMap) -> dict[str, Any] | None:
    """When the migration's flip never passed ``post_flip`` (a weighted shift stopped midway, or a
    drain that never ran), the source took writes the target has not got: stream them over first
    (the run's change stream, kept for exactly this), or the copy-back would overwrite them."""
    from tenant_migration.flows.common import gate_passed
    from tenant_migration.flows.set import catch_up_postgres
    from tenant_migration.spec import parse_spec

    migration = str(check_rollback_detail(tconn, run_id).get("migration_run") or "")
    run = ledger.run_row(tconn, migration) if migration else None
    if run is None or gate_passed(tconn, migration, "post_flip"):
        return None
    # The run's params as it stored them (its profile document beside them is not a param).
    spec = parse_spec({k: v for k, v in dict(run["spec"]).items() if v is not None and k != "profile"})
    return catch_up_postgres(ep, spec, migration, until_now=True, tmap=tmap, step_name="catch_up_before_rollback")


def copy_back_postgres(ep: Endpoints, spec: RollbackSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Every table not done yet, children first; done tables are skipped (safe to clear). A flip
    that never finished first brings the source's late writes to the target."""
    tmap = tmap or profile.named(spec.platform).tenant_map
    back = way_back(ep)
    out: dict[str, int] = {}
    started = time.monotonic()
    with back.ledger.connect(autocommit=True) as tconn:
        caught_up = catch_up_unfinished_flip(ep, tconn, run_id, tmap)
        for chunk in ledger.pending_chunks(tconn, run_id, "postgres"):
            ledger.mark_chunk_running(tconn, run_id, chunk.chunk_id)
            try:
                rows, a, b = _copy_back_table(back, tmap, chunk.table_name, spec.tenant_id)
            except Exception as exc:
                ledger.mark_chunk_failed(tconn, run_id, chunk.chunk_id, f"{type(exc).__name__}: {exc}")
                raise
            with tconn.transaction():
                ledger.mark_chunk_done(tconn, run_id, chunk.chunk_id, rows, 0, a, b)
            out[chunk.table_name] = rows
        detail = {"tables": out, "seconds": round(time.monotonic() - started, 3), "caught_up": caught_up}
        ledger.record_event(tconn, run_id, "copy_back_postgres", "info", detail)
    return detail


def copy_back_cassandra(ep: Endpoints, spec: RollbackSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Cells written on the tenant's cluster since the flip, to the shared cluster (WRITETIME and
    TTL kept: idempotent). Chunks done are skipped."""
    from tenant_migration.cassandra import copy as cql_copy
    from tenant_migration.cassandra.plan import copy_order

    tmap = tmap or profile.named(spec.platform).tenant_map
    back = way_back(ep)
    started = time.monotonic()
    rows = chunks_done = 0
    with back.ledger.connect(autocommit=True) as tconn:
        mig = (ledger.run_row(tconn, run_id) or {}).get("spec", {})
        migration = check_rollback_detail(tconn, run_id).get("migration_run") or mig.get("migration_run_id")
        flipped = ledger.flip_time(tconn, migration) if migration else None
        floor = int(((flipped or datetime.now(UTC)) - CLOCK_SKEW).timestamp() * 1_000_000)
        opts = cql_copy.CopyOptions(concurrency=spec.cassandra_concurrency)
        copiers: dict[str, Any] = {}
        with back.swapped.cassandra_source.session() as src, back.swapped.cassandra_target.session() as dst:
            for chunk in copy_order(ledger.pending_chunks(tconn, run_id, "cassandra")):
                ledger.mark_chunk_running(tconn, run_id, chunk.chunk_id)
                try:
                    copier = copiers.get(chunk.table_name)
                    if copier is None:
                        shape = cql_copy.table_shape(src, tmap.keyspace, chunk.table_name)
                        copier = copiers[chunk.table_name] = cql_copy.ChunkCopier(
                            src, dst, shape, tmap.cassandra_tables[chunk.table_name].day_column, opts)
                    stats = copier.copy_chunk(chunk.bounds, min_writetime=floor)
                except Exception as exc:
                    ledger.mark_chunk_failed(tconn, run_id, chunk.chunk_id, f"{type(exc).__name__}: {exc}")
                    raise
                with tconn.transaction():
                    ledger.mark_chunk_done(tconn, run_id, chunk.chunk_id, stats.rows, 0, "", "",
                                           partitions=stats.nonempty)
                rows += stats.cells
                chunks_done += 1
        detail = {"chunks": chunks_done, "cells": rows, "min_writetime_us": floor,
                  "seconds": round(time.monotonic() - started, 3)}
        ledger.record_event(tconn, run_id, "copy_back_cassandra", "info", detail)
    return detail


def check_rollback_detail(tconn: psycopg.Connection, run_id: str) -> dict[str, Any]:
    row = tconn.execute("SELECT detail FROM tm_control.events WHERE run_id = %s AND step = 'check_rollback' "
                        "ORDER BY event_id DESC LIMIT 1", (run_id,)).fetchone()
    return dict(row[0]) if row else {}


def gate_copy_back(ep: Endpoints, spec: RollbackSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """GX gate: per table, count and checksum of the tenant's rows equal on target and primary;
    per Cassandra chunk (buckets since the flip), fingerprints equal on both clusters. Evidence first."""
    import pandas as pd

    from tenant_migration.cassandra.fingerprint import fingerprint_chunks
    from tenant_migration.flows.common import reports_dir, safe_name
    from tenant_migration.postgres.copy import table_checksum
    from tenant_migration.validation import gx_gate
    from tenant_migration.validation.counts import GateFailed
    from tenant_migration.validation.differences import fingerprint_frame

    tmap = tmap or profile.named(spec.platform).tenant_map
    back = way_back(ep)
    started = time.monotonic()
    rows = []
    with back.reader.connect(autocommit=True) as rconn, back.writer.connect(autocommit=True) as wconn:
        for table in tmap.load_order():
            a, b = table_checksum(rconn, tmap, table, spec.tenant_id), table_checksum(wconn, tmap, table, spec.tenant_id)
            rows.append({"unit": f"postgres:{table}", "source_rows": a[0], "target_rows": b[0],
                         "source_checksum": a[1], "target_checksum": b[1]})
        chunks = ledger.run_chunks(rconn, run_id, "cassandra")
    with back.swapped.cassandra_source.session() as src, back.swapped.cassandra_target.session() as dst:
        report = fingerprint_chunks(src, dst, tmap, chunks)
        cassandra = fingerprint_frame(report, src, dst, tmap)
    frame = pd.DataFrame(rows, columns=["unit", "source_rows", "target_rows", "source_checksum", "target_checksum"])
    check = gx_gate.Gate("copy_back", reports_dir() / safe_name(run_id))
    check.compare("postgres", frame, "postgres", "row counts and row checksums of the dedicated side and the shared one")
    check.compare("cassandra", cassandra, "cassandra")
    gate = check.finish(started)
    with back.ledger.connect(autocommit=True) as tconn:
        ledger.record_gate(tconn, run_id, gate.gate, gate.passed, gate.summary(), gate.evidence(), str(gate.report))
    if not gate.passed:
        raise GateFailed(f"{gate.summary()} (Data Docs: {gate.report})")
    return {"passed": True, "units": len(rows) + len(cassandra), "report": str(gate.report)}


def finish_rollback(ep: Endpoints, spec: RollbackSpec, run_id: str) -> dict[str, Any]:
    """Close the rollback run and write its summary (steps, chunks, gates)."""
    from tenant_migration.flows.common import reports_dir, safe_name

    folder = reports_dir() / safe_name(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    with ep.target.connect(autocommit=True) as tconn:
        chunks = ledger.chunk_rows(tconn, run_id)
        events = tconn.execute("SELECT step, detail FROM tm_control.events WHERE run_id = %s AND kind = 'info' "
                               "ORDER BY event_id", (run_id,)).fetchall()
        not_done = [c["chunk_id"] for c in chunks if c["status"] != "done"]
        ledger.finish_run(tconn, run_id, "failed" if not_done else "succeeded")
    summary = {"run_id": run_id, "tenant_id": spec.tenant_id, "chunks": chunks,
               "steps": [{"step": s, "detail": d} for s, d in events]}
    path = folder / "rollback_summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str))
    if not_done:
        raise RuntimeError(f"rollback {run_id} has chunks not done: {', '.join(not_done)}")
    return {"summary": str(path), "chunks": len(chunks)}


def days_since(flipped: datetime, today: date) -> int:
    return max(1, (today - flipped.date()).days + 1)


@contextmanager
def refusals_fail() -> Iterator[None]:
    """A refusal is final: fail the task without retry (Airflow's fail-without-retry)."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        yield
    except (RollbackRefused, InvalidParams) as exc:
        raise AirflowFailException(str(exc)) from exc
