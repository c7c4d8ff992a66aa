"""Evidence one click away from a task instance: operator extra links, and the pages they open.

- A gate task (``preflight``, every ``gate_*``, ``flip_dns`` with its ``dns_shift_<p>`` gates,
  ``verify_shared_unchanged``) has the link **Gate evidence**: the gate's newest Data Docs page
  (a redirect to it), or the list of its attempts when there are several pages to choose from.
- A copy batch (``copy_postgres_batch``, ``copy_cassandra_batch``) has the link **Chunks of this
  batch**: its chunks from the ledger -- status, rows, partitions, attempts, time, last error.

The worker computes each link's URL as the task ends (success or failure) and Airflow keeps it in
XCom; the URL points at the plugin ``plugins/tenant_migration_ui.py``, mounted on the
api-server under ``/tenant-migration`` behind Airflow's own authentication (DAG run read access),
which reads the ledger and serves only files under the reports folder.

This module is imported when DAG files are parsed: the standard library and ``airflow.sdk`` only
at the top; the ledger and the reports are read inside the functions that serve the pages.
"""

from __future__ import annotations

import html
import os
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from airflow.sdk import BaseOperatorLink

from tenant_migration.lazy import same_named_subclass

PREFIX = "/tenant-migration"
GATE_TASKS = ("preflight", "flip_dns", "verify_shared_unchanged")
BATCH_TASKS = {"copy_postgres_batch": "postgres", "copy_cassandra_batch": "cassandra"}


def base_url() -> str:
    """The api-server's public address (``[api] base_url``); "" gives same-origin links."""
    return (os.environ.get("AIRFLOW__API__BASE_URL") or "").rstrip("/")


def short(task_id: str) -> str:
    return task_id.rsplit(".", 1)[-1]


def gate_names(task_id: str) -> tuple[list[str], str | None]:
    """(gate names, a gate-name prefix) a task's evidence is recorded under."""
    s = short(task_id)
    if s == "flip_dns":
        return [], "dns_shift_"
    if s == "verify_shared_unchanged":
        return ["shared_unchanged"], None
    if s.startswith("gate_"):
        return [s[len("gate_"):]], None
    return [s], None


def is_gate_task(task_id: str) -> bool:
    return short(task_id) in GATE_TASKS or short(task_id).startswith("gate_")


def _ledger_run(dag_id: str, task_id: str, run_id: str) -> str:
    """The ledger run a task's steps write under: ``<dag>/<run>``, ``/back`` for the way back."""
    key = f"{dag_id}/{run_id}"
    back = dag_id == "tenant_rollback" or (dag_id == "tenant_rehearsal" and task_id.startswith("back."))
    return key + "/back" if back else key


def gate_url(dag_id: str, run_id: str, task_id: str) -> str:
    return f"{base_url()}{PREFIX}/gate?" + urlencode({"dag_id": dag_id, "run_id": run_id, "task_id": task_id})


def batch_url(dag_id: str, run_id: str, task_id: str, first_chunk: str | None) -> str:
    q = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id}
    if first_chunk:
        q["first"] = first_chunk
    return f"{base_url()}{PREFIX}/batch?" + urlencode(q)


class GateEvidenceLink(BaseOperatorLink):
    """The gate's Data Docs (or the list of its attempts)."""

    name = "Gate evidence"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return gate_url(ti_key.dag_id, ti_key.run_id, ti_key.task_id)


class BatchChunksLink(BaseOperatorLink):
    """The batch's chunks in the ledger. The batch is named by its first chunk id (batches of a run
    are disjoint), read from the mapped task's own argument when the worker computes the link."""

    name = "Chunks of this batch"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        ids = (getattr(operator, "op_kwargs", None) or {}).get("chunk_ids") or []
        first = str(ids[0]) if isinstance(ids, list | tuple) and ids else None
        return batch_url(ti_key.dag_id, ti_key.run_id, ti_key.task_id, first)


def attach(dag: Any) -> Any:
    """Give each gate task and copy batch of ``dag`` its link (mapped tasks included); returns it."""
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    for task in dag.tasks:
        s = short(task.task_id)
        links: list[BaseOperatorLink] = [GateEvidenceLink()] if is_gate_task(task.task_id) else []
        links += [BatchChunksLink()] if s in BATCH_TASKS else []
        if not links:
            continue
        task.operator_extra_links = [*getattr(task, "operator_extra_links", ()), *links]
        base: Any = getattr(task, "operator_class", None)
        if isinstance(task, MappedOperator) and isinstance(base, type):
            # A mapped task runs as a fresh instance of its operator class (``unmap``), which knows
            # only the class's links: the worker would store none. The same class, with the links.
            task.operator_class = same_named_subclass(
                base, operator_extra_links=(*getattr(base, "operator_extra_links", ()), *links))
    return dag


# -- what the pages show (the plugin serves them) ----------------------------------------------

