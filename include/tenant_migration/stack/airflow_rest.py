"""A real Airflow (``airflow standalone``: api-server, scheduler, dag-processor, triggerer) on the
local stack, driven through its public REST API exactly as the UI drives it (the REST e2e test and
``bench/bench_airflow_overhead.py --standalone``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tenant_migration.stack.topology import REPO_ROOT, Topology

FINISHED = {"success", "failed"}


@dataclass
class AirflowRest:
    base: str
    token: str

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, ok: tuple[int, ...] = (200,)) -> Any:
        resp = httpx.request(method, f"{self.base}/api/v2{path}", json=body, headers=self._headers(), timeout=60)
        if resp.status_code not in ok:
            raise AssertionError(f"{method} {path}: {resp.status_code} {resp.text[:2000]}")
        return resp.json() if resp.content else None

    def wait_for_dag(self, dag_id: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            resp = httpx.get(f"{self.base}/api/v2/dags/{dag_id}", headers=self._headers(), timeout=30)
            if resp.status_code == 200:
                return
            time.sleep(2)
        raise AssertionError(f"dag {dag_id} was not parsed by the dag-processor within {timeout}s")

    def form_conf(self, dag_id: str, **values: Any) -> dict[str, Any]:
        """What the trigger form sends: every param of the DAG with its default, the edited ones
        replaced (the form posts the whole conf object)."""
        params = self.call("GET", f"/dags/{dag_id}/details")["params"]
        conf = {name: spec.get("value") for name, spec in params.items()}
        unknown = set(values) - set(conf)
        assert not unknown, f"not params of {dag_id}: {unknown}"
        conf.update(values)
        return conf

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run = self.call("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        return str(run["dag_run_id"])

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 1800) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in FINISHED:
                return str(state)
            time.sleep(3)
        raise AssertionError(f"run {run_id} of {dag_id} did not finish within {timeout}s")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100&offset={len(out)}")
            out += page["task_instances"]
            if len(out) >= page["total_entries"] or not page["task_instances"]:
                return out


def _token(base: str, password: str) -> str:
    resp = httpx.post(f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=30)
    resp.raise_for_status()
    return str(resp.json()["access_token"])


def start_standalone(topo: Topology, log_path: Path, timeout: float = 300,
                     env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], AirflowRest]:
    """Start ``airflow standalone`` in its own process group (stopped with ``stop``) and log in.
    ``env``: more environment for it (an ``AIRFLOW_CONN_*`` a test adds, for instance).
    Standalone always runs the LocalExecutor; ``start_components`` runs another."""
    return _start(topo, log_path, [str(Path(sys.executable).with_name("airflow")), "standalone"], timeout, env)


COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def start_components(topo: Topology, log_path: Path, timeout: float = 300,
                     env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], AirflowRest]:
    """Airflow's components one by one (what standalone does, with the executor the stack's
    environment names: the CeleryExecutor under ``--workers N``), in one process group."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    script = " ".join(f"{airflow} {c} &" for c in COMPONENTS) + " wait"
    return _start(topo, log_path, ["bash", "-c", script], timeout, env)


def _start(topo: Topology, log_path: Path, command: list[str], timeout: float,
           env: dict[str, str] | None) -> tuple[subprocess.Popen[bytes], AirflowRest]:
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tenant_migration.stack", "run", "--", *command],
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{topo.airflow_api_port}"
    password = json.loads((topo.airflow_home / "simple_auth_manager_passwords.json").read_text())["admin"]
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            stop(proc)  # what it started may still run
            raise AssertionError(f"airflow exited ({proc.returncode}); see {log_path}")
        try:
            health = httpx.get(f"{base}/api/v2/monitor/health", timeout=5).json()
            if health.get("scheduler", {}).get("status") == "healthy":
                return proc, AirflowRest(base, _token(base, password))
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            stop(proc)
            raise AssertionError(f"airflow not healthy within {timeout}s; see {log_path}")
        time.sleep(2)


def stop(proc: subprocess.Popen[bytes], grace: float = 20) -> None:
    """Stop the standalone's process group (only the one this module started: its own session).

    A component can outlive ``airflow standalone`` itself (seen: a scheduler hung in its shutdown
    with its LocalExecutor workers, an hour later): whatever is left of the group ``grace`` seconds
    after the standalone process ended is killed."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    deadline = time.monotonic() + grace
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if group_members(proc.pid):
        _signal_group(proc.pid, signal.SIGKILL)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group ``pgid``, from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(stat.parent.name))
    return out


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
