"""A small platform admin API for the HTTP registration switch's tests: a real HTTP server on
loopback (``http.server``), started by the test. It keeps each tenant's registration flag, enforces
its own expiry (a suspension ends by itself when ``until`` passes, whoever asks), requires basic
auth, records every call, and can misbehave on purpose: answer 500 for the next N calls, or hold
each answer for a delay (a server that times out)."""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

USER, PASSWORD = "switch-operator", "s3cret-admin-pw"


@dataclass
class Call:
    method: str
    path: str
    body: Any
    authorized: bool
    answered: int


@dataclass
class AdminApi:
    tenants: dict[int, dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    fail_next: int = 0  # answer 500 to this many calls
    delay_s: float = 0.0  # hold every answer this long

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                api._handle(self)

            def do_POST(self) -> None:
                api._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def connection(self) -> dict[str, Any]:
        """An Airflow HTTP connection to this server (``AIRFLOW_CONN_*`` JSON)."""
        host, port = self.server.server_address[:2]
        return {"conn_type": "http", "host": host, "port": port, "schema": "http", "login": USER,
                "password": PASSWORD, "extra": {"headers": {"X-Caller": "tenant-migration"}}}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def flag(self, tenant_id: int) -> dict[str, Any]:
        """The tenant's flag as the platform enforces it: an expired suspension is over."""
        t = self.tenants.setdefault(tenant_id, {"enabled": True, "until": None, "reason": None})
        if not t["enabled"] and t["until"] is not None and t["until"] <= datetime.now(UTC):
            t.update(enabled=True, until=None, reason=None)
        return t

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        authorized = req.headers.get("Authorization") == expected and req.headers.get("X-Caller") == "tenant-migration"
        code, answer = self._answer(req.command, req.path, body, authorized)
        with self.lock:
            self.calls.append(Call(req.command, req.path, body, authorized, code))
        if self.delay_s:
            time.sleep(self.delay_s)
        data = json.dumps(answer).encode()
        try:
            req.send_response(code)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            req.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (the timeout test)

    def _answer(self, method: str, path: str, body: Any, authorized: bool) -> tuple[int, Any]:
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return 500, {"error": "internal error"}
            if not authorized:
                return 401, {"error": "unauthorized"}
            parts = path.strip("/").split("/")  # tenants/<id>/registrations[/suspend|/resume]
            if len(parts) < 3 or parts[0] != "tenants" or parts[2] != "registrations" or not parts[1].isdigit():
                return 404, {"error": "no such route"}
            tenant = int(parts[1])
            if tenant not in self.tenants:
                return 404, {"error": f"no tenant {tenant}"}
            t = self.flag(tenant)
            action = parts[3] if len(parts) > 3 else ""
            if method == "POST" and action == "suspend":
                until = datetime.now(UTC) + timedelta(seconds=float(body["expires_in_s"]))
                keep = t["until"] if not t["enabled"] and t["until"] and t["until"] > until else until
                t.update(enabled=False, until=keep, reason=body.get("reason"))
                return 204, None
            if method == "POST" and action == "resume":
                t.update(enabled=True, until=None, reason=None)
                return 204, None
            if method == "GET" and action == "":
                return 200, {"data": {"open": t["enabled"],
                                      "closed_until": t["until"].isoformat() if t["until"] else None,
                                      "why": t["reason"]}}
            return 405, {"error": "method not allowed"}


# The profile section of a platform whose switch is this API.
SWITCH = {
    "kind": "http",
    "connection": "tm_admin_api",
    "timeout_s": 1.0,
    "retries": 2,
    "status": {"method": "GET", "path": "/tenants/{tenant_id}/registrations"},
    "suspend": {"method": "POST", "path": "/tenants/{tenant_id}/registrations/suspend",
                "body": {"expires_in_s": "{expires_in_s}", "reason": "{reason}"}, "expect": [204]},
    "resume": {"method": "POST", "path": "/tenants/{tenant_id}/registrations/resume", "expect": [204]},
    "answer": {"enabled": "data.open", "suspended_until": "data.closed_until", "reason": "data.why"},
}
