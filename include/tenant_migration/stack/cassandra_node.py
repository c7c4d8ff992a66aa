"""A Cassandra node of the local stack on disk, pure: its folders, its ``cassandra.yaml`` and logback
configuration, and its JVM command line (``stack.cassandra`` fetches the jars and runs the nodes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tenant_migration.stack.common import (
    own_dir,
)
from tenant_migration.stack.topology import CassandraNode, Topology

CASSANDRA_VERSION = "5.0.6"
JAMM_JAR = "jamm-0.4.0.jar"
MAIN_CLASS = "org.apache.cassandra.service.CassandraDaemon"
HEAP = "1G"


# Cassandra's own conf/jvm17-server.options (5.0, JPMS and Netty parts) plus the two extra module
# grants 5.0.6 needs here: without them the JVM dies at start on Java 17.
_EXPORTS = (
    "java.base/jdk.internal.misc",
    "java.management.rmi/com.sun.jmx.remote.internal.rmi",
    "java.rmi/sun.rmi.registry",
    "java.rmi/sun.rmi.server",
    "java.sql/java.sql",
    "java.base/java.lang.ref",
    "jdk.unsupported/sun.misc",
    "jdk.compiler/com.sun.tools.javac.file",
    "jdk.attach/sun.tools.attach",
    "java.management/com.sun.jmx.remote.security",
)
_OPENS = (
    "java.base/java.lang.module",
    "java.base/jdk.internal.loader",
    "java.base/jdk.internal.ref",
    "java.base/jdk.internal.reflect",
    "java.base/jdk.internal.math",
    "java.base/jdk.internal.module",
    "java.base/jdk.internal.util.jar",
    "jdk.management/com.sun.management.internal",
    "java.base/sun.nio.ch",
    "java.base/java.io",
    "java.base/java.lang.reflect",
    "jdk.compiler/com.sun.tools.javac",
    "java.base/java.lang",
    "java.base/java.util",
    "java.base/java.nio",
)
JVM17_MODULE_FLAGS: tuple[str, ...] = (
    *(arg for pkg in _EXPORTS for arg in ("--add-exports", f"{pkg}=ALL-UNNAMED")),
    *(arg for pkg in _OPENS for arg in ("--add-opens", f"{pkg}=ALL-UNNAMED")),
    "-Djdk.attach.allowAttachSelf=true",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
)


# --------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class NodePaths:
    """Where one node keeps its files; derived from the topology only, so every command agrees."""

    root: Path
    logs_dir: Path
    name: str

    @property
    def conf_dir(self) -> Path:
        return self.root / "conf"

    @property
    def yaml_file(self) -> Path:
        return self.conf_dir / "cassandra.yaml"

    @property
    def logback_file(self) -> Path:
        return self.conf_dir / "logback.xml"

    @property
    def storage_dir(self) -> Path:
        return self.root / "storage"

    @property
    def pidfile(self) -> Path:
        return self.root / "cassandra.pid"

    @property
    def last_start_file(self) -> Path:
        return self.root / "last_start.json"

    @property
    def log_file(self) -> Path:
        """Cassandra's own log (logback, INFO and up)."""
        return self.logs_dir / f"{self.name}.log"

    @property
    def console_file(self) -> Path:
        """The JVM's stdout/stderr: WARN and up, plus anything said before logback is up."""
        return self.logs_dir / f"{self.name}.out"


def node_paths(topo: Topology, node: CassandraNode) -> NodePaths:
    return NodePaths(root=topo.state_dir / "cassandra" / node.name, logs_dir=topo.logs_dir, name=node.name)


def lib_dir(topo: Topology) -> Path:
    return topo.cache_dir / f"cassandra-{CASSANDRA_VERSION}" / "lib"


# ------------------------------------------------------------------------------------------- config


