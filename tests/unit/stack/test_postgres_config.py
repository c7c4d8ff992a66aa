"""Unit tests of the PostgreSQL stack's config builders: no server, no service user, no root needed."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tenant_migration.stack import postgres as pg
from tenant_migration.stack.common import StackError
from tenant_migration.stack.topology import Topology

# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
SUN_PATH_MAX = 107


@pytest.fixture
def topo(tmp_path: Path) -> Topology:
    return Topology(state_dir=tmp_path / "state")


def parse_conf(text: str) -> dict[str, str]:
    """Tiny postgresql.conf reader: key = value, single-quoted strings with '' escapes."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, raw = (part.strip() for part in line.partition("="))
        if raw.startswith("'"):
            assert raw.endswith("'"), line
            raw = raw[1:-1].replace("''", "'")
        out[key] = raw
    return out


def rendered(topo: Topology, role: pg.Role) -> dict[str, str]:
    return parse_conf(pg.render_conf(pg.server_settings(topo, role)))


def test_primary_is_logical_with_slots_and_commit_timestamps(topo: Topology) -> None:
    conf = rendered(topo, "primary")
    assert conf["wal_level"] == "logical"
    assert int(conf["max_wal_senders"]) >= 2
    assert int(conf["max_replication_slots"]) >= 2
    assert conf["track_commit_timestamp"] == "on"
    assert conf["hot_standby"] == "on"
    assert conf["hot_standby_feedback"] == "on"
    assert conf["synchronous_commit"] == "on"
    assert conf["fsync"] == "on"
    assert conf["logging_collector"] == "off"
    assert conf["shared_buffers"] == "256MB"


def test_standby_mirrors_primary_except_port_and_name(topo: Topology) -> None:
    primary, standby = rendered(topo, "primary"), rendered(topo, "standby")
    differing = {k for k in primary if primary[k] != standby.get(k)}
    assert differing == {"port", "cluster_name"}
    assert standby["wal_level"] == "logical"


def test_target_needs_only_replica(topo: Topology) -> None:
    conf = rendered(topo, "target")
    assert conf["wal_level"] == "replica"
    assert conf["shared_preload_libraries"] == "pg_prewarm"


@pytest.mark.parametrize("role", pg.ROLES)
def test_each_role_gets_its_own_topology_port(topo: Topology, role: pg.Role) -> None:
    expected = {"primary": 15432, "standby": 15433, "target": 15434, "airflow": 15435}[role]
    assert int(rendered(topo, role)["port"]) == expected == pg.server_of(topo, role).port


def test_ports_are_distinct(topo: Topology) -> None:
    ports = [int(rendered(topo, role)["port"]) for role in pg.ROLES]
    assert len(set(ports)) == len(ports)


def test_airflow_metadata_server_is_its_own_and_commits_asynchronously(topo: Topology) -> None:
    conf = rendered(topo, "airflow")
    assert conf["wal_level"] == "replica" and conf["track_commit_timestamp"] == "off"
    assert conf["synchronous_commit"] == "off"
    assert int(conf["max_connections"]) >= 100
    for role in ("primary", "standby", "target"):  # the platform's servers keep durable commits
        assert rendered(topo, role)["synchronous_commit"] == "on"
        assert pg.server_of(topo, role).port != topo.pg_airflow.port


@pytest.mark.parametrize("role", pg.ROLES)
def test_listens_only_on_loopback(topo: Topology, role: pg.Role) -> None:
    conf = rendered(topo, role)
    assert conf["listen_addresses"] == "127.0.0.1"
    assert conf["unix_socket_permissions"] == "0700"
    assert conf["shared_preload_libraries"] == "pg_prewarm"


def test_hba_allows_tcp_only_from_loopback_with_scram() -> None:
    hba = pg.hba_conf()
    host_lines = [line.split() for line in hba.splitlines() if line.startswith("host")]
    assert {tuple(fields[1:2]) for fields in host_lines} == {("all",), ("replication",)}
    for fields in host_lines:
        assert fields[0] == "host"
        assert fields[3] == "127.0.0.1/32"
        assert fields[4] == "scram-sha-256"
    assert "0.0.0.0" not in hba and "::" not in hba and "trust" not in "".join(" ".join(f) for f in host_lines)


def test_render_conf_quotes_strings_and_escapes_quotes() -> None:
    text = pg.render_conf({"a": "it's", "b": 5, "c": True, "d": False})
    assert "a = 'it''s'\n" in text
    assert "b = 5\n" in text
    assert "c = on\n" in text
    assert "d = off\n" in text
    assert parse_conf(text)["a"] == "it's"


def test_short_state_dir_keeps_socket_inside_it(topo: Topology) -> None:
    sock = pg.socket_dir(topo)
    assert sock == topo.state_dir / "pg" / "run"
    assert rendered(topo, "primary")["unix_socket_directories"] == str(sock)


@pytest.mark.parametrize("extra", [40, 70, 85, 95, 200])
def test_socket_path_always_fits_sun_path(tmp_path: Path, extra: int) -> None:
    state = tmp_path / ("d" * extra)
    topo = Topology(state_dir=state)
    sock = pg.socket_dir(topo)
    for server in topo.pg_servers:
        assert len(pg.socket_path(sock, server.port)) <= SUN_PATH_MAX
    assert rendered(topo, "standby")["unix_socket_directories"] == str(sock)


