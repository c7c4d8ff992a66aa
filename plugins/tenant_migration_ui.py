"""The "Tenant migrations" page and the pages behind the tasks' extra links, on the api-server
under ``/tenant-migration`` (a "Tenant migrations" entry in the UI's navigation opens the first):

- ``GET /tenant-migration/`` (``?run=<ledger run>``): every run of the migration, rehearsal and
  rollback DAGs, and one run's progress per store, rate and lag plots, gates, suspension countdown
  and DNS, refreshed every 5 s while the run is live (``tenant_migration.live``);
- ``GET /tenant-migration/api/runs``, ``GET /tenant-migration/api/run?dag_id=&run=``: the same as JSON;

- ``GET /tenant-migration/gate?dag_id=&run_id=&task_id=[&list=1]``: the gate's newest Data Docs page
  (a redirect), or the table of its attempts (several gates, ``list=1``, or no page kept);
- ``GET /tenant-migration/batch?dag_id=&run_id=&task_id=[&first=]``: a copy batch's chunks;
- ``GET /tenant-migration/reports/<dag_id>/<path>``: a file of that DAG's runs under the reports
  folder (the Data Docs sites), nothing outside it.

Every route goes through Airflow's auth manager: an authenticated user (the UI's session cookie or
a bearer token) with read access to the DAG's runs; 401 without credentials, 403 without the right.
The pages show ledger rows and report files only: no connection, password or URI.
"""

from __future__ import annotations

from pathlib import Path

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag, requires_authenticated
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

READ_RUNS = [Depends(requires_access_dag("GET", DagAccessEntity.RUN))]

app = FastAPI(title="Tenant migration evidence", dependencies=[Depends(requires_authenticated())])


def _ledger():
    from tenant_migration.endpoints import Endpoints

    try:
        return Endpoints.from_airflow().target.connect(autocommit=True, application_name="tenant_migration evidence")
    except Exception as exc:  # the driver's first line only (endpoints keeps no secret in it)
        raise HTTPException(503, f"the ledger does not answer: {type(exc).__name__}: {str(exc)[:200]}") from None


def _reports() -> Path:
    from tenant_migration.flows.common import reports_dir

    return reports_dir()


@app.get("/", dependencies=READ_RUNS, response_class=HTMLResponse)
def live_page() -> str:
    from tenant_migration import live

    return live.page()


@app.get("/api/runs", dependencies=READ_RUNS)
def api_runs(limit: int = Query(50, ge=1, le=500)) -> list[dict]:
    from tenant_migration import live

    with _ledger() as conn:
        return live.runs(conn, limit)


@app.get("/api/run", dependencies=READ_RUNS)
def api_run(dag_id: str = Query(...), run: str = Query(...)) -> dict:
    """One run; ``dag_id`` names its DAG (the auth manager checks the caller may read its runs)."""
    from tenant_migration import evidence, live
    from tenant_migration.endpoints import Endpoints

    if not run.startswith(dag_id + "/"):
        raise HTTPException(404, f"run {run!r} is not a run of {dag_id}")
    with _ledger() as conn:
        detail = live.run_detail(conn, run)
        spec = live.run_spec(conn, run) if detail else {}
    if detail is None:
        raise HTTPException(404, f"no run {run!r} in the ledger")
    reports = _reports()
    for g in detail["gates"]:
        g["href"] = evidence.report_href(g.pop("report_path"), reports, dag_id)
    try:
        detail["dns"] = live.dns_now(Endpoints.from_airflow(), detail, spec)
    except Exception as exc:  # the page still shows the rest
        detail["dns"] = f"DNS not read: {type(exc).__name__}"
    return detail


@app.get("/gate", dependencies=READ_RUNS, response_model=None)
def gate(dag_id: str = Query(...), run_id: str = Query(...), task_id: str = Query(...),
         list_: bool = Query(False, alias="list")) -> Response:
    from tenant_migration import evidence

    with _ledger() as conn:
        rows = evidence.gate_rows(conn, dag_id, run_id, task_id)
    reports = _reports()
    newest = rows[0] if rows else None
    href = evidence.report_href(newest["report_path"], reports, dag_id) if newest else None
    if href and not list_ and len({r["gate"] for r in rows}) == 1:
        return RedirectResponse(href, status_code=302)
    return HTMLResponse(evidence.gate_page(dag_id, run_id, task_id, rows, reports))


@app.get("/batch", dependencies=READ_RUNS, response_class=HTMLResponse)
def batch(dag_id: str = Query(...), run_id: str = Query(...), task_id: str = Query(...),
          first: str | None = Query(None)) -> str:
    from tenant_migration import evidence

    if evidence.short(task_id) not in evidence.BATCH_TASKS:
        raise HTTPException(404, f"{task_id} is not a copy batch")
    with _ledger() as conn:
        what, rows = evidence.batch_rows(conn, dag_id, run_id, task_id, first)
    return evidence.batch_page(dag_id, run_id, task_id, what, rows)


@app.get("/reports/{dag_id}/{path:path}", dependencies=READ_RUNS, response_model=None)
def report_file(dag_id: str, path: str) -> FileResponse:
    from tenant_migration.flows.common import safe_name

    root = _reports().resolve()
    wanted = (root / path).resolve()
    inside = wanted.is_relative_to(root) and wanted != root
    # A run's folder is safe_name("<dag_id>/<run>"): the file must belong to a run of that DAG.
    if not inside or not wanted.relative_to(root).parts[0].startswith(safe_name(dag_id) + "_"):
        raise HTTPException(404, "no such report")
    if not wanted.is_file():
        raise HTTPException(404, "no such report")
    return FileResponse(wanted)


class TenantMigrationUI(AirflowPlugin):
    name = "tenant_migration_ui"
    fastapi_apps = [{"app": app, "url_prefix": "/tenant-migration", "name": "Tenant migrations"}]
    # In the navigation; the UI shows the page in a frame at /plugin/tenant-migrations, same origin:
    # the session cookie reaches the app's auth.
    external_views = [{"name": "Tenant migrations", "href": "/tenant-migration/", "destination": "nav",
                       "url_route": "tenant-migrations", "category": "browse"}]
