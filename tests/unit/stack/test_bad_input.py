"""Stack commands facing bad conditions stop with a message that says what to do, and start
nothing. Uses a throwaway state folder and stack slot 9, so it never touches the real stack."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenant_migration.stack import cassandra, postgres
from tenant_migration.stack.common import StackError
from tenant_migration.stack.topology import Topology, slotted_topology


@pytest.fixture
def topo(tmp_path: Path) -> Topology:
    return slotted_topology(tmp_path / "state", 9)


@pytest.fixture
def busy_port(topo: Topology) -> Iterator[int]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((topo.pg_primary.host, topo.pg_primary.port))
    sock.listen(1)
    try:
        yield topo.pg_primary.port
    finally:
        sock.close()


def test_busy_port_is_refused_with_how_to_find_the_owner(topo: Topology, busy_port: int) -> None:
    with pytest.raises(StackError, match=rf"{busy_port} is already in use.*ss -ltnp"):
        postgres.up(topo)
    assert not postgres.data_dir(topo, "primary").joinpath("PG_VERSION").exists()


def test_half_initialized_data_dir_is_refused_and_kept(topo: Topology) -> None:
    half = postgres.data_dir(topo, "primary")
    half.mkdir(parents=True)
    (half / "PG_VERSION").write_text("15\n")
    with pytest.raises(StackError, match="stack-reset"):
        postgres.up(topo)
    assert (half / "PG_VERSION").exists(), "a half-initialized folder must never be deleted silently"


def test_missing_postgres_binaries_say_what_to_install(topo: Topology, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.setenv("TM_PG_BIN", str(tmp_path / "no-such-bin"))
    with pytest.raises(StackError, match="apt-get install -y postgresql-15"):
        postgres.up(topo)


@pytest.mark.parametrize("tool", ["java", "mvn"], ids=["missing java", "missing maven"])
def test_missing_java_or_maven_say_what_to_install(topo: Topology, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path, tool: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    keep = {"java", "mvn"} - {tool}
    import shutil

    for name in keep:
        real = shutil.which(name)
        assert real is not None
        (bin_dir / name).symlink_to(real)
    monkeypatch.setenv("PATH", str(bin_dir))
    cassandra.require_java.cache_clear()  # the check is cached per process
    try:
        with pytest.raises(StackError, match="apt-get install"):
            cassandra.ensure_jars(topo)
    finally:
        cassandra.require_java.cache_clear()
