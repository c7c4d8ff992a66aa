"""Shared fixtures. Integration and e2e tests use the real local stack (``make stack-up``) with the
``tiny`` dataset; they are skipped with a clear reason only when the stack is not up and we are
not in CI (in CI a missing stack is a failure)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from helpers import admin

from tenant_migration.endpoints import Endpoints
from tenant_migration.stack import airflow_env
from tenant_migration.stack.common import port_open
from tenant_migration.stack.topology import Topology, default_topology

TOPO = default_topology()
# Airflow reads its configuration at import: point it at the stack's home before any test imports it.
os.environ.update(airflow_env.environment(TOPO))


def stack_is_up(topo: Topology) -> bool:
    return all(port_open(s.host, s.port) for s in topo.pg_servers) and all(
        port_open(n.host, n.native_port) for n in topo.cassandra_nodes
    ) and port_open(topo.moto_host, topo.moto_port)


@pytest.fixture(scope="session")
def topo() -> Topology:
    if not stack_is_up(TOPO):
        if os.environ.get("CI"):
            pytest.fail("the local stack is not up: `make test` starts it (make stack-up)")
        pytest.skip("local stack not up: run `make stack-up` (or `make test`)")
    return TOPO


@pytest.fixture(scope="session")
def endpoints(topo: Topology) -> Endpoints:
    return Endpoints.from_file(topo.state_dir / "connections.json")


@pytest.fixture(scope="session")
def tiny_dataset(topo: Topology) -> dict:
    """A pristine tiny dataset for this session: regenerated once (seconds), so that a previous
    run's leftovers (a test killed before its cleanup) can never leak into this one."""
    import json

    from tenant_migration.sample import platform

    platform.load_data(topo, "tiny", 7, force=True)
    return json.loads((topo.state_dir / "dataset.json").read_text())


@pytest.fixture
def target_admin(topo: Topology) -> Iterator[psycopg.Connection]:
    with admin(topo, "target") as conn:
        yield conn


@pytest.fixture
def primary_admin(topo: Topology) -> Iterator[psycopg.Connection]:
    with admin(topo, "primary") as conn:
        yield conn


@pytest.fixture
def reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TM_REPORTS_DIR", str(tmp_path / "reports"))
    return tmp_path / "reports"
