"""Alerts that page the on-call engineer: a generic signed webhook, sent through Airflow's notifier
mechanism (``WebhookNotifier``, a ``BaseNotifier`` on every task's ``on_failure_callback``) and by
the run's watch (``watch``) while a task runs.

What is sent, once per event:
- ``task_failed``: a task failed for good (after its retries); ``gate_failed``: the failed task is a
  gate (its message carries the gate's evidence and Data Docs path); ``held``: a teardown failed on
  purpose to keep the run's snapshot or change stream for a resume (ADR 7, 10) -- worth knowing,
  not the cause;
- ``suspension_expiring``: registrations have been suspended for this run and at most a quarter of
  the window (``suspension_minutes``) is left: the platform will take new registrations again by
  itself, mid-cutover, unless someone acts;
- ``over_budget``: the run has been going longer than its ``time_budget_minutes``.

Where: the Airflow connection ``tm_alerts`` (conn type ``http``: host, port, schema ``http`` or
``https``; the path in the extra ``{"endpoint": "/hooks/migration"}``; the password is the signing
secret). The body is JSON; the header ``X-Tenant-Migration-Signature: sha256=<hex>`` is the
HMAC-SHA256 of the body with that secret, so the receiver can tell our alerts from anyone's. Every
message names the tenant, the platform, the run, the task, the reason in one line and the
runbook's row for that task; it holds no secret (connection URIs and ``password=`` are masked, and
a message that would still carry the signing secret is not sent).

An alert never fails a task nor hides its error: without the connection, or when the receiver
does not answer, the task log says so and the task's own outcome stands.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseNotifier

from tenant_migration import evidence
from tenant_migration.connections import CONN_ALERTS
from tenant_migration.task_context import platform_label, run_key

log = logging.getLogger("tenant_migration.alerts")

SIGNATURE_HEADER = "X-Tenant-Migration-Signature"
SUSPENSION_ALERT_LEFT = 0.25  # of the suspension window
WATCH_EVERY_S = 30.0
_URI_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)
_PASSWORD_KV = re.compile(r"\b(password|passwd|pwd|secret|token)(\s*[=:]\s*)('[^']*'|\"[^\"]*\"|\S+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``scheme://user:pw@host`` -> ``scheme://***@host``; ``password=x`` -> ``password=***``."""
    return _PASSWORD_KV.sub(r"\1\2***", _URI_CREDENTIALS.sub(r"\1***@", text))


def one_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of an error, masked and cut to ``limit`` characters."""
    first = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    first = redact(first)
    return first if len(first) <= limit else first[: limit - 1] + "…"


@dataclass(frozen=True)
class Alert:
    kind: str
    tenant_id: Any
    slug: str | None
    platform: str
    dag_id: str
    run_id: str
    task: str
    reason: str
    runbook: str
    url: str = ""  # the task instance in the Airflow UI
    evidence: str = ""  # a gate's evidence (its extra link's page), when the task is a gate
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def text(self) -> str:
        who = f"tenant {self.tenant_id} ({self.slug or 'slug not known'}) | platform {self.platform}"
        where = f" | open: {self.evidence or self.url}" if (self.evidence or self.url) else ""
        return (f"[{self.kind}] {who} | run {self.dag_id}/{self.run_id} | task {self.task}: {self.reason} | "
                f"runbook: {self.runbook}{where}")

    def body(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.text}


# -- the runbook's row for a task --------------------------------------------------------------

def _row_names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell) + (["gate_*"] if re.search(r"\bgates\b", cell) else [])


def runbook_row(dag_id: str, task_id: str, reason: str = "") -> str:
    """The row of the DAG's runbook table that names the task (``copy_*_batch`` matches
    ``ready.copy_cassandra_batch``; "gates" matches every ``gate_*``), as ``<names>: <what to do>``.
    A row whose first cell quotes part of the failure's message (``still reach the shared
    platform``) wins over the task's general row."""
    from tenant_migration.lazy import runbook

    try:
        text = runbook(dag_id)
    except Exception:  # a DAG without a runbook of its own
        return f"no runbook for {dag_id}"
    short = task_id.rsplit(".", 1)[-1]
    general: str | None = None
    specific: str | None = None
    for row in text.splitlines():
        if not row.startswith("|") or row.startswith("|---"):
            continue
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[0] in ("task", "fault"):
            continue
        names = _row_names(cells[0])
        if not any(fnmatch.fnmatchcase(short, n.split(" ")[0].split("(")[0]) for n in names):
            continue
        quoted = [q for q in re.findall(r"`([^`]+)`", cells[0]) if " " in q]
        entry = f"{cells[0]} -> {' | '.join(c for c in cells[1:] if c)}"
        if quoted and any(q.strip(".") in reason for q in quoted):
            specific = specific or entry
        elif not quoted and not cells[0].startswith("**"):
            general = general or entry
    found = specific or general
    if found is None:
        return f"{dag_id} runbook (Docs tab): no row names {short}"
    return one_line(re.sub(r"\*\*", "", found), 400)