def gate_rows(conn: Any, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
    names, prefix = gate_names(task_id)
    ledger_run = _ledger_run(dag_id, task_id, run_id)
    rows = conn.execute(
        "SELECT gate, attempt, passed, summary, report_path, evaluated_at FROM tm_control.gates WHERE run_id = %s "
        "AND (gate = ANY(%s) OR (%s::text IS NOT NULL AND gate LIKE %s || '%%')) ORDER BY evaluated_at DESC, gate",
        (ledger_run, names, prefix, prefix or "")).fetchall()
    return [{"gate": r[0], "attempt": r[1], "passed": r[2], "summary": r[3], "report_path": r[4], "at": r[5]}
            for r in rows]


def batch_rows(conn: Any, dag_id: str, run_id: str, task_id: str, first: str | None) -> tuple[str, list[dict[str, Any]]]:
    """(what is listed, the chunk rows): the batch that ``first`` opens (from the step's
    ``copy_batch`` event), else every chunk of the task's store in the run."""
    engine = BATCH_TASKS.get(short(task_id), "")
    ledger_run = _ledger_run(dag_id, task_id, run_id)
    ids: list[str] | None = None
    if first:
        row = conn.execute("SELECT detail->'chunk_ids' FROM tm_control.events WHERE run_id = %s AND step = 'copy_batch' "
                           "AND detail->>'first' = %s ORDER BY event_id DESC LIMIT 1", (ledger_run, first)).fetchone()
        ids = list(row[0]) if row and row[0] else None
    what = f"the batch that begins with {first} ({len(ids)} chunks)" if ids else f"every {engine} chunk of the run"
    cur = conn.execute(
        "SELECT chunk_id, table_name, status, rows_copied, partitions, attempts, started_at, finished_at, last_error "
        "FROM tm_control.chunks WHERE run_id = %s AND engine = %s AND (%s::text[] IS NULL OR chunk_id = ANY(%s)) "
        "ORDER BY chunk_id", (ledger_run, engine, ids, ids))
    names = [d.name for d in cur.description]
    return what, [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def report_href(report_path: str | None, reports: Path, dag_id: str) -> str | None:
    """The plugin's URL of a report file, when it lies under the reports folder."""
    if not report_path or report_path == "None":
        return None
    try:
        rel = Path(report_path).resolve().relative_to(reports.resolve())
    except ValueError:
        return None
    return f"{base_url()}{PREFIX}/reports/{quote(dag_id, safe='')}/{quote(rel.as_posix())}"


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S %Z") if at else ""


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}"
            ".ok{color:#176f2c}.bad{color:#b00020;font-weight:600}.num{text-align:right}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>")


def gate_page(dag_id: str, run_id: str, task_id: str, rows: list[dict[str, Any]], reports: Path) -> str:
    title = f"Gate evidence: {task_id} of {dag_id} / {run_id}"
    if not rows:
        return _page(title, "<p>No gate result in the ledger for this task yet (the task has not reached its "
                            "gate, or failed before it: see its log).</p>")
    out = ["<table><tr><th>gate</th><th>attempt</th><th>verdict</th><th>evaluated</th><th>summary</th>"
           "<th>Data Docs</th></tr>"]
    for r in rows:
        href = report_href(r["report_path"], reports, dag_id)
        verdict = "<span class='ok'>passed</span>" if r["passed"] else "<span class='bad'>failed</span>"
        link = f"<a href='{html.escape(href)}'>open</a>" if href else "not kept"
        out.append(f"<tr><td>{html.escape(r['gate'])}</td><td class='num'>{r['attempt']}</td><td>{verdict}</td>"
                   f"<td>{_when(r['at'])}</td><td>{html.escape(r['summary'])}</td><td>{link}</td></tr>")
    return _page(title, "".join(out) + "</table>")


def batch_page(dag_id: str, run_id: str, task_id: str, what: str, rows: list[dict[str, Any]]) -> str:
    title = f"Chunks: {task_id} of {dag_id} / {run_id}"
    done = sum(1 for r in rows if r["status"] == "done")
    head = (f"<p>{html.escape(what)}: {done} of {len(rows)} done, {sum(int(r['rows_copied'] or 0) for r in rows):,} "
            "rows copied.</p>")
    out = ["<table><tr><th>chunk</th><th>table</th><th>status</th><th>rows</th><th>partitions</th><th>attempts</th>"
           "<th>seconds</th><th>last error</th></tr>"]
    for r in rows:
        secs = (r["finished_at"] - r["started_at"]).total_seconds() if r["finished_at"] and r["started_at"] else None
        cls = "bad" if r["status"] == "failed" else ("ok" if r["status"] == "done" else "")
        out.append(f"<tr><td>{html.escape(r['chunk_id'])}</td><td>{html.escape(r['table_name'])}</td>"
                   f"<td class='{cls}'>{html.escape(r['status'])}</td><td class='num'>{int(r['rows_copied'] or 0):,}</td>"
                   f"<td class='num'>{'' if r['partitions'] is None else format(int(r['partitions']), ',')}</td>"
                   f"<td class='num'>{r['attempts']}</td><td class='num'>{'' if secs is None else f'{secs:.2f}'}</td>"
                   f"<td>{html.escape((r['last_error'] or '')[:500])}</td></tr>")
    return _page(title, head + "".join(out) + "</table>")
