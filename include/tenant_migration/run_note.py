"""The run's note in the Airflow UI: whose migration a run is (tenant id and slug, platform), set as
the run begins, so that the list of runs reads "tenant 3 (acme) | platform sample" instead of a run id.

The task SDK cannot write the current run's note (FIELD_NOTES, Airflow 3.3): a task asks the
public REST API (``PATCH /api/v2/dags/{dag}/dagRuns/{run}``) as the user of the Airflow connection
``tm_airflow_api`` (``http``: host, port, login, password; a user with the right to edit DAG runs
and nothing more -- the simple auth manager's ``user`` role). Without that connection, or when the
API does not answer (``airflow dags test`` runs without an API server), the note is not set and the
task log says why: a note is for people, never a reason to fail a migration step.

An operator's own note (typed at trigger time) is kept, below the tenant line; a retried or cleared
task finds its line there already and changes nothing. The password never reaches a log or XCom.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from tenant_migration.connections import CONN_AIRFLOW_API

log = logging.getLogger(__name__)

MAX_NOTE = 1000  # Airflow's limit on a run note


def note_line(tenant_id: Any, slug: str | None, platform: str, dry_run: bool = False) -> str:
    """``tenant 3 (acme) | platform sample`` (``| dry run`` for a dry run)."""
    line = f"tenant {tenant_id} ({slug or 'slug unknown'}) | platform {platform or '(the only profile)'}"
    return line + (" | dry run" if dry_run else "")


def merged_note(line: str, existing: str | None) -> str | None:
    """The note with ``line`` first and the operator's own text below it; None when it is there already."""
    existing = (existing or "").strip()
    if existing == line or existing.startswith(line + "\n"):
        return None
    return (line + ("\n" + existing if existing else ""))[:MAX_NOTE]


def _api() -> tuple[str, str, str] | str:
    """(base URL, login, password) of ``tm_airflow_api``, or why there is none."""
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(CONN_AIRFLOW_API)
    except Exception as exc:  # AirflowNotFoundException, or a secrets backend that failed
        return f"no Airflow connection {CONN_AIRFLOW_API!r} ({type(exc).__name__})"
    if not conn.host or not conn.login:
        return f"the Airflow connection {CONN_AIRFLOW_API!r} has no host or login"
    scheme = conn.schema or "http"
    host = conn.host if "://" in conn.host else f"{scheme}://{conn.host}"
    base = f"{host}:{conn.port}" if conn.port else host
    return base.rstrip("/"), conn.login, conn.password or ""


def set_note(dag_id: str, run_id: str, line: str, timeout: float = 10.0) -> str:
    """Put ``line`` at the top of the run's note. Returns what happened, in words (never raises)."""
    import httpx

    api = _api()
    if isinstance(api, str):
        return f"run note not set: {api}"
    base, login, password = api
    try:
        token = httpx.post(f"{base}/auth/token", json={"username": login, "password": password}, timeout=timeout)
        if token.status_code not in (200, 201):
            return f"run note not set: {base}/auth/token answered {token.status_code} for user {login!r}"
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        url = f"{base}/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"
        current = httpx.get(url, headers=headers, timeout=timeout)
        if current.status_code != 200:
            return f"run note not set: reading the run answered {current.status_code}"
        note = merged_note(line, current.json().get("note"))
        if note is None:
            return "run note already names the tenant"
        patched = httpx.patch(url, params={"update_mask": "note"}, json={"note": note}, headers=headers,
                              timeout=timeout)
        if patched.status_code != 200:
            return f"run note not set: the API answered {patched.status_code} ({patched.text[:200]})"
    except httpx.ConnectError:
        # No API server: ``airflow dags test`` (the demo) runs the tasks in its own process, on
        # the metadata database it opened; a worker of a real deployment has no such access.
        return _set_in_process(dag_id, run_id, line) or \
            f"run note not set: the Airflow API at {base} does not answer (no api-server; not under dags test)"
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        return f"run note not set: the Airflow API at {base} did not answer ({type(exc).__name__})"
    return f"run note set: {line}"


def _set_in_process(dag_id: str, run_id: str, line: str) -> str | None:
    """The note through the metadata database, when this process has it (``airflow dags test``
    runs its tasks in-process). None when it has not (a real worker: Airflow 3 forbids it)."""
    try:
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
            if run is None:
                return None
            note = merged_note(line, run.note)
            if note is None:
                return "run note already names the tenant"
            run.note = note
    except Exception:  # no database in this process, or the ORM is refused: the API was the way
        return None
    return f"run note set (in-process, under dags test): {line}"


def note_run(context: dict[str, Any], opened: dict[str, Any]) -> dict[str, Any]:
    """After the step that opens a run (the preflight; the rollback's check): put whose run it is
    in the run's note, from what that step found (slug, platform) and the run's params. Logs the
    outcome and returns ``opened`` unchanged, so a DAG writes ``return note_run(ctx, step(...))``."""
    params = dict(context.get("params") or {})
    line = note_line(opened.get("tenant_id", params.get("tenant_id")), opened.get("slug"),
                     str(opened.get("platform") or params.get("platform") or ""), bool(opened.get("dry_run")))
    if opened.get("migration_run"):
        line += f" | rolls back {opened['migration_run']}"
    log.info("%s", set_note(context["dag"].dag_id, context["run_id"], line))
    return opened