def cassandra_yaml(node: CassandraNode) -> dict[str, Any]:
    """The cassandra.yaml of one node: a single-token, single-node cluster sized for a small machine.

    Directories are left out on purpose: ``-Dcassandra.storagedir`` places them all.
    """
    return {
        "cluster_name": node.cluster_name,
        "num_tokens": 1,
        "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
        "endpoint_snitch": "SimpleSnitch",
        "seed_provider": [
            {
                "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
                "parameters": [{"seeds": f"{node.host}:{node.storage_port}"}],
            }
        ],
        "listen_address": node.host,
        "rpc_address": node.host,
        "native_transport_port": node.native_port,
        "storage_port": node.storage_port,
        "start_native_transport": True,
        "commitlog_sync": "periodic",
        "commitlog_sync_period": "10000ms",
        "authenticator": "AllowAllAuthenticator",
        "authorizer": "AllowAllAuthorizer",
        "hinted_handoff_enabled": False,
        "concurrent_compactors": 1,
        "concurrent_reads": 8,
        "concurrent_writes": 8,
        "concurrent_counter_writes": 8,
        "key_cache_size": "16MiB",
        "row_cache_size": "0MiB",
        "counter_cache_size": "4MiB",
        "memtable_heap_space": "128MiB",
        "memtable_offheap_space": "128MiB",
        "dynamic_snitch": False,
        # The stack's keyspaces are truncated and reloaded over and over (tests, demo, benches):
        # a snapshot per TRUNCATE kept every old dataset on disk (3 GB after a day's work).
        "auto_snapshot": False,
    }


def render_yaml(config: dict[str, Any]) -> str:
    body: str = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    return "# Generated by tenant_migration.stack.cassandra; rewritten at every start.\n" + body


def logback_xml(log_file: Path) -> str:
    """INFO and up to a size-capped file, WARN and up to stdout.

    The cassandra-all jar ships no logback.xml and logback's fallback is DEBUG to stdout, which
    costs start time and floods the console file.

    ``SelectStatement`` logs a WARN per request for every aggregate over an IN of partitions (the
    gates' fingerprints: hundreds per gate), synchronously, to both appenders -- 640 k lines and a
    130 MB console file in a day of runs; the client is told the same in each response (and the
    driver's log drops it, ``fingerprint._DropAggregateWarning``). Errors still get through.
    """
    return f"""<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>{log_file}</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>{log_file}.%i</fileNamePattern>
      <minIndex>1</minIndex>
      <maxIndex>3</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>20MB</maxFileSize>
    </triggeringPolicy>
    <encoder>
      <pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <filter class="ch.qos.logback.classic.filter.ThresholdFilter">
      <level>WARN</level>
    </filter>
    <encoder>
      <pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <logger name="org.apache.cassandra.cql3.statements.SelectStatement" level="ERROR"/>
  <root level="INFO">
    <appender-ref ref="FILE"/>
    <appender-ref ref="STDOUT"/>
  </root>
</configuration>
"""


def jvm_command(java: str, lib: Path, node: CassandraNode, paths: NodePaths, heap: str = HEAP) -> list[str]:
    """The full ``java`` command line of one node (what bin/cassandra would build, minus the shell)."""
    return [
        java,
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-XX:+ParallelRefProcEnabled",
        "-XX:MaxTenuringThreshold=1",
        "-XX:G1HeapRegionSize=16m",
        "-XX:+PerfDisableSharedMem",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.net.preferIPv4Stack=true",
        *JVM17_MODULE_FLAGS,
        f"-javaagent:{lib / JAMM_JAR}",
        "-Dcassandra-foreground=yes",
        f"-Dcassandra.config={paths.yaml_file.as_uri()}",
        f"-Dcassandra.storagedir={paths.storage_dir}",
        f"-Dcassandra.logdir={paths.logs_dir}",
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        "-Dcassandra.initial_token=0",
        "-Dcassandra.ring_delay_ms=1000",
        f"-Dcassandra.jmx.local.port={node.jmx_port}",
        f"-Dlogback.configurationFile={paths.logback_file}",
        "-cp",
        f"{lib}/*",
        MAIN_CLASS,
    ]


def write_config(node: CassandraNode, paths: NodePaths) -> None:
    """(Re)write conf/ and create the folders the service user must own; never touches data."""
    own_dir(paths.root)
    own_dir(paths.conf_dir)
    own_dir(paths.storage_dir)
    own_dir(paths.logs_dir)
    paths.yaml_file.write_text(render_yaml(cassandra_yaml(node)))
    paths.logback_file.write_text(logback_xml(paths.log_file))
