"""The local stack itself: every server up, run unprivileged, the standby streaming, `up` idempotent,
and docker-compose.yaml describing the same topology."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import admin

from tenant_migration.stack import airflow_env, cassandra, moto, postgres
from tenant_migration.stack.topology import REPO_ROOT, Topology

pytestmark = pytest.mark.integration


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def test_every_server_is_up(topo: Topology) -> None:
    rows = postgres.status(topo) + cassandra.status(topo) + moto.status(topo)
    assert [r.name for r in rows if not r.running] == []
    assert len(rows) == 7


def test_servers_run_as_an_unprivileged_user(topo: Topology) -> None:
    pids = []
    for role in postgres.ROLES:
        pid = postgres.postmaster_pid(postgres.data_dir(topo, role))
        assert pid is not None, role
        pids.append(pid)
    for node in topo.cassandra_nodes:
        pid = cassandra.node_pid(cassandra.node_paths(topo, node))
        assert pid is not None, node.name
        pids.append(pid)
    assert len(pids) == 6
    assert all(_uid_of(pid) != 0 for pid in pids)


def test_standby_streams_from_the_primary(topo: Topology) -> None:
    with admin(topo, "primary") as p, admin(topo, "standby") as s:
        assert s.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        assert s.execute("SELECT status FROM pg_stat_wal_receiver").fetchone() == ("streaming",)
        assert p.execute("SHOW wal_level").fetchone() == ("logical",)
        p.execute("CREATE TABLE IF NOT EXISTS public.stack_probe (v text)")
        token = f"probe-{time.time_ns()}"
        p.execute("INSERT INTO public.stack_probe VALUES (%s)", (token,))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # The table itself may not be replayed yet: ask the catalog first.
            if s.execute("SELECT to_regclass('public.stack_probe')").fetchone()[0] and s.execute(
                    "SELECT 1 FROM public.stack_probe WHERE v = %s", (token,)).fetchone():
                break
            time.sleep(0.1)
        else:
            pytest.fail("a row written on the primary never reached the standby")
        p.execute("DROP TABLE public.stack_probe")


def test_up_on_a_running_stack_changes_nothing(topo: Topology) -> None:
    records = postgres.up(topo)
    assert {r.action for r in records} == {"already running"}
    before = {r.name: r.detail for r in cassandra.status(topo)}
    cassandra.up(topo)
    assert {r.name: r.detail for r in cassandra.status(topo)} == before


def test_connection_passwords_are_not_in_the_repository(topo: Topology) -> None:
    secrets = airflow_env.load_secrets(topo)
    tracked = [p for p in REPO_ROOT.rglob("*") if p.is_file() and ".stack" not in p.parts
               and ".venv" not in p.parts and ".git" not in p.parts and p.suffix in {".py", ".yaml", ".sql", ".md", ".json"}]
    for path in tracked:
        text = path.read_text(errors="ignore")
        for pw in secrets.values():
            assert pw not in text, f"{path} holds a stack password"