# -- sending ------------------------------------------------------------------------------------

def _receiver() -> tuple[str, str] | str:
    """(URL, signing secret) of ``tm_alerts``, or why there is none."""
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(CONN_ALERTS)
    except Exception as exc:
        return f"no Airflow connection {CONN_ALERTS!r} ({type(exc).__name__})"
    if not conn.host:
        return f"the Airflow connection {CONN_ALERTS!r} has no host"
    scheme = conn.schema or "http"
    host = conn.host if "://" in conn.host else f"{scheme}://{conn.host}"
    base = f"{host}:{conn.port}" if conn.port else host
    endpoint = str((conn.extra_dejson or {}).get("endpoint") or "/")
    return base.rstrip("/") + "/" + endpoint.lstrip("/"), conn.password or ""


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send(alert: Alert, timeout: float = 10.0, attempts: int = 3) -> str:
    """POST the alert; returns what happened, in words (never raises)."""
    import httpx

    where = _receiver()
    if isinstance(where, str):
        return f"alert not sent ({alert.kind}): {where}"
    url, secret = where
    body = json.dumps(alert.body(), sort_keys=True).encode()
    if secret and secret.encode() in body:
        return f"alert not sent ({alert.kind}): the message would carry the signing secret"
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, secret)}
    last = ""
    for _ in range(attempts):
        try:
            r = httpx.post(url, content=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            last = type(exc).__name__
            continue
        if 200 <= r.status_code < 300:
            return f"alert sent ({alert.kind}) to {url.split('?')[0]}: {alert.text}"
        last = f"HTTP {r.status_code}"
        if r.status_code < 500:
            break
    return f"alert not sent ({alert.kind}): {url.split('?')[0]} answered {last}"


# -- what a task's context says ----------------------------------------------------------------

def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = 0
    while exc is not None and seen < 10:
        yield exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1


def kind_of(task_id: str, exc: BaseException | None) -> str:
    names = {type(e).__name__ for e in _chain(exc)}
    if "KeptForResume" in names:
        return "held"
    if "GateFailed" in names or task_id.rsplit(".", 1)[-1].startswith("gate_"):
        return "gate_failed"
    return "task_failed"


def _who(context: dict[str, Any]) -> tuple[Any, str | None, str]:
    """(tenant id, slug, platform) from the params and, for the slug, the ledger (best effort)."""
    params = dict(context.get("params") or {})
    tenant, platform = params.get("tenant_id"), str(params.get("platform") or "")
    slug = None
    try:
        from tenant_migration import ledger
        from tenant_migration.endpoints import Endpoints

        rid = run_key(context)
        with Endpoints.from_airflow().target.connect(autocommit=True) as conn:
            slug = ledger.run_slug(conn, rid) or ledger.run_slug(conn, rid + "/back")
    except Exception as exc:
        log.info("alert: the slug of tenant %s not read (%s)", tenant, type(exc).__name__)
    return tenant, slug, platform or platform_label(None)


def alert_of(context: dict[str, Any], kind: str, reason: str) -> Alert:
    ti = context.get("ti")
    task = getattr(ti, "task_id", None) or "?"
    map_index = getattr(ti, "map_index", -1)
    label = f"{task}[{map_index}]" if isinstance(map_index, int) and map_index >= 0 else task
    dag_id, run_id = context["dag"].dag_id, str(context.get("run_id"))
    tenant, slug, platform = _who(context)
    ui = f"{evidence.base_url()}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/tasks/{quote(task, safe='')}"
    if isinstance(map_index, int) and map_index >= 0:
        ui += f"/mapped/{map_index}"
    proof = evidence.gate_url(dag_id, run_id, task) if kind == "gate_failed" and evidence.is_gate_task(task) else ""
    return Alert(kind, tenant, slug, platform, dag_id, run_id, label, one_line(reason),
                 runbook_row(dag_id, task, reason), ui, proof)


class WebhookNotifier(BaseNotifier):
    """``on_failure_callback`` of every task: a task failed for good; the alert says which, why (its
    error's first line) and the runbook's row for it. Runs in the task's own process."""

    def notify(self, context: Any) -> None:
        ti = context.get("ti")
        task = getattr(ti, "task_id", "?")
        exc = context.get("exception")
        reason = str(exc) if exc is not None else str(context.get("reason") or "failed (no error given)")
        alert = alert_of(context, kind_of(task, exc if isinstance(exc, BaseException) else None),
                         reason if exc is None or str(exc) else type(exc).__name__)
        log.warning("%s", send(alert))


# -- the run's watch: suspension nearing expiry, time budget ------------------------------------

def _sent_before(conn: Any, run_id: str, kind: str) -> bool:
    return conn.execute("SELECT 1 FROM tm_control.events WHERE run_id = %s AND step = 'alert' "
                        "AND detail->>'kind' = %s LIMIT 1", (run_id, kind)).fetchone() is not None


def due(conn: Any, run_id: str, budget_minutes: float, now: datetime | None = None) -> list[tuple[str, str]]:
    """The watch's alerts this run has earned and not been sent yet: [(kind, reason)]."""
    now = now or datetime.now(UTC)
    out: list[tuple[str, str]] = []
    row = conn.execute("SELECT started_at, status FROM tm_control.runs WHERE run_id = %s", (run_id,)).fetchone()
    if row is None or row[1] != "running":
        return out
    started = row[0]
    if budget_minutes and (now - started).total_seconds() > budget_minutes * 60 and not _sent_before(
            conn, run_id, "over_budget"):
        out.append(("over_budget", f"the run has been going {(now - started).total_seconds() / 60:.0f} min, over "
                                   f"its time budget of {budget_minutes:g} min (param time_budget_minutes)"))
    sus = conn.execute(
        "SELECT (SELECT detail FROM tm_control.events WHERE run_id = %s AND step = 'registrations_suspended' "
        "ORDER BY event_id DESC LIMIT 1), (SELECT max(event_id) FROM tm_control.events WHERE run_id = %s AND "
        "step = 'registrations_suspended'), (SELECT max(event_id) FROM tm_control.events WHERE run_id = %s AND "
        "step = 'registrations_resumed'), (SELECT min(at) FROM tm_control.events WHERE run_id = %s AND "
        "step = 'registrations_suspended')", (run_id, run_id, run_id, run_id)).fetchone()
    if sus and sus[0] and sus[0].get("suspended_until") and (sus[2] is None or sus[2] < sus[1]):
        until = datetime.fromisoformat(sus[0]["suspended_until"])
        began = sus[3] or now
        window = max(1.0, (until - began).total_seconds())
        left = (until - now).total_seconds()
        if left <= window * SUSPENSION_ALERT_LEFT and not _sent_before(conn, run_id, "suspension_expiring"):
            state = f"expires in {max(0, left):.0f} s" if left > 0 else f"expired {-left:.0f} s ago"
            out.append(("suspension_expiring",
                        f"registrations suspended since {began:%H:%M:%S} UTC, the suspension {state} (at "
                        f"{until:%H:%M:%S} UTC): the platform takes new registrations again by itself then"))
    return out


def check(ep: Any, context: dict[str, Any], run_id: str, budget_minutes: float,
          sender: Callable[[Alert], str] = send) -> list[str]:
    """Send what ``due`` finds, each once per run (recorded in the ledger as an ``alert`` event)."""
    from tenant_migration import ledger

    outcomes = []
    with ep.target.connect(autocommit=True) as conn:
        for kind, reason in due(conn, run_id, budget_minutes):
            outcome = sender(alert_of(context, kind, reason))
            log.warning("%s", outcome)
            if outcome.startswith("alert sent"):
                ledger.record_event(conn, run_id, "alert", "info", {"kind": kind, "reason": reason})
            outcomes.append(outcome)
    return outcomes


@contextmanager
def watch(ep: Any, context: dict[str, Any], run_id: str, every: float | None = None) -> Iterator[None]:
    """While a task runs: ``check`` at once and every ``every`` seconds in a daemon thread."""
    params = dict(context.get("params") or {})
    try:
        budget = float(params.get("time_budget_minutes") or 0)
    except (TypeError, ValueError):
        budget = 0.0
    stop = threading.Event()

    def loop() -> None:
        while True:
            try:
                check(ep, context, run_id, budget)
            except Exception as exc:  # the ledger did not answer: the next look may
                log.info("alert watch: not checked (%s)", type(exc).__name__)
            if stop.wait(every or WATCH_EVERY_S):
                return

    thread = threading.Thread(target=loop, name="alert-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=15)
