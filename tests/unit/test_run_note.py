"""The run's note (``run_note``): the tenant line first, the operator's own note kept below it, a
retry changes nothing, and a missing or silent API is said in the log, never a failed task. The
real Airflow API is exercised by ``tests/e2e/test_operator_alerts.py``; here a small HTTP server
answers at the seam (the same three requests), so the merging and the error paths are pinned."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest

from tenant_migration import run_note


def test_the_line_names_tenant_slug_and_platform() -> None:
    assert run_note.note_line(3, "acme", "sample") == "tenant 3 (acme) | platform sample"
    assert run_note.note_line(3, "acme", "sample", dry_run=True).endswith("| dry run")
    assert run_note.note_line(3, None, "") == "tenant 3 (slug unknown) | platform (the only profile)"


def test_the_operators_note_is_kept_below_and_a_second_call_changes_nothing() -> None:
    line = "tenant 3 (acme) | platform sample"
    assert run_note.merged_note(line, None) == line
    assert run_note.merged_note(line, "  ") == line
    merged = run_note.merged_note(line, "rehearsal for ticket OPS-12")
    assert merged == line + "\nrehearsal for ticket OPS-12"
    assert run_note.merged_note(line, merged) is None and run_note.merged_note(line, line) is None
    assert len(run_note.merged_note(line, "x" * 5000) or "") == run_note.MAX_NOTE


class _Api(BaseHTTPRequestHandler):
    note: str | None = "typed by the operator"
    patches: list[dict[str, Any]] = []
    password = "s3cret-notes"
    patch_status = 200

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")

    def do_POST(self) -> None:
        body = self._body()
        ok = self.path == "/auth/token" and body == {"username": "tm_run_notes", "password": self.password}
        self._answer(201 if ok else 401, {"access_token": "jwt"} if ok else {"detail": "Invalid credentials"})

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != "Bearer jwt":
            return self._answer(401, {})
        self._answer(200, {"dag_run_id": "manual__1", "note": type(self).note})

    def do_PATCH(self) -> None:
        assert self.path.endswith("/api/v2/dags/tenant_migration/dagRuns/manual__1%2Bx?update_mask=note"), self.path
        body = self._body()
        type(self).patches.append(body)
        if self.patch_status == 200:
            type(self).note = body["note"]
        self._answer(self.patch_status, {"detail": "Forbidden"} if self.patch_status != 200 else {})


@pytest.fixture
def api(monkeypatch) -> Iterator[type[_Api]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Api.note, _Api.patches, _Api.patch_status = "typed by the operator", [], 200
    conn = SimpleNamespace(host="127.0.0.1", port=server.server_address[1], schema="http", login="tm_run_notes",
                           password=_Api.password)
    from airflow.sdk import BaseHook

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(lambda cls, conn_id: conn))
    yield _Api
    server.shutdown()


def _context() -> dict[str, Any]:
    return {"dag": SimpleNamespace(dag_id="tenant_migration"), "run_id": "manual__1+x", "params": {"tenant_id": 3}}


def test_the_note_is_set_once_and_the_operators_text_kept(api, caplog) -> None:
    caplog.set_level("INFO", logger="tenant_migration.run_note")
    opened = {"tenant_id": 3, "slug": "acme", "platform": "sample", "dry_run": False}
    assert run_note.note_run(_context(), opened) is opened
    assert api.note == "tenant 3 (acme) | platform sample\ntyped by the operator"
    run_note.note_run(_context(), opened)  # a retry, or the task cleared by hand
    assert len(api.patches) == 1
    assert "run note set: tenant 3 (acme)" in caplog.text and "already names the tenant" in caplog.text
    assert api.password not in caplog.text


def test_a_refusal_or_no_api_is_said_and_does_not_fail(api, monkeypatch) -> None:
    api.patch_status = 403
    out = run_note.set_note("tenant_migration", "manual__1+x", "tenant 3 (acme) | platform sample")
    assert out.startswith("run note not set: the API answered 403"), out
    monkeypatch.setattr(api, "password", "another")
    out = run_note.set_note("tenant_migration", "manual__1+x", "tenant 3 (acme) | platform sample")
    assert out.startswith("run note not set: http://127.0.0.1:") and out.endswith(
        "/auth/token answered 401 for user 'tm_run_notes'"), out


def test_a_rollback_note_names_the_run_it_rolls_back(api) -> None:
    ctx = {**_context(), "params": {"tenant_id": 3, "platform": "meterhub"}}
    run_note.note_run(ctx, {"slug": "acme", "migration_run": "tenant_migration/manual__0"})
    assert api.note.splitlines()[0] == "tenant 3 (acme) | platform meterhub | rolls back tenant_migration/manual__0"


def test_without_a_connection_the_log_says_so(monkeypatch) -> None:
    from airflow.sdk import BaseHook

    def missing(cls, conn_id):
        raise LookupError(conn_id)

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(missing))
    assert run_note.set_note("d", "r", "line") == "run note not set: no Airflow connection 'tm_airflow_api' (LookupError)"


def test_no_api_server_and_no_metadata_database_is_said(monkeypatch) -> None:
    import socket

    from airflow.sdk import BaseHook

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conn = SimpleNamespace(host="127.0.0.1", port=port, schema="http", login="tm_run_notes", password="x")
    monkeypatch.setattr(BaseHook, "get_connection", classmethod(lambda cls, conn_id: conn))
    monkeypatch.setattr(run_note, "_set_in_process", lambda *a: None)
    out = run_note.set_note("d", "r", "line")
    assert out == (f"run note not set: the Airflow API at http://127.0.0.1:{port} does not answer (no api-server; "
                   "not under dags test)")
    monkeypatch.setattr(run_note, "_set_in_process", lambda *a: "run note set (in-process, under dags test): line")
    assert run_note.set_note("d", "r", "line").startswith("run note set (in-process")
