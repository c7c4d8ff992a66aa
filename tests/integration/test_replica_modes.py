"""Replica detach and reattach in each mode, each twice (idempotent): pausing the stack's standby,
promoting a throwaway standby cloned here with pg_basebackup (never the stack's own), and promoting an
RDS read replica on the moto server over HTTP."""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Iterator

import pytest

from tenant_migration import replica
from tenant_migration.endpoints import Endpoints, PgEndpoint
from tenant_migration.sample import aws
from tenant_migration.stack import postgres
from tenant_migration.stack.common import own_dir
from tenant_migration.stack.topology import Topology

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def throwaway_standby(topo: Topology, endpoints: Endpoints, tiny_dataset: dict) -> Iterator[PgEndpoint]:
    """A second hot standby of the primary, ours to promote and delete."""
    directory = topo.state_dir / "pg" / "throwaway-standby"
    shutil.rmtree(directory, ignore_errors=True)
    own_dir(directory.parent)
    port = _free_port()
    primary = topo.pg_primary
    postgres._run(topo, [postgres.pg_tool("pg_basebackup"), "-h", primary.host, "-p", str(primary.port),
                         "-U", topo.pg_superuser, "-D", str(directory), "-R", "-X", "stream", "--checkpoint=fast", "-w"],
                  timeout=300)
    opts = f"-p {port} -c cluster_name=throwaway -c unix_socket_directories={postgres.socket_dir(topo)}"
    ctl = [postgres.pg_tool("pg_ctl"), "-D", str(directory), "-l", str(directory / "server.log"), "-w", "-t", "60"]
    postgres._run(topo, [*ctl, "-o", opts, "start"], timeout=90)
    try:
        rc = endpoints.replica_control
        yield PgEndpoint(primary.host, port, rc.user, rc.password, rc.dbname)
    finally:
        postgres._run(topo, [*ctl, "-m", "immediate", "stop"], timeout=90)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def rds_client(endpoints: Endpoints) -> object:
    client = endpoints.aws.client("rds")
    # A fresh replica each time: promotion is one way.
    with contextlib.suppress(client.exceptions.DBInstanceNotFoundFault):
        client.delete_db_instance(DBInstanceIdentifier=aws.RDS_REPLICA, SkipFinalSnapshot=True)
    aws.seed_rds(client)
    return client


def _controller(mode: str, endpoints: Endpoints, standby: PgEndpoint | None, rds: object) -> replica.ReplicaController:
    if mode == "local":
        return replica.LocalReplicaController(endpoints.replica_control)
    if mode == "promote":
        assert standby is not None
        return replica.PromoteReplicaController(standby)
    return replica.RdsReplicaController(rds, aws.RDS_REPLICA)


@pytest.mark.parametrize(
    ("mode", "reattach_action"),
    [
        pytest.param("local", "resumed", id="local pause is reversible"),
        pytest.param("promote", "reclone_required", id="pg_promote needs a re-clone"),
        pytest.param("rds", "reclone_required", id="rds promote through moto needs a re-clone"),
    ],
)
def test_detach_and_reattach_are_idempotent(
    mode: str, reattach_action: str, request: pytest.FixtureRequest, endpoints: Endpoints, tiny_dataset: dict
) -> None:
    standby = request.getfixturevalue("throwaway_standby") if mode == "promote" else None
    rds = request.getfixturevalue("rds_client") if mode == "rds" else None
    ctl = _controller(mode, endpoints, standby, rds)
    assert ctl.describe()["detached"] is False

    first, second = ctl.detach(), ctl.detach()

    assert (first.already_detached, second.already_detached) == (False, True)
    assert first.lsn == second.lsn
    if mode != "rds":
        assert first.lsn is not None
    assert ctl.describe()["detached"] is True
    again = [ctl.reattach(), ctl.reattach()]
    assert again[0].action == reattach_action
    if mode == "local":
        assert again[1].action == "already_attached"
        assert ctl.describe()["detached"] is False
    else:
        assert again[1].action == "reclone_required"
        assert "re" in again[1].message and ctl.describe()["detached"] is True
