"""One function per DAG task: the work of each step, callable without a scheduler.

Every step is keyed by (run id, step) and is safe to retry or clear by hand: it reads the ledger
and does only the work not yet done. Steps return small JSON-able summaries for XCom: no
credentials, no row data.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from tenant_migration import ledger, replica
from tenant_migration.cassandra.copy import PartitionCopier, plan_partitions, retention_days, table_shape
from tenant_migration.cutover import dns
from tenant_migration.endpoints import Endpoints
from tenant_migration.postgres.catalog import schema_drift
from tenant_migration.postgres.copy import copy_table
from tenant_migration.spec import MigrationSpec
from tenant_migration.tenant_map import TenantMap, load_tenant_map
from tenant_migration.validation import gates
from tenant_migration.validation.counts import GateFailed
from tenant_migration.validation.gx_gate import GateResult


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
    from psycopg import sql

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
    problems: list[str] = []
    with ep.replica.connect(autocommit=True) as rconn, ep.target.connect() as tconn:
        slug = tenant_slug(rconn, tmap, spec.tenant_id)
        if slug is None:
            raise PreflightError(f"tenant {spec.tenant_id} does not exist on the source replica {ep.replica.label}")
        problems += schema_drift(rconn, tconn, tmap)
        with ep.cassandra_source.session() as s_src, ep.cassandra_target.session() as s_dst:
            for name in tmap.cassandra_tables:
                src_ok = name in s_src.cluster.metadata.keyspaces.get(tmap.keyspace, _NoTables).tables
                dst_ok = name in s_dst.cluster.metadata.keyspaces.get(tmap.keyspace, _NoTables).tables
                if not src_ok:
                    problems.append(f"cassandra {tmap.keyspace}.{name}: missing on the source")
                elif not dst_ok:
                    problems.append(f"cassandra {tmap.keyspace}.{name}: missing on the target")
                else:
                    a, b = table_shape(s_src, tmap.keyspace, name), table_shape(s_dst, tmap.keyspace, name)
                    if a != b:
                        problems.append(f"cassandra {tmap.keyspace}.{name}: columns differ ({a} vs {b})")
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
        if problems:
            raise PreflightError("preflight failed, nothing was written:\n  - " + "\n  - ".join(problems))
        gate = gates.preflight_gate(rconn, tconn, ep.replica.sqlalchemy_url(), tmap, spec.tenant_id,
                                    reports_dir() / _safe(run_id))
        if not gate.passed:
            raise PreflightError(f"{gate.summary()}\nnothing was written; report: {gate.html_path}")
        if spec.dry_run:
            return {"tenant_id": spec.tenant_id, "slug": slug, "dry_run": True, "report": str(gate.html_path)}
        new = ledger.start_run(tconn, run_id, spec.tenant_id, fingerprint(ep, tmap, spec.tenant_id), spec.to_dict())
        _record_gate(tconn, run_id, gate)
        ledger.record_event(tconn, run_id, "preflight", "started", at=began)
        ledger.record_event(tconn, run_id, "preflight", "finished", {"slug": slug, "new_run": new})
    return {"tenant_id": spec.tenant_id, "slug": slug, "new_run": new, "dry_run": False}


def _record_gate(tconn: psycopg.Connection, run_id: str, gate: GateResult) -> None:
    ledger.record_gate(tconn, run_id, gate.gate, gate.passed, gate.summary(), gate.evidence(), str(gate.html_path))


class _NoTables:
    tables: dict[str, Any] = {}


def detach_replica(ep: Endpoints, spec: MigrationSpec, run_id: str) -> dict[str, Any]:
    if spec.dry_run:
        return {"skipped": "dry run"}
    with ep.replica_control.connect(autocommit=True) as rc, ep.target.connect() as tconn:
        with step(tconn, run_id, "detach_replica") as detail:
            point = replica.detach(rc)
            ledger.record_detach(tconn, run_id, point.lsn, point.commit_time)
            detail.update(point.to_dict())
    return point.to_dict()


def reattach_replica(ep: Endpoints, spec: MigrationSpec, run_id: str) -> dict[str, Any]:
    """Always resume replay (runs as a teardown, also when the migration failed)."""
    with ep.replica_control.connect(autocommit=True) as rc:
        before = replica.reattach(rc)
    return {"state_before": before}


def copy_postgres(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    if spec.dry_run:
        return {"skipped": "dry run"}
    tmap = tmap or load_tenant_map()
    out: dict[str, Any] = {}
    with ep.replica.connect(autocommit=True) as rconn, ep.target.connect() as tconn:
        with step(tconn, run_id, "copy_postgres") as detail:
            chunks = [ledger.Chunk(f"pg:{t}", "postgres", t, {}) for t in tmap.load_order()]
            ledger.plan_chunks(tconn, run_id, chunks)
            for chunk in chunks:
                res = copy_table(rconn, tconn, tmap, chunk.table_name, spec.tenant_id, run_id, chunk.chunk_id)
                out[chunk.table_name] = {"rows": res.rows, "skipped": res.skipped, "seconds": round(res.seconds, 3)}
            detail["tables"] = out
    return out


def copy_cassandra(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    if spec.dry_run:
        return {"skipped": "dry run"}
    tmap = tmap or load_tenant_map()
    days = retention_days(datetime.now(UTC).date(), spec.cassandra_days)
    out: dict[str, Any] = {}
    with ep.replica.connect(autocommit=True) as rconn, ep.target.connect() as tconn:
        with step(tconn, run_id, "copy_cassandra") as detail:
            chunks = [ledger.Chunk(f"cql:{t}", "cassandra", t, {"days": [d.isoformat() for d in days]})
                      for t in tmap.cassandra_tables]
            ledger.plan_chunks(tconn, run_id, chunks)
            with ep.cassandra_source.session() as src, ep.cassandra_target.session() as dst:
                for chunk in chunks:
                    if ledger.chunk_status(tconn, run_id, chunk.chunk_id) == ledger.ChunkStatus.DONE:
                        out[chunk.table_name] = {"skipped": True}
                        continue
                    ledger.mark_chunk_running(tconn, run_id, chunk.chunk_id)
                    try:
                        cspec = tmap.cassandra_tables[chunk.table_name]
                        parts = plan_partitions(rconn, tmap, cspec, spec.tenant_id, days)
                        copier = PartitionCopier(src, dst, table_shape(src, tmap.keyspace, chunk.table_name),
                                                 spec.cassandra_concurrency)
                        stats = copier.copy(parts)
                    except Exception as exc:
                        ledger.mark_chunk_failed(tconn, run_id, chunk.chunk_id, f"{type(exc).__name__}: {exc}")
                        raise
                    with tconn.transaction():
                        ledger.mark_chunk_done(tconn, run_id, chunk.chunk_id, stats.rows, 0, "", "",
                                               partitions=stats.nonempty)
                    out[chunk.table_name] = {"partitions": stats.nonempty, "probed": stats.partitions, "rows": stats.rows,
                                             "seconds": round(stats.seconds, 3)}
            detail["tables"] = out
    return out


def gate_post_copy(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Counts and checksums equal on both sides for every table of both stores, recomputed now.

    Evidence (GX JSON, HTML report, ledger row) is stored first; then the gate raises.
    """
    if spec.dry_run:
        return {"skipped": "dry run"}
    import pandas as pd

    tmap = tmap or load_tenant_map()
    days = retention_days(datetime.now(UTC).date(), spec.cassandra_days)
    with ep.replica.connect(autocommit=True) as rconn, ep.target.connect() as tconn:
        with step(tconn, run_id, "gate_post_copy") as detail:
            frame = gates.post_copy_frame(rconn, tconn, tmap, spec.tenant_id)
            rows = []
            with ep.cassandra_source.session() as s_src, ep.cassandra_target.session() as s_dst:
                for name, cspec in tmap.cassandra_tables.items():
                    parts = plan_partitions(rconn, tmap, cspec, spec.tenant_id, days)
                    copier = PartitionCopier(s_src, s_dst, table_shape(s_src, tmap.keyspace, name), spec.cassandra_concurrency)
                    src, dst = copier.count(parts, on_target=False), copier.count(parts, on_target=True)
                    rows.append({"unit": f"cassandra:{name}", "source_rows": src, "target_rows": dst,
                                 "source_checksum": f"{src}", "target_checksum": f"{dst}"})
            frame = pd.concat([frame, pd.DataFrame(rows)], ignore_index=True)
            gate = gates.post_copy_gate(frame, reports_dir() / _safe(run_id))
            _record_gate(tconn, run_id, gate)
            detail.update({"passed": gate.passed, "report": str(gate.html_path), "seconds": round(gate.seconds, 3)})
    if not gate.passed:
        raise GateFailed(f"{gate.summary()} (report: {gate.html_path})")
    return {"passed": True, "summary": gate.summary(), "report": str(gate.html_path)}