def test_long_state_dir_socket_goes_to_tmp_stable_and_distinct() -> None:
    long_a = Path("/work") / ("a" * 120) / ".stack"
    long_b = Path("/work") / ("b" * 120) / ".stack"
    sock_a = pg.socket_dir(Topology(state_dir=long_a))
    assert re.fullmatch(r"/tmp/tm-pg-[0-9a-f]{12}", str(sock_a))
    assert sock_a == pg.socket_dir(Topology(state_dir=long_a))  # remembered: same dir every run
    assert sock_a != pg.socket_dir(Topology(state_dir=long_b))


def test_data_dirs_are_per_role_under_state(topo: Topology) -> None:
    dirs = {pg.data_dir(topo, role) for role in pg.ROLES}
    assert dirs == {topo.state_dir / "pg" / r for r in ("primary", "standby", "target", "airflow")}


def test_superuser_dsn_targets_each_server_and_default_db(topo: Topology) -> None:
    for role in pg.ROLES:
        url = urlsplit(pg.superuser_dsn(topo, role))
        assert (url.hostname, url.port) == ("127.0.0.1", pg.server_of(topo, role).port)
        assert url.path == "/platform"
        assert url.username == "stack_admin"
    assert pg.superuser_dsn(topo, "pg-standby") == pg.superuser_dsn(topo, topo.pg_standby)
    assert pg.superuser_dsn(topo, "target", "postgres").endswith(":15434/postgres")


def test_superuser_dsn_encodes_awkward_passwords(tmp_path: Path) -> None:
    password = "p@ss:w/rd?#%'"
    topo = Topology(state_dir=tmp_path, pg_superpassword=password)
    url = urlsplit(pg.superuser_dsn(topo, "primary"))
    assert unquote(url.password or "") == password
    assert url.hostname == "127.0.0.1" and url.port == 15432


def test_superuser_dsn_rejects_unknown_server(topo: Topology) -> None:
    with pytest.raises(ValueError):
        pg.superuser_dsn(topo, "replica-9")


def test_pgpass_escapes_and_covers_every_server(tmp_path: Path) -> None:
    topo = Topology(state_dir=tmp_path, pg_superpassword="a:b\\c")
    lines = pg.pgpass_content(topo).splitlines()
    assert lines == [f"127.0.0.1:{port}:*:stack_admin:a\\:b\\\\c" for port in (15432, 15433, 15434, 15435)]


def test_pg_bin_defaults_to_debian_15_and_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TM_PG_BIN", raising=False)
    assert pg.pg_bin() == Path("/usr/lib/postgresql/15/bin")
    monkeypatch.setenv("TM_PG_BIN", "/opt/pg/bin")
    assert pg.pg_bin() == Path("/opt/pg/bin")


def test_missing_binaries_say_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TM_PG_BIN", str(tmp_path / "nowhere"))
    with pytest.raises(StackError, match=r"apt-get install -y postgresql-15 postgresql-contrib"):
        pg.pg_tool("initdb")


def test_data_dir_state(tmp_path: Path) -> None:
    directory = tmp_path / "primary"
    assert pg.data_dir_state(directory) == "missing"
    directory.mkdir()
    assert pg.data_dir_state(directory) == "missing"  # empty: initdb may use it
    (directory / "base").mkdir()
    assert pg.data_dir_state(directory) == "partial"
    (directory / "PG_VERSION").write_text("15\n")
    assert pg.data_dir_state(directory) == "partial"  # initdb ran, our setup did not finish
    (directory / pg.READY_MARKER).write_text("done\n")
    assert pg.data_dir_state(directory) == "ready"


def test_postmaster_pid_ignores_missing_stale_and_foreign_pids(tmp_path: Path) -> None:
    assert pg.postmaster_pid(tmp_path) is None
    (tmp_path / "postmaster.pid").write_text(f"{os.getpid()}\n{tmp_path}\n")
    assert pg.postmaster_pid(tmp_path) is None  # alive, but it is this python, not a postmaster
    (tmp_path / "postmaster.pid").write_text("999999999\n")
    assert pg.postmaster_pid(tmp_path) is None


def test_lsn_to_int() -> None:
    assert pg.lsn_to_int("0/0") == 0
    assert pg.lsn_to_int("0/3000000") == 0x3000000
    assert pg.lsn_to_int("1/0") - pg.lsn_to_int("0/FFFFFFFF") == 1


@pytest.mark.parametrize("slot", range(10), ids=lambda s: f"slot {s}")
def test_stack_ports_are_outside_the_ephemeral_range(tmp_path: Path, slot: int) -> None:
    """A client's ephemeral source port can take a server port in that range and make a restart
    fail with 'address already in use' (seen here): every listening port stays below it."""
    from tenant_migration.stack.topology import slotted_topology

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    topo = slotted_topology(tmp_path, slot)
    ports = [s.port for s in topo.pg_servers] + [topo.moto_port, topo.airflow_api_port]
    ports += [n.native_port for n in topo.cassandra_nodes] + [n.storage_port for n in topo.cassandra_nodes]
    ports += [n.jmx_port for n in topo.cassandra_nodes]
    assert max(ports) < low, sorted(ports)
