"""meterhub's admin API: the platform switches an org's registrations (new meters and members
joining) over HTTP, not in SQL. A real HTTP server on loopback (``http.server``): basic auth and a
caller header, each org's flag with the platform's own expiry (a suspension ends by itself when
``until`` passes, whoever asks: the switch holds even if the migration's Airflow dies), every call
recorded, and faults on purpose (answer 500 to the next N calls; hold every answer a while).

Routes (JSON): ``GET /tenants/<id>/registrations`` -> ``{"data": {"open", "closed_until", "why"}}``;
``POST /tenants/<id>/registrations/suspend`` ``{"expires_in_s", "reason"}`` -> 204 (a longer
suspension already in force is kept); ``POST .../resume`` -> 204; an unknown org -> 404.

The local stack runs it as a process (``python -m tenant_migration.sample.meterhub.admin_api``)
whose orgs and flags live in a JSON file (written atomically), so that a restart keeps every
suspension and its expiry; tests start one in their own process (``AdminApi()``), in memory.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CALLER_HEADER = ("X-Caller", "tenant-migration")


@dataclass
class Call:
    method: str
    path: str
    body: Any
    authorized: bool
    answered: int


@dataclass
class AdminApi:
    user: str = "switch-operator"
    password: str = "s3cret-admin-pw"  # the in-memory test server's; the stack's is generated
    tenants: dict[int, dict[str, Any]] = field(default_factory=dict)
    state_file: Path | None = None  # orgs and flags on disk (the stack's server); None: in memory
    port: int = 0
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

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def connection(self) -> dict[str, Any]:
        """An Airflow HTTP connection to this server (``AIRFLOW_CONN_*`` JSON)."""
        host, port = self.server.server_address[:2]
        return connection(str(host), int(port), self.user, self.password)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ state

    def _load(self) -> None:
        if self.state_file is None:
            return
        try:
            raw = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            raw = {}
        self.tenants = {int(k): {**v, "until": datetime.fromisoformat(v["until"]) if v.get("until") else None}
                        for k, v in raw.items()}

    def _save(self) -> None:
        if self.state_file is None:
            return
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(k): {**v, "until": v["until"].isoformat() if v["until"] else None}
                                   for k, v in self.tenants.items()}))
        os.replace(tmp, self.state_file)

    def flag(self, tenant_id: int) -> dict[str, Any]:
        """The org's flag as the platform enforces it: an expired suspension is over."""
        t = self.tenants.setdefault(tenant_id, {"enabled": True, "until": None, "reason": None})
        if not t["enabled"] and t["until"] is not None and t["until"] <= datetime.now(UTC):
            t.update(enabled=True, until=None, reason=None)
        return t

    # ------------------------------------------------------------------ HTTP

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        authorized = hmac.compare_digest(req.headers.get("Authorization") or "", expected) and \
            req.headers.get(CALLER_HEADER[0]) == CALLER_HEADER[1]
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
            pass  # the client gave up waiting

    def _answer(self, method: str, path: str, body: Any, authorized: bool) -> tuple[int, Any]:
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return 500, {"error": "internal error"}
            if not authorized:
                return 401, {"error": "unauthorized"}
            self._load()
            parts = path.strip("/").split("/")  # tenants/<id>/registrations[/suspend|/resume]
            if len(parts) < 3 or parts[0] != "tenants" or parts[2] != "registrations" or not parts[1].isdigit():
                return 404, {"error": "no such route"}
            tenant = int(parts[1])
            if tenant not in self.tenants:
                return 404, {"error": f"no tenant {tenant}"}
            t = self.flag(tenant)
            action = parts[3] if len(parts) > 3 else ""
            if method == "POST" and action == "suspend":
                if not isinstance(body, dict) or "expires_in_s" not in body:
                    return 400, {"error": "expires_in_s is required"}
                until = datetime.now(UTC) + timedelta(seconds=float(body["expires_in_s"]))
                keep = t["until"] if not t["enabled"] and t["until"] and t["until"] > until else until
                t.update(enabled=False, until=keep, reason=body.get("reason"))
                self._save()
                return 204, None
            if method == "POST" and action == "resume":
                t.update(enabled=True, until=None, reason=None)
                self._save()
                return 204, None
            if method == "GET" and action == "":
                self._save()  # an expiry that passed is recorded as over
                return 200, {"data": {"open": t["enabled"],
                                      "closed_until": t["until"].isoformat() if t["until"] else None,
                                      "why": t["reason"]}}
            return 405, {"error": "method not allowed"}


def connection(host: str, port: int, user: str, password: str) -> dict[str, Any]:
    """The Airflow HTTP connection the profile's switch uses (``AIRFLOW_CONN_*`` JSON)."""
    return {"conn_type": "http", "host": host, "port": port, "schema": "http", "login": user,
            "password": password, "extra": {"headers": {CALLER_HEADER[0]: CALLER_HEADER[1]}}}


def register_orgs(state_file: Path, org_ids: list[int]) -> None:
    """Make ``org_ids`` known to the stack's server (open), keeping the flags of known ones; others
    are forgotten (a new dataset)."""
    try:
        raw = json.loads(state_file.read_text())
    except FileNotFoundError:
        raw = {}
    state = {str(o): raw.get(str(o), {"enabled": True, "until": None, "reason": None}) for o in org_ids}
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, state_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True, help="orgs and flags (JSON)")
    parser.add_argument("--credentials", type=Path, required=True, help='{"user": ..., "password": ...} (0600)')
    args = parser.parse_args(argv)
    creds = json.loads(args.credentials.read_text())
    api = AdminApi(user=creds["user"], password=creds["password"], state_file=args.state, port=args.port)
    print(f"meterhub admin API on {api.url}", flush=True)
    try:
        api.thread.join()
    except KeyboardInterrupt:
        api.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