def gate_final(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Nothing of another tenant on the target; every chunk of the run done."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    tmap = tmap or load_tenant_map()
    with ep.target.connect() as tconn:
        with step(tconn, run_id, "gate_final") as detail:
            gate = gates.final_gate(tconn, ep.target.sqlalchemy_url(), tmap, spec.tenant_id, run_id,
                                    reports_dir() / _safe(run_id))
            _record_gate(tconn, run_id, gate)
            detail.update({"passed": gate.passed, "report": str(gate.html_path)})
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
    """Point the tenant's records at its dedicated endpoints. Safe to retry: UPSERT converges."""
    r53 = ep.aws.client("route53")
    zid = dns.zone_id(r53, spec.dns_zone)
    plans = dns.tenant_records(spec.dns_zone, slug, spec.target_endpoint_prefix)
    before = {p.name: dns.resolve(r53, zid, p.name) for p in plans}
    if spec.dry_run:
        return {"skipped": "dry run", "before": before}
    with ep.target.connect() as tconn, step(tconn, run_id, "flip_dns") as detail:
        started = time.monotonic()
        dns.point_records(r53, zid, plans, to_tenant=True)
        after = {p.name: dns.resolve(r53, zid, p.name) for p in plans}
        detail.update({"before": before, "after": after, "seconds": round(time.monotonic() - started, 3)})
    return {"before": before, "after": after}


def report(ep: Endpoints, spec: MigrationSpec, run_id: str, dns_result: dict[str, Any] | None) -> dict[str, Any]:
    """Summarise the run from the ledger (rows per table, time per step, DNS) and close it."""
    folder = reports_dir() / _safe(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    if spec.dry_run:
        text = f"dry run for tenant {spec.tenant_id}: preflight passed, nothing was written\n"
        (folder / "summary.txt").write_text(text)
        return {"dry_run": True, "summary": str(folder / "summary.txt")}
    with ep.target.connect() as tconn:
        chunks = ledger.chunk_rows(tconn, run_id)
        steps = ledger.step_durations(tconn, run_id)
        not_done = [c["chunk_id"] for c in chunks if c["status"] != "done"]
        ledger.finish_run(tconn, run_id, "failed" if not_done else "succeeded")
    lines = [f"Tenant migration {run_id}: tenant {spec.tenant_id}", "", "Rows and partitions per table:"]
    for c in chunks:
        parts = f"{c['partitions']:>9} partitions" if c["partitions"] is not None else " " * 20
        lines.append(f"  {c['engine']:<10} {c['table_name']:<22} {c['rows_copied'] or 0:>10} rows {parts}  "
                     f"{c['status']:<8} attempts {c['attempts']}")
    lines += ["", "Time per step:"]
    lines += [f"  {name:<18} {secs:8.2f} s" for name, secs in steps]
    if dns_result:
        lines += ["", "DNS answer before and after the flip:"]
        for name, chain in (dns_result.get("before") or {}).items():
            after = (dns_result.get("after") or {}).get(name, ["(not flipped)"])
            lines.append(f"  {name}\n    before: {' -> '.join(chain)}\n    after:  {' -> '.join(after)}")
    text = "\n".join(lines) + "\n"
    (folder / "summary.txt").write_text(text)
    summary = {"chunks": chunks, "steps": steps, "dns": dns_result}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if not_done:
        raise RuntimeError(f"run {run_id} has chunks not done: {', '.join(not_done)}")
    return {"summary": str(folder / "summary.txt"), "tables": len(chunks)}
