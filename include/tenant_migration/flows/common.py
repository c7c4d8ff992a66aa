"""What every phase's steps share: the step record in the ledger, the run's reports folder,
the gate record, keeping a resource for a resume, and the names a run is known by."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tenant_migration import ledger, profile
from tenant_migration.cutover import dns
from tenant_migration.endpoints import Endpoints
from tenant_migration.profile import Profile, TenantLookup
from tenant_migration.tenant_map import TenantMap
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


def profile_of(spec: Any) -> Profile:
    """The platform profile a run's spec names (``spec.platform``), read now from the deployment's
    profiles folder: every step asks it, none keeps a platform's names of its own."""
    return profile.named(spec.platform)


def tenant_slug(conn: psycopg.Connection, tmap: TenantMap, tenant_id: int, lookup: TenantLookup) -> str | None:
    """The tenant's slug (its DNS label) as the profile finds it: a column of the tenant map's root
    table, or the profile's own query. None when the tenant does not exist."""
    if lookup.slug_query is not None:
        cur = conn.execute(sql.SQL(lookup.slug_query), {"tenant_id": tenant_id})  # type: ignore[arg-type]
    else:
        assert lookup.slug_column is not None
        cur = conn.execute(sql.SQL("SELECT {} FROM {} WHERE {} = %s").format(
            sql.Identifier(lookup.slug_column), tmap.qualified(tmap.root_table), sql.Identifier(tmap.root_key)),
            (tenant_id,))
    row = cur.fetchone()
    return None if row is None or row[0] is None else str(row[0])


def dns_plans(spec: Any, slug: str, prof: Profile | None = None) -> list[dns.RecordPlan]:
    """The tenant's records as the run's profile names them (``dns.records``), in the run's zone."""
    prof = prof or profile_of(spec)
    return dns.tenant_records(prof.dns.records, spec.dns_zone, slug, spec.target_endpoint_prefix, spec.tenant_id)


def fingerprint(ep: Endpoints, tmap: TenantMap, tenant_id: int, prof: Profile) -> str:
    return ledger.context_fingerprint(
        replica=ep.replica.label,
        target=ep.target.label,
        cassandra_source=ep.cassandra_source.label,
        cassandra_target=ep.cassandra_target.label,
        tenant_map=tmap.platform + ":" + ",".join(tmap.load_order()),
        tenant=str(tenant_id),
        profile=f"{prof.name}:{prof.digest}",
    )


def record_gate_result(tconn: psycopg.Connection, run_id: str, gate: GateResult) -> None:
    ledger.record_gate(tconn, run_id, gate.gate, gate.passed, gate.summary(), gate.evidence(), str(gate.report))


class KeptForResume(RuntimeError):
    """A teardown kept its resource (detached replica, change-capture slot) because the work that
    needs it failed and can be resumed by clearing the failed tasks (ADR 7). The teardown fails so
    that the held resource shows red in the UI and is re-run by a *Clear -> Only failed*."""


def gate_passed(tconn: psycopg.Connection, run_id: str, gate: str) -> bool:
    row = tconn.execute("SELECT passed FROM tm_control.gates WHERE run_id = %s AND gate = %s "
                        "ORDER BY attempt DESC LIMIT 1", (run_id, gate)).fetchone()
    return bool(row and row[0])


def hold_for_resume(ep: Endpoints, run_id: str, gate: str, resource: str) -> None:
    """Raise ``KeptForResume`` when the run is live and the phase needing ``resource`` has not
    passed ``gate``: a clear of its failed tasks needs the same snapshot and the same stream.
    Releases (returns) when the phase passed, or when the run is not live (never registered:
    dry run or refused preflight; finished; or aborted -- the way to give the resource up)."""
    with ep.target.connect(autocommit=True) as tconn:
        row = tconn.execute("SELECT to_regclass('tm_control.runs') IS NOT NULL").fetchone()
        run = ledger.run_row(tconn, run_id) if row and row[0] else None
        if run is None or run["status"] != "running" or gate_passed(tconn, run_id, gate):
            return
        ledger.record_event(tconn, run_id, f"keep_{resource}", "info", {"until_gate": gate})
    raise KeptForResume(
        f"{resource} kept for a resume: the {gate!r} gate of run {run_id} has not passed. Fix the cause, then "
        f"clear the failed task instances (only failed, with downstream): this teardown runs again and releases "
        f"it. To give up instead: mark the ledger run aborted (runbook: Abort), then clear this task.")


def write_evidence(run_id: str, gate: str, evidence: dict[str, Any]) -> Path:
    folder = reports_dir() / safe_name(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"gate_{gate}.json"
    path.write_text(json.dumps(evidence, indent=2, default=str))
    return path


def safe_name(run_id: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)


def detach_lsn(tconn: psycopg.Connection, run_id: str) -> tuple[str, datetime | None]:
    run = ledger.run_row(tconn, run_id)
    if run is None or run.get("detach_lsn") is None:
        raise PreflightError(f"run {run_id} has no detach point: detach_replica must run first")
    return str(run["detach_lsn"]), run.get("detach_commit_time")


def migrated_tables(tmap: TenantMap) -> list[str]:
    """Every PostgreSQL table a run writes on the target: the tenant's and the shared ones."""
    return tmap.load_order() + list(tmap.shared_tables)
