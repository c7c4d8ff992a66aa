"""The Cassandra conf and JVM command builders: no server, no Java needed.

Two clusters share one machine only if every per-node value really differs; these tests pin that.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml

from tenant_migration.stack import cassandra
from tenant_migration.stack.topology import CassandraNode, Topology


@pytest.fixture()
def topo(tmp_path: Path) -> Topology:
    return Topology(state_dir=tmp_path / "state")


def _command(topo: Topology, node: CassandraNode) -> list[str]:
    lib = cassandra.lib_dir(topo)
    return cassandra.jvm_command("/usr/bin/java", lib, node, cassandra.node_paths(topo, node))


def _props(cmd: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in cmd if arg.startswith("-D") and "=" in arg)


def test_yaml_gives_each_node_its_own_address_and_cluster(topo: Topology) -> None:
    rendered = [yaml.safe_load(cassandra.render_yaml(cassandra.cassandra_yaml(n))) for n in topo.cassandra_nodes]
    source, target = rendered
    assert source["cluster_name"] == "platform-shared"
    assert target["cluster_name"] == "tenant-vpc"
    for conf, node in zip(rendered, topo.cassandra_nodes, strict=True):
        assert conf["listen_address"] == conf["rpc_address"] == node.host
        assert conf["native_transport_port"] == node.native_port
        assert conf["storage_port"] == node.storage_port
        seeds = conf["seed_provider"][0]["parameters"][0]["seeds"]
        assert seeds == f"{node.host}:{node.storage_port}", "a node must seed only itself, or the clusters merge"
    assert source["listen_address"] != target["listen_address"]


def test_yaml_is_a_single_token_node_with_required_keys(topo: Topology) -> None:
    conf = yaml.safe_load(cassandra.render_yaml(cassandra.cassandra_yaml(topo.cassandra_source)))
    assert conf["num_tokens"] == 1
    assert conf["partitioner"] == "org.apache.cassandra.dht.Murmur3Partitioner"
    assert conf["endpoint_snitch"] == "SimpleSnitch"
    assert conf["commitlog_sync"] == "periodic"
    assert conf["commitlog_sync_period"].endswith("ms")
    assert conf["concurrent_compactors"] == 1
    # Keys removed in 4.0+ make the 5.0 loader refuse to start.
    assert not {"start_rpc", "rpc_port", "thrift_framed_transport_size_in_mb"} & conf.keys()
    # Directories come from -Dcassandra.storagedir; a yaml value would override it.
    assert not any(key.endswith("_directories") or key.endswith("_directory") for key in conf)


def test_jvm_command_has_java17_flags_and_jamm_agent(topo: Topology) -> None:
    cmd = _command(topo, topo.cassandra_source)
    lib = cassandra.lib_dir(topo)
    assert f"-javaagent:{lib / 'jamm-0.4.0.jar'}" in cmd
    pairs = set(itertools.pairwise(cmd))
    assert ("--add-opens", "java.base/java.nio=ALL-UNNAMED") in pairs
    assert ("--add-opens", "java.base/sun.nio.ch=ALL-UNNAMED") in pairs
    assert ("--add-exports", "java.management/com.sun.jmx.remote.security=ALL-UNNAMED") in pairs
    assert ("--add-exports", "jdk.attach/sun.tools.attach=ALL-UNNAMED") in pairs
    assert "-Djdk.attach.allowAttachSelf=true" in cmd
    assert "-Dcassandra-foreground=yes" in cmd
    assert ("-cp", f"{lib}/*") in pairs
    assert cmd[-1] == "org.apache.cassandra.service.CassandraDaemon"
    assert cmd[0] == "/usr/bin/java"
    # Every --add-* flag is followed by its value, never by another flag.
    for flag, value in pairs:
        if flag in ("--add-opens", "--add-exports"):
            assert "/" in value and value.endswith("=ALL-UNNAMED")


def test_jvm_command_separates_the_nodes(topo: Topology) -> None:
    source = _props(_command(topo, topo.cassandra_source))
    target = _props(_command(topo, topo.cassandra_target))
    assert source["cassandra.jmx.local.port"] == "7199"
    assert target["cassandra.jmx.local.port"] == "7299"
    for key in ("cassandra.config", "cassandra.storagedir", "logback.configurationFile"):
        assert source[key] != target[key], key
    assert source["cassandra.config"] == (topo.state_dir / "cassandra/cassandra-source/conf/cassandra.yaml").as_uri()
    assert source["cassandra.config"].startswith("file:///")
    assert source["cassandra.storagedir"].startswith(str(topo.state_dir / "cassandra" / "cassandra-source"))
    assert source["cassandra.initial_token"] == "0"


def test_heap_is_fixed(topo: Topology) -> None:
    cmd = _command(topo, topo.cassandra_target)
    assert "-Xms1G" in cmd and "-Xmx1G" in cmd
    assert "-XX:+UseG1GC" in cmd


def test_logback_logs_to_the_stack_logs_dir(topo: Topology) -> None:
    paths = cassandra.node_paths(topo, topo.cassandra_target)
    root = ElementTree.fromstring(cassandra.logback_xml(paths.log_file))
    files = [el.text for el in root.iter("file")]
    assert files == [str(topo.logs_dir / "cassandra-target.log")]
    threshold = root.find("./appender[@name='STDOUT']/filter/level")
    assert threshold is not None and threshold.text == "WARN"
    root_logger = root.find("root")
    assert root_logger is not None and root_logger.get("level") == "INFO"
    # The per-request WARN of every aggregate over an IN (the gates' fingerprints) is not logged.
    select = root.find("./logger[@name='org.apache.cassandra.cql3.statements.SelectStatement']")
    assert select is not None and select.get("level") == "ERROR"


def test_truncate_keeps_no_snapshot_on_the_local_stack(topo: Topology) -> None:
    for node in topo.cassandra_nodes:
        assert yaml.safe_load(cassandra.render_yaml(cassandra.cassandra_yaml(node)))["auto_snapshot"] is False


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15\nOpenJDK Runtime Environment', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ('openjdk version "11.0.22" 2024-01-16', 11),
        ("bash: java: command not found", None),
    ],
)
def test_parse_java_major(output: str, major: int | None) -> None:
    assert cassandra.parse_java_major(output) == major


def test_pom_names_the_pinned_version() -> None:
    root = ElementTree.fromstring(cassandra._pom("5.0.6"))
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    dep = root.find("m:dependencies/m:dependency", ns)
    assert dep is not None
    assert dep.findtext("m:artifactId", namespaces=ns) == "cassandra-all"
    assert dep.findtext("m:version", namespaces=ns) == "5.0.6"


def test_ensure_jars_trusts_only_a_completed_download(topo: Topology, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lib folder without the marker (interrupted download) is fetched again; with it, nothing runs."""
    monkeypatch.setattr(cassandra, "require_java", lambda: "/usr/bin/java")
    monkeypatch.setattr(cassandra, "require_binary", lambda name, hint: "/usr/bin/mvn")
    calls: list[list[str]] = []

    class Done:
        returncode = 0
        stdout = ""
        stderr = ""

    def fake_run(cmd: list[str], **kwargs: object) -> Done:
        calls.append(cmd)
        out = Path(next(a for a in cmd if a.startswith("-DoutputDirectory=")).split("=", 1)[1])
        out.mkdir(parents=True)
        (out / cassandra.JAMM_JAR).write_bytes(b"jar")
        return Done()

    monkeypatch.setattr(cassandra.subprocess, "run", fake_run)
    lib = cassandra.lib_dir(topo)
    lib.mkdir(parents=True)
    (lib / "half-written.jar").write_bytes(b"")
    (lib / cassandra.JAMM_JAR).write_bytes(b"")

    assert cassandra.ensure_jars(topo) == lib
    assert len(calls) == 1
    assert f"-Dmaven.repo.local={topo.cache_dir / 'm2'}" in calls[0]
    assert not (lib / "half-written.jar").exists()
    assert (lib.parent / "COMPLETE").exists()

    assert cassandra.ensure_jars(topo) == lib
    assert len(calls) == 1, "a completed download must not run Maven again"
