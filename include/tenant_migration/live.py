"""What the "Tenant migrations" page shows (``plugins/tenant_migration_ui.py``), read from the
ledger (``tm_control``) and, for DNS, from Route53: every run of the migration, rehearsal and
rollback DAGs with its tenant, platform and phase; per store a progress bar (chunks, rows or
partitions done of planned, the current rate, the ETA at that rate); the copy's rate over time and
the change stream's lag as series for plots; every gate with its verdict, time and evidence; the
registrations' suspension window; each DNS record's answer and weights.

Everything here is a plain dict of numbers and names: no connection, password or URI reaches the
page. The rates and ETAs are computed the way the task logs' progress lines compute them
(``progress``): planned work from the chunks' bounds, the rate over the last minute.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from tenant_migration.ledger import Chunk
from tenant_migration.progress import planned_units, unit_of

RATE_WINDOW_S = 60.0
SERIES_BUCKET_S = 10
# A run's phase from the step of its newest event (first prefix that matches).
_PHASES: tuple[tuple[str, str], ...] = (
    ("gate_final", "finish"), ("report", "finish"),
    ("check_rollback", "rollback"), ("flip_dns_back", "rollback"), ("copy_back", "rollback"),
    ("gate_copy_back", "rollback"),
    ("registrations_", "go"), ("suspension_", "go"), ("final_catch_up", "go"), ("advance_sequences", "go"),
    ("gate_pre_flip", "go"), ("lower_dns_ttl", "go"), ("dns_", "go"), ("flip_dns", "go"), ("drain_", "go"),
    ("gate_post_flip", "go"), ("gate_dns_shift", "go"),
    ("catch_up_", "set"), ("warm_up", "set"), ("load_check", "set"), ("gate_catch_up", "set"),
    ("preflight", "ready"), ("create_cdc_slot", "ready"), ("detach_replica", "ready"), ("copy_", "ready"),
    ("plan_", "ready"), ("gate_post_copy", "ready"),
)
_META_STEPS = ("alert", "copy_batch", "cdc_lag")
DAGS = ("tenant_migration", "tenant_rehearsal", "tenant_rollback")  # the page's runs: these DAGs' only


def phase_of_step(step: str | None) -> str:
    for prefix, phase in _PHASES:
        if step and step.startswith(prefix):
            return phase
    return "ready" if step is None else "other"


def _split(ledger_run: str) -> tuple[str, str, bool]:
    """(dag id, Airflow run id, the way back?) of a ledger run id ``<dag>/<run>[/back]``."""
    back = ledger_run.endswith("/back")
    key = ledger_run[: -len("/back")] if back else ledger_run
    dag_id, _, run_id = key.partition("/")
    return dag_id, run_id, back


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def runs(conn: Any, limit: int = 20, run_id: str | None = None) -> list[dict[str, Any]]:
    """The newest runs of the ledger, one line each (``run_id``: that one only)."""
    rows = conn.execute(
        "SELECT r.run_id, r.tenant_id, r.status, r.started_at, r.finished_at, r.spec->>'platform', "
        "(SELECT detail->>'slug' FROM tm_control.events e WHERE e.run_id = r.run_id AND e.step IN "
        "('preflight', 'check_rollback') AND e.detail ? 'slug' ORDER BY e.event_id DESC LIMIT 1), "
        "(SELECT e.step FROM tm_control.events e WHERE e.run_id = r.run_id AND NOT (e.step = ANY(%s)) "
        "ORDER BY e.event_id DESC LIMIT 1) "
        "FROM tm_control.runs r WHERE split_part(r.run_id, '/', 1) = ANY(%s) AND (%s::text IS NULL OR r.run_id = %s) "
        "ORDER BY r.started_at DESC LIMIT %s", (list(_META_STEPS), list(DAGS), run_id, run_id, limit)).fetchall()
    out = []
    for run_id, tenant, status, started, finished, platform, slug, step in rows:
        dag_id, dag_run, back = _split(run_id)
        out.append({"run": run_id, "dag_id": dag_id, "dag_run_id": dag_run, "way_back": back, "tenant_id": tenant,
                    "slug": slug, "platform": platform or "", "status": status, "started_at": _iso(started),
                    "finished_at": _iso(finished), "phase": phase_of_step(step) if status == "running" else status,
                    "step": step})
    return out


def store_progress(conn: Any, run_id: str, engine: str, now: datetime) -> dict[str, Any] | None:
    """The progress bar of one store: chunks and planned work done, rate over the last minute, ETA."""
    rows = conn.execute("SELECT chunk_id, table_name, bounds, status, rows_copied, finished_at FROM tm_control.chunks "
                        "WHERE run_id = %s AND engine = %s", (run_id, engine)).fetchall()
    if not rows:
        return None
    units = {r[0]: planned_units(Chunk(r[0], engine, r[1], r[2] or {})) for r in rows}
    done = [r for r in rows if r[3] == "done"]
    since = now - timedelta(seconds=RATE_WINDOW_S)
    recent = [r for r in done if r[5] is not None and r[5] >= since]
    rate = sum(units[r[0]] for r in recent) / RATE_WINDOW_S
    rows_rate = sum(int(r[4] or 0) for r in recent) / RATE_WINDOW_S
    planned, finished = sum(units.values()), sum(units[r[0]] for r in done)
    left = planned - finished
    return {"engine": engine, "unit": unit_of(engine), "chunks": len(rows), "chunks_done": len(done),
            "chunks_failed": sum(1 for r in rows if r[3] == "failed"),
            "chunks_running": sum(1 for r in rows if r[3] == "running"),
            "planned": planned, "done": finished, "rows_done": sum(int(r[4] or 0) for r in done),
            "rate": round(rate, 3), "rows_rate": round(rows_rate, 1),
            "eta_s": 0.0 if left <= 0 else (round(left / rate, 1) if rate > 0 else None)}


def copy_series(conn: Any, run_id: str, points: int = 40) -> dict[str, list[list[float]]]:
    """Rows copied per second over the copy, per store, from the chunks' finish times in about
    ``points`` buckets (1 s at least): ``[[seconds since the run began, rows/s], ...]``."""
    span = conn.execute("SELECT EXTRACT(EPOCH FROM max(c.finished_at) - min(r.started_at))::float8 FROM "
                        "tm_control.chunks c JOIN tm_control.runs r USING (run_id) WHERE c.run_id = %s",
                        (run_id,)).fetchone()
    bucket = max(1, math.ceil((span[0] or 0) / points)) if span else SERIES_BUCKET_S
    rows = conn.execute(
        "SELECT c.engine, floor(EXTRACT(EPOCH FROM c.finished_at - r.started_at) / %s)::int AS bucket, "
        "sum(coalesce(c.rows_copied, 0)) FROM tm_control.chunks c JOIN tm_control.runs r USING (run_id) "
        "WHERE c.run_id = %s AND c.status = 'done' AND c.finished_at IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2",
        (bucket, run_id)).fetchall()
    out: dict[str, list[list[float]]] = {}
    for engine, b, total in rows:
        series = out.setdefault(engine, [])
        if series and b * bucket - series[-1][0] > bucket:  # an idle stretch drops to 0, not a slope
            series.append([series[-1][0] + bucket, 0.0])
            series.append([float((b - 1) * bucket), 0.0])
        series.append([float(b * bucket), float(total) / bucket])
    return out


def lag_series(conn: Any, run_id: str) -> list[list[float]]:
    """The change stream's lag as sampled while it was applied: ``[[seconds since the run began,
    lag bytes, seconds behind], ...]`` (``cdc_lag`` events, written by the catch-ups' progress)."""
    rows = conn.execute(
        "SELECT EXTRACT(EPOCH FROM e.at - r.started_at)::float8, (e.detail->>'lag_bytes')::float8, "
        "(e.detail->>'behind_s')::float8 FROM tm_control.events e JOIN tm_control.runs r USING (run_id) "
        "WHERE e.run_id = %s AND e.step = 'cdc_lag' ORDER BY e.event_id", (run_id,)).fetchall()
    return [[round(t, 1), lag, behind if behind is not None else -1.0] for t, lag, behind in rows]


def gates(conn: Any, run_id: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT gate, attempt, passed, summary, evaluated_at, report_path FROM tm_control.gates "
                        "WHERE run_id = %s ORDER BY evaluated_at", (run_id,)).fetchall()
    return [{"gate": g, "attempt": a, "passed": p, "summary": s[:600], "at": _iso(at), "report_path": path}
            for g, a, p, s, at, path in rows]


def suspension(conn: Any, run_id: str, now: datetime) -> dict[str, Any] | None:
    """The registrations' suspension window of the run: since, until (the platform's expiry),
    resumed at, and the seconds left while it holds."""
    row = conn.execute(
        "SELECT min(at) FILTER (WHERE step = 'registrations_suspended'), "
        "(array_agg(detail->>'suspended_until' ORDER BY event_id DESC) FILTER (WHERE step = 'registrations_suspended'))[1], "
        "max(at) FILTER (WHERE step = 'registrations_resumed'), max(event_id) FILTER (WHERE step = 'registrations_suspended'), "
        "max(event_id) FILTER (WHERE step = 'registrations_resumed') FROM tm_control.events WHERE run_id = %s",
        (run_id,)).fetchone()
    if not row or row[0] is None:
        return None
    since, until_s, resumed, last_suspend, last_resume = row
    until = datetime.fromisoformat(until_s) if until_s else None
    holding = last_resume is None or last_resume < last_suspend
    left = (until - now).total_seconds() if until and holding else None
    return {"since": _iso(since), "until": _iso(until), "resumed_at": None if holding else _iso(resumed),
            "active": bool(holding and (left is None or left > 0)), "seconds_left": left}


def dns_now(ep: Any, run: dict[str, Any], spec: dict[str, Any]) -> list[dict[str, Any]] | str:
    """Each of the tenant's records as Route53 answers now: the answer and, mid-shift, the weights.
    A string says why there is nothing to show (no slug yet, the zone not reachable)."""
    from types import SimpleNamespace

    from tenant_migration.cutover import dns
    from tenant_migration.flows.common import dns_plans, profile_of

    if not run.get("slug"):
        return "the preflight has not found the tenant's slug yet"
    view = SimpleNamespace(platform=spec.get("platform") or "", dns_zone=spec.get("dns_zone") or "",
                           target_endpoint_prefix=spec.get("target_endpoint_prefix") or "vpc",
                           tenant_id=run["tenant_id"])
    try:
        plans = dns_plans(view, run["slug"], profile_of(view))
        r53 = ep.aws.client("route53")
        sets = dns.record_sets(r53, dns.zone_id(r53, view.dns_zone))
    except Exception as exc:
        return f"DNS not read: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    out = []
    for p in plans:
        members = sets.get(p.name, [])
        out.append({"name": p.name, "shared": p.shared_target, "dedicated": p.tenant_target,
                    "answers": [{"value": rr["ResourceRecords"][0]["Value"] if rr.get("ResourceRecords") else "",
                                 "weight": rr.get("Weight"), "ttl": rr.get("TTL")} for rr in members],
                    "to_dedicated_pct": dns.target_weight(members, p) if members else None})
    return out


def run_detail(conn: Any, run_id: str, now: datetime | None = None) -> dict[str, Any] | None:
    """Everything the page shows of one run, but DNS (``dns_now``: it asks Route53)."""
    now = now or datetime.now(UTC)
    line = next(iter(runs(conn, 1, run_id)), None)
    if line is None:
        return None
    prog = conn.execute("SELECT applied_lsn::text, changes_applied, txns_applied, applied_commit_time, updated_at "
                        "FROM tm_control.cdc_progress WHERE run_id = %s", (run_id,)).fetchone() \
        if conn.execute("SELECT to_regclass('tm_control.cdc_progress')").fetchone()[0] else None
    stores = [s for s in (store_progress(conn, run_id, e, now) for e in ("postgres", "cassandra")) if s]
    return {**line, "now": now.isoformat(), "stores": stores, "copy_series": copy_series(conn, run_id),
            "lag_series": lag_series(conn, run_id), "gates": gates(conn, run_id),
            "suspension": suspension(conn, run_id, now),
            "change_stream": None if prog is None else {
                "applied_lsn": prog[0], "changes_applied": prog[1], "txns_applied": prog[2],
                "applied_commit_time": _iso(prog[3]), "updated_at": _iso(prog[4])}}


def page() -> str:
    """The page itself (``ui/live.html``): plain HTML and script, no asset from elsewhere."""
    from pathlib import Path

    return (Path(__file__).parent / "ui" / "live.html").read_text()


def run_spec(conn: Any, run_id: str) -> dict[str, Any]:
    row = conn.execute("SELECT spec FROM tm_control.runs WHERE run_id = %s", (run_id,)).fetchone()
    spec = dict(row[0]) if row and row[0] else {}
    spec.pop("profile", None)  # the profile document: names only, but not the page's business
    return spec
